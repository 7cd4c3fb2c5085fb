//! QCOW2 through pipes (issue 19): `-Q … -` writes a one-pass stream, and `apply -` and
//! `-r -` read one from standard input.
//! - every `-Q` mode streamed into a pipe equals the same export written to a file: the same
//!   size, `qemu-img check` clean on the saved stream, `qemu-img compare` equal for the active
//!   layer and for every state (`-l snapshot.name=`); metadata, `-d`, `--snapshot`,
//!   `--fs-snapshots`, a QCOW2 source's states, `--name`, deltas with their record and
//!   `--backing`;
//! - a reader that goes away mid-stream stops the export with exit 1 and a clear message;
//! - `--append` to `-` is a usage error.

use crate::common::*;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs e2image-rs with `args` (OUT `-`) in `dir`, its standard output a pipe read to the end
/// (as `| cat > FILE`) and saved as `out`.
fn to_pipe(dir: &Path, args: &[&dyn AsRef<std::ffi::OsStr>], out: &Path) -> Output {
    let mut c = Command::new(bin());
    c.current_dir(dir);
    for a in args {
        c.arg(a);
    }
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut bytes = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    let o = child.wait_with_output().unwrap();
    std::fs::write(out, bytes).unwrap();
    o
}

/// Bytes of the cluster checksum table at the end of image `q` (docs/verify.md; a stream's
/// has its CRC-32C after the entries, so it may take one cluster more), 0 without one.
fn checksum_table_bytes(q: &Path) -> u64 {
    let r = qcow::Reader::open_with_backing(std::fs::File::open(q).unwrap()).unwrap();
    let cb = r.header().cluster_bits;
    r.header_extension(qcow::EXT_CLUSTER_CHECKSUMS)
        .map(|d| qcow::ChecksumExtension::parse(d, cb, r.file_len()).unwrap())
        .map_or(0, |e| e.table_clusters(cb) << cb)
}

/// `args` with OUT `-` into a pipe and with OUT `file` (both in `dir`); asserts both exit
/// 0, check clean, have one size (their checksum tables aside) and hold the same states
/// (`names`, and the active layer).
fn stream_equals_file(dir: &Path, args: &[&dyn AsRef<std::ffi::OsStr>], tag: &str, names: &[&str]) {
    let (piped, file) = (
        dir.join(format!("{tag}.piped.qcow2")),
        dir.join(format!("{tag}.file.qcow2")),
    );
    let mut a = args.to_vec();
    a.push(&"-");
    let o = to_pipe(dir, &a, &piped);
    assert_eq!(code(&o), 0, "{tag}: {}", stderr(&o));
    let mut a = args.to_vec();
    a.push(&file);
    let o = {
        let mut c = Command::new(bin());
        c.current_dir(dir).args(a.iter().map(|x| x.as_ref()));
        c.output().unwrap()
    };
    assert_eq!(code(&o), 0, "{tag}: {}", stderr(&o));
    assert_qemu_check(&piped);
    assert_qemu_check(&file);
    assert_eq!(
        std::fs::metadata(&piped).unwrap().len() - checksum_table_bytes(&piped),
        std::fs::metadata(&file).unwrap().len() - checksum_table_bytes(&file),
        "{tag}: one layout's size (the cluster checksum tables aside)"
    );
    assert_qemu_identical(&piped, &file);
    for n in names {
        let (p, f) = (
            dir.join(format!("{tag}.{n}.p.raw")),
            dir.join(format!("{tag}.{n}.f.raw")),
        );
        extract_state(&piped, n, &p);
        extract_state(&file, n, &f);
        assert_eq!(sha256(&p), sha256(&f), "{tag}: state {n}");
    }
    // The same tables, dates aside (an archive's state is dated when it is made).
    let undated = |q: &Path| {
        let mut v = snapshot_list(q);
        for s in v["snapshots"].as_array_mut().unwrap() {
            let o = s.as_object_mut().unwrap();
            if tag == "archive" {
                o.retain(|k, _| !k.starts_with("date"));
            }
        }
        v
    };
    assert_eq!(
        undated(&piped),
        undated(&file),
        "{tag}: the same snapshot tables"
    );
}

#[test]
fn streamed_exports_equal_file_exports() {
    if skip() {
        return;
    }
    let dir = scratch("stream-exports");
    let [a, b, c] = chain(&dir);
    stream_equals_file(&dir, &[&"-Q", &c], "meta", &[]);
    stream_equals_file(&dir, &[&"-Q", &"-d", &c], "data", &[]);
    stream_equals_file(&dir, &[&"-Q", &"--compat", &"0.10", &c], "v2", &[]);
    stream_equals_file(&dir, &[&"-Q", &"--cluster-size", &"512", &c], "c512", &[]);
    stream_equals_file(
        &dir,
        &[&"-Q", &"-d", &"--snapshot", &a, &"--snapshot", &b, &c],
        "pit",
        &["current", "b.img", "a.img"],
    );
    stream_equals_file(
        &dir,
        &[&"-Q", &"--name", &"monday", &c],
        "archive",
        &["monday"],
    );
    // A QCOW2 source's states are carried across.
    let arch = dir.join("pit.file.qcow2");
    stream_equals_file(
        &dir,
        &[&"-Q", &arch],
        "carried",
        &["current", "b.img", "a.img"],
    );
    // next3 snapshots.
    let f = snapshot_fixtures(&["next3_3snap"])
        .remove("next3_3snap")
        .unwrap();
    let names: Vec<String> = std::iter::once("current".to_string())
        .chain(
            f.snapshots
                .iter()
                .filter(|s| !s.deleted)
                .map(|s| s.name.clone()),
        )
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    stream_equals_file(&dir, &[&"-Q", &"--fs-snapshots", &f.path], "next3", &names);
}

#[test]
fn streamed_deltas_equal_file_deltas_with_record_and_backing() {
    if skip() {
        return;
    }
    let dir = scratch("stream-deltas");
    let [a, b, c] = chain(&dir);
    let arch = dir.join("arch.qcow2");
    expect(&[&"-Q", &"--snapshot", &a, &"--snapshot", &b, &c, &arch], 0);
    stream_equals_file(&dir, &[&"-Q", &"-x", &"a.img..current", &arch], "x", &[]);
    let full = dir.join("a-full.qcow2");
    expect(&[&"-Q", &"-d", &a, &full], 0);
    stream_equals_file(
        &dir,
        &[
            &"-Q",
            &"-d",
            &"--base",
            &a,
            &"--backing",
            &"a-full.qcow2",
            &c,
        ],
        "base",
        &[],
    );
    let info = sh("qemu-img", &[&"info", &dir.join("base.piped.qcow2")]);
    assert!(
        stdout(&info).contains("backing file: a-full.qcow2"),
        "{}",
        stdout(&info)
    );
    // The record is the file delta's: apply of either gives TO.
    for tag in ["base.piped", "base.file"] {
        let t = sparse_copy(&a, &dir.join(format!("{tag}.t.img")));
        let p = dir.join(format!("{tag}.patch"));
        expect_sub(
            "apply",
            &[&dir.join(format!("{tag}.qcow2")), &t, &"--patch", &p],
            0,
        );
    }
    assert_eq!(
        sha256(&dir.join("base.piped.t.img")),
        sha256(&dir.join("base.file.t.img"))
    );
    // A missing --backing next to a streamed delta: checked from the current directory.
    let o = Command::new(bin())
        .current_dir(&dir)
        .args(["-Q", "--base"])
        .arg(&a)
        .args(["--backing", "nope.qcow2"])
        .arg(&c)
        .arg("-")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("current directory"), "{}", stderr(&o));
}

#[test]
fn a_reader_that_goes_away_stops_the_export() {
    if skip() {
        return;
    }
    let dir = scratch("stream-closed");
    let img = small_image(&dir);
    for n in [0usize, 100, 70_000] {
        let mut child = Command::new(bin())
            .args(["-Q", "-d"])
            .arg(&img)
            .arg("-")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut got = vec![0u8; n];
        out.read_exact(&mut got).unwrap();
        drop(out);
        let o = child.wait_with_output().unwrap();
        let e = stderr(&o);
        assert_eq!(code(&o), 1, "after {n} bytes: {e}");
        assert!(e.contains("standard output was closed"), "{e}");
        assert!(!e.contains("panicked"), "{e}");
        if n >= 4 {
            assert_eq!(&got[..4], b"QFI\xfb", "the header comes first");
        }
    }
    let temps = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .count();
    assert_eq!(temps, 0, "no temporary file is involved");
}

#[test]
fn append_to_standard_output_is_a_usage_error() {
    let dir = scratch("stream-append");
    let img = small_image(&dir);
    let o = Command::new(bin())
        .args(["-Q", "--append"])
        .arg(&img)
        .arg("-")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("in place"), "{}", stderr(&o));
}

/// Runs e2image-rs with `args` in `dir`, `input` written into its standard input through a
/// pipe (by a thread, as `cat FILE | e2image-rs …`), stopping after `cut` bytes if given.
fn from_pipe(dir: &Path, args: &[&dyn AsRef<std::ffi::OsStr>], input: Vec<u8>) -> Output {
    use std::io::Write;
    let mut c = Command::new(bin());
    c.current_dir(dir);
    for a in args {
        c.arg(a);
    }
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input); // the reader may stop early
    });
    let o = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    o
}

/// No patch under `p`, nor a temporary of one, is left in `dir`.
fn no_patch(dir: &Path, p: &Path) {
    assert!(!p.exists(), "{} exists", p.display());
    let stem = p.file_name().unwrap().to_string_lossy().into_owned();
    let left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&stem))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn apply_of_a_streamed_delta_equals_apply_of_the_file() {
    if skip() {
        return;
    }
    let dir = scratch("stream-apply");
    let [a, _b, c] = chain(&dir);
    let (file_delta, stream_delta) = (dir.join("ac.qcow2"), dir.join("ac.stream.qcow2"));
    expect(&[&"-Q", &"-d", &"--base", &a, &c, &file_delta], 0);
    let o = to_pipe(
        &dir,
        &[&"-Q", &"-d", &"--base", &a, &c, &"-"],
        &stream_delta,
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let t_file = sparse_copy(&a, &dir.join("t-file.img"));
    expect_sub(
        "apply",
        &[&file_delta, &t_file, &"--patch", &dir.join("file.patch")],
        0,
    );
    // The stream of `-Q … -` piped into `apply -`: consumed in its one pass, no spool.
    let t = sparse_copy(&a, &dir.join("t-stream.img"));
    let p = dir.join("stream.patch");
    let o = from_pipe(
        &dir,
        &[&"apply", &"-", &t, &"--patch", &p],
        read(&stream_delta),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!stderr(&o).contains("spooled"), "{}", stderr(&o));
    assert_eq!(sha256(&t), sha256(&t_file), "apply - equals apply FILE");
    expect_sub("apply", &[&"--undo", &p, &t], 0);
    assert_eq!(
        sha256(&t),
        sha256(&a),
        "the patch written from the stream is whole"
    );
    // The file delta (tables last) on standard input: read in one pass when its data is small
    // enough to be held with the tables, else spooled first; the same result either way.
    let t2 = sparse_copy(&a, &dir.join("t-spool.img"));
    let p2 = dir.join("spool.patch");
    let o = from_pipe(
        &dir,
        &[&"apply", &"-", &t2, &"--patch", &p2],
        read(&file_delta),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(sha256(&t2), sha256(&t_file));
}

#[test]
fn a_cut_or_corrupt_stream_leaves_the_target_and_no_patch() {
    if skip() {
        return;
    }
    let dir = scratch("stream-apply-cut");
    let [a, _b, c] = chain(&dir);
    let sd = dir.join("ac.stream.qcow2");
    let o = to_pipe(&dir, &[&"-Q", &"-d", &"--base", &a, &c, &"-"], &sd);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let bytes = read(&sd);
    let t = sparse_copy(&a, &dir.join("t.img"));
    let before = sha256(&t);
    let p = dir.join("t.patch");
    let len = bytes.len();
    for cut in [0usize, 60, 5000, len / 2, len - 1] {
        let o = from_pipe(
            &dir,
            &[&"apply", &"-", &t, &"--patch", &p],
            bytes[..cut].to_vec(),
        );
        let e = stderr(&o);
        assert_eq!(code(&o), 1, "cut {cut}: {e}");
        assert!(e.contains(&format!("after {cut} bytes")), "cut {cut}: {e}");
        assert!(e.contains("untouched"), "cut {cut}: {e}");
        assert_eq!(sha256(&t), before, "cut {cut}");
        no_patch(&dir, &p);
    }
    // A flipped byte in the data, and a stream that is not a delta.
    // (In the last data cluster: the cluster checksum table follows it.)
    let mut bad = bytes.clone();
    bad[len - checksum_table_bytes(&sd) as usize - 100] ^= 0xff;
    let full = dir.join("a-full.qcow2");
    expect(&[&"-Q", &a, &full], 0);
    for (what, input) in [("corrupt", bad), ("no delta record", read(&full))] {
        let o = from_pipe(&dir, &[&"apply", &"-", &t, &"--patch", &p], input);
        let e = stderr(&o);
        assert_eq!(code(&o), 1, "{what}: {e}");
        assert!(e.contains(what), "{e}");
        assert_eq!(sha256(&t), before, "{what}");
        no_patch(&dir, &p);
    }
    // A delta for another state of the filesystem: the target does not hold its FROM.
    let cd = dir.join("cc.stream.qcow2");
    let o = to_pipe(&dir, &[&"-Q", &"--base", &c, &c, &"-"], &cd);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = from_pipe(&dir, &[&"apply", &"-", &t, &"--patch", &p], read(&cd));
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert_eq!(sha256(&t), before);
    no_patch(&dir, &p);
}

#[test]
fn raw_from_standard_input_one_pass_or_spooled() {
    if skip() {
        return;
    }
    let dir = scratch("stream-raw-in");
    let [a, b, c] = chain(&dir);
    let reference = dir.join("c.ref.raw");
    expect(&[&"-r", &c, &reference], 0);
    // Our stream, in one pass.
    let s = dir.join("c.stream.qcow2");
    let o = to_pipe(
        &dir,
        &[&"-Q", &"--snapshot", &a, &"--snapshot", &b, &c, &"-"],
        &s,
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = dir.join("c.out.raw");
    let o = from_pipe(&dir, &[&"-r", &"-", &out], read(&s));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("one pass"), "{}", stderr(&o));
    assert_eq!(sha256(&out), sha256(&reference));
    // An older state: its data shares the newer state's, out of guest order: spooled.
    let (out_a, ref_a) = (dir.join("a.out.raw"), dir.join("a.ref.raw"));
    expect(&[&"-r", &a, &ref_a], 0);
    let o = from_pipe(
        &dir,
        &[&"-r", &"--from-snapshot", &"a.img", &"-", &out_a],
        read(&s),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(sha256(&out_a), sha256(&ref_a));
    // A QEMU-made image whose tables lie between its data (an internal snapshot made after
    // the data): spooled to $TMPDIR with a note giving its size, then converted.
    let q = dir.join("q.qcow2");
    for args in [
        vec!["create", "-q", "-f", "qcow2", q.to_str().unwrap(), "64M"],
        vec!["snapshot", "-c", "early", q.to_str().unwrap()],
    ] {
        if args[0] == "snapshot" {
            let w = Command::new("qemu-io")
                .args(["-c", "write -P 0x5a 1M 6M", "-c", "write -P 0xa5 40M 64k"])
                .arg(&q)
                .output()
                .unwrap();
            assert_eq!(code(&w), 0, "{}", stderr(&w));
        }
        let o = Command::new("qemu-img").args(&args).output().unwrap();
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    let reference = dir.join("q.ref.raw");
    let o = sh("qemu-img", &[&"convert", &"-O", &"raw", &q, &reference]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let tmp = dir.join("tmpdir");
    std::fs::create_dir_all(&tmp).unwrap();
    let out_q = dir.join("q.out.raw");
    let mut cmd = Command::new(bin());
    cmd.current_dir(&dir)
        .env("TMPDIR", &tmp)
        .args(["-r", "-"])
        .arg(&out_q);
    let o = {
        use std::io::Write;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = read(&q);
        let feeder = std::thread::spawn(move || stdin.write_all(&input).unwrap());
        let o = child.wait_with_output().unwrap();
        feeder.join().unwrap();
        o
    };
    let e = stderr(&o);
    assert_eq!(code(&o), 0, "{e}");
    assert!(
        e.contains("spooled") && e.contains(&tmp.display().to_string()),
        "{e}"
    );
    let size = std::fs::metadata(&q).unwrap().len();
    assert!(
        e.contains(&format!("{size} bytes")),
        "the note gives the size: {e}"
    );
    assert_eq!(sha256(&out_q), sha256(&reference));
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "the spool is unlinked"
    );
    // A filesystem on standard input is not a QCOW2 stream.
    let o = from_pipe(&dir, &[&"-Q", &"-", &dir.join("x.qcow2")], read(&a));
    assert_eq!(code(&o), 2, "{}", stderr(&o));
}

/// `args` (with `-c`) to a pipe and to a file: both check clean and hold the same states
/// (`names`, and the active layer); the stream holds compressed clusters. Returns the
/// stream's stderr.
fn compressed_stream_equals_file(
    dir: &Path,
    args: &[&dyn AsRef<std::ffi::OsStr>],
    tag: &str,
    names: &[&str],
    env: &[(&str, &str)],
) -> String {
    let (piped, file) = (
        dir.join(format!("{tag}.piped.qcow2")),
        dir.join(format!("{tag}.file.qcow2")),
    );
    let mut c = Command::new(bin());
    c.current_dir(dir)
        .args(args.iter().map(|x| x.as_ref()))
        .arg("-");
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut bytes = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 0, "{tag}: {}", stderr(&o));
    std::fs::write(&piped, bytes).unwrap();
    let mut a = args.to_vec();
    a.push(&file);
    expect(&a, 0);
    assert_qemu_check(&piped);
    assert_qemu_identical(&piped, &file);
    for n in names {
        let (p, f) = (
            dir.join(format!("{tag}.{n}.p.raw")),
            dir.join(format!("{tag}.{n}.f.raw")),
        );
        extract_state(&piped, n, &p);
        extract_state(&file, n, &f);
        assert_eq!(sha256(&p), sha256(&f), "{tag}: state {n}");
    }
    let map = sh("qemu-img", &[&"map", &"--output=json", &piped]);
    assert!(
        String::from_utf8_lossy(&map.stdout).contains("\"compressed\": true"),
        "{tag}: the stream holds no compressed cluster"
    );
    stderr(&o)
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the test spool limit E2IMAGE_RS_SPOOL_MEMORY (`--features fault-injection`)"
)]
fn compressed_streams_equal_compressed_files() {
    if skip() {
        return;
    }
    let dir = scratch("stream-compressed");
    let [a, b, c] = chain(&dir);
    let e = compressed_stream_equals_file(&dir, &[&"-Q", &"-c", &"-d", &c], "zlib", &[], &[]);
    assert!(e.contains("clusters compressed (zlib"), "{e}");
    assert!(!e.contains("temporary file"), "{e}");
    let e = compressed_stream_equals_file(
        &dir,
        &[&"-Q", &"-c", &"--compression-type", &"zstd", &c],
        "zstd",
        &[],
        &[],
    );
    assert!(e.contains("(zstd"), "{e}");
    compressed_stream_equals_file(
        &dir,
        &[
            &"-Q",
            &"-c",
            &"-d",
            &"--snapshot",
            &a,
            &"--snapshot",
            &b,
            &c,
        ],
        "pit",
        &["current", "b.img", "a.img"],
        &[],
    );
    // Payloads past the spool's memory go to an unlinked temporary file, said in a note.
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let tmp_s = tmp.display().to_string();
    let e = compressed_stream_equals_file(
        &dir,
        &[&"-Q", &"-c", &"-d", &c],
        "spilled",
        &[],
        &[("E2IMAGE_RS_SPOOL_MEMORY", "4096"), ("TMPDIR", &tmp_s)],
    );
    assert!(e.contains("unlinked temporary file"), "{e}");
    assert!(
        std::fs::read_dir(&tmp).unwrap().next().is_none(),
        "nothing left in $TMPDIR"
    );
}

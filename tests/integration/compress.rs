//! `-c` (QCOW2 compressed clusters, zlib and zstd) against the oracles:
//! - exports of part of the fixture matrix (`-Q`, `-Q -d`, v2 and v3) equal the plain ones by
//!   `qemu-img compare`, check clean, and say their compression type in `qemu-img info`; the
//!   zlib and plain outputs also read right through qcow2-rs, one more independent reader
//!   (`readers`: what it cannot read is documented there);
//! - older states (`--snapshot`): each equals the plain export's, and a cluster two states
//!   share is one payload in the file;
//! - archives (`--name`, `--append` with and without `-c`, into plain and zstd archives,
//!   `prune`): every state equals the plain archive's; a type other than the archive's is
//!   refused;
//! - deltas (`--base`, and `-x` between two states of a compressed archive) compressed and
//!   applied equal the plain deltas applied;
//! - images QEMU compressed (`qemu-img convert -c [-o compression_type=zstd]`) read back
//!   through `-r`, `rollback` and `apply` (`qemu`);
//! - a cluster that does not compress is stored plain; usage errors.

mod qemu;
mod readers;

use crate::common::*;
use qcow::{ClusterMapping, Layer, Reader};
use std::path::{Path, PathBuf};

/// The compressions tested: the arguments after `-c`, and QEMU's name of the type.
pub const TYPES: [(&[&str], &str); 2] = [(&[], "zlib"), (&["--compression-type", "zstd"], "zstd")];

/// Runs e2image-rs with `base` args, then `extra`, then `paths`, expecting `want`.
pub fn export_with(
    base: &[&str],
    extra: &[&str],
    paths: &[&Path],
    want: i32,
) -> std::process::Output {
    let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = Vec::new();
    for s in base.iter().chain(extra) {
        a.push(s);
    }
    for p in paths {
        a.push(p);
    }
    expect(&a, want)
}

/// The compression type `qemu-img info` reports for `img`.
pub fn info_type(img: &Path) -> String {
    let o = sh("qemu-img", &[&"info", &"--output=json", &img]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["format-specific"]["data"]["compression-type"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// (compressed, plain data) clusters of a layer of `img`.
pub fn mapping_counts(img: &Path, layer: Layer) -> (u64, u64) {
    let r = Reader::open(std::fs::File::open(img).unwrap()).unwrap();
    let lr = r.layer(layer).unwrap();
    let (mut c, mut n) = (0, 0);
    lr.for_each_allocated(|_, m| {
        match m {
            ClusterMapping::Compressed { .. } => c += 1,
            ClusterMapping::Normal { .. } => n += 1,
            _ => {}
        }
        Ok(())
    })
    .unwrap();
    (c, n)
}

fn check_fixture(name: &str) {
    if skip() {
        return;
    }
    let f = fixtures(&[name]).remove(name).unwrap();
    let dir = scratch(&format!("compress-{name}"));
    for mode in [&["-Q"][..], &["-Q", "-d"], &["-Q", "--compat", "0.10"]] {
        let plain = dir.join("plain.qcow2");
        export_with(mode, &[], &[&f.path, &plain], 0);
        let raw = dir.join("plain.raw");
        export_with(
            &["-r"],
            &mode[1..]
                .iter()
                .filter(|a| **a == "-d")
                .copied()
                .collect::<Vec<_>>(),
            &[&f.path, &raw],
            0,
        );
        readers::assert_qcow2_rs_reads(&plain, &raw);
        for (extra, kind) in TYPES {
            if mode.contains(&"0.10") && kind == "zstd" {
                continue;
            }
            let out = dir.join(format!("{kind}.qcow2"));
            let mut args = mode.to_vec();
            args.push("-c");
            args.extend(extra);
            args.push("--json");
            let o = export_with(&args, &[], &[&f.path, &out], 0);
            let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(summary["compression"]["type"], kind, "{name} {mode:?}");
            assert_qemu_check(&out);
            assert_qemu_identical(&out, &plain);
            assert_eq!(info_type(&out), kind);
            let (c, _) = mapping_counts(&out, Layer::Active);
            assert!(c > 0, "{name} {mode:?} {kind}: nothing compressed");
            if kind == "zlib" {
                readers::assert_qcow2_rs_reads(&out, &raw);
            }
            let _ = std::fs::remove_file(&out);
        }
    }
}

macro_rules! matrix {
    ($($name:ident),* $(,)?) => {
        $( #[test] fn $name() { check_fixture(stringify!($name)); } )*
    };
}

matrix!(
    ext2_1k,
    ext4_default_4k,
    ext4_64k_block,
    ext4_bigalloc_4k,
    ext3_2k
);

/// The raw bytes of state `name` of `q`.
fn state_bytes(q: &Path, name: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("{name}.state.raw"));
    extract_state(q, name, &out);
    read(&out)
}

#[test]
fn older_states_share_compressed_clusters() {
    if skip() {
        return;
    }
    let dir = scratch("compress-states");
    let [a, b, c] = chain(&dir);
    let plain = dir.join("plain.qcow2");
    expect(
        &[
            &"-Q",
            &"-d",
            &"--snapshot",
            &a,
            &"--snapshot",
            &b,
            &c,
            &plain,
        ],
        0,
    );
    for (extra, kind) in TYPES {
        let out = dir.join(format!("{kind}.qcow2"));
        let mut args: Vec<&str> = vec!["-Q", "-d", "-c"];
        args.extend(extra);
        export_with(
            &args,
            &["--snapshot"],
            &[&a, Path::new("--snapshot"), &b, &c, &out],
            0,
        );
        assert_qemu_check(&out);
        assert_qemu_identical(&out, &plain);
        let r = Reader::open(std::fs::File::open(&out).unwrap()).unwrap();
        assert_eq!(r.snapshots().len(), 3);
        for s in r.snapshots() {
            assert!(
                state_bytes(&out, &s.name, &dir) == state_bytes(&plain, &s.name, &dir),
                "{kind}: state {}",
                s.name
            );
        }
        // The current state and the oldest map as many clusters to the same host bytes as
        // in the plain export: what the plain export shares stays shared, compressed once.
        let (shared, compressed) = shared_with_oldest(&out);
        assert_eq!(shared, shared_with_oldest(&plain).0, "{kind}");
        assert!(compressed > 0, "{kind}: no shared cluster is compressed");
    }
}

/// Guest clusters the newest and the oldest of three states map to the same host bytes, and
/// how many of them are compressed.
fn shared_with_oldest(img: &Path) -> (u64, u64) {
    let r = Reader::open(std::fs::File::open(img).unwrap()).unwrap();
    let (newest, oldest) = (
        r.layer(Layer::Snapshot(0)).unwrap(),
        r.layer(Layer::Snapshot(2)).unwrap(),
    );
    let (mut shared, mut compressed) = (0, 0);
    newest
        .for_each_allocated(|g, m| {
            let data = matches!(
                m,
                ClusterMapping::Normal { .. } | ClusterMapping::Compressed { .. }
            );
            if data && oldest.mapping(g)? == m {
                shared += 1;
                compressed += u64::from(matches!(m, ClusterMapping::Compressed { .. }));
            }
            Ok(())
        })
        .unwrap();
    (shared, compressed)
}

/// A plain archive of the chain: a, b, c by appends.
fn plain_archive(dir: &Path, states: &[PathBuf; 3]) -> PathBuf {
    let q = dir.join("plain-archive.qcow2");
    expect(&[&"-Q", &"--name", &"a", &states[0], &q], 0);
    expect(&[&"-Q", &"--append", &"--name", &"b", &states[1], &q], 0);
    expect(&[&"-Q", &"--append", &"--name", &"c", &states[2], &q], 0);
    q
}

#[test]
fn archives_append_and_prune_compressed() {
    if skip() {
        return;
    }
    let dir = scratch("compress-archive");
    let states = chain(&dir);
    let reference = plain_archive(&dir, &states);
    for (extra, kind) in TYPES {
        let q = dir.join(format!("{kind}-archive.qcow2"));
        let mut c: Vec<&str> = vec!["-Q", "-c"];
        c.extend(extra);
        export_with(&c, &["--name", "a"], &[&states[0], &q], 0);
        export_with(
            &["-Q", "-c", "--append", "--name", "b"],
            &[],
            &[&states[1], &q],
            0,
        );
        assert_qemu_check(&q);
        // A plain append into a compressed archive: new clusters stored plain, the rest shared.
        export_with(
            &["-Q", "--append", "--name", "c"],
            &[],
            &[&states[2], &q],
            0,
        );
        assert_qemu_check(&q);
        assert_eq!(info_type(&q), kind);
        for name in ["a", "b", "c"] {
            assert!(
                state_bytes(&q, name, &dir) == state_bytes(&reference, name, &dir),
                "{kind}: {name}"
            );
        }
        let other = if kind == "zlib" { "zstd" } else { "zlib" };
        let e = stderr(&export_with(
            &[
                "-Q",
                "-c",
                "--compression-type",
                other,
                "--append",
                "--name",
                "x",
            ],
            &[],
            &[&states[2], &q],
            1,
        ));
        assert!(e.contains("one compression type"), "{e}");
        expect(&[&"prune", &q, &"--keep-last", &"2"], 0);
        assert_qemu_check(&q);
        for name in ["b", "c"] {
            assert!(
                state_bytes(&q, name, &dir) == state_bytes(&reference, name, &dir),
                "{kind} pruned: {name}"
            );
        }
    }
    // -c appends into a plain archive: compressed clusters in a zlib image.
    let q = dir.join("plain-then-c.qcow2");
    expect(&[&"-Q", &"--name", &"a", &states[0], &q], 0);
    let e = stderr(&expect(
        &[
            &"-Q",
            &"-c",
            &"--compression-type",
            &"zstd",
            &"--append",
            &states[1],
            &q,
        ],
        1,
    ));
    assert!(e.contains("are zlib"), "{e}");
    expect(
        &[&"-Q", &"-c", &"--append", &"--name", &"b", &states[1], &q],
        0,
    );
    assert_qemu_check(&q);
    assert!(
        mapping_counts(&q, Layer::Active).0 > 0,
        "nothing compressed"
    );
    assert!(state_bytes(&q, "b", &dir) == state_bytes(&reference, "b", &dir));
    assert!(state_bytes(&q, "a", &dir) == state_bytes(&reference, "a", &dir));
}

#[test]
fn compressed_deltas_apply_like_plain_ones() {
    if skip() {
        return;
    }
    let dir = scratch("compress-delta");
    let [a, _, c] = chain(&dir);
    let plain = dir.join("plain.delta");
    expect(&[&"-Q", &"-d", &"--base", &a, &c, &plain], 0);
    let want = dir.join("want.img");
    sparse_copy(&a, &want);
    expect_sub("apply", &[&plain, &want, &"--patch", &dir.join("p0")], 0);
    for (extra, kind) in TYPES {
        let d = dir.join(format!("{kind}.delta"));
        let mut args: Vec<&str> = vec!["-Q", "-d", "-c"];
        args.extend(extra);
        export_with(&args, &["--base"], &[&a, &c, &d], 0);
        assert_qemu_check(&d);
        assert_qemu_identical(&d, &plain);
        let t = dir.join(format!("{kind}.img"));
        sparse_copy(&a, &t);
        expect_sub(
            "apply",
            &[&d, &t, &"--patch", &dir.join(format!("p-{kind}"))],
            0,
        );
        assert!(read(&t) == read(&want), "{kind}: applied delta differs");
    }
    // -x between two states of a compressed archive (read through its compressed clusters),
    // the delta compressed too.
    let arch = dir.join("arch.qcow2");
    expect(&[&"-Q", &"-d", &"-c", &"--name", &"a", &a, &arch], 0);
    expect(
        &[&"-Q", &"-d", &"-c", &"--append", &"--name", &"c", &c, &arch],
        0,
    );
    let x = dir.join("x.delta");
    expect(
        &[
            &"-Q",
            &"-d",
            &"-c",
            &"--compression-type",
            &"zstd",
            &"-x",
            &"a..c",
            &arch,
            &x,
        ],
        0,
    );
    assert_qemu_check(&x);
    assert_eq!(info_type(&x), "zstd");
    let t = dir.join("x.img");
    sparse_copy(&a, &t);
    expect_sub("apply", &[&x, &t, &"--patch", &dir.join("p-x")], 0);
    assert!(read(&t) == read(&want), "-x: applied delta differs");
}

#[test]
fn clusters_that_do_not_compress_are_stored_plain() {
    if skip() {
        return;
    }
    let dir = scratch("compress-random");
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("random.bin"), Xorshift::new(7).bytes(1 << 20)).unwrap();
    std::fs::write(src.join("text.txt"), b"a line of text\n".repeat(20_000)).unwrap();
    let img = dir.join("fs.img");
    mkfs_from(&src, &img, "32M");
    let out = dir.join("c.qcow2");
    let o = expect(&[&"-Q", &"-d", &"-c", &"--json", &img, &out], 0);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let plain = v["compression"]["plain_clusters"].as_u64().unwrap();
    assert!(plain >= 15, "{v}"); // 1 MiB of random bytes in 64 KiB clusters
    let (c, n) = mapping_counts(&out, Layer::Active);
    assert_eq!(n, plain);
    assert_eq!(c, v["compression"]["compressed_clusters"].as_u64().unwrap());
    assert_qemu_check(&out);
    let raw = dir.join("r.raw");
    expect(&[&"-r", &"-d", &img, &raw], 0);
    assert_qemu_identical(&out, &raw);
}

#[test]
fn compression_usage_errors_say_why() {
    let dir = scratch("compress-usage");
    let img = small_image(&dir);
    let out = dir.join("o.qcow2");
    for (args, says) in [
        // -r -c is e2image's compare mode, onto an existing OUT only.
        (
            vec!["-r", "-c"],
            "does not exist (without -c, -r writes a new image)",
        ),
        (
            vec!["-r", "-c", "--compression-type", "zstd"],
            "go with -Q -c",
        ),
        (
            vec!["-Q", "-c", "--compat", "0.10", "--compression-type", "zstd"],
            "needs --compat 1.1",
        ),
        (
            vec!["-Q", "-c", "--compression-level", "10"],
            "zlib levels are 1 to 9",
        ),
        (
            vec![
                "-Q",
                "-c",
                "--compression-type",
                "zstd",
                "--compression-level",
                "20",
            ],
            "zstd levels are 1 to 19",
        ),
        (vec!["-Q", "--compression-type", "zstd"], "-c"),
    ] {
        let e = stderr(&export_with(&args, &[], &[&img, &out], 2));
        assert!(e.contains(says), "{args:?}: {e}");
        assert!(!out.exists());
    }
}

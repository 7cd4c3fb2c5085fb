//! Archives grown in place (`-Q --name`, `-Q --append`, `prune`), with qemu-img as the oracle:
//! - states appended one by one equal the one-shot `--snapshot` export state by state, and the
//!   archive is at most 1.15× its size; `qemu-img check` exits 0 after every step; the active
//!   layer is the newest state; names given or defaulted to the export time stay the same;
//! - prune with each rule removes exactly the states restic's rules remove, leaves the others
//!   byte-identical, returns the space (holes) and a later append reuses it;
//! - a kill at any write of an append or a prune leaves the archive checking clean with the
//!   same states; the next append removes the leftovers and says so;
//! - lock, mode and filesystem mismatches are refused with nothing written
//!   (the systemd unit: `replay_states.rs`).

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// 2026-01-05 12:00:00 UTC, a Monday.
const MONDAY: u64 = 1_767_614_400;
const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

/// Runs e2image-rs with `args` at the test clock `now` (seconds), expecting `want`.
fn at(now: u64, args: &[&dyn AsRef<std::ffi::OsStr>], want: i32) -> std::process::Output {
    let mut c = Command::new(bin());
    c.env("E2IMAGE_RS_TEST_NOW", now.to_string());
    for a in args {
        c.arg(a);
    }
    let o = c.output().unwrap();
    assert_eq!(code(&o), want, "{}", stderr(&o));
    o
}

/// Names of the archive's states, in table order.
fn names(q: &Path) -> Vec<String> {
    snapshot_list(q)["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

/// `e2image-rs -r [-d] IMG` as bytes.
fn raw_of(img: &Path, dir: &Path, data: bool) -> Vec<u8> {
    let out = dir.join(format!(
        "{}.ref{}.raw",
        img.file_name().unwrap().to_string_lossy(),
        if data { "-d" } else { "" }
    ));
    if data {
        expect(&[&"-r", &"-d", &img, &out], 0);
    } else {
        expect(&[&"-r", &img, &out], 0);
    }
    read(&out)
}

/// State `name` of archive `q` as raw bytes (qemu-img convert -l).
fn state(q: &Path, name: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("state-{name}.raw"));
    extract_state(q, name, &out);
    read(&out)
}

/// SHA-256 of every state of `q`, by name.
fn fingerprints(q: &Path, dir: &Path) -> Vec<(String, [u8; 32])> {
    names(q)
        .into_iter()
        .map(|n| {
            let out = dir.join(format!("fp-{n}.raw"));
            extract_state(q, &n, &out);
            let h = sha256(&out);
            (n, h)
        })
        .collect()
}

/// An archive of the chain's states a, b, c made one append at a time, days apart.
fn appended(dir: &Path, data: bool) -> (PathBuf, [PathBuf; 3]) {
    let imgs = chain(dir);
    let q = dir.join(if data { "arch-d.qcow2" } else { "arch.qcow2" });
    let d: &dyn AsRef<std::ffi::OsStr> = if data { &"-d" } else { &"--sync" };
    at(MONDAY, &[&"-Q", d, &"--name", &"a", &imgs[0], &q], 0);
    assert_qemu_check(&q);
    at(
        MONDAY + DAY,
        &[&"-Q", d, &"--append", &"--name", &"b", &imgs[1], &q],
        0,
    );
    assert_qemu_check(&q);
    at(MONDAY + 2 * DAY, &[&"-Q", d, &"--append", &imgs[2], &q], 0);
    assert_qemu_check(&q);
    (q, imgs)
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the test clock E2IMAGE_RS_TEST_NOW (`--features fault-injection`)"
)]
fn appended_states_equal_the_one_shot_export() {
    if skip() {
        return;
    }
    for data in [false, true] {
        let dir = scratch(if data { "arch-eq-d" } else { "arch-eq" });
        let (q, [a, b, c]) = appended(&dir, data);
        let third = names(&q)[0].clone();
        assert!(
            third.starts_with("2026-01-07T12:00:00Z"),
            "default name {third}"
        );
        assert_eq!(names(&q), vec![third.clone(), "b".into(), "a".into()]);
        for (name, img) in [(third.as_str(), &c), ("b", &b), ("a", &a)] {
            assert!(
                state(&q, name, &dir) == raw_of(img, &dir, data),
                "state {name} (data {data}) differs from e2image-rs -r of its image"
            );
        }
        // The active layer is the newest state.
        let active = dir.join("active.raw");
        let o = sh("qemu-img", &[&"convert", &"-O", &"raw", &q, &active]);
        assert_eq!(code(&o), 0);
        assert!(read(&active) == raw_of(&c, &dir, data));
        // At most 1.15× the one-shot chain of the same states.
        let one = dir.join("one-shot.qcow2");
        if data {
            expect(
                &[&"-Q", &"-d", &"--snapshot", &a, &"--snapshot", &b, &c, &one],
                0,
            );
        } else {
            expect(&[&"-Q", &"--snapshot", &a, &"--snapshot", &b, &c, &one], 0);
        }
        let (ours, theirs) = (allocated(&q), allocated(&one));
        assert!(
            ours as f64 <= 1.15 * theirs as f64,
            "appended {ours} bytes vs one-shot {theirs} (data {data})"
        );
    }
}

/// Bytes the file occupies on disk (holes excluded).
fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

#[test]
fn appends_are_refused_when_they_do_not_fit() {
    if skip() {
        return;
    }
    let dir = scratch("arch-refuse");
    let (q, [a, _b, c]) = appended(&dir, false);
    let before = sha256(&q);
    // Another mode.
    let e = stderr(&expect(&[&"-Q", &"-d", &"--append", &c, &q], 1));
    assert!(
        e.contains("file data") && e.contains("nothing was written"),
        "{e}"
    );
    // Another filesystem.
    let other = dir.join("other.img");
    assert_eq!(
        code(&sh(
            "mke2fs",
            &[&"-q", &"-F", &"-t", &"ext4", &other, &"16M"]
        )),
        0
    );
    let e = stderr(&expect(&[&"-Q", &"--append", &other, &q], 1));
    assert!(
        e.contains("another filesystem") && e.contains("UUID"),
        "{e}"
    );
    // A name already used; a missing archive; -r; --keep-* without --append.
    expect(&[&"-Q", &"--append", &"--name", &"b", &c, &q], 2);
    expect(&[&"-Q", &"--append", &c, &dir.join("missing.qcow2")], 2);
    expect(&[&"-r", &"--append", &c, &q], 2);
    expect(&[&"-Q", &"--keep-last", &"1", &c, &dir.join("x.qcow2")], 2);
    // A plain export is not an archive.
    let plain = dir.join("plain.qcow2");
    expect(&[&"-Q", &a, &plain], 0);
    let e = stderr(&expect(&[&"-Q", &"--append", &c, &plain], 1));
    assert!(e.contains("not an archive"), "{e}");
    // Locked by another run.
    {
        let holder = std::fs::File::open(&q).unwrap();
        holder.lock().unwrap();
        let e = stderr(&expect(&[&"-Q", &"--append", &c, &q], 1));
        assert!(e.contains("in use"), "{e}");
        holder.unlock().unwrap();
    }
    assert_eq!(sha256(&q), before);
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the test clock E2IMAGE_RS_TEST_NOW (`--features fault-injection`)"
)]
fn prune_applies_each_rule_and_keeps_states_intact() {
    if skip() {
        return;
    }
    let dir = scratch("arch-prune");
    let [a, b, c] = chain(&dir);
    let q = dir.join("arch.qcow2");
    // Eight states: three on Monday (hours 12, 13, 14), then Tuesday, next Monday, next
    // month, next year, and a last one.
    let dates = [
        MONDAY,
        MONDAY + HOUR,
        MONDAY + 2 * HOUR,
        MONDAY + DAY,
        MONDAY + 7 * DAY,
        MONDAY + 40 * DAY,
        MONDAY + 400 * DAY,
        MONDAY + 401 * DAY,
    ];
    let imgs = [&a, &b, &c, &a, &b, &c, &a, &b];
    at(dates[0], &[&"-Q", &"--name", &"s0", imgs[0], &q], 0);
    for k in 1..dates.len() {
        let name = format!("s{k}");
        at(
            dates[k],
            &[&"-Q", &"--append", &"--name", &name, imgs[k], &q],
            0,
        );
    }
    assert_qemu_check(&q);
    let prune = |rule: &str, n: &str, dry: bool| -> Vec<String> {
        let t = sparse_copy(&q, &dir.join("p.qcow2"));
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"prune", &t, &rule, &n];
        if dry {
            args.push(&"--dry-run");
        }
        expect(&args, 0);
        assert_qemu_check(&t);
        let mut left = names(&t);
        left.sort();
        left
    };
    let s = |v: &[usize]| -> Vec<String> { v.iter().map(|k| format!("s{k}")).collect() };
    assert_eq!(prune("--keep-last", "3", false), s(&[5, 6, 7]));
    assert_eq!(prune("--keep-hourly", "3", false), s(&[5, 6, 7]));
    assert_eq!(prune("--keep-daily", "4", false), s(&[4, 5, 6, 7]));
    // Four ISO weeks hold states (s6 and s7 share one, so do s0..s3): fewer than 10, so the
    // oldest state is kept as well.
    assert_eq!(prune("--keep-weekly", "10", false), s(&[0, 3, 4, 5, 7]));
    assert_eq!(prune("--keep-monthly", "2", false), s(&[5, 7]));
    assert_eq!(prune("--keep-yearly", "5", false), s(&[0, 5, 7]));
    // A dry run changes nothing and says why each state stays.
    assert_eq!(prune("--keep-last", "1", true).len(), dates.len());
    let o = expect(&[&"prune", &q, &"--keep-daily", &"2", &"--dry-run"], 0);
    let out = stdout(&o);
    assert!(out.contains("dry run") && out.contains("daily"), "{out}");
    // The kept states are byte-identical, and the space comes back.
    let t = sparse_copy(&q, &dir.join("kept.qcow2"));
    let keep: Vec<(String, [u8; 32])> = fingerprints(&t, &dir)
        .into_iter()
        .filter(|(n, _)| n == "s6" || n == "s7")
        .collect();
    let before = allocated(&t);
    let len = std::fs::metadata(&t).unwrap().len();
    expect(&[&"prune", &t, &"--keep-last", &"2"], 0);
    assert_qemu_check(&t);
    assert_eq!(fingerprints(&t, &dir), keep);
    let after = allocated(&t);
    assert!(after < before, "prune freed nothing: {before} → {after}");
    // A later append reuses the freed clusters: the file does not grow past its old size.
    at(
        dates[7] + DAY,
        &[&"-Q", &"--append", &"--name", &"s8", &c, &t],
        0,
    );
    assert_qemu_check(&t);
    assert!(std::fs::metadata(&t).unwrap().len() <= len);
    // An empty policy is refused.
    expect(&[&"prune", &t, &"--keep-last", &"0"], 2);
}

#[test]
fn append_with_retention_prunes_in_the_same_run() {
    if skip() {
        return;
    }
    let dir = scratch("arch-append-keep");
    let (q, [_a, b, _c]) = appended(&dir, false);
    at(
        MONDAY + 3 * DAY,
        &[
            &"-Q",
            &"--append",
            &"--name",
            &"d",
            &"--keep-last",
            &"2",
            &b,
            &q,
        ],
        0,
    );
    assert_qemu_check(&q);
    assert_eq!(names(&q).len(), 2);
    assert_eq!(names(&q)[0], "d");
}

/// Runs an append (or prune) with the process aborted after write `k`; true if it got that
/// far (false: it finished before write k).
fn interrupted(args: &[&dyn AsRef<std::ffi::OsStr>], k: u64, now: u64) -> bool {
    let mut c = Command::new(bin());
    c.env("E2IMAGE_RS_FAULT_AFTER_WRITES", k.to_string())
        .env("E2IMAGE_RS_TEST_NOW", now.to_string());
    for a in args {
        c.arg(a);
    }
    let o = c.output().unwrap();
    match o.status.code() {
        Some(0) => false,
        Some(x) => panic!("exit {x}: {}", stderr(&o)),
        None => true,
    }
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs `--features fault-injection` (stops at every write)"
)]
fn a_kill_at_any_write_leaves_the_archive_intact() {
    if skip() {
        return;
    }
    let dir = scratch("arch-kill");
    let (q, [a, _b, _c]) = appended(&dir, false);
    let before = fingerprints(&q, &dir);
    let len = std::fs::metadata(&q).unwrap().len();
    let now = MONDAY + 5 * DAY;
    for (what, prune) in [("append", false), ("prune", true)] {
        let mut k = 1;
        loop {
            let t = sparse_copy(&q, &dir.join("k.qcow2"));
            let stopped = if prune {
                interrupted(&[&"prune", &t, &"--keep-last", &"1"], k, now)
            } else {
                interrupted(&[&"-Q", &"--append", &a, &t], k, now)
            };
            if !stopped {
                break;
            }
            assert_qemu_check(&t);
            // Stopped before the commit point (the header write): the archive as it was;
            // after it: the new archive (an append's new state first, or a prune's states
            // removed), every other state unchanged.
            let now_fp = fingerprints(&t, &dir);
            let old = now_fp == before;
            let appended = !prune && now_fp.len() == before.len() + 1 && now_fp[1..] == before[..];
            let pruned = prune && now_fp.len() == 1 && now_fp[0] == before[0];
            assert!(
                old || appended || pruned,
                "{what} stopped after write {k}: {:?}",
                now_fp.iter().map(|x| &x.0).collect::<Vec<_>>()
            );
            let before = if old { before.clone() } else { now_fp };
            // The next run removes the leftovers (and says so) and succeeds.
            let grown = old && std::fs::metadata(&t).unwrap().len() > len;
            let o = at(now + 1, &[&"-Q", &"--append", &a, &t], 0);
            if grown {
                assert!(stderr(&o).contains("left past the end"), "{}", stderr(&o));
            }
            assert_qemu_check(&t);
            assert_eq!(names(&t).len(), before.len() + 1, "{what} k={k}");
            k += 1;
        }
        assert!(k > 5, "{what}: only {k} write points");
    }
}

/// Unmounts on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// With `-d`, files whose inode is unchanged are shared without being read; a file rewritten
/// in place through the kernel (same blocks, new bytes, new mtime) is read and stored anew.
#[test]
fn data_appends_see_files_rewritten_in_place() {
    if skip() {
        return;
    }
    let dir = scratch("arch-inplace");
    let a = small_image(&dir);
    let q = dir.join("arch.qcow2");
    at(MONDAY, &[&"-Q", &"-d", &"--name", &"a", &a, &q], 0);
    let b = sparse_copy(&a, &dir.join("b.img"));
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-o", "loop"])
        .arg(&b)
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skipped("cannot loop-mount here");
        return;
    }
    {
        let _m = Mounted(mnt.clone());
        let victim = std::fs::read_dir(mnt.join("many"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() > 0))
            .expect("a file in /many");
        let len = std::fs::metadata(&victim).unwrap().len() as usize;
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&victim)
            .unwrap();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.write_all(&vec![0x5a; len]).unwrap();
        f.sync_all().unwrap();
    }
    at(
        MONDAY + DAY,
        &[&"-Q", &"-d", &"--append", &"--name", &"b", &b, &q],
        0,
    );
    assert_qemu_check(&q);
    assert!(state(&q, "b", &dir) == raw_of(&b, &dir, true));
    assert!(state(&q, "a", &dir) == raw_of(&a, &dir, true));
}

/// The archive's states work with QEMU's tools and with rollback; a corrupt archive is
/// refused, never repaired.
#[test]
fn archives_are_ordinary_images_and_corrupt_ones_are_refused() {
    if skip() {
        return;
    }
    let dir = scratch("arch-tools");
    let (q, [a, b, c]) = appended(&dir, false);
    let o = sh("qemu-img", &[&"snapshot", &"-l", &q]);
    assert_eq!(code(&o), 0);
    let list = stdout(&o);
    assert!(list.contains(" a ") && list.contains(" b "), "{list}");
    // snapshot -a on a copy moves the active layer to state b.
    let moved = sparse_copy(&q, &dir.join("moved.qcow2"));
    assert_eq!(
        code(&sh("qemu-img", &[&"snapshot", &"-a", &"b", &moved])),
        0
    );
    assert_qemu_check(&moved);
    let active = dir.join("moved.raw");
    assert_eq!(
        code(&sh(
            "qemu-img",
            &[&"convert", &"-O", &"raw", &moved, &active]
        )),
        0
    );
    assert!(read(&active) == raw_of(&b, &dir, false));
    // An append after QEMU moved the active layer still works and keeps every state.
    at(
        MONDAY + 9 * DAY,
        &[&"-Q", &"--append", &"--name", &"d", &c, &moved],
        0,
    );
    assert_qemu_check(&moved);
    assert!(state(&moved, "a", &dir) == raw_of(&a, &dir, false));
    // Rollback accepts every state (dry run onto a copy of the newest image).
    let t = sparse_copy(&c, &dir.join("t.img"));
    let o = expect(
        &[
            &"rollback",
            &q,
            &t,
            &"--snapshot",
            &"a",
            &"--dry-run",
            &"--force",
        ],
        0,
    );
    assert!(stdout(&o).contains("snapshot 1 (a)"), "{}", stdout(&o));
    // A corrupt refcount table: refused, nothing written.
    let bad = sparse_copy(&q, &dir.join("bad.qcow2"));
    let raw = read(&bad);
    let reftable = u64::from_be_bytes(raw[48..56].try_into().unwrap()) as usize;
    let mut f = std::fs::OpenOptions::new().write(true).open(&bad).unwrap();
    use std::io::{Seek, Write};
    f.seek(std::io::SeekFrom::Start(reftable as u64)).unwrap();
    f.write_all(&[0xff; 8]).unwrap();
    drop(f);
    let before = sha256(&bad);
    let e = stderr(&expect(&[&"-Q", &"--append", &c, &bad], 1));
    assert!(e.contains("not a usable QCOW2 archive"), "{e}");
    expect(&[&"prune", &bad, &"--keep-last", &"1"], 1);
    assert_eq!(sha256(&bad), before);
}

//! `e2image-rs apply`: deltas replayed onto replicas, with e2fsprogs and qemu as oracles.
//! Deltas are made by `builder` (qemu-img/qemu-io and the test's own record encoder), or
//! by hand with qemu-io and applied with `--force`:
//! - a forced qemu-made delta: its allocated clusters written, its zero clusters discarded
//!   (holes punched, read as zeros), everything else untouched; without `--force`, or with
//!   `--dry-run`, nothing is written; `--no-discard` writes the zeros;
//! - real deltas between filesystem states (metadata only and with file data): the target
//!   then holds TO on every block of TO's copy set, the blocks only FROM used read as zeros,
//!   `e2fsck -fn` passes, and `--undo` gives FROM back byte for byte; also on a loop device;
//! - targets that do not hold FROM (another filesystem, a changed superblock, a changed
//!   replaced block), mounted or locked targets, paths naming an input: refused, untouched;
//! - corrupt deltas: refused or reported, never a panic; chains: 1→2 then 2→3 equals 1→3.

mod builder;
mod faults;
mod states;

use crate::common::*;
use builder::{copy_set, make_delta, read_range};
use std::path::{Path, PathBuf};

/// Runs `e2image-rs apply ARGS`, expecting exit status `want`.
pub fn apply(args: &[&dyn AsRef<std::ffi::OsStr>], want: i32) -> std::process::Output {
    expect_sub("apply", args, want)
}

/// Blocks of the copy set of `state` (with file data when `data`) where `target` differs.
pub fn differing_on_copy_set(state: &Path, target: &Path, data: bool, dir: &Path) -> Vec<u64> {
    let bs = builder::geometry(state).block_size as usize;
    copy_set(state, data, dir)
        .into_iter()
        .filter(|&b| block_at(state, b, bs) != block_at(target, b, bs))
        .collect()
}

/// A scratch directory with the chain a → b → c (see `common::chain`).
pub fn chain_in(name: &str) -> (Scratch, [PathBuf; 3]) {
    let dir = scratch(name);
    let states = chain(&dir);
    (dir, states)
}

/// The 4 KiB blocks of `file` that have storage (`filefrag -v`, FIEMAP), or `None` where
/// the filesystem cannot say.
fn mapped_blocks(file: &Path) -> Option<Vec<std::ops::Range<u64>>> {
    let o = sh("filefrag", &[&"-v", &"-b4096", &file]);
    if !o.status.success() {
        return None;
    }
    let text = stdout(&o);
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').map(str::trim).collect();
        if f.len() < 4 || f[0].parse::<u64>().is_err() {
            continue;
        }
        let (a, b) = f[1].split_once("..")?;
        out.push(a.trim().parse().ok()?..b.trim().parse::<u64>().ok()? + 1);
    }
    Some(out)
}

/// Asserts a command succeeded.
fn expect_ok(o: std::process::Output) {
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// A delta made by hand: a QCOW2 v3 image of `size` bytes with 4 KiB clusters, changed by
/// the qemu-io commands `cmds` (no delta record).
fn qemu_delta(path: &Path, size: u64, cmds: &[String]) {
    let sz = size.to_string();
    let o = sh(
        "qemu-img",
        &[
            &"create",
            &"-q",
            &"-f",
            &"qcow2",
            &"-o",
            &"cluster_size=4096",
            &path,
            &sz,
        ],
    );
    expect_ok(o);
    let mut c = std::process::Command::new("qemu-io");
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    expect_ok(c.arg(path).output().unwrap());
}

/// Every 4 KiB block of `after` is `want(block)` (when it says) or as in `before`.
fn assert_blocks(before: &[u8], after: &[u8], want: impl Fn(usize) -> Option<u8>) {
    for (b, (was, now)) in before.chunks(4096).zip(after.chunks(4096)).enumerate() {
        match want(b) {
            Some(x) => assert!(now.iter().all(|&y| y == x), "block {b} is not all {x:#x}"),
            None => assert_eq!(was, now, "block {b} changed"),
        }
    }
}

/// A qemu-made delta without a record: refused unless `--force`; then its allocated clusters
/// are written, its zero clusters discarded (a hole punched, zeros read), the rest untouched;
/// `--undo` rewinds it; `--no-discard` writes the zeros instead.
#[test]
fn forced_qemu_delta_writes_discards_and_keeps() {
    if skip() {
        return;
    }
    let dir = scratch("ap-forced");
    let img = small_image(&dir);
    let bs = 4096u64;
    // Blocks 3000-3009 get 0xab; 3100-3107, which hold data, are discarded.
    let t = sparse_copy(&img, &dir.join("t.img"));
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&t).unwrap();
        f.write_all_at(&[0x5a; 8 * 4096], 3100 * bs).unwrap();
    }
    let before = read(&t);
    let d = dir.join("d.qcow2");
    let cmds = [
        format!("write -q -P 0xab {} {}", 3000 * bs, 10 * bs),
        format!("write -q -z {} {}", 3100 * bs, 8 * bs),
    ];
    qemu_delta(&d, before.len() as u64, &cmds);
    let p = dir.join("t.patch");
    let e = stderr(&apply(&[&d, &t, &"--patch", &p], 1));
    assert!(
        e.contains("no delta record") && e.contains("--force"),
        "{e}"
    );
    assert!(e.contains("nothing was written") && !p.exists(), "{e}");
    let out = stdout(&apply(
        &[&d, &t, &"--patch", &p, &"--force", &"--dry-run"],
        0,
    ));
    assert!(
        out.contains("to write: 11 blocks") && out.contains("to discard: 8 blocks"),
        "{out}"
    );
    assert_eq!(read(&t), before);
    let out = stdout(&apply(&[&d, &t, &"--patch", &p, &"--force"], 0));
    assert!(out.contains("8 discarded"), "{out}");
    let after = read(&t);
    assert_blocks(&before, &after, |b| match b {
        3000..=3009 => Some(0xab),
        3100..=3107 => Some(0),
        _ => None,
    });
    match mapped_blocks(&t) {
        Some(m) => assert!(
            !m.iter().any(|r| r.start < 3108 && 3100 < r.end),
            "no hole punched over blocks 3100-3107: {m:?}"
        ),
        None => skipped("the hole check: filefrag cannot map the target here"),
    }
    assert_eq!(fsck(&t), 0, "the superblock is written back clean");
    apply(&[&"--undo", &p, &t], 0);
    assert_eq!(read(&t), before, "--undo");
    apply(
        &[
            &d,
            &t,
            &"--patch",
            &dir.join("t2.patch"),
            &"--force",
            &"--no-discard",
        ],
        0,
    );
    assert_eq!(read(&t), after, "--no-discard");
}

/// a → b with and without file data: TO on its whole copy set, e2fsck clean (with data),
/// undo byte for byte; b → c discards the blocks of the file c deletes.
#[test]
fn real_deltas_give_to_on_its_copy_set() {
    if skip() {
        return;
    }
    let (dir, [a, b, c]) = chain_in("ap-real");
    for data in [false, true] {
        let d = dir.join(format!("ab-{data}.qcow2"));
        make_delta(&a, &b, data, &d);
        let t = sparse_copy(&a, &dir.join("t.img"));
        let p = dir.join(format!("ab-{data}.patch"));
        let o = apply(&[&d, &t, &"--patch", &p], 0);
        assert!(stdout(&o).contains("a.img..current: "), "{}", stdout(&o));
        let bad = differing_on_copy_set(&b, &t, data, &dir);
        assert!(
            bad.is_empty(),
            "data {data}: blocks of b's copy set differ: {bad:?}"
        );
        if data {
            assert_eq!(fsck(&t), 0, "e2fsck -fn after applying a -d delta");
        }
        apply(&[&"--undo", &p, &t], 0);
        assert_eq!(sha256(&t), sha256(&a), "--undo gives a back");
    }
    // b → c with data: the deleted file's blocks (FROM used them, TO frees them) read zeros.
    let d = dir.join("bc.qcow2");
    let replaced = make_delta(&b, &c, true, &d);
    let t = sparse_copy(&b, &dir.join("t.img"));
    let freed: Vec<u64> = copy_set(&b, true, &dir)
        .difference(&copy_set(&c, true, &dir))
        .copied()
        .collect();
    assert!(
        freed.len() >= 70,
        "the deleted file frees its blocks: {freed:?}"
    );
    assert!(freed.iter().all(|f| replaced.contains(f)));
    let o = apply(&[&d, &t, &"--patch", &dir.join("bc.patch"), &"--json"], 0);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["blocks_discarded"].as_u64().unwrap() >= 70, "{v}");
    assert_eq!(
        v["from"], "b.img",
        "the record names an image by its file name"
    );
    assert_eq!(v["to"], "current");
    for f in &freed {
        assert!(
            block_at(&t, *f, 4096).iter().all(|&x| x == 0),
            "block {f} not discarded"
        );
    }
    assert!(differing_on_copy_set(&c, &t, true, &dir).is_empty());
    // (debugfs leaks the deleted file's xattr block in c itself: e2fsck says what it says on c)
    assert_eq!(fsck(&t), fsck(&c));
}

#[test]
fn dry_run_reports_and_writes_nothing() {
    if skip() {
        return;
    }
    let (dir, [_a, b, c]) = chain_in("ap-dry");
    let d = dir.join("bc.qcow2");
    make_delta(&b, &c, true, &d);
    let t = sparse_copy(&b, &dir.join("t.img"));
    let before = sha256(&t);
    let p = dir.join("p");
    let o = apply(&[&d, &t, &"--patch", &p, &"--dry-run"], 0);
    let out = stdout(&o);
    for want in [
        "dry run, nothing written",
        "to write:",
        "to discard:",
        "runs",
        "by class (in FROM)",
        "files affected:",
        "/xattr/big300k.bin (in FROM)",
        "delta record: FROM b.img, TO current, file data yes",
    ] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }
    let o = apply(&[&d, &t, &"--dry-run", &"--json"], 0);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["dry_run"], true);
    assert!(
        v["blocks_written"].as_u64().unwrap() > 0 && v["blocks_discarded"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert_eq!(sha256(&t), before);
    assert!(!p.exists());
}

/// Targets that do not hold FROM are refused with nothing written.
#[test]
fn targets_not_holding_from_are_refused() {
    if skip() {
        return;
    }
    let (dir, [a, b, _c]) = chain_in("ap-wrong");
    let d = dir.join("ab.qcow2");
    let replaced = make_delta(&a, &b, true, &d);
    let p = dir.join("p");
    let refused = |t: &Path, want: &str| {
        let before = sha256(t);
        let o = apply(&[&d, &t, &"--patch", &p], 1);
        let e = stderr(&o);
        assert!(
            e.contains(want) && e.contains("nothing was written"),
            "{want:?}: {e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(e.starts_with("e2image-rs: error: "), "{e}");
        assert_eq!(sha256(t), before);
        assert!(!p.exists());
    };
    // Another filesystem of the same size.
    let other = dir.join("other.img");
    expect_ok(sh(
        "mke2fs",
        &[&"-q", &"-F", &"-t", &"ext4", &"-b", &"4096", &other, &"16M"],
    ));
    refused(&other, "does not hold the filesystem of delta");
    // FROM's superblock changed (debugfs's name for s_mnt_count is mnt_count).
    let t = sparse_copy(&a, &dir.join("t.img"));
    debugfs_w(&t, &["ssv mnt_count 7"]);
    assert_ne!(sha256(&t), sha256(&a));
    refused(&t, "superblock or group descriptors differ");
    // A block the delta replaces changed behind the filesystem's back.
    let t = sparse_copy(&a, &dir.join("t.img"));
    let from_set = copy_set(&a, true, &dir);
    let victim = *replaced
        .iter()
        .find(|b| **b > 100 && from_set.contains(b))
        .unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&t).unwrap();
        f.write_all_at(b"scribbled", victim * 4096 + 100).unwrap();
    }
    refused(&t, "blocks the delta replaces differ from FROM's");
    // TO itself is not FROM either: it already holds TO.
    let t = sparse_copy(&b, &dir.join("t.img"));
    refused(&t, "already holds TO");
}

#[test]
fn paths_and_usage() {
    if skip() {
        return;
    }
    let (dir, [a, b, _c]) = chain_in("ap-usage");
    let d = dir.join("ab.qcow2");
    make_delta(&a, &b, false, &d);
    let t = sparse_copy(&a, &dir.join("t.img"));
    let before = sha256(&t);
    apply(&[&d, &t], 2);
    apply(&[&d, &t, &"--patch", &d], 2);
    apply(&[&d, &t, &"--patch", &t], 2);
    apply(&[&d, &t, &"--patch", &dir.join("p"), &"--undo-file", &d], 2);
    apply(&[&d, &d, &"--patch", &dir.join("p")], 2);
    apply(&[&"--resume", &dir.join("p"), &d, &t], 2);
    apply(&[&"--resume", &t, &t], 2);
    apply(
        &[&"--resume", &dir.join("p"), &"--undo", &dir.join("p"), &t],
        2,
    );
    assert_eq!(sha256(&t), before);
    // An existing patch is never replaced.
    let p = dir.join("p");
    std::fs::write(&p, b"keep me").unwrap();
    let o = apply(&[&d, &t, &"--patch", &p], 1);
    assert!(stderr(&o).contains("exists"), "{}", stderr(&o));
    assert_eq!(read(&p), b"keep me");
    // A JSON failure.
    let o = apply(&[&d, &t, &"--patch", &p, &"--json"], 1);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["exit_status"], 1);
    // With an undo file: e2undo rewinds the apply.
    if require_for("the e2undo part", &["e2undo"]) {
        let (p, u) = (dir.join("u.patch"), dir.join("u.e2undo"));
        apply(&[&d, &t, &"--patch", &p, &"--undo-file", &u], 0);
        expect_ok(sh("e2undo", &[&u, &t]));
        assert_eq!(sha256(&t), before, "e2undo");
    }
}

/// A loop device as TARGET: applied (BLKZEROOUT for the discards), undone; refused while
/// mounted (also through its backing file).
#[test]
fn block_device_target_mounts_and_locks() {
    if skip() {
        return;
    }
    let (dir, [_a, b, c]) = chain_in("ap-blockdev");
    let d = dir.join("bc.qcow2");
    make_delta(&b, &c, true, &d);
    let t = sparse_copy(&b, &dir.join("t.img"));
    let before = sha256(&t);
    let Some(mut lo) = Loop::attach(&t) else {
        skipped("cannot set up a loop device here");
        return;
    };
    let p = dir.join("dev.patch");
    let o = apply(&[&d, &lo.dev, &"--patch", &p], 0);
    assert!(!stdout(&o).contains(" 0 discarded"), "{}", stdout(&o));
    let _ = sh("blockdev", &[&"--flushbufs", &lo.dev]);
    assert!(differing_on_copy_set(&c, &t, true, &dir).is_empty());
    assert_eq!(fsck(&t), fsck(&c));
    apply(&[&"--undo", &p, &lo.dev], 0);
    let _ = sh("blockdev", &[&"--flushbufs", &lo.dev]);
    assert_eq!(sha256(&t), before, "--undo on the device");
    let p2 = dir.join("mounted.patch");
    // Mounted read-only: refused on the device and on the file behind it.
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let m = std::process::Command::new("mount")
        .args(["-o", "ro"])
        .arg(&lo.dev)
        .arg(&mnt)
        .output()
        .is_ok_and(|o| o.status.success());
    if !m {
        skipped("the mounted part: cannot mount here");
        return;
    }
    lo.mnt = Some(mnt);
    for target in [Path::new(&lo.dev), t.as_path()] {
        let o = apply(&[&d, &target, &"--patch", &p2], 1);
        assert!(stderr(&o).contains("is mounted on"), "{}", stderr(&o));
        assert!(!p2.exists());
    }
    drop(lo);
    assert_eq!(sha256(&t), before);
}

/// A target or a patch another run holds (flock) is refused, nothing written.
#[test]
fn locked_targets_and_patches_are_refused() {
    if skip() {
        return;
    }
    let (dir, [_a, b, c]) = chain_in("ap-locks");
    let d = dir.join("bc.qcow2");
    make_delta(&b, &c, false, &d);
    let t = sparse_copy(&b, &dir.join("t.img"));
    let before = sha256(&t);
    let p = dir.join("p");
    {
        let holder = std::fs::File::open(&t).unwrap();
        holder.lock().unwrap();
        let e = stderr(&apply(&[&d, &t, &"--patch", &p], 1));
        assert!(e.contains("in use by another e2image-rs run"), "{e}");
        assert!(e.contains("nothing was written") && !p.exists(), "{e}");
        // Unlock explicitly (a child forked meanwhile shares the lock until it execs).
        holder.unlock().unwrap();
    }
    assert_eq!(sha256(&t), before);
    apply(&[&d, &t, &"--patch", &p], 0);
    let after = sha256(&t);
    {
        let holder = std::fs::File::open(&p).unwrap();
        holder.lock().unwrap();
        let e = stderr(&apply(&[&"--undo", &p, &t], 1));
        assert!(e.contains("in use"), "{e}");
        holder.unlock().unwrap();
    }
    assert_eq!(sha256(&t), after);
    apply(&[&"--undo", &p, &t], 0);
    assert_eq!(sha256(&t), before);
}

/// Flipped bytes in the delta's L2 table (and other damage): refused or reported, never a
/// panic; a refused target is untouched.
#[test]
fn corrupt_deltas_never_panic() {
    if skip() {
        return;
    }
    let (dir, [a, b, _c]) = chain_in("ap-corrupt");
    let d = dir.join("ab.qcow2");
    make_delta(&a, &b, true, &d);
    let good = read(&d);
    let t = sparse_copy(&a, &dir.join("t.img"));
    let before = sha256(&t);
    // The L2 table: the first L1 entry's target (QCOW2 header: l1_table_offset at 40).
    let l1 = u64::from_be_bytes(good[40..48].try_into().unwrap()) as usize;
    let l2 =
        (u64::from_be_bytes(good[l1..l1 + 8].try_into().unwrap()) & 0x00ff_ffff_ffff_fe00) as usize;
    let (mut refused, mut applied) = (0, 0);
    for (i, at) in (l2..l2 + 4096).step_by(61).enumerate() {
        let mut bytes = good.clone();
        bytes[at] ^= [0x01, 0x80, 0xff, 0x40][i % 4];
        let bad = dir.join("bad.qcow2");
        std::fs::write(&bad, &bytes).unwrap();
        let t2 = sparse_copy(&t, &dir.join("t2.img"));
        let p = dir.join("bad.patch");
        let _ = std::fs::remove_file(&p);
        let o = run(&[&"apply", &bad, &t2, &"--patch", &p]);
        let e = stderr(&o);
        assert!(!e.contains("panicked"), "byte {at}: {e}");
        match code(&o) {
            // A flip the structure cannot show (QCOW2 has no data checksums): a host offset
            // moved onto another cluster of the file, or a bit no reader looks at.
            0 => applied += 1,
            1 => {
                assert_eq!(sha256(&t2), before, "byte {at}: refused but written: {e}");
                assert!(e.contains("nothing was written"), "{e}");
                refused += 1;
            }
            c => panic!("byte {at}: exit {c}: {e}"),
        }
    }
    eprintln!("flipped L2 bytes: {refused} refused, {applied} applied");
    assert!(refused > applied, "{refused} refused, {applied} applied");
    // A byte flipped in any data cluster (damage in transit): the record's to_digest
    // refuses it before anything is written.
    let o = sh("qemu-img", &[&"map", &"--output=json", &d]);
    let map: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let hosts: Vec<u64> = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true && e["zero"] == false)
        .filter_map(|e| e["offset"].as_u64())
        .collect();
    assert!(!hosts.is_empty());
    for (i, &h) in hosts.iter().enumerate() {
        let mut bytes = good.clone();
        bytes[h as usize + 17 * i % 4096] ^= 0x20;
        let bad = dir.join("bad.qcow2");
        std::fs::write(&bad, &bytes).unwrap();
        let o = apply(&[&bad, &t, &"--patch", &dir.join("y.patch")], 1);
        assert!(stderr(&o).contains("is corrupt"), "{}", stderr(&o));
    }
    for (what, bytes) in [
        ("truncated", good[..good.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("garbage", vec![0x51u8; 8192]),
    ] {
        let bad = dir.join("bad.qcow2");
        std::fs::write(&bad, &bytes).unwrap();
        let o = apply(&[&bad, &t, &"--patch", &dir.join("x.patch")], 1);
        assert!(
            stderr(&o).contains("nothing was written"),
            "{what}: {}",
            stderr(&o)
        );
    }
    assert_eq!(sha256(&t), before);
}

/// a → b then b → c equals a → c on every block of c's copy set, and both pass e2fsck.
#[test]
fn chained_deltas_equal_the_direct_one() {
    if skip() {
        return;
    }
    let (dir, [a, b, c]) = chain_in("ap-chain");
    let (ab, bc, ac) = (
        dir.join("ab.qcow2"),
        dir.join("bc.qcow2"),
        dir.join("ac.qcow2"),
    );
    make_delta(&a, &b, true, &ab);
    make_delta(&b, &c, true, &bc);
    make_delta(&a, &c, true, &ac);
    let t1 = sparse_copy(&a, &dir.join("t1.img"));
    let t2 = sparse_copy(&a, &dir.join("t2.img"));
    apply(&[&ab, &t1, &"--patch", &dir.join("1.patch")], 0);
    apply(&[&bc, &t1, &"--patch", &dir.join("2.patch")], 0);
    apply(&[&ac, &t2, &"--patch", &dir.join("3.patch")], 0);
    let bs = 4096;
    let diff: Vec<u64> = copy_set(&c, true, &dir)
        .into_iter()
        .filter(|&x| read_range(&t1, x * bs, bs as usize) != read_range(&t2, x * bs, bs as usize))
        .collect();
    assert!(
        diff.is_empty(),
        "chained and direct differ on c's copy set: {diff:?}"
    );
    assert!(differing_on_copy_set(&c, &t1, true, &dir).is_empty());
    assert_eq!((fsck(&t1), fsck(&t2)), (fsck(&c), fsck(&c)));
    // Applying a delta twice: the second time the target holds TO, not FROM.
    let o = apply(&[&ac, &t2, &"--patch", &dir.join("4.patch")], 1);
    assert!(stderr(&o).contains("already holds TO"), "{}", stderr(&o));
}

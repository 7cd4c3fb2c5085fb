//! `e2image-rs rollback` on real images, with e2fsprogs and qemu-img as oracles:
//! - rolling a copy of a next3 fixture's current image back to each snapshot gives the rebuilt
//!   snapshot on every block the snapshot holds (the rolled-back target exports exactly like
//!   the state), and `e2fsck -fn` passes; the same for a `--snapshot` series exported with -d;
//! - `--undo` and `e2undo` with `--undo-file` give back the old target byte for byte;
//! - metadata-only images: files whose data blocks the target now uses otherwise, or whose
//!   inode number and blocks another or a changed file holds now (`reused`), are listed with
//!   their paths and the rollback is refused, unless `--force`;
//! - `--dry-run` reports and writes nothing; identity mismatches, an existing patch and usage
//!   errors are refused with exit 1 or 2 and the target untouched; the image never changes.

mod reused;

use crate::common::*;
use std::path::Path;

/// [`common::skip`](crate::common::skip), with e2undo besides the oracles.
fn skip() -> bool {
    !require(&[&ORACLES[..], &["e2undo"]].concat())
}

/// Runs `rollback` with `args`, expecting `want` as exit code.
fn rollback(args: &[&dyn AsRef<std::ffi::OsStr>], want: i32) -> std::process::Output {
    expect_sub("rollback", args, want)
}

/// Dry run of rolling `target` back to state `snapshot` of `image` with patch `patch`; its
/// report.
fn dry_run(image: &Path, target: &Path, snapshot: &str, patch: &Path) -> String {
    let o = rollback(
        &[
            &image,
            &target,
            &"--snapshot",
            &snapshot,
            &"--patch",
            &patch,
            &"--dry-run",
        ],
        0,
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The target, exported by us (`-r`, with `-d` when `data`), equals the state's own export:
/// same blocks, same bytes, zeros included.
fn assert_exports_equal(target: &Path, state_raw: &Path, data: bool, dir: &Path, what: &str) {
    let out = dir.join("target-export.raw");
    let _ = std::fs::remove_file(&out);
    let o = if data {
        run(&[&"-r", &"-d", &target, &out])
    } else {
        run(&[&"-r", &target, &out])
    };
    assert_eq!(code(&o), 0, "{what}: {}", stderr(&o));
    let c = sh(
        "qemu-img",
        &[&"compare", &"-f", &"raw", &"-F", &"raw", &out, &state_raw],
    );
    assert!(
        c.status.success(),
        "{what}: the rolled-back target does not export like the state: {}",
        String::from_utf8_lossy(&c.stdout)
    );
}

fn next3_fixture(name: &str) {
    if skip() {
        return;
    }
    let f = snapshot_fixtures(&[name]).remove(name).unwrap();
    let dir = scratch(&format!("rb-{name}"));
    let q = dir.join("out.qcow2");
    export_json(&[&"-Q", &"--fs-snapshots", &f.path, &q]);
    let qsha = sha256(&q);
    let bs = f.block_size as usize;
    for row in f.snapshots.iter().filter(|s| !s.deleted) {
        let t = sparse_copy(&f.path, &dir.join("target.img"));
        let before = sha256(&t);
        let p = dir.join(format!("{}.patch", row.name));
        let u = dir.join(format!("{}.e2undo", row.name));
        let _ = std::fs::remove_file(&p);
        rollback(
            &[
                &q,
                &t,
                &"--snapshot",
                &row.name,
                &"--patch",
                &p,
                &"--undo-file",
                &u,
            ],
            0,
        );
        let after = sha256(&t);
        let state = dir.join("state.raw");
        let _ = std::fs::remove_file(&state);
        export_json(&[&"-r", &"--from-snapshot", &row.name, &f.path, &state]);
        let bad = blocks_not_in(&state, &row.expected, bs);
        assert!(
            bad.is_empty(),
            "{name}: {}: state export differs from the rebuilt image: {bad:?}",
            row.name
        );
        let bad = blocks_not_in(&state, &t, bs);
        assert!(
            bad.is_empty(),
            "{name}: {}: rolled-back blocks differ: {bad:?}",
            row.name
        );
        assert_exports_equal(&t, &state, false, &dir, &format!("{name} {}", row.name));
        assert_eq!(
            fsck(&t),
            0,
            "{name}: e2fsck -fn fails after rolling back to {}",
            row.name
        );
        // e2undo with the undo file, then our own undo, both give the old bytes back.
        let t2 = sparse_copy(&t, &dir.join("target2.img"));
        let o = sh("e2undo", &[&u, &t2]);
        assert!(
            o.status.success(),
            "e2undo: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            sha256(&t2),
            before,
            "{name}: e2undo did not restore the old target"
        );
        rollback(&[&"--undo", &p, &t], 0);
        assert_eq!(
            sha256(&t),
            before,
            "{name}: --undo did not restore the old target"
        );
        // Undo again, then resume, then resume again: idempotent.
        rollback(&[&"--undo", &p, &t], 0);
        assert_eq!(sha256(&t), before);
        rollback(&[&"--resume", &p, &t], 0);
        assert_eq!(sha256(&t), after, "{name}: --resume after --undo");
        rollback(&[&"--resume", &p, &t], 0);
        assert_eq!(sha256(&t), after, "{name}: a second --resume");
        // A block changed since (here the volume label in the superblock, with its checksum
        // updated as tune2fs -L would): --undo refuses.
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&t)
                .unwrap();
            let mut sb = [0u8; 1024];
            f.read_exact_at(&mut sb, 1024).unwrap();
            sb[0x78..0x80].copy_from_slice(b"changed!");
            if sb[0x65] & 0x04 != 0 {
                // RO_COMPAT_METADATA_CSUM (0x400): s_checksum covers bytes 0..0x3FC.
                let c = !crc32c::crc32c(&sb[..0x3FC]);
                sb[0x3FC..].copy_from_slice(&c.to_le_bytes());
            }
            f.write_all_at(&sb, 1024).unwrap();
        }
        let changed = sha256(&t);
        let o = rollback(&[&"--undo", &p, &t], 1);
        assert!(
            stderr(&o).contains("neither their old nor their new bytes"),
            "{}",
            stderr(&o)
        );
        assert!(
            stderr(&o).contains("this run wrote nothing"),
            "{}",
            stderr(&o)
        );
        assert_eq!(
            sha256(&t),
            changed,
            "{name}: --undo wrote to a changed target"
        );
    }
    assert_eq!(sha256(&q), qsha, "the image was modified");
}

#[test]
fn next3_one_snapshot() {
    next3_fixture("next3_1snap");
}

#[test]
fn next3_three_snapshots() {
    next3_fixture("next3_3snap");
}

#[test]
fn next3_metadata_csum() {
    next3_fixture("next3_csum");
}

#[test]
fn next3_deleted_snapshot_link() {
    next3_fixture("next3_deleted");
}

#[test]
fn point_in_time_series_with_data() {
    if skip() {
        return;
    }
    let dir = scratch("rb-pit-d");
    let [a, b, c] = chain(&dir);
    let q = dir.join("out.qcow2");
    export_json(&[&"-Q", &"-d", &"--snapshot", &a, &"--snapshot", &b, &c, &q]);
    let qsha = sha256(&q);
    for (name, img) in [("a.img", &a), ("b.img", &b)] {
        let t = sparse_copy(&c, &dir.join("target.img"));
        let before = sha256(&t);
        let p = dir.join(format!("{name}.patch"));
        rollback(&[&q, &t, &"--snapshot", &name, &"--patch", &p], 0);
        let state = dir.join("state.raw");
        let _ = std::fs::remove_file(&state);
        export_json(&[&"-r", &"-d", img, &state]);
        let bad = blocks_not_in(&state, &t, 1024);
        assert!(bad.is_empty(), "{name}: rolled-back blocks differ: {bad:?}");
        assert_exports_equal(&t, &state, true, &dir, name);
        assert_eq!(fsck(&t), 0, "e2fsck -fn fails after rolling back to {name}");
        rollback(&[&"--undo", &p, &t], 0);
        assert_eq!(sha256(&t), before);
    }
    // Without --snapshot, the active state: roll the oldest image forward to the current one.
    let t = sparse_copy(&a, &dir.join("target.img"));
    let p = dir.join("active.patch");
    rollback(&[&q, &t, &"--patch", &p], 0);
    let state = dir.join("state.raw");
    let _ = std::fs::remove_file(&state);
    export_json(&[&"-r", &"-d", &c, &state]);
    assert_exports_equal(&t, &state, true, &dir, "active state");
    // debugfs' rmdir leaves a stray bitmap bit in c; the target must check exactly like c.
    assert_eq!(fsck(&t), fsck(&c));
    assert_eq!(sha256(&q), qsha, "the image was modified");
}

#[test]
fn metadata_only_conflicts_are_listed_and_refused() {
    if skip() {
        return;
    }
    let dir = scratch("rb-conflicts");
    let [a, _b, c] = chain(&dir);
    // c reuses blocks freed after a: write a new file over them in a copy of c.
    let big = dir.join("big.bin");
    std::fs::write(&big, vec![0x5au8; 600 << 10]).unwrap();
    let c2 = sparse_copy(&c, &dir.join("c2.img"));
    debugfs_w(&c2, &[&format!("write {} /reuse.bin", big.display())]);
    let q = dir.join("meta.qcow2");
    export_json(&[&"-Q", &"--snapshot", &a, &c2, &q]);
    let t = sparse_copy(&c2, &dir.join("target.img"));
    let before = sha256(&t);
    let p = dir.join("a.patch");
    let o = rollback(&[&q, &t, &"--snapshot", &"a.img", &"--patch", &p], 1);
    let e = stderr(&o);
    assert!(e.contains("would read data blocks"), "{e}");
    assert!(
        e.contains("/xattr/big300k.bin") || e.contains("/many/f00"),
        "{e}"
    );
    assert!(e.contains("--force"), "{e}");
    assert_eq!(sha256(&t), before, "refused, yet the target changed");
    assert!(!p.exists(), "refused, yet a patch was left");
    // The dry run lists them too, and --force proceeds.
    let o = rollback(&[&q, &t, &"--snapshot", &"a.img", &"--dry-run"], 0);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("would read data blocks"), "{out}");
    rollback(
        &[&q, &t, &"--snapshot", &"a.img", &"--patch", &p, &"--force"],
        0,
    );
    let state = dir.join("state.raw");
    export_json(&[&"-r", &a, &state]);
    assert_exports_equal(&t, &state, false, &dir, "forced");
    rollback(&[&"--undo", &p, &t], 0);
    assert_eq!(sha256(&t), before);
}

#[test]
fn dry_run_reports_and_writes_nothing() {
    if skip() {
        return;
    }
    let dir = scratch("rb-dry");
    let [a, b, c] = chain(&dir);
    let q = dir.join("out.qcow2");
    export_json(&[&"-Q", &"-d", &"--snapshot", &a, &"--snapshot", &b, &c, &q]);
    let t = sparse_copy(&c, &dir.join("target.img"));
    let before = sha256(&t);
    let p = dir.join("dry.patch");
    let out = dry_run(&q, &t, "a.img", &p);
    for want in [
        "dry run",
        "iB to write",
        "by class:",
        "inode_tables",
        "files affected:",
        "/many/f001",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // The report ends with its summary, not with a cut list.
    let last = out.trim_end().lines().last().unwrap();
    assert!(last.starts_with("summary: "), "{last}");
    assert!(
        last.contains("would be written") && last.contains("go ahead"),
        "{last}"
    );
    assert_eq!(sha256(&t), before);
    assert!(!p.exists());
}

#[test]
fn refusals_leave_the_target_untouched() {
    if skip() {
        return;
    }
    let dir = scratch("rb-refuse");
    let [a, _b, c] = chain(&dir);
    let q = dir.join("out.qcow2");
    export_json(&[&"-Q", &"--snapshot", &a, &c, &q]);
    // Another filesystem (other UUID).
    let other = dir.join("other.img");
    let o = sh("mke2fs", &[&"-q", &"-F", &"-t", &"ext4", &other, &"16M"]);
    assert!(o.status.success());
    let before = sha256(&other);
    let p = dir.join("x.patch");
    let o = rollback(&[&q, &other, &"--patch", &p], 1);
    assert!(stderr(&o).contains("UUID"), "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing was written"), "{}", stderr(&o));
    assert_eq!(sha256(&other), before);
    assert!(!p.exists());
    // Unknown snapshot.
    let t = sparse_copy(&c, &dir.join("target.img"));
    let before = sha256(&t);
    let o = rollback(&[&q, &t, &"--snapshot", &"nope", &"--patch", &p], 1);
    assert!(stderr(&o).contains("a.img"), "{}", stderr(&o));
    // An existing patch is never overwritten.
    std::fs::write(&p, b"keep me").unwrap();
    let o = rollback(&[&q, &t, &"--snapshot", &"a.img", &"--patch", &p], 1);
    assert!(stderr(&o).contains("exists"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&p).unwrap(), b"keep me");
    // Not a patch.
    let o = rollback(&[&"--resume", &p, &t], 1);
    assert!(stderr(&o).contains("corrupt"), "{}", stderr(&o));
    assert_eq!(sha256(&t), before);
    // Usage errors: exit 2.
    rollback(&[&q, &t], 2);
    rollback(&[&"--resume", &p, &q, &t], 2);
    rollback(&[&"--undo", &p, &t, &"--snapshot", &"a.img"], 2);
    rollback(&[&"--resume", &p, &"--undo", &p, &t], 2);
    assert_eq!(sha256(&t), before);
}

/// A block device target (a loop device) is rolled back and undone; while it, or the image
/// file behind it, is mounted (even read-only), the rollback is refused.
#[test]
fn block_device_target_and_mounted_refusal() {
    if skip() {
        return;
    }
    let dir = scratch("rb-blockdev");
    let [a, _b, c] = chain(&dir);
    let q = dir.join("out.qcow2");
    export_json(&[&"-Q", &"-d", &"--snapshot", &a, &c, &q]);
    let t = sparse_copy(&c, &dir.join("target.img"));
    let before = sha256(&t);
    let Some(mut lo) = Loop::attach(&t) else {
        skipped("cannot set up a loop device here");
        return;
    };
    let p = dir.join("dev.patch");
    rollback(&[&q, &lo.dev, &"--snapshot", &"a.img", &"--patch", &p], 0);
    let state = dir.join("state.raw");
    export_json(&[&"-r", &"-d", &a, &state]);
    assert_exports_equal(Path::new(&lo.dev), &state, true, &dir, "loop device");
    rollback(&[&"--undo", &p, &lo.dev], 0);
    let _ = sh("blockdev", &[&"--flushbufs", &lo.dev]);
    assert_eq!(sha256(&t), before, "--undo on the device");
    // Mounted read-only: refused, on the device and on the image file behind it.
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
    let p2 = dir.join("mounted.patch");
    for target in [Path::new(&lo.dev), t.as_path()] {
        let o = rollback(&[&q, &target, &"--snapshot", &"a.img", &"--patch", &p2], 1);
        assert!(stderr(&o).contains("is mounted on"), "{}", stderr(&o));
        assert!(!p2.exists());
    }
    let o = rollback(&[&"--undo", &p, &lo.dev], 1);
    assert!(stderr(&o).contains("is mounted on"), "{}", stderr(&o));
    drop(lo);
    assert_eq!(sha256(&t), before);
}

/// The first block of `img` (a one-state -Q export with `bs`-byte clusters) that its active
/// layer maps as a zero cluster (`qemu-img map`: present, zero, no data).
fn first_zero_block(img: &Path, bs: u64) -> u64 {
    let o = sh("qemu-img", &[&"map", &"--output=json", &img]);
    assert!(o.status.success(), "{}", stderr(&o));
    let map: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let e = map
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["present"] == true && e["zero"] == true && e["data"] == false)
        .expect("the export maps no zero cluster");
    e["start"].as_u64().unwrap() / bs
}

/// The `blocks held by the state: N` count of a dry run.
fn held_count(out: &str) -> u64 {
    let line = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("blocks held by the state: "))
        .unwrap_or_else(|| panic!("no held count in {out}"));
    line.split(';').next().unwrap().parse().unwrap()
}

/// QCOW2 v2 has no zero flag, so an export leaves the blocks it copied as all zeros
/// unallocated. The export record (a private header extension, kept by QEMU) says what was
/// copied, so a v2 image restores them as zeros exactly like a v3 one; without the record (as
/// in e2image's images) the dry run says the target keeps its bytes there.
#[test]
fn v2_images_restore_all_zero_blocks() {
    if skip() {
        return;
    }
    let dir = scratch("rb-v2");
    let [a, b, c] = chain(&dir);
    let bs = 1024u64;
    let a3 = dir.join("a3.qcow2");
    export_json(&[&"-Q", &a, &a3]);
    let zero = first_zero_block(&a3, bs);
    for flags in [&["-Q"][..], &["-Q", "-d"]] {
        let mut results = Vec::new();
        for compat in ["1.1", "0.10"] {
            let what = format!("{flags:?} compat {compat}");
            let q = dir.join(format!("{compat}.qcow2"));
            let _ = std::fs::remove_file(&q);
            type Arg<'a> = &'a dyn AsRef<std::ffi::OsStr>;
            let mut args: Vec<Arg> = flags.iter().map(|f| f as Arg).collect();
            let rest: [Arg; 7] = [
                &"--compat",
                &compat,
                &"--snapshot",
                &a,
                &"--snapshot",
                &b,
                &c,
            ];
            args.extend(rest);
            args.push(&q);
            export_json(&args);
            let list = snapshot_list(&q);
            let rec = &list["export_record"];
            assert_eq!(rec["zeros_recorded"], compat == "1.1", "{what}: {list}");
            assert_eq!(rec["file_data"], flags.contains(&"-d"), "{what}: {list}");
            assert_eq!(rec["snapshot_files"], true, "{what}: {list}");
            let t = sparse_copy(&c, &dir.join("target.img"));
            // Garbage where state a holds zeros.
            let mut bytes = std::fs::read(&t).unwrap();
            bytes[(zero * bs) as usize..((zero + 1) * bs) as usize].fill(0xa5);
            std::fs::write(&t, &bytes).unwrap();
            let p = dir.join(format!("{compat}.patch"));
            let _ = std::fs::remove_file(&p);
            let out = dry_run(&q, &t, "a.img", &p);
            let held = held_count(&out);
            assert!(out.contains("export record: "), "{what}: {out}");
            assert!(!out.contains("not written by e2image-rs"), "{what}: {out}");
            // c reuses inode numbers and blocks of files of a (see `chain`), so the -Q
            // rollback to a is refused without --force (see the `reused` tests).
            rollback(
                &[&q, &t, &"--snapshot", &"a.img", &"--patch", &p, &"--force"],
                0,
            );
            let bytes = std::fs::read(&t).unwrap();
            let block = &bytes[(zero * bs) as usize..((zero + 1) * bs) as usize];
            assert!(
                block.iter().all(|&x| x == 0),
                "{what}: block {zero} not restored to zeros"
            );
            assert_eq!(fsck(&t), 0, "{what}: e2fsck -fn fails");
            results.push((held, sha256(&t)));
        }
        assert_eq!(
            results[0], results[1],
            "{flags:?}: v2 and v3 rollbacks differ"
        );
    }
    // Without the record (its type renamed in the header), a v2 image cannot tell the zeros.
    let q = dir.join("0.10.qcow2");
    let mut img = std::fs::read(&q).unwrap();
    let at = img[72..512]
        .windows(4)
        .position(|w| w == b"e2ir")
        .expect("no export record after the v2 header")
        + 72;
    img[at + 3] = b'X';
    std::fs::write(&q, &img).unwrap();
    let t = sparse_copy(&c, &dir.join("target.img"));
    let p = dir.join("norecord.patch");
    let out = dry_run(&q, &t, "a.img", &p);
    assert!(out.contains("no export record"), "{out}");
    assert!(
        out.contains("QCOW2 v2 image not written by e2image-rs"),
        "{out}"
    );
}

/// e2image's own QCOW2 (v2, no export record) can be rolled back to as well: the counterpart
/// of `e2image -I`.
#[test]
fn e2image_made_images_roll_back() {
    if skip() {
        return;
    }
    let dir = scratch("rb-e2image");
    let [a, _b, c] = chain(&dir);
    let q = dir.join("a.e2i.qcow2");
    let o = sh("e2image", &[&"-Q", &a, &q]);
    assert!(o.status.success(), "{}", stderr(&o));
    let list = snapshot_list(&q);
    assert!(list["export_record"].is_null(), "{list}");
    let t = sparse_copy(&c, &dir.join("target.img"));
    let p = dir.join("e2i.patch");
    // c reuses inode numbers and blocks of files of a (see `chain`): refused without --force.
    let o = rollback(&[&q, &t, &"--patch", &p], 1);
    let e = stderr(&o);
    assert!(
        e.contains("inode 327 /many/f001: the target's inode 327 is a different file now"),
        "{e}"
    );
    rollback(&[&q, &t, &"--patch", &p, &"--force"], 0);
    assert_eq!(
        fsck(&t),
        0,
        "e2fsck -fn fails after rolling back to e2image's image"
    );
    // Every block e2image copied is now the state's.
    let raw = dir.join("a.e2i.raw");
    let o = sh("e2image", &[&"-r", &q, &raw]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bad = blocks_not_in(&raw, &t, 1024);
    assert!(
        bad.is_empty(),
        "blocks differ from e2image's image: {bad:?}"
    );
}

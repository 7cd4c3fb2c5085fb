//! A filesystem inside a partitioned disk image (a GPT made by sfdisk, the ext4 made by mkfs
//! on a loop device of partition 2 and written by the kernel): `-o` for the export, rollback
//! and apply onto partition 2 with the other partitions' bytes untouched, the patch's offset
//! (resume and undo refused at another offset; the e2undo file rewinds at the recorded one),
//! `-r -a -c` writing only the blocks that differ and `-n` writing nothing, and `-p` naming
//! each phase on a stderr that is not a terminal.

use crate::common::kernel::{append_synced, can_mount, write_synced};
use crate::common::*;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Sectors of 512 bytes: partition 1 at 1 MiB (4 MiB), partition 2 at 5 MiB (24 MiB),
/// partition 3 after it up to the backup GPT; the disk is 34 MiB.
const P1: (u64, u64) = (2048, 8192);
const P2: (u64, u64) = (10240, 49152);
const DISK_MIB: u64 = 34;
/// Partition 2 in bytes.
const OFF: u64 = P2.0 * 512;
const LEN: u64 = P2.1 * 512;

/// A loop device over `len` bytes at `offset` of `file`; detached on drop.
fn attach_at(file: &Path, offset: u64, len: u64) -> Option<Loop> {
    let o = Command::new("losetup")
        .args(["-f", "--show", "-o", &offset.to_string(), "--sizelimit"])
        .arg(len.to_string())
        .arg(file)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let dev = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (!dev.is_empty()).then_some(Loop { dev, mnt: None })
}

/// Mounts partition 2 of `disk` at `mnt`, runs `f` on the mount point, unmounts.
fn with_mounted(disk: &Path, mnt: &Path, f: impl FnOnce(&Path)) -> Option<()> {
    let mut dev = attach_at(disk, OFF, LEN)?;
    std::fs::create_dir_all(mnt).unwrap();
    let ok = Command::new("mount").arg(&dev.dev).arg(mnt).status().ok()?;
    if !ok.success() {
        return None;
    }
    dev.mnt = Some(mnt.to_path_buf());
    f(mnt);
    drop(dev);
    Some(())
}

/// The disk: a GPT with three partitions, 1 and 3 full of random bytes, an ext4 on 2 (made
/// through a loop device of it) holding files the kernel wrote (state A).
fn disk(dir: &Path) -> Option<PathBuf> {
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(DISK_MIB << 20)
        .unwrap();
    let script = format!(
        "label: gpt\nstart={}, size={}\nstart={}, size={}\nstart={}\n",
        P1.0,
        P1.1,
        P2.0,
        P2.1,
        P2.0 + P2.1
    );
    let mut c = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(&disk)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(c.wait().unwrap().success(), "sfdisk failed");
    let mut x = Xorshift::new(3);
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    use std::os::unix::fs::FileExt;
    for (start, len) in [(P1.0 * 512, P1.1 * 512), (OFF + LEN, 2 << 20)] {
        let noise: Vec<u8> = (0..len).map(|_| x.next_u64() as u8).collect();
        f.write_all_at(&noise, start).unwrap();
    }
    let dev = attach_at(&disk, OFF, LEN)?;
    let o = sh(
        "mke2fs",
        &[&"-q", &"-F", &"-t", &"ext4", &"-b", &"4096", &dev.dev],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    drop(dev);
    with_mounted(&disk, &dir.join("mnt"), |m| {
        std::fs::create_dir(m.join("d")).unwrap();
        write_synced(&m.join("d/a"), &vec![0x5a; 300_000]);
        write_synced(&m.join("b"), b"state A\n");
    })?;
    Some(disk)
}

/// State B: a new file and an appended one, nothing freed.
fn change(disk: &Path, dir: &Path) -> Option<()> {
    with_mounted(disk, &dir.join("mnt"), |m| {
        write_synced(&m.join("d/new"), &vec![0xc3; 200_000]);
        append_synced(&m.join("b"), b"state B\n");
    })
}

/// Bytes of `disk` outside partition 2 (the table, the other partitions, the backup GPT).
fn outside(disk: &Path) -> Vec<u8> {
    let b = std::fs::read(disk).unwrap();
    [&b[..OFF as usize], &b[(OFF + LEN) as usize..]].concat()
}

/// Partition 2 of `disk` copied out alone.
fn part(disk: &Path, to: &Path) -> PathBuf {
    let b = std::fs::read(disk).unwrap();
    std::fs::write(to, &b[OFF as usize..(OFF + LEN) as usize]).unwrap();
    to.to_path_buf()
}

/// Skips unless the oracles, sfdisk and loop mounts are here; the disk in state A.
fn setup(name: &str) -> Option<(Scratch, PathBuf)> {
    if skip() || !require(&["sfdisk", "losetup"]) {
        return None;
    }
    if !can_mount() {
        skipped("needs root and loop devices to let the kernel write the partition");
        return None;
    }
    let dir = scratch(name);
    let Some(d) = disk(&dir) else {
        skipped("attaching or mounting a loop device failed");
        return None;
    };
    Some((dir, d))
}

fn args<'a>(v: &'a [&'a dyn AsRef<OsStr>]) -> &'a [&'a dyn AsRef<OsStr>] {
    v
}

#[test]
fn rollback_onto_a_partition_leaves_the_other_partitions_alone() {
    let Some((dir, disk)) = setup("part-rollback") else {
        return;
    };
    let o = OFF.to_string();
    let a = dir.join("a.qcow2");
    expect(&[&"-Q", &"-d", &"-o", &o, &disk, &a], 0);
    let a_raw = dir.join("a.raw");
    expect(&[&"-r", &a, &a_raw], 0);
    change(&disk, &dir).unwrap();
    let before = std::fs::read(&disk).unwrap();
    let (patch, undo) = (dir.join("p.patch"), dir.join("p.e2undo"));
    let out = expect_sub(
        "rollback",
        args(&[
            &a,
            &disk,
            &"-o",
            &o,
            &"--patch",
            &patch,
            &"--undo-file",
            &undo,
        ]),
        0,
    );
    assert!(stdout(&out).contains(&format!("--undo {} -o {o}", patch.display())));
    assert_eq!(
        outside(&disk),
        [&before[..OFF as usize], &before[(OFF + LEN) as usize..]].concat()
    );
    let p2 = part(&disk, &dir.join("p2.img"));
    assert_eq!(fsck(&p2), 0);
    assert!(blocks_not_in(&a_raw, &p2, 4096).is_empty());
    // Resume and undo elsewhere are refused, touching nothing.
    let rolled = std::fs::read(&disk).unwrap();
    for wrong in [&["-o", "1048576"][..], &[][..]] {
        for form in ["--resume", "--undo"] {
            let mut v: Vec<&dyn AsRef<OsStr>> = vec![&form, &patch];
            v.extend(wrong.iter().map(|s| s as &dyn AsRef<OsStr>));
            v.push(&disk);
            let e = stderr(&expect_sub("rollback", &v, 1));
            assert!(
                e.contains(&format!("made for the filesystem at byte offset {o} of")),
                "{e}"
            );
            assert!(e.contains(&format!("-o {o}")), "{e}");
        }
    }
    assert_eq!(std::fs::read(&disk).unwrap(), rolled);
    // Undo at the recorded offset: the disk as it was, byte for byte.
    let out = expect_sub(
        "rollback",
        args(&[&"--undo", &patch, &"-o", &o, &disk, &"--json"]),
        0,
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["target_offset"], OFF, "{doc}");
    assert_eq!(std::fs::read(&disk).unwrap(), before);
    // e2undo rewinds at the offset its file records (no -o given to it).
    expect_sub(
        "rollback",
        args(&[&"--resume", &patch, &"-o", &o, &disk]),
        0,
    );
    let e = sh("e2undo", &[&undo, &disk]);
    assert_eq!(code(&e), 0, "{}", stderr(&e));
    assert_eq!(std::fs::read(&disk).unwrap(), before);
}

#[test]
fn apply_onto_a_partition_at_an_offset() {
    let Some((dir, disk)) = setup("part-apply") else {
        return;
    };
    let o = OFF.to_string();
    let replica = sparse_copy(&disk, &dir.join("replica.img"));
    let base = dir.join("a.raw");
    expect(&[&"-r", &"-a", &"-o", &o, &disk, &base], 0);
    change(&disk, &dir).unwrap();
    let delta = dir.join("d.qcow2");
    expect(
        &[&"-Q", &"-d", &"-o", &o, &"--base", &base, &disk, &delta],
        0,
    );
    let before = outside(&replica);
    let patch = dir.join("p.patch");
    let e = stderr(&expect_sub(
        "apply",
        args(&[&delta, &replica, &"-o", &o, &"--patch", &patch, &"-p"]),
        0,
    ));
    for label in [
        "progress: apply: checking TARGET, comparing it with the new bytes, writing the patch",
        "progress: apply: applying the patch to",
    ] {
        assert!(e.contains(label), "{label}: {e}");
    }
    assert_eq!(outside(&replica), before);
    let (p2, b_raw) = (part(&replica, &dir.join("p2.img")), dir.join("b.raw"));
    assert_eq!(fsck(&p2), 0);
    expect(&[&"-r", &"-a", &"-o", &o, &disk, &b_raw], 0);
    assert!(blocks_not_in(&b_raw, &p2, 4096).is_empty());
    // At offset 0 the target holds no such filesystem: refused, nothing written.
    let e = stderr(&expect_sub(
        "apply",
        args(&[&"--undo", &patch, &replica]),
        1,
    ));
    assert!(e.contains("byte offset"), "{e}");
    expect_sub("apply", args(&[&"--undo", &patch, &"-o", &o, &replica]), 0);
    assert!(blocks_not_in(&base, &part(&replica, &p2), 4096).is_empty());
    // An offset past the end of the target is refused.
    let far = (DISK_MIB << 20).to_string();
    let e = stderr(&expect_sub(
        "apply",
        args(&[&delta, &replica, &"-o", &far, &"--dry-run"]),
        1,
    ));
    assert!(e.contains("no filesystem starts at byte"), "{e}");
}

/// The 4 KiB blocks of partition 2 in which two disks differ.
fn differing_blocks(a: &Path, b: &Path) -> Vec<u64> {
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let r = OFF as usize..(OFF + LEN) as usize;
    (0u64..)
        .zip(a[r.clone()].chunks(4096).zip(b[r].chunks(4096)))
        .filter(|(_, (x, y))| x != y)
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn compare_mode_writes_only_the_blocks_that_differ() {
    let Some((dir, disk)) = setup("part-compare") else {
        return;
    };
    let o = OFF.to_string();
    let target = sparse_copy(&disk, &dir.join("target.img"));
    change(&disk, &dir).unwrap();
    let blocks = differing_blocks(&disk, &target);
    let differ = blocks.len() as u64;
    assert!(differ > 0);
    let old = std::fs::read(&target).unwrap();
    let run = |extra: &[&str]| {
        let mut v: Vec<&dyn AsRef<OsStr>> = vec![&"-r", &"-a", &"-c", &"--json"];
        v.extend(extra.iter().map(|s| s as &dyn AsRef<OsStr>));
        v.extend([&"-o" as &dyn AsRef<OsStr>, &o, &"-O", &o, &disk, &target]);
        let out = expect(&v, 0);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["compare"].clone()
    };
    let dry = run(&["-n"]);
    assert_eq!(dry["blocks_differing"], differ, "{dry}");
    assert_eq!(dry["blocks_written"], 0);
    let listed: Vec<u64> = dry["differing_runs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            let (f, n) = (r[0].as_u64().unwrap(), r[1].as_u64().unwrap());
            f..f + n
        })
        .collect();
    assert_eq!(listed, blocks, "the runs name the blocks that differ");
    assert_eq!(std::fs::read(&target).unwrap(), old, "-n wrote to OUT");
    let done = run(&[]);
    assert_eq!(done["blocks_written"], differ, "{done}");
    assert_eq!(
        std::fs::read(&target).unwrap(),
        std::fs::read(&disk).unwrap()
    );
    assert_eq!(fsck(&part(&target, &dir.join("p2.img"))), 0);
    assert_eq!(run(&[])["blocks_written"], 0);
    // OUT that is SOURCE, and a mounted OUT, are refused.
    let e = stderr(&expect(
        &[&"-r", &"-c", &"-o", &o, &"-O", &o, &disk, &disk],
        2,
    ));
    assert!(e.contains("would destroy the input"), "{e}");
    let mut held = attach_at(&target, OFF, LEN).unwrap();
    let mnt = dir.join("mnt2");
    std::fs::create_dir_all(&mnt).unwrap();
    assert!(Command::new("mount")
        .arg(&held.dev)
        .arg(&mnt)
        .status()
        .unwrap()
        .success());
    held.mnt = Some(mnt);
    let e = stderr(&expect(
        &[&"-r", &"-c", &"-o", &o, &"-O", &o, &disk, &target],
        1,
    ));
    assert!(e.contains("is mounted on"), "{e}");
}

#[test]
fn progress_names_every_phase_on_a_plain_stderr() {
    let Some((dir, disk)) = setup("part-progress") else {
        return;
    };
    let o = OFF.to_string();
    let q = dir.join("x.qcow2");
    let e = stderr(&expect(&[&"-Q", &"-p", &"-c", &"-o", &o, &disk, &q], 0));
    for label in [
        "progress: walking metadata",
        "progress: copying and compressing",
        "progress: finishing the image",
    ] {
        assert!(e.contains(label), "{label}: {e}");
    }
    let e = stderr(&expect(
        &[
            &"-Q",
            &"-p",
            &"-o",
            &o,
            &"--replay",
            &disk,
            &dir.join("y.qcow2"),
        ],
        0,
    ));
    assert!(e.contains("progress: replaying the journal"), "{e}");
    let e = stderr(&expect(&[&"-Q", &"-p", &"-o", &o, &disk, &"-"], 0));
    for label in [
        "progress: planning the stream's layout",
        "progress: writing stream",
    ] {
        assert!(e.contains(label), "{label}: {e}");
    }
    let e = stderr(&expect(&[&"-Q", &"-o", &o, &disk, &dir.join("z.qcow2")], 0));
    assert!(!e.contains("progress"), "without -p: {e}");
}

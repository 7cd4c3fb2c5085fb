//! Archives of states the kernel wrote (as root, loop devices): a state appended to an archive
//! equals a direct export of the same source, byte for byte, on every block either copies —
//! after the kernel filled the journal (whose inode record never changes), and on dirty copies
//! taken while mounted (needs_recovery set, on-disk inodes behind the journal, new file data
//! already in place). The kernel's mount of each archived state shows the tree its mount of
//! the source shows. With `-d` the quick check leaves special inodes to the comparison and is
//! off (said in a note) when the source's or the base state's journal needs recovery.

use crate::common::kernel::{append_synced, can_mount, mkfs, tree, write_synced, Mounted};
use crate::common::*;
use std::path::Path;

/// `-r [-d] SRC` and state `name` of archive `q` extracted with `-r --from-snapshot`: equal.
fn assert_state_is_direct_export(q: &Path, name: &str, src: &Path, dir: &Path, data: bool) {
    let direct = dir.join(format!("direct-{name}.raw"));
    let state = dir.join(format!("state-{name}.raw"));
    let d: &dyn AsRef<std::ffi::OsStr> = if data { &"-d" } else { &"--sync" };
    expect(&[&"-r", d, &src, &direct], 0);
    expect(&[&"-r", &"--from-snapshot", &name, &q, &state], 0);
    let differ = blocks_not_in(&direct, &state, 1024);
    let extra = blocks_not_in(&state, &direct, 1024);
    assert!(
        differ.is_empty() && extra.is_empty(),
        "state {name}: {} KiB blocks differ from the direct export (first {:?}), {} more in the state (first {:?})",
        differ.len(),
        differ.first(),
        extra.len(),
        extra.first()
    );
    assert_eq!(sha256(&direct), sha256(&state), "state {name}");
}

/// A 64 MiB ext4 in which the kernel wrote 20 files.
fn kernel_fs(dir: &Path, img: &Path) -> Option<()> {
    mkfs(img, 64, &[]);
    let m = Mounted::new(img, &dir.join("m1"), "rw")?;
    for i in 0..20 {
        std::fs::write(m.path(&format!("f{i}")), format!("file {i}\n")).unwrap();
    }
    drop(m);
    Some(())
}

#[test]
fn appended_kernel_states_equal_direct_exports() {
    if skip() {
        return;
    }
    if !can_mount() {
        return skipped("needs root and loop devices to let the kernel write the states");
    }
    let dir = scratch("archive-kernel");
    let img = dir.join("fs.img");
    let q = dir.join("arch.qcow2");
    if kernel_fs(&dir, &img).is_none() {
        return skipped("mounting a loop device failed");
    }
    let archives = [(true, q.clone()), (false, dir.join("arch-meta.qcow2"))];
    let mut s1 = Vec::new();
    for (data, q) in &archives {
        let d: &dyn AsRef<std::ffi::OsStr> = if *data { &"-d" } else { &"--sync" };
        expect(&[&"-Q", d, &"--name", &"s1", &img, q], 0);
        assert_state_is_direct_export(q, "s1", &img, &dir, *data);
        s1.push(sha256(&dir.join("state-s1.raw")));
    }
    // The kernel's second mount writes 4000 files: the journal fills, its inode record stays.
    let m = Mounted::new(&img, &dir.join("m2"), "rw").unwrap();
    std::fs::create_dir(m.path("d")).unwrap();
    for i in 0..4000 {
        std::fs::write(m.path(&format!("d/g{i}")), format!("g {i}\n")).unwrap();
    }
    drop(m);
    for ((data, q), s1) in archives.iter().zip(s1) {
        let d: &dyn AsRef<std::ffi::OsStr> = if *data { &"-d" } else { &"--sync" };
        expect(&[&"-Q", d, &"--append", &"--name", &"s2", &img, q], 0);
        assert_qemu_check(q);
        assert_state_is_direct_export(q, "s2", &img, &dir, *data);
        let again = dir.join("s1-again.raw");
        expect(&[&"-r", &"--from-snapshot", &"s1", q, &again], 0);
        assert_eq!(sha256(&again), s1, "state s1 after the append");
    }
}

#[test]
fn dirty_kernel_states_append_as_direct_exports_and_mount_alike() {
    if skip() {
        return;
    }
    if !can_mount() {
        return skipped("needs root and loop devices to let the kernel write the states");
    }
    let dir = scratch("archive-kernel-dirty");
    let img = dir.join("fs.img");
    let q = dir.join("arch.qcow2");
    if kernel_fs(&dir, &img).is_none() {
        return skipped("mounting a loop device failed");
    }
    expect(&[&"-Q", &"-d", &"--name", &"s1", &img, &q], 0);
    // Changed under a long commit interval, fsynced, copied while still mounted.
    let dirty = dir.join("dirty.img");
    let m = Mounted::new(&img, &dir.join("m"), "rw,commit=600").unwrap();
    for i in 0..5 {
        append_synced(&m.path(&format!("f{i}")), &vec![b'x'; 5000 + i * 3000]);
    }
    std::fs::create_dir(m.path("new")).unwrap();
    for i in 0..30 {
        write_synced(&m.path(&format!("new/n{i}")), &vec![i as u8 + 1; 1000 * i]);
    }
    std::fs::remove_file(m.path("f19")).unwrap();
    std::fs::File::open(&m.dir).unwrap().sync_all().unwrap();
    sparse_copy(&img, &dirty);
    drop(m);
    let o = expect(
        &[&"-Q", &"-d", &"--append", &"--name", &"s2", &dirty, &q],
        0,
    );
    assert!(
        stderr(&o).contains("every file's data was read") && stderr(&o).contains("needs recovery"),
        "the note on the quick check: {}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("--replay archives the state as the kernel would mount it"),
        "the note on an append without --replay: {}",
        stderr(&o)
    );
    assert_qemu_check(&q);
    assert_state_is_direct_export(&q, "s2", &dirty, &dir, true);
    // The kernel mounts the archived state as it mounts the dirty copy.
    let state = dir.join("state-s2.raw");
    let want = tree(&dirty, &dir, false).unwrap();
    let got = tree(&state, &dir, false).unwrap();
    assert!(want.contains_key("new/n29") && !want.contains_key("f19"));
    assert_eq!(got, want, "the kernel's tree of state s2");
    // A clean state appended over the dirty one: its base needs recovery, so every file is
    // read again.
    let o = expect(&[&"-Q", &"-d", &"--append", &"--name", &"s3", &img, &q], 0);
    assert!(stderr(&o).contains("newest state"), "{}", stderr(&o));
    assert_qemu_check(&q);
    assert_state_is_direct_export(&q, "s3", &img, &dir, true);
    let want = tree(&img, &dir, false).unwrap();
    assert_eq!(tree(&dir.join("state-s3.raw"), &dir, false).unwrap(), want);
    assert_eq!(fsck(&dir.join("state-s3.raw")), 0);
}

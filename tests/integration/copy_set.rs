//! What `-Q`/`-r` copy beyond e2image, checked block by block on fixtures whose notes (in the
//! manifest written by fixtures/build-matrix.sh) name the blocks involved:
//! backup superblocks and descriptors, the bad-blocks inode's tree, orphan inodes' extent
//! trees, EA-inode values; and what must not be copied: the garbage in an unused inode-table
//! tail. Also: corrupt parts are reported on stderr with inode and block, and exit 3.

use crate::common::*;
use std::path::Path;

/// Number after `key` in the notes (e.g. "leaf block 4038").
fn note_number(notes: &str, key: &str) -> u64 {
    let i = notes
        .find(key)
        .unwrap_or_else(|| panic!("'{key}' not in notes: {notes}"))
        + key.len();
    let digits: String = notes[i..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().unwrap()
}

fn export_raw(f: &Fixture, dir: &Path, extra: &[&str]) -> (Vec<u8>, i32, String) {
    let out = dir.join("out.raw");
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"-r"];
    for a in extra {
        args.push(a);
    }
    args.push(&f.path);
    args.push(&out);
    let o = run(&args);
    (
        read(&out),
        code(&o),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn block(img: &[u8], bs: u32, b: u64) -> &[u8] {
    let bs = bs as usize;
    &img[b as usize * bs..(b as usize + 1) * bs]
}

/// Block `b` is non-zero in the source and identical in ours.
fn assert_copied(f: &Fixture, ours: &[u8], b: u64, what: &str) {
    let src = read(&f.path);
    assert!(
        block(&src, f.block_size, b).iter().any(|&x| x != 0),
        "{}: {what} block {b} is zero in the source",
        f.name
    );
    assert_eq!(
        block(ours, f.block_size, b),
        block(&src, f.block_size, b),
        "{}: {what} block {b} not copied",
        f.name
    );
}

/// Block numbers debugfs lists for an inode (`blocks <ino>`).
fn debugfs_blocks(img: &Path, ino: u64) -> Vec<u64> {
    let o = sh("debugfs", &[&"-R", &format!("blocks <{ino}>"), &img]);
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

#[test]
fn backup_superblocks_and_descriptors_are_copied() {
    if skip() {
        return;
    }
    let f = fixtures(&["ext4_4k_256m"]).remove("ext4_4k_256m").unwrap();
    let dir = scratch("copyset-backup");
    let (ours, c, _) = export_raw(&f, &dir, &[]);
    assert_eq!(c, 0);
    assert_copied(&f, &ours, 32768, "backup superblock");
    assert_copied(&f, &ours, 32769, "backup group descriptors");
}

#[test]
fn bad_blocks_inode_tree_is_copied_but_not_the_bad_blocks() {
    if skip() {
        return;
    }
    let f = fixtures(&["ext2_1k_badblocks"])
        .remove("ext2_1k_badblocks")
        .unwrap();
    let dir = scratch("copyset-badblocks");
    let (ours, c, _) = export_raw(&f, &dir, &["-d"]);
    assert_eq!(c, 0);
    let ind = note_number(&f.notes, "(IND) =");
    assert_copied(&f, &ours, ind, "bad-blocks IND");
    for b in 20000..20020 {
        assert!(
            block(&ours, f.block_size, b).iter().all(|&x| x == 0),
            "bad block {b} was read"
        );
    }
}

#[test]
fn orphan_inode_extent_trees_are_copied() {
    if skip() {
        return;
    }
    let fx = fixtures(&["ext4_orphan_list", "ext4_orphan_file_entry"]);
    for f in fx.values() {
        let dir = scratch(&format!("copyset-{}", f.name));
        let (ours, c, _) = export_raw(f, &dir, &[]);
        assert_eq!(c, 0, "{}", f.name);
        assert_copied(
            f,
            &ours,
            note_number(&f.notes, "leaf block"),
            "orphan extent leaf",
        );
    }
}

#[test]
fn ea_inode_values_are_copied() {
    if skip() {
        return;
    }
    let fx = fixtures(&["ext4_ea_inode", "ext4_ea_inode_1k"]);
    for f in fx.values() {
        let dir = scratch(&format!("copyset-{}", f.name));
        let (ours, c, _) = export_raw(f, &dir, &[]);
        assert_eq!(c, 0, "{}", f.name);
        let ino = note_number(&f.notes, "EA inode(s):");
        let blocks = debugfs_blocks(&f.path, ino);
        assert!(
            !blocks.is_empty(),
            "{}: EA inode {ino} has no blocks",
            f.name
        );
        for b in blocks {
            assert_copied(f, &ours, b, "EA inode value");
        }
    }
}

#[test]
fn unused_inode_table_tail_is_not_copied() {
    if skip() {
        return;
    }
    let name = "corrupt_dirty_garbage_itable_tail";
    let f = fixtures(&[name]).remove(name).unwrap();
    let dir = scratch("copyset-itable-tail");
    let (ours, c, _) = export_raw(&f, &dir, &[]);
    assert_eq!(c, 0);
    let first = note_number(&f.notes, "garbage_blocks=");
    let src = read(&f.path);
    assert!(block(&src, f.block_size, first).contains(&0xAB));
    for b in first..first + 8 {
        assert!(
            block(&ours, f.block_size, b).iter().all(|&x| x == 0),
            "garbage block {b} copied"
        );
    }
}

#[test]
fn corrupt_parts_are_reported_with_inode_and_block() {
    if skip() {
        return;
    }
    let cases = [
        (
            "corrupt_etb_magic",
            "inode 731, block 4070",
            "bad extent header",
        ),
        (
            "corrupt_dir_inode_extent_header",
            "inode 13, offset 40",
            "bad extent header",
        ),
        ("corrupt_extent_loop", "inode 731, block 4070", "loop"),
        (
            "corrupt_missing_itable",
            "group 1: bg_inode_table 0",
            "skipped",
        ),
    ];
    let names: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let fx = fixtures(&names);
    for (name, location, reason) in cases {
        let f = &fx[name];
        let dir = scratch(&format!("copyset-{name}"));
        let (_, c, err) = export_raw(f, &dir, &[]);
        assert_eq!(c, 3, "{name}: {err}");
        let line = err
            .lines()
            .find(|l| l.contains(location))
            .unwrap_or_else(|| panic!("{name}: no '{location}' in {err}"));
        assert!(
            line.starts_with("e2image-rs: warning: ") && line.contains(reason),
            "{name}: {line}"
        );
    }
}

#[test]
fn unusable_primary_superblock_falls_back_to_a_backup() {
    if skip() {
        return;
    }
    let name = "corrupt_primary_sb";
    let f = fixtures(&[name]).remove(name).unwrap();
    let dir = scratch("copyset-primary");
    let out = dir.join("out.qcow2");
    // As e2fsck does: through the first backup that validates, with a warning.
    let o = run(&[&"-Q", &f.path, &out]);
    assert_eq!(code(&o), 3);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("backup superblock at block 32768 (block size 4096"),
        "{err}"
    );
    assert_qemu_check(&out);
    std::fs::remove_file(&out).unwrap();
    // -b still forces a choice.
    let o = run(&[&"-Q", &"-b", &"32768", &"-B", &"4096", &f.path, &out]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert_qemu_check(&out);
    // Without -B the block size is probed, as e2image does.
    let out2 = dir.join("out2.qcow2");
    let o = run(&[&"-Q", &"-b", &"32768", &f.path, &out2]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
}

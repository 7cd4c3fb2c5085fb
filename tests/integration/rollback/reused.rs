//! Metadata-only rollbacks and the files the target holds now under a restored file's inode
//! number and blocks (part of the `rollback` test target): a deleted file whose inode number
//! and block a new file reused, and a file rewritten in place, are refused without --force
//! and listed by the dry run with their paths; a file deleted since the state and not reused
//! is restored with its bytes.

use super::{rollback, skip};
use crate::common::*;
use std::path::{Path, PathBuf};

/// Block size of the ext4-small fixture.
const BS: u64 = 4096;

/// The committed ext4-small image (state a) in `dir` and its metadata-only (-Q) export.
fn state_a(dir: &Path) -> (PathBuf, PathBuf) {
    let a = gunzip_to(&root().join("fixtures/images/ext4-small.img.gz"), dir);
    let q = dir.join("a.qcow2");
    export_json(&[&"-Q", &a, &q]);
    (a, q)
}

/// `debugfs -R REQUEST IMG` (read-only), which must succeed; its stdout.
fn debugfs_r(img: &Path, request: &str) -> Vec<u8> {
    let o = sh("debugfs", &[&"-R", &request, &img]);
    assert!(o.status.success(), "debugfs {request}: {}", stderr(&o));
    o.stdout
}

/// The inode number of `path` and its block list, as debugfs prints them.
fn ino_and_blocks(img: &Path, path: &str) -> (u32, String) {
    let stat = String::from_utf8_lossy(&debugfs_r(img, &format!("stat {path}"))).into_owned();
    let ino = stat
        .split_once("Inode: ")
        .and_then(|(_, r)| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no inode for {path}: {stat}"));
    let blocks = debugfs_r(img, &format!("blocks {path}"));
    let blocks = String::from_utf8_lossy(&blocks).trim().to_string();
    assert!(!blocks.is_empty(), "{path} has no blocks");
    (ino, blocks)
}

/// Refused without --force (exit 1, target unchanged, no patch), with `line` in the message
/// and in the dry run's report; then --force rolls back (e2fsck clean) and --undo rewinds.
fn refused_then_forced(q: &Path, t: &Path, p: &Path, line: &str) {
    let before = sha256(t);
    let o = rollback(&[&q, &t, &"--patch", &p], 1);
    let e = stderr(&o);
    assert!(e.contains(line), "missing {line:?} in:\n{e}");
    assert!(e.contains("--force rolls back anyway"), "{e}");
    assert!(e.contains("nothing was written"), "{e}");
    assert_eq!(sha256(t), before, "refused, yet the target changed");
    assert!(!p.exists(), "refused, yet a patch was left");
    let o = rollback(&[&q, &t, &"--patch", &p, &"--dry-run"], 0);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(line),
        "missing {line:?} in the dry run:\n{out}"
    );
    assert_eq!(sha256(t), before, "the dry run changed the target");
    assert!(!p.exists(), "the dry run left a patch");
    rollback(&[&q, &t, &"--patch", &p, &"--force"], 0);
    assert_eq!(fsck(t), 0, "e2fsck -fn fails after the forced rollback");
    let after = sha256(t);
    assert_ne!(after, before, "the forced rollback wrote nothing");
    rollback(&[&"--undo", &p, &t], 0);
    assert_eq!(sha256(t), before, "--undo");
    rollback(&[&"--resume", &p, &t], 0);
    assert_eq!(sha256(t), after, "--resume");
}

/// The reproduction: in the target, /many/f000 is deleted and debugfs `write` gives a new
/// file its inode number and its block (debugfs leaves i_generation 0 and stamps the current
/// time; the fixture's files were created 2024-01-01). The block rule alone sees the block
/// at the same inode and offset; the inode is another file (another i_crtime).
#[test]
fn reused_inode_and_blocks_are_refused() {
    if skip() {
        return;
    }
    let dir = scratch("rb-reused");
    let (a, q) = state_a(&dir);
    let t = sparse_copy(&a, &dir.join("target.img"));
    let (ino, blocks) = ino_and_blocks(&t, "/many/f000");
    let new = dir.join("new.txt");
    std::fs::write(&new, b"NEW bytes of another file\n").unwrap();
    debugfs_w(
        &t,
        &[
            "rm /many/f000",
            &format!("write {} /many/new.txt", new.display()),
        ],
    );
    assert_eq!(
        ino_and_blocks(&t, "/many/new.txt"),
        (ino, blocks),
        "debugfs did not give the new file the old inode number and block"
    );
    assert_eq!(fsck(&t), 0);
    let line = format!(
        "inode {ino} /many/f000: the target's inode {ino} is a different file now (created 2024-01-01 00:00:00→"
    );
    refused_then_forced(&q, &t, &dir.join("a.patch"), &line);
    // What the refusal protects from: forced, /many/f000 is back with the new file's bytes.
    rollback(&[&q, &t, &"--patch", &dir.join("b.patch"), &"--force"], 0);
    assert_eq!(debugfs_r(&t, "cat /many/f000"), b"NEW bytes");
}

/// A file rewritten in place (same inode, same block, new bytes, newer mtime and ctime, as a
/// write through the kernel leaves it) is refused too; a file deleted since the state, whose
/// inode and block nothing reused, is restored with its bytes without --force.
#[test]
fn data_changed_in_place_is_refused_deleted_file_restored() {
    if skip() {
        return;
    }
    let dir = scratch("rb-in-place");
    let (a, q) = state_a(&dir);
    let old = debugfs_r(&a, "cat /many/f001");
    let t = sparse_copy(&a, &dir.join("target.img"));
    debugfs_w(&t, &["rm /many/f001"]);
    let o = rollback(&[&q, &t, &"--patch", &dir.join("deleted.patch")], 0);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!out.contains("would read data blocks"), "{out}");
    assert_eq!(fsck(&t), 0);
    assert_eq!(debugfs_r(&t, "cat /many/f001"), old);
    // Rewritten in place.
    let t = sparse_copy(&a, &dir.join("target.img"));
    let (ino, blocks) = ino_and_blocks(&t, "/many/f002");
    let block: u64 = blocks.parse().expect("one block");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&t).unwrap();
        f.write_all_at(b"CHANGED!\n", block * BS).unwrap();
    }
    debugfs_w(
        &t,
        &[
            "sif /many/f002 mtime 20300101000000",
            "sif /many/f002 ctime 20300101000000",
        ],
    );
    assert_eq!(ino_and_blocks(&t, "/many/f002"), (ino, blocks));
    assert_eq!(debugfs_r(&t, "cat /many/f002"), b"CHANGED!\n");
    assert_eq!(fsck(&t), 0);
    let line = format!(
        "inode {ino} /many/f002: the target's inode {ino} was modified since the state (mtime 2024-01-01 00:00:00→2030-01-01 00:00:00), which holds 1 of its data block(s)"
    );
    refused_then_forced(&q, &t, &dir.join("in-place.patch"), &line);
}

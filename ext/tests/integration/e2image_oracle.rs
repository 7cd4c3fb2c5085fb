//! The walker's block set against e2image's: every non-zero block that `e2image -r` copies
//! must be in our set. Skips when e2fsprogs is not installed.

use crate::common::{missing_blocks, mkfs, open, require, Scratch};
use ext::{walk, WalkOptions};
use std::path::Path;
use std::process::Command;

/// Source tree: 300 small files, a 300 KiB file, slow and fast symlinks.
fn populate(src: &Path) {
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    for i in 0..300 {
        std::fs::write(
            src.join(format!("f{i:03}")),
            format!("file {i}\n").repeat(i % 7 + 1),
        )
        .unwrap();
    }
    std::fs::write(src.join("sub/big"), vec![0x5a; 300 * 1024]).unwrap();
    std::os::unix::fs::symlink("x".repeat(131), src.join("slow")).unwrap();
    std::os::unix::fs::symlink("short", src.join("fast")).unwrap();
}

fn check_superset(img: &Path, dir: &Path) {
    let raw = dir.join("e2i.raw");
    let st = Command::new("e2image")
        .arg("-r")
        .arg(img)
        .arg(&raw)
        .status()
        .unwrap();
    assert!(st.success());
    let fs = open(img);
    let res = walk(&fs, &WalkOptions::default());
    assert!(res.warnings.is_empty(), "{:?}", res.warnings);
    let bs = fs.sb.block_size as usize;
    let missing = missing_blocks(&std::fs::read(&raw).unwrap(), bs, &res.blocks);
    assert!(
        missing.is_empty(),
        "blocks e2image copies but we do not: {missing:?}"
    );
}

#[test]
fn ext4_superset_of_e2image() {
    if !require(&["mke2fs", "e2image"]) {
        return;
    }
    for (name, args) in [
        ("ext4", vec!["-t", "ext4", "-b", "4096"]),
        ("ext2_1k", vec!["-t", "ext2", "-b", "1024"]),
        ("ext3_2k", vec!["-t", "ext3", "-b", "2048"]),
        (
            "bigalloc",
            vec!["-t", "ext4", "-b", "1024", "-O", "bigalloc", "-C", "4096"],
        ),
        (
            "meta_bg",
            vec!["-t", "ext4", "-b", "1024", "-O", "^resize_inode,meta_bg"],
        ),
    ] {
        let dir = Scratch::new("oracle", name);
        let img = mkfs(&dir.0, &args, "64M", populate);
        check_superset(&img, &dir.0);
    }
}

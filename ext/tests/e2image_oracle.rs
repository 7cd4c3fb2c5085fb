//! The walker's block set against e2image's: every non-zero block that `e2image -r` copies
//! must be in our set. Skips when e2fsprogs is not installed.

use ext::{walk, FileView, Filesystem, OpenOptions, WalkOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

fn have(tool: &str) -> bool {
    Command::new(tool).arg("-V").output().is_ok()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ext-oracle-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mkfs(dir: &Path, args: &[&str], size: &str) -> PathBuf {
    let src = dir.join("src");
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
    let img = dir.join("fs.img");
    let st = Command::new("mke2fs")
        .args(["-q", "-F"])
        .args(args)
        .arg("-d")
        .arg(&src)
        .arg(&img)
        .arg(size)
        .status()
        .unwrap();
    assert!(st.success());
    img
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
    let fs = Filesystem::open(FileView::open(img).unwrap(), &OpenOptions::default()).unwrap();
    let res = walk(&fs, &WalkOptions::default());
    assert!(res.warnings.is_empty(), "{:?}", res.warnings);
    let bs = fs.sb.block_size as usize;
    let data = std::fs::read(&raw).unwrap();
    let mut missing = Vec::new();
    for (b, chunk) in data.chunks(bs).enumerate() {
        if chunk.iter().any(|&x| x != 0) && !res.blocks.contains(b as u64) {
            missing.push(b);
        }
    }
    assert!(
        missing.is_empty(),
        "blocks e2image copies but we do not: {missing:?}"
    );
}

#[test]
fn ext4_superset_of_e2image() {
    if !have("mke2fs") || !have("e2image") {
        eprintln!("skipped: e2fsprogs not installed");
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
        let dir = scratch(name);
        let img = mkfs(&dir, &args, "64M");
        check_superset(&img, &dir);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Orphan processing ([`ext::release_orphans`]) against e2fsprogs, on orphan lists forged
//! with debugfs on mke2fs images (no mount needed; the kernel comparison is the binary's
//! test, `tests/integration/journal/orphans.rs`): files unlinked (links 0) or shortened
//! (links kept) chained from `s_last_orphan` through `i_dtime`. The changed blocks are
//! written to a copy, which `e2fsck -fn` must find clean; its bitmaps and group counts must
//! be those `e2fsck -fy` leaves after releasing the same list. Corrupt lists stop the
//! processing with a warning naming the inode, what came before staying processed.

use crate::common::{open, require, run, Scratch};
use ext::{release_orphans, InodeNr, InodeTime, OrphanRelease};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const TOOLS: [&str; 3] = ["mke2fs", "debugfs", "e2fsck"];

/// The deletion time given to the processing.
const NOW: InodeTime = InodeTime {
    secs: 1_800_000_000,
    nsecs: 123_456_789,
};

fn debugfs(img: &Path, cmds: &[String]) -> String {
    let f = img.with_extension("cmds");
    std::fs::write(&f, cmds.join("\n")).unwrap();
    run(Command::new("debugfs").arg("-w").arg("-f").arg(&f).arg(img))
}

fn ino(img: &Path, path: &str) -> u32 {
    let out = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(img));
    out.split_whitespace()
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no inode for {path}: {out}"))
}

/// A 16 MiB image (`mke2fs ARGS`) with files /a (40 KB, a 600-byte xattr in a block), /b
/// (40 KB, the same xattr), /c (300 KB), /d (200 KB), /e (4 KB); returns it and the inode
/// numbers of a..e.
fn image(dir: &Path, args: &[&str]) -> (PathBuf, Vec<u32>) {
    let img = dir.join("fs.img");
    run(Command::new("mke2fs")
        .args(["-q", "-F"])
        .args(args)
        .arg(&img)
        .arg("16M"));
    let mut cmds = Vec::new();
    for (name, len) in [
        ("a", 40_000),
        ("b", 40_000),
        ("c", 300_000),
        ("d", 200_000),
        ("e", 4096),
    ] {
        let src = dir.join(name);
        std::fs::write(&src, vec![name.as_bytes()[0]; len]).unwrap();
        cmds.push(format!("write {} {name}", src.display()));
    }
    let value = dir.join("value");
    std::fs::write(&value, [b'v'; 600]).unwrap();
    for name in ["a", "b"] {
        cmds.push(format!("ea_set -f {} /{name} user.big", value.display()));
    }
    debugfs(&img, &cmds);
    let inos = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|p| ino(&img, p))
        .collect();
    (img, inos)
}

/// Makes the inodes of `chain` orphans, chained in that order from `s_last_orphan`: without
/// links (their entry in `names` removed) for `None`, with links and the given size in
/// bytes for `Some`.
fn forge(img: &Path, names: &[(&str, u32)], chain: &[(u32, Option<u64>)]) {
    let mut cmds = Vec::new();
    for (i, &(ino, size)) in chain.iter().enumerate() {
        match size {
            None => {
                let name = names.iter().find(|n| n.1 == ino).map(|n| n.0).unwrap();
                cmds.push(format!("unlink /{name}"));
                cmds.push(format!("sif <{ino}> links_count 0"));
            }
            Some(s) => cmds.push(format!("sif <{ino}> size {s}")),
        }
        let next = chain.get(i + 1).map_or(0, |n| n.0);
        cmds.push(format!("sif <{ino}> dtime {next}"));
    }
    cmds.push(format!("ssv last_orphan {}", chain[0].0));
    debugfs(img, &cmds);
}

/// Processes the orphans of `img` and writes the changed blocks into a copy, returned.
fn processed(img: &Path) -> (OrphanRelease, PathBuf) {
    let fs = open(img);
    let bs = u64::from(fs.sb.block_size);
    let r = release_orphans(&fs, NOW);
    let copy = img.with_extension("processed");
    std::fs::copy(img, &copy).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
    for (b, bytes) in &r.blocks {
        assert_eq!(bytes.len() as u64, bs);
        f.write_all_at(bytes, b.0 * bs).unwrap();
    }
    (r, copy)
}

fn fsck(img: &Path, fix: bool) -> i32 {
    let o = Command::new("e2fsck")
        .arg(if fix { "-fy" } else { "-fn" })
        .arg(img)
        .output()
        .unwrap();
    o.status.code().unwrap_or(-1)
}

/// The group summaries of `dumpe2fs` (free counts, free block and inode lists).
fn groups(img: &Path) -> Vec<String> {
    let out = run(Command::new("dumpe2fs").arg(img));
    out.lines()
        .filter(|l| {
            l.contains("free blocks, ") || l.contains("Free blocks:") || l.contains("Free inodes:")
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn forged_orphans_are_released_and_truncated_as_e2fsck_does() {
    if !require(&TOOLS) {
        return;
    }
    for (name, args) in [
        ("ext4", &["-t", "ext4", "-b", "4096"][..]),
        (
            "ext4-1k-gdt-csum",
            &["-t", "ext4", "-b", "1024", "-O", "^metadata_csum,uninit_bg"][..],
        ),
        ("ext3", &["-t", "ext3", "-b", "1024"][..]),
    ] {
        let dir = Scratch::new("orphan", name);
        let (img, i) = image(&dir.0, args);
        let names = [("a", i[0]), ("b", i[1]), ("c", i[2]), ("d", i[3])];
        forge(
            &img,
            &names,
            &[
                (i[0], None),
                (i[1], None),
                (i[2], Some(50_000)),
                (i[3], None),
            ],
        );
        let (r, ours) = processed(&img);
        assert!(r.warnings.is_empty(), "{name}: {:?}", r.warnings);
        assert_eq!(
            r.released,
            vec![InodeNr(i[0]), InodeNr(i[1]), InodeNr(i[3])],
            "{name}"
        );
        assert_eq!(r.truncated, vec![InodeNr(i[2])], "{name}");
        assert!(r.emptied && r.freed_blocks > 0, "{name}: {r:?}");
        assert_eq!(
            fsck(&ours, false),
            0,
            "{name}: e2fsck -fn of the processed copy"
        );
        let theirs = img.with_extension("e2fsck");
        std::fs::copy(&img, &theirs).unwrap();
        assert!(
            fsck(&theirs, true) <= 1,
            "{name}: e2fsck -fy releases the list"
        );
        assert_eq!(
            groups(&ours),
            groups(&theirs),
            "{name}: bitmaps and group counts"
        );
        let again = release_orphans(&open(&ours), NOW);
        assert!(
            again.blocks.is_empty() && again.emptied,
            "{name}: nothing left to do"
        );
    }
}

/// The warning of a processing that stopped, which must name inode `ino` and say `what`.
fn stopped_at(r: &OrphanRelease, ino: u32, what: &str) {
    let w = r
        .warnings
        .first()
        .unwrap_or_else(|| panic!("no warning: {r:?}"));
    assert_eq!(w.inode, Some(InodeNr(ino)), "{w}");
    assert!(
        w.reason.contains(what) && w.reason.contains("stopped"),
        "{w}"
    );
}

/// `s_last_orphan` of the image, through the ext crate.
fn head(img: &Path) -> u32 {
    open(img).sb.s_last_orphan
}

#[test]
fn a_corrupt_orphan_list_stops_the_processing_naming_the_inode() {
    if !require(&TOOLS) {
        return;
    }
    let ext4 = ["-t", "ext4", "-b", "4096"];
    // A loop: a → b → a. Both are released, then a is met again.
    let dir = Scratch::new("orphan", "loop");
    let (img, i) = image(&dir.0, &ext4);
    let names = [("a", i[0]), ("b", i[1])];
    forge(&img, &names, &[(i[0], None), (i[1], None)]);
    debugfs(&img, &[format!("sif <{}> dtime {}", i[1], i[0])]);
    let (r, ours) = processed(&img);
    stopped_at(&r, i[0], "twice (a loop)");
    assert_eq!(r.released.len(), 2, "{r:?}");
    assert_eq!(head(&ours), 0, "the head is cleared, as e2fsck does");
    assert_eq!(fsck(&ours, false), 0, "what was processed stands");
    // A next orphan out of range: nothing is processed, the head is cleared.
    let dir = Scratch::new("orphan", "range");
    let (img, i) = image(&dir.0, &ext4);
    forge(&img, &[("a", i[0])], &[(i[0], None)]);
    debugfs(&img, &[format!("sif <{}> dtime 99999999", i[0])]);
    let (r, ours) = processed(&img);
    stopped_at(&r, i[0], "out of range");
    assert!(r.released.is_empty());
    assert_eq!(head(&ours), 0);
    // An inode not in use on the list.
    let dir = Scratch::new("orphan", "free");
    let (img, _) = image(&dir.0, &ext4);
    debugfs(&img, &["ssv last_orphan 40".to_string()]);
    let (r, _) = processed(&img);
    stopped_at(&r, 40, "not in use");
    // A linked orphan whose extent tree cannot be read: a (released) → c (bad root).
    let dir = Scratch::new("orphan", "extent");
    let (img, i) = image(&dir.0, &ext4);
    forge(&img, &[("a", i[0])], &[(i[0], None), (i[2], Some(1000))]);
    debugfs(&img, &[format!("sif <{}> block[0] 0", i[2])]);
    let fs = open(&img);
    let before = fs.read_inode_raw(InodeNr(i[2])).unwrap();
    let (r, ours) = processed(&img);
    stopped_at(&r, i[2], "bad extent tree");
    assert_eq!(r.released, vec![InodeNr(i[0])]);
    let after = open(&ours).read_inode_raw(InodeNr(i[2])).unwrap();
    assert_eq!(before, after, "nothing of the bad orphan changed");
}

#[test]
fn an_orphan_file_block_with_a_bad_checksum_stops_before_the_file() {
    if !require(&TOOLS) {
        return;
    }
    let dir = Scratch::new("orphan", "file");
    let (img, i) = image(&dir.0, &["-t", "ext4", "-b", "4096", "-O", "orphan_file"]);
    let fs = open(&img);
    let of = fs.sb.s_orphan_file_inum;
    let out = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("bmap <{of}> 0"))
        .arg(&img));
    let block: u64 = out.trim().parse().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&i[4].to_le_bytes(), block * 4096).unwrap();
    let r = release_orphans(&open(&img), NOW);
    let w = r.warnings.first().expect("a warning");
    assert!(
        w.reason.contains("checksum") && w.block == Some(ext::BlockNr(block)),
        "{w}"
    );
    assert!(r.blocks.is_empty() && !r.emptied);
}

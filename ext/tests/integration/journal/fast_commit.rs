//! Fast commits written by hand into the area of a dirty journal made with debugfs (the
//! kernel's own are compared in the binary's `tests/integration/journal/fast_commits.rs`):
//! a new file (INODE, ADD_RANGE, CREAT, INODE) replayed into an e2fsck-clean state with the
//! file where the tags put it; a CREAT the kernel fails on leaves the block-level replay
//! alone, with a warning. Also the builder of the robustness test's images.

use super::{free_blocks, journal, metadata_change, mkfs, tools, Txn};
use crate::common::{run, Scratch};
use ext::{
    BlockView, FileView, Filesystem, Journal, JournalLookup, OpenOptions, ReplayMode, ReplayedView,
};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A `struct ext4_fc_tl` and its value.
pub(crate) fn tl(tag: u16, v: &[u8]) -> Vec<u8> {
    let mut b = tag.to_le_bytes().to_vec();
    b.extend((v.len() as u16).to_le_bytes());
    b.extend(v);
    b
}

/// One fast-commit block of `bs` bytes: `tags`, then a TAIL for `tid` filling the block,
/// its crc32c over the tags and its own tid.
pub(crate) fn commit_block(tags: &[u8], tid: u32, bs: usize) -> Vec<u8> {
    let mut b = tags.to_vec();
    b.extend(8u16.to_le_bytes());
    b.extend(((bs - b.len() - 2) as u16).to_le_bytes());
    b.extend(tid.to_le_bytes());
    let crc = !crc32c::crc32c_append(!0, &b);
    b.extend(crc.to_le_bytes());
    b.resize(bs, 0);
    b
}

pub(crate) fn head(tid: u32) -> Vec<u8> {
    tl(9, &[&0u32.to_le_bytes()[..], &tid.to_le_bytes()].concat())
}

pub(crate) fn dentry(tag: u16, parent: u32, ino: u32, name: &[u8]) -> Vec<u8> {
    tl(
        tag,
        &[&parent.to_le_bytes()[..], &ino.to_le_bytes(), name].concat(),
    )
}

pub(crate) fn add_range(ino: u32, lblk: u32, len: u16, pblk: u64) -> Vec<u8> {
    let mut v = ino.to_le_bytes().to_vec();
    v.extend(lblk.to_le_bytes());
    v.extend(len.to_le_bytes());
    v.extend(((pblk >> 32) as u16).to_le_bytes());
    v.extend((pblk as u32).to_le_bytes());
    tl(1, &v)
}

/// A dirty image with fast commits allowed: its path, block size, the area's first block
/// (journal block: the tags start at the next), the block log's end tid, free blocks.
pub(crate) struct FcImage {
    pub(crate) img: PathBuf,
    pub(crate) bs: usize,
    pub(crate) area: u64,
    pub(crate) tid: u32,
    pub(crate) free: Vec<u64>,
    /// Inodes worth naming: `/f`, `/d`, the htree directory `/h` and one of its files, the
    /// fragmented `/frag` (an extent tree of depth 1).
    pub(crate) inos: Vec<u32>,
    /// An inode free after the block-level replay too (the last one).
    pub(crate) free_ino: u32,
}

/// The inode number of `path` in `img` (debugfs `stat`).
fn ino_of(img: &Path, path: &str) -> u32 {
    let out = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(img));
    out.split_whitespace()
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no inode for {path}: {out}"))
}

/// `mke2fs -O fast_commit` (1 KiB blocks, 8 MiB), a file and a directory, then a journal
/// needing recovery for a `mkdir /d2` (debugfs, no journal checksums) and FAST_COMMIT in the
/// journal superblock.
pub(crate) fn fc_image(dir: &Path) -> FcImage {
    let img = mkfs(
        dir,
        &["-t", "ext4", "-O", "fast_commit", "-b", "1024"],
        "8M",
    );
    populate(dir, &img);
    let change = metadata_change(&img, "mkdir /d2\n");
    journal(
        &img,
        "",
        &[Txn {
            blocks: change,
            ..Txn::default()
        }],
    );
    set_fast_commit(&img);
    let inos = ["/f", "/d", "/h", "/h/entry-name-007", "/frag"]
        .iter()
        .map(|p| ino_of(&img, p))
        .collect();
    let fs = Filesystem::open(FileView::open(&img).unwrap(), &OpenOptions::default()).unwrap();
    let JournalLookup::Found(j) = Journal::locate(&fs, None).unwrap().lookup else {
        panic!("no journal");
    };
    let rec = j.recover();
    let area = rec
        .fast_commit
        .as_ref()
        .expect("a fast-commit area")
        .journal_blocks
        .0;
    FcImage {
        img: img.clone(),
        bs: fs.sb.block_size as usize,
        area,
        tid: rec.end_tid,
        free: free_blocks(&img, 8, 4000),
        inos,
        free_ino: fs.sb.s_inodes_count,
    }
}

/// A file `/f`, a directory `/d`, a file `/frag` of eleven extents, an htree directory `/h`
/// of 150 entries (`e2fsck -D` indexes it).
fn populate(dir: &Path, img: &Path) {
    let src = dir.join("f.txt");
    std::fs::write(&src, vec![b'f'; 3000]).unwrap();
    let big = dir.join("big.bin");
    std::fs::write(&big, vec![b'b'; 40 * 1024]).unwrap();
    let empty = dir.join("empty");
    std::fs::write(&empty, b"").unwrap();
    let mut cmds = format!(
        "write {} /f\nmkdir /d\nmkdir /h\nwrite {} /frag\n",
        src.display(),
        big.display()
    );
    for k in (1..30).step_by(3) {
        cmds += &format!("punch /frag {k} {k}\n");
    }
    for k in 0..150 {
        cmds += &format!("write {} /h/entry-name-{k:03}\n", empty.display());
    }
    super::debugfs(img, &cmds);
    let o = Command::new("e2fsck")
        .args(["-fyD"])
        .arg(img)
        .output()
        .unwrap();
    assert!(o.status.code().is_some_and(|c| c <= 1), "{o:?}");
}

/// FAST_COMMIT set in the journal superblock (debugfs `jo` without `-c` leaves it out and
/// no checksum).
fn set_fast_commit(img: &Path) {
    let jsb = {
        let fs = Filesystem::open(FileView::open(img).unwrap(), &OpenOptions::default()).unwrap();
        let JournalLookup::Found(j) = Journal::locate(&fs, None).unwrap().lookup else {
            panic!("no journal");
        };
        j.device_block(0).unwrap() * u64::from(fs.sb.block_size)
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let mut incompat = [0u8; 4];
    f.read_exact_at(&mut incompat, jsb + 0x28).unwrap();
    let v = u32::from_be_bytes(incompat) | 0x20;
    f.write_all_at(&v.to_be_bytes(), jsb + 0x28).unwrap();
}

/// Writes the fast-commit `blocks` into the area of `img` (bytes of the image file).
pub(crate) fn write_area(image: &mut [u8], fc: &FcImage, blocks: &[Vec<u8>]) {
    let fs = Filesystem::open(Mem(image.to_vec()), &OpenOptions::default()).unwrap();
    let JournalLookup::Found(j) = Journal::locate(&fs, None).unwrap().lookup else {
        panic!("no journal");
    };
    for (k, b) in blocks.iter().enumerate() {
        let at = j.device_block(fc.area + 1 + k as u64).unwrap() as usize * fc.bs;
        image[at..at + fc.bs].copy_from_slice(b);
    }
}

/// An in-memory image.
pub(crate) struct Mem(pub(crate) Vec<u8>);

impl BlockView for Mem {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        buf.fill(0);
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.0.len());
        let end = start.saturating_add(buf.len()).min(self.0.len());
        buf[..end - start].copy_from_slice(&self.0[start..end]);
        Ok(())
    }
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
}

/// The state `--replay` shows for `image`, and the fast-commit replay's report.
pub(crate) fn replayed(image: &[u8]) -> Option<(Vec<u8>, ext::FastCommitReplay)> {
    let fs = Filesystem::open(Mem(image.to_vec()), &OpenOptions::default()).ok()?;
    let JournalLookup::Found(j) = Journal::locate(&fs, None).ok()?.lookup else {
        return None;
    };
    let rec = j.recover();
    let mut view = ReplayedView::new(fs.view(), &j, &rec, ReplayMode::Replayed).ok()?;
    let report = view.replay_fast_commits(&rec).ok()??;
    let mut out = vec![0u8; image.len()];
    view.read_at(0, &mut out).unwrap();
    Some((out, report))
}

/// An inode record for a new regular file of `size` bytes (256-byte inodes).
fn file_record(size: u32) -> Vec<u8> {
    let mut r = vec![0u8; 160];
    r[0..2].copy_from_slice(&0x81A4u16.to_le_bytes());
    r[4..8].copy_from_slice(&size.to_le_bytes());
    for t in [0x08, 0x0C, 0x10, 0x90] {
        r[t..t + 4].copy_from_slice(&1_700_000_000u32.to_le_bytes());
    }
    r[0x1A..0x1C].copy_from_slice(&1u16.to_le_bytes());
    r[0x20..0x24].copy_from_slice(&0x80000u32.to_le_bytes());
    r[0x64..0x68].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    r[0x80..0x82].copy_from_slice(&32u16.to_le_bytes());
    r
}

fn e2fsck_clean(image: &[u8], dir: &Path) -> (bool, String) {
    let p = dir.join("replayed.img");
    std::fs::write(&p, image).unwrap();
    let o = Command::new("e2fsck").arg("-fn").arg(&p).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn a_hand_written_fast_commit_creates_a_file() {
    if !tools() {
        return;
    }
    let dir = Scratch::new("fc", "create");
    let fc = fc_image(&dir.0);
    let mut image = std::fs::read(&fc.img).unwrap();
    let ino = fc.free_ino;
    let (p, n) = (fc.free[0], 2u16);
    let rec = file_record(2 * fc.bs as u32);
    let inode = tl(6, &[&ino.to_le_bytes()[..], &rec].concat());
    let tags = [
        head(fc.tid),
        inode.clone(),
        add_range(ino, 0, n, p),
        dentry(3, 2, ino, b"fcfile"),
        inode,
    ]
    .concat();
    write_area(&mut image, &fc, &[commit_block(&tags, fc.tid, fc.bs)]);
    let (out, report) = replayed(&image).expect("a replay");
    assert_eq!(report.tags, 6, "{report:?}");
    assert!(report.exact && report.warnings.is_empty(), "{report:?}");
    assert!(!report.blocks.is_empty());
    let (clean, says) = e2fsck_clean(&out, &dir.0);
    assert!(clean, "{says}");
    let p2 = dir.0.join("replayed.img");
    let stat = run(Command::new("debugfs")
        .arg("-R")
        .arg("blocks /fcfile")
        .arg(&p2));
    assert_eq!(stat.trim(), format!("{} {}", p, p + 1));
    // Not in the source: the replay is in memory.
    let src = std::fs::read(&fc.img).unwrap();
    assert!(src.len() == image.len());
}

#[test]
fn a_create_the_kernel_fails_on_leaves_the_block_replay() {
    if !tools() {
        return;
    }
    let dir = Scratch::new("fc", "fails");
    let fc = fc_image(&dir.0);
    let mut image = std::fs::read(&fc.img).unwrap();
    let tags = [head(fc.tid), dentry(3, 2, 1, b"bad")].concat();
    write_area(&mut image, &fc, &[commit_block(&tags, fc.tid, fc.bs)]);
    let (out, report) = replayed(&image).expect("a replay");
    assert!(report.blocks.is_empty() && !report.exact, "{report:?}");
    assert!(
        report.warnings[0]
            .reason
            .contains("the kernel's recovery fails"),
        "{report:?}"
    );
    let plain = {
        let fs = Filesystem::open(Mem(image.clone()), &OpenOptions::default()).unwrap();
        let JournalLookup::Found(j) = Journal::locate(&fs, None).unwrap().lookup else {
            panic!("no journal");
        };
        let rec = j.recover();
        let view = ReplayedView::new(fs.view(), &j, &rec, ReplayMode::Replayed).unwrap();
        let mut v = vec![0u8; image.len()];
        view.read_at(0, &mut v).unwrap();
        v
    };
    assert!(out == plain, "the block-level replay alone");
}

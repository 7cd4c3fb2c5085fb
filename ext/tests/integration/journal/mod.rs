//! The jbd2 journal against e2fsprogs (helpers here; `scenarios`, `corrupt`, `special`,
//! `corpus` hold the tests): dirty journals made with debugfs (`jo/jw/jc`, notes
//! jbd2-journal.md §6) or by a small jbd2 writer here (wrap-around), replayed in memory and
//! compared on every block with a copy replayed by `e2fsck -E journal_only -y` and by
//! `debugfs -w -R jr`, and walked: the replayed view's copy set must be the replayed copy's.
//! The source image must never change.
//!
//! Superblock fields the tools update that the view leaves as they were (documented in the
//! view module): `s_wtime`, `s_lastcheck` (jr sets it to 0xFFFFFFFF), `s_kbytes_written`. They
//! are copied from the oracle before comparing (and the checksum recomputed).

mod corpus;
mod corrupt;
pub(crate) mod fast_commit;
mod scenarios;
mod special;

use crate::common::{corpus_images, gunzip, missing_blocks, require, run, shared_corpus, Scratch};
use ext::{
    walk, BlockView, FileView, Filesystem, Journal, JournalLocation, JournalLookup, JournalState,
    OpenOptions, Recovery, ReplayMode, ReplayedView, SuperblockBytes, WalkOptions,
};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The oracles of the journal tests.
pub(super) const TOOLS: [&str; 3] = ["mke2fs", "debugfs", "e2fsck"];

/// True if [`TOOLS`] are installed; otherwise a visible skip (a panic under `CI=true`) and
/// false: the caller returns.
pub(crate) fn tools() -> bool {
    require(&TOOLS)
}

pub(super) fn sha(p: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(p).unwrap()).to_vec()
}

pub(super) fn debugfs(img: &Path, cmds: &str) -> String {
    let f = img.with_extension("cmds");
    std::fs::write(&f, cmds).unwrap();
    run(Command::new("debugfs").arg("-w").arg("-f").arg(&f).arg(img))
}

/// `mke2fs -q -F ARGS DIR/fs.img SIZE`.
pub(super) fn mkfs(dir: &Path, args: &[&str], size: &str) -> PathBuf {
    let img = dir.join("fs.img");
    run(Command::new("mke2fs")
        .args(["-q", "-F"])
        .args(args)
        .arg(&img)
        .arg(size));
    img
}

/// `n` free blocks from `start` on (debugfs `ffb`).
pub(super) fn free_blocks(img: &Path, n: usize, start: u64) -> Vec<u64> {
    let out = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("ffb {n} {start}"))
        .arg(img));
    out.split_whitespace()
        .filter_map(|w| w.parse().ok())
        .take(n)
        .collect()
}

pub(super) fn block_size(img: &Path) -> usize {
    crate::common::open(img).sb.block_size as usize
}

/// The blocks `debugfs -w -R CMDS` changes on a copy of `img`: (block, new bytes).
pub(super) fn metadata_change(img: &Path, cmds: &str) -> Vec<(u64, Vec<u8>)> {
    let copy = img.with_extension("changed");
    std::fs::copy(img, &copy).unwrap();
    debugfs(&copy, cmds);
    let bs = block_size(img);
    let (a, b) = (std::fs::read(img).unwrap(), std::fs::read(&copy).unwrap());
    let _ = std::fs::remove_file(&copy);
    a.chunks(bs)
        .zip(b.chunks(bs))
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, (_, y))| (i as u64, y.to_vec()))
        .collect()
}

/// One `jw` transaction: blocks and their contents, revokes, committed or not.
#[derive(Default)]
pub(super) struct Txn {
    pub(super) blocks: Vec<(u64, Vec<u8>)>,
    pub(super) revoke: Vec<u64>,
    pub(super) uncommitted: bool,
}

/// Writes the transactions into `img`'s journal with debugfs (`jo OPEN_ARGS`, `jw`, `jc`).
pub(super) fn journal(img: &Path, open_args: &str, txns: &[Txn]) {
    let dir = img.parent().unwrap();
    let mut cmds = format!("jo {open_args}\n");
    for (i, t) in txns.iter().enumerate() {
        let mut line = "jw".to_string();
        let list = |v: Vec<String>| v.join(",");
        if !t.blocks.is_empty() {
            line += &format!(
                " -b {}",
                list(t.blocks.iter().map(|b| b.0.to_string()).collect())
            );
        }
        if !t.revoke.is_empty() {
            line += &format!(
                " -r {}",
                list(t.revoke.iter().map(u64::to_string).collect())
            );
        }
        if t.uncommitted {
            line += " -c";
        }
        if !t.blocks.is_empty() {
            let payload = dir.join(format!("payload{i}.bin"));
            let bytes: Vec<u8> = t.blocks.iter().flat_map(|b| b.1.clone()).collect();
            std::fs::write(&payload, bytes).unwrap();
            line += &format!(" {}", payload.display());
        }
        cmds += &line;
        cmds += "\n";
    }
    cmds += "jc\n";
    debugfs(img, &cmds);
}

pub(super) fn filled(bs: usize, byte: u8) -> Vec<u8> {
    vec![byte; bs]
}

/// A block beginning with the jbd2 magic (logged escaped).
pub(super) fn magic_block(bs: usize) -> Vec<u8> {
    let mut v = filled(bs, 0x77);
    v[..4].copy_from_slice(&0xC03B_3998u32.to_be_bytes());
    v
}

/// The standard scenario: T1 = a metadata change (mkdir, a file) plus block a; T2 revokes a;
/// T3 writes b (escaped) and c; T4 (uncommitted) writes a and d.
pub(super) fn scenario(img: &Path, open_args: &str) {
    let bs = block_size(img);
    let src = img.parent().unwrap().join("hello.txt");
    std::fs::write(&src, vec![b'h'; 3 * bs + 5]).unwrap();
    let change = metadata_change(
        img,
        &format!("mkdir /d1\nmkdir /d1/d2\nwrite {} /d1/f\n", src.display()),
    );
    assert!(!change.is_empty());
    let free = free_blocks(img, 60, 2000);
    let free: Vec<u64> = free
        .into_iter()
        .filter(|b| !change.iter().any(|c| c.0 == *b))
        .collect();
    let (a, b, c, d) = (free[40], free[41], free[42], free[43]);
    let mut t1 = change;
    t1.push((a, filled(bs, 0xA1)));
    let txns = [
        Txn {
            blocks: t1,
            ..Txn::default()
        },
        Txn {
            revoke: vec![a],
            ..Txn::default()
        },
        Txn {
            blocks: vec![(b, magic_block(bs)), (c, filled(bs, 0xC3))],
            ..Txn::default()
        },
        Txn {
            blocks: vec![(a, filled(bs, 0xA4)), (d, filled(bs, 0xD4))],
            uncommitted: true,
            ..Txn::default()
        },
    ];
    journal(img, open_args, &txns);
}

/// A copy of `img` replayed by `tool`: "e2fsck" (`-E journal_only -y`, or `-fy` when
/// `force`) or "jr" (`debugfs -w -R jr`).
pub(super) fn oracle(img: &Path, tool: &str) -> PathBuf {
    let out = img.with_extension(tool);
    std::fs::copy(img, &out).unwrap();
    let o = match tool {
        "jr" => Command::new("debugfs")
            .args(["-w", "-R", "jr"])
            .arg(&out)
            .output(),
        _ => Command::new("e2fsck")
            .args(["-E", "journal_only", "-y"])
            .arg(&out)
            .output(),
    }
    .unwrap();
    assert!(o.status.code().is_some_and(|c| c <= 1), "{tool}: {o:?}");
    out
}

/// Our replayed-state view of `img` (recovered with `force` = recover_anyway), checked on
/// every block against `want` and walked like it; returns the recovery.
pub(super) fn compare(img: &Path, want: &Path, force: bool) -> Recovery {
    compare_except(img, want, force, &[])
}

/// [`compare`], except for the blocks `skip` (which the oracle writes besides the replay).
pub(super) fn compare_except(img: &Path, want: &Path, force: bool, skip: &[u64]) -> Recovery {
    let before = sha(img);
    let fs = crate::common::open(img);
    let located = Journal::locate(&fs, None).unwrap();
    let JournalLookup::Found(j) = located.lookup else {
        panic!("no usable journal");
    };
    let rec = if force {
        j.recover_anyway()
    } else {
        j.recover()
    };
    let view = ReplayedView::new(fs.view(), &j, &rec, ReplayMode::Replayed).unwrap();
    same_state(&view, fs.sb.block_size as usize, want, skip);
    drop(view);
    assert_eq!(sha(img), before, "the source changed");
    rec
}

/// Every block of `view` but `skip` equals the image `want` (superblock normalized), and both
/// walk to the same copy set.
pub(super) fn same_state(view: &dyn BlockView, bs: usize, want: &Path, skip: &[u64]) {
    let want_bytes = std::fs::read(want).unwrap();
    let sb_block = 1024 / bs;
    for (i, theirs) in want_bytes.chunks(bs).enumerate() {
        if skip.contains(&(i as u64)) {
            continue;
        }
        let mut ours = vec![0u8; bs];
        view.read_at((i * bs) as u64, &mut ours).unwrap();
        if i == sb_block {
            normalize_superblock(&mut ours[1024 % bs..1024 % bs + 1024], &theirs[1024 % bs..]);
        }
        assert!(ours == theirs, "block {i} differs from {}", want.display());
    }
    let ours = walk(
        &Filesystem::open(view, &OpenOptions::default()).unwrap(),
        &WalkOptions::default(),
    );
    let theirs = walk(&crate::common::open(want), &WalkOptions::default());
    assert_eq!(ours.blocks.extents(), theirs.blocks.extents());
}

/// Copies the fields the tools update with times and counters from `theirs`.
pub(super) fn normalize_superblock(ours: &mut [u8], theirs: &[u8]) {
    for (off, len) in [(0x30, 4), (0x40, 4), (0x178, 8)] {
        ours[off..off + len].copy_from_slice(&theirs[off..off + len]);
    }
    SuperblockBytes::new(ours).unwrap().update_checksum();
}

//! The jbd2 journal against e2fsprogs: dirty journals made with debugfs (`jo/jw/jc`, notes
//! jbd2-journal.md §6) or by a small jbd2 writer here (wrap-around), replayed in memory and
//! compared on every block with a copy replayed by `e2fsck -E journal_only -y` and by
//! `debugfs -w -R jr`, and walked: the replayed view's copy set must be the replayed copy's.
//! The source image must never change.
//!
//! Superblock fields the tools update that the view leaves as they were (documented in the
//! view module): `s_wtime`, `s_lastcheck` (jr sets it to 0xFFFFFFFF), `s_kbytes_written`. They
//! are copied from the oracle before comparing (and the checksum recomputed).

use crate::common::{corpus_dir, gunzip, have, missing_blocks, run, Scratch};
use ext::{
    ro_compat, superblock_checksum, walk, BlockView, FileView, Filesystem, Journal,
    JournalLocation, JournalLookup, JournalState, OpenOptions, Recovery, ReplayMode, ReplayedView,
    WalkOptions, JSB_S_CHECKSUM_OFFSET, S_CHECKSUM_OFFSET, S_FEATURE_RO_COMPAT_OFFSET,
};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

fn tools() -> bool {
    ["mke2fs", "debugfs", "e2fsck"].iter().all(|t| have(t))
}

fn sha(p: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(p).unwrap()).to_vec()
}

fn debugfs(img: &Path, cmds: &str) -> String {
    let f = img.with_extension("cmds");
    std::fs::write(&f, cmds).unwrap();
    run(Command::new("debugfs").arg("-w").arg("-f").arg(&f).arg(img))
}

/// `mke2fs -q -F ARGS DIR/fs.img SIZE`.
fn mkfs(dir: &Path, args: &[&str], size: &str) -> PathBuf {
    let img = dir.join("fs.img");
    run(Command::new("mke2fs")
        .args(["-q", "-F"])
        .args(args)
        .arg(&img)
        .arg(size));
    img
}

/// `n` free blocks from `start` on (debugfs `ffb`).
fn free_blocks(img: &Path, n: usize, start: u64) -> Vec<u64> {
    let out = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("ffb {n} {start}"))
        .arg(img));
    out.split_whitespace()
        .filter_map(|w| w.parse().ok())
        .take(n)
        .collect()
}

fn block_size(img: &Path) -> usize {
    crate::common::open(img).sb.block_size as usize
}

/// The blocks `debugfs -w -R CMDS` changes on a copy of `img`: (block, new bytes).
fn metadata_change(img: &Path, cmds: &str) -> Vec<(u64, Vec<u8>)> {
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
struct Txn {
    blocks: Vec<(u64, Vec<u8>)>,
    revoke: Vec<u64>,
    uncommitted: bool,
}

/// Writes the transactions into `img`'s journal with debugfs (`jo OPEN_ARGS`, `jw`, `jc`).
fn journal(img: &Path, open_args: &str, txns: &[Txn]) {
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

fn filled(bs: usize, byte: u8) -> Vec<u8> {
    vec![byte; bs]
}

/// A block beginning with the jbd2 magic (logged escaped).
fn magic_block(bs: usize) -> Vec<u8> {
    let mut v = filled(bs, 0x77);
    v[..4].copy_from_slice(&0xC03B_3998u32.to_be_bytes());
    v
}

/// The standard scenario: T1 = a metadata change (mkdir, a file) plus block a; T2 revokes a;
/// T3 writes b (escaped) and c; T4 (uncommitted) writes a and d.
fn scenario(img: &Path, open_args: &str) {
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
fn oracle(img: &Path, tool: &str) -> PathBuf {
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
fn compare(img: &Path, want: &Path, force: bool) -> Recovery {
    compare_except(img, want, force, &[])
}

/// [`compare`], except for the blocks `skip` (which the oracle writes besides the replay).
fn compare_except(img: &Path, want: &Path, force: bool, skip: &[u64]) -> Recovery {
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
    let want_bytes = std::fs::read(want).unwrap();
    let bs = fs.sb.block_size as usize;
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
        assert!(
            ours == theirs,
            "{}: block {i} differs from {}",
            img.display(),
            want.display()
        );
    }
    let ours = walk(
        &Filesystem::open(&view, &OpenOptions::default()).unwrap(),
        &WalkOptions::default(),
    );
    let theirs = walk(&crate::common::open(want), &WalkOptions::default());
    assert_eq!(ours.blocks.extents(), theirs.blocks.extents());
    drop(view);
    assert_eq!(sha(img), before, "the source changed");
    rec
}

/// Copies the fields the tools update with times and counters from `theirs`.
fn normalize_superblock(ours: &mut [u8], theirs: &[u8]) {
    for (off, len) in [(0x30, 4), (0x40, 4), (0x178, 8)] {
        ours[off..off + len].copy_from_slice(&theirs[off..off + len]);
    }
    let ro = u32::from_le_bytes(ours[S_FEATURE_RO_COMPAT_OFFSET..][..4].try_into().unwrap());
    if ro & ro_compat::METADATA_CSUM != 0 {
        let c = superblock_checksum(ours);
        ours[S_CHECKSUM_OFFSET..S_CHECKSUM_OFFSET + 4].copy_from_slice(&c.to_le_bytes());
    }
}

/// Builds the scenario on `mke2fs ARGS SIZE`, journaled with `jo OPEN`, and compares with
/// both oracles.
fn scenario_case(name: &str, args: &[&str], size: &str, open: &str) -> Recovery {
    let dir = Scratch::new("journal", name);
    let img = mkfs(&dir.0, args, size);
    scenario(&img, open);
    let e = oracle(&img, "e2fsck");
    let jr = oracle(&img, "jr");
    let rec = compare(&img, &e, false);
    compare(&img, &jr, false);
    rec
}

fn check_scenario(rec: &Recovery) {
    assert_eq!(rec.state, JournalState::NeedsRecovery);
    assert!(rec.replayed && rec.error.is_none(), "{rec:?}");
    assert_eq!(rec.transactions(), 3, "T4 is uncommitted");
    assert_eq!(rec.revoke_hits, 1);
    assert!(rec.overlay.values().any(|o| o.escaped));
}

#[test]
fn csum_v3_64bit_1k() {
    if !tools() {
        return;
    }
    let rec = scenario_case("v3-1k", &["-t", "ext4", "-b", "1024"], "16M", "-c");
    check_scenario(&rec);
}

#[test]
fn csum_v2_64bit_4k() {
    if !tools() {
        return;
    }
    let rec = scenario_case("v2-4k", &["-t", "ext4", "-b", "4096"], "64M", "-c -v 2");
    check_scenario(&rec);
}

#[test]
fn csum_v3_32bit_4k() {
    if !tools() {
        return;
    }
    let rec = scenario_case(
        "v3-32",
        &["-t", "ext4", "-O", "^64bit", "-b", "4096"],
        "32M",
        "-c",
    );
    check_scenario(&rec);
}

#[test]
fn no_csum_32bit_ext3_1k() {
    if !tools() {
        return;
    }
    let rec = scenario_case("ext3", &["-t", "ext3", "-b", "1024"], "16M", "");
    check_scenario(&rec);
}

#[test]
fn no_csum_64bit_4k() {
    if !tools() {
        return;
    }
    let rec = scenario_case("plain64", &["-t", "ext4", "-b", "4096"], "32M", "");
    check_scenario(&rec);
}

/// Flips one byte of journal block `jblock` (through the journal inode's map).
fn corrupt_journal_block(img: &Path, jblock: u64, at: usize) {
    let dev = {
        let fs = crate::common::open(img);
        let located = Journal::locate(&fs, None).unwrap();
        let JournalLookup::Found(j) = located.lookup else {
            panic!("no journal")
        };
        (j.device_block(jblock).unwrap(), fs.sb.block_size as u64)
    };
    let mut d = std::fs::read(img).unwrap();
    d[(dev.0 * dev.1) as usize + at] ^= 0xFF;
    std::fs::write(img, d).unwrap();
}

/// A v3 journal of 1 KiB blocks: T1 (3 blocks), T2 (1 block), both committed.
fn two_transactions(dir: &Path) -> (PathBuf, Vec<u64>) {
    let img = mkfs(dir, &["-t", "ext4", "-b", "1024"], "16M");
    let free = free_blocks(&img, 4, 3000);
    let txns = [
        Txn {
            blocks: free[..3]
                .iter()
                .map(|&b| (b, filled(1024, b as u8)))
                .collect(),
            ..Txn::default()
        },
        Txn {
            blocks: vec![(free[3], filled(1024, 0x44))],
            ..Txn::default()
        },
    ];
    journal(&img, "-c", &txns);
    (img, free)
}

#[test]
fn bad_data_block_checksum_skips_that_block_only() {
    if !tools() {
        return;
    }
    let dir = Scratch::new("journal", "tagcsum");
    let (img, free) = two_transactions(&dir.0);
    // Journal block 1 is T1's descriptor; 2..=4 its blocks.
    corrupt_journal_block(&img, 3, 100);
    for tool in ["e2fsck", "jr"] {
        let rec = compare(&img, &oracle(&img, tool), false);
        assert!(rec.error.as_deref().unwrap().contains("invalid checksum"));
        assert!(!rec.overlay.contains_key(&free[1]));
        assert!(rec.overlay.contains_key(&free[0]) && rec.overlay.contains_key(&free[3]));
        let w = rec
            .warnings
            .iter()
            .map(|w| w.to_string())
            .collect::<Vec<_>>();
        assert!(
            w.iter()
                .any(|w| w.contains("journal block 3")
                    && w.contains(&format!("data block {}", free[1]))),
            "{w:?}"
        );
    }
}

#[test]
fn bad_descriptor_checksum_is_fatal() {
    if !tools() {
        return;
    }
    let dir = Scratch::new("journal", "desccsum");
    let (img, _) = two_transactions(&dir.0);
    // T2's descriptor is journal block 6 (T1: 1 descriptor, 3 blocks, commit at 5).
    corrupt_journal_block(&img, 6, 40);
    let rec = compare(&img, &oracle(&img, "e2fsck"), false);
    assert!(rec.overlay.is_empty(), "SCAN failed: nothing replayed");
    assert!(rec.error.is_some());
    compare(&img, &oracle(&img, "jr"), false);
}

#[test]
fn bad_commit_checksum_ends_the_log() {
    if !tools() {
        return;
    }
    let dir = Scratch::new("journal", "commitcsum");
    let (img, free) = two_transactions(&dir.0);
    // T2's commit block is journal block 8.
    corrupt_journal_block(&img, 8, 300);
    let rec = compare(&img, &oracle(&img, "e2fsck"), false);
    assert_eq!(rec.transactions(), 1);
    assert!(!rec.overlay.contains_key(&free[3]));
}

#[test]
fn bad_journal_superblock_checksum_is_reported() {
    if !tools() {
        return;
    }
    let dir = Scratch::new("journal", "jsbcsum");
    let (img, _) = two_transactions(&dir.0);
    corrupt_journal_block(&img, 0, 0x60);
    let fs = crate::common::open(&img);
    let located = Journal::locate(&fs, None).unwrap();
    match located.lookup {
        JournalLookup::Unusable { reason } => {
            assert!(
                reason.contains("journal block 0") && reason.contains("s_checksum"),
                "{reason}"
            )
        }
        _ => panic!("a bad journal superblock must make the journal unusable"),
    }
    // The filesystem itself stays usable.
    assert!(!walk(&fs, &WalkOptions::default())
        .blocks
        .extents()
        .is_empty());
}

/// The device block of journal block `n` of inode 8 (debugfs `bmap`).
fn bmap8(img: &Path, n: u64) -> u64 {
    let out = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("bmap <8> {n}"))
        .arg(img));
    out.trim().parse().unwrap()
}

fn put_be(d: &mut [u8], at: usize, v: u32) {
    d[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// A hand-made transaction across the end of the log (jbd2 writer, notes §6): s_start =
/// maxlen − 2, s_sequence = 7, descriptor at 1022, data at 1023 and 1, commit at 2.
#[test]
fn wrap_around_log() {
    if !tools() {
        return;
    }
    let dir = Scratch::new("journal", "wrap");
    let img = mkfs(&dir.0, &["-t", "ext3", "-b", "1024"], "16M");
    let free = free_blocks(&img, 2, 3000);
    let dev: Vec<u64> = [0, 1, 2, 1022, 1023]
        .iter()
        .map(|&n| bmap8(&img, n))
        .collect();
    let mut d = std::fs::read(&img).unwrap();
    let blk = |d: &mut Vec<u8>, b: u64| -> std::ops::Range<usize> {
        let _ = d;
        (b as usize * 1024)..(b as usize + 1) * 1024
    };
    let (jsb, j1, j2, j1022, j1023) = (dev[0], dev[1], dev[2], dev[3], dev[4]);
    let r = blk(&mut d, jsb);
    put_be(&mut d[r.clone()], 0x18, 7);
    put_be(&mut d[r], 0x1C, 1022);
    let r = blk(&mut d, j1022);
    d[r.clone()].fill(0);
    let desc = &mut d[r];
    put_be(desc, 0, 0xC03B_3998);
    put_be(desc, 4, 1);
    put_be(desc, 8, 7);
    put_be(desc, 12, free[0] as u32); // tag 1, a UUID follows
    put_be(desc, 12 + 8 + 16, free[1] as u32); // tag 2
    put_be(desc, 12 + 8 + 16 + 4, 0xA); // SAME_UUID | LAST_TAG
    let r = blk(&mut d, j1023);
    d[r].fill(0x5A);
    let r = blk(&mut d, j1);
    d[r].fill(0x6B);
    let r = blk(&mut d, j2);
    d[r.clone()].fill(0);
    put_be(&mut d[r.clone()], 0, 0xC03B_3998);
    put_be(&mut d[r.clone()], 4, 2);
    put_be(&mut d[r], 8, 7);
    std::fs::write(&img, d).unwrap();
    run(Command::new("debugfs")
        .args(["-w", "-R", "feature needs_recovery"])
        .arg(&img));
    let rec = compare(&img, &oracle(&img, "e2fsck"), false);
    assert_eq!((rec.start_tid, rec.end_tid), (7, 8));
    assert_eq!(rec.overlay[&free[0]].journal_block, 1023);
    assert_eq!(rec.overlay[&free[1]].journal_block, 1);
    compare(&img, &oracle(&img, "jr"), false);
}

/// The journal inode made unusable (`i_mode` 0): the journal is read through `s_jnl_blocks`,
/// as e2fsck does on an indirect-mapped journal (it also rewrites inode 8 from the backup: its
/// inode-table block is not compared). On an extent-mapped journal e2fsck 1.47 does not use
/// the backup (it clears the journal); we still read it.
#[test]
fn journal_through_s_jnl_blocks() {
    if !tools() {
        return;
    }
    for (name, args, open) in [
        ("ext3", ["-t", "ext3", "-b", "1024"], "-c"),
        ("ext4", ["-t", "ext4", "-b", "1024"], "-c"),
    ] {
        let dir = Scratch::new("journal", name);
        let img = mkfs(&dir.0, &args, "16M");
        scenario(&img, open);
        let itable = run(Command::new("debugfs").arg("-R").arg("imap <8>").arg(&img));
        let at = itable.split("located at block ").nth(1).unwrap();
        let inode8_block: u64 = at.split(',').next().unwrap().trim().parse().unwrap();
        run(Command::new("debugfs")
            .args(["-w", "-R", "sif <8> mode 0"])
            .arg(&img));
        let fs = crate::common::open(&img);
        let located = Journal::locate(&fs, None).unwrap();
        let JournalLookup::Found(j) = &located.lookup else {
            panic!("the backup must be used");
        };
        assert!(matches!(
            j.location,
            JournalLocation::Inode {
                from_backup: true,
                ..
            }
        ));
        assert!(
            located.warnings[0].reason.contains("s_jnl_blocks"),
            "{:?}",
            located.warnings
        );
        let rec = j.recover();
        if name == "ext3" {
            // debugfs `jo -c` without metadata_csum writes a revoke-only transaction whose
            // commit e2fsck finds corrupt: "Journal transaction 2 was corrupt".
            assert_eq!((rec.transactions(), rec.failed_commit), (1, Some(2)));
            compare_except(&img, &oracle(&img, "e2fsck"), false, &[inode8_block]);
        } else {
            assert_eq!(rec.transactions(), 3);
        }
    }
}

/// RECOVER cleared by hand on a dirty journal: reported, not replayed by default; replayed
/// on request like `e2fsck -E journal_only -y` (which asks and replays).
#[test]
fn log_without_recover_flag() {
    if !tools() {
        return;
    }
    let dir = Scratch::new("journal", "norecover");
    let img = mkfs(&dir.0, &["-t", "ext4", "-b", "1024"], "16M");
    scenario(&img, "-c");
    run(Command::new("debugfs")
        .args(["-w", "-R", "feature ^needs_recovery"])
        .arg(&img));
    let fs = crate::common::open(&img);
    let located = Journal::locate(&fs, None).unwrap();
    let JournalLookup::Found(j) = &located.lookup else {
        panic!("journal expected");
    };
    assert_eq!(j.state(), JournalState::LogWithoutRecoverFlag);
    let rec = j.recover();
    assert!(!rec.replayed && rec.overlay.is_empty());
    let view = ReplayedView::new(fs.view(), j, &rec, ReplayMode::Replayed).unwrap();
    assert!(view.changed_blocks().is_empty());
    let rec = compare(&img, &oracle(&img, "e2fsck"), true);
    assert_eq!(rec.transactions(), 3);
}

/// `debugfs feature ^has_journal` leaves inode 8 and its blocks: they are still copied (the
/// journal superblock used to be missing next to e2image's copy).
#[test]
fn journal_inode_copied_without_has_journal() {
    if !tools() || !have("e2image") {
        return;
    }
    let dir = Scratch::new("journal", "nohasjournal");
    let img = mkfs(&dir.0, &["-t", "ext4", "-b", "1024"], "16M");
    let before = walk(&crate::common::open(&img), &WalkOptions::default());
    run(Command::new("debugfs")
        .args(["-w", "-R", "feature ^has_journal"])
        .arg(&img));
    let fs = crate::common::open(&img);
    let after = walk(&fs, &WalkOptions::default());
    let journal_blocks = |r: &ext::WalkResult| -> u64 {
        r.blocks
            .counts()
            .get(&ext::BlockClass::Journal)
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(journal_blocks(&after), journal_blocks(&before));
    assert_eq!(journal_blocks(&after), 1024);
    let raw = dir.0.join("e2i.raw");
    run(Command::new("e2image").arg("-r").arg(&img).arg(&raw));
    let missing = missing_blocks(&std::fs::read(&raw).unwrap(), 1024, &after.blocks);
    assert!(missing.is_empty(), "{missing:?}");
}

/// An unusable primary superblock: the first validating backup is used and named; an
/// explicit backup is still obeyed.
#[test]
fn superblock_fallback() {
    if !tools() {
        return;
    }
    let dir = Scratch::new("journal", "sbfallback");
    let img = mkfs(&dir.0, &["-t", "ext4", "-b", "1024"], "64M");
    let mut d = std::fs::read(&img).unwrap();
    d[1024 + 0x20] ^= 1; // s_blocks_per_group: the checksum no longer matches
    std::fs::write(&img, d).unwrap();
    let view = || FileView::open(&img).unwrap();
    let (fs, used) = Filesystem::open_with_fallback(view(), &OpenOptions::default()).unwrap();
    let used = used.unwrap();
    assert_eq!((used.block.0, used.block_size), (8193, 1024));
    assert!(
        used.primary_error.contains("s_checksum"),
        "{}",
        used.primary_error
    );
    assert!(
        walk(&fs, &WalkOptions::default()).blocks.contains(1),
        "the primary is copied"
    );
    let forced = OpenOptions {
        superblock: Some(ext::BlockNr(3 * 8192 + 1)),
        block_size: Some(1024),
    };
    let (fs, used) = Filesystem::open_with_fallback(view(), &forced).unwrap();
    assert!(used.is_none());
    assert_eq!(fs.sb_block.0, 3 * 8192 + 1);
}

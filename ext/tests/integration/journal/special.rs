//! Wrap-around, the s_jnl_blocks fallback, a log without needs_recovery, the journal inode
//! without has_journal, the superblock fallback.

use super::*;

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
    if !require(&["mke2fs", "debugfs", "e2fsck", "e2image"]) {
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

/// An external journal device (a file: `mke2fs -O journal_dev`, attached by setting
/// `s_journal_uuid`), replayed against `e2fsck -E journal_only -j`.
#[test]
fn external_journal_device() {
    if !tools() {
        return;
    }
    let dir = Scratch::new("journal", "external");
    let jd = dir.0.join("jd.img");
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-O", "journal_dev", "-b", "1024"])
        .arg(&jd)
        .arg("2M"));
    let img = mkfs(
        &dir.0,
        &["-t", "ext4", "-O", "^has_journal", "-b", "1024"],
        "16M",
    );
    let dump = run(Command::new("dumpe2fs").arg("-h").arg(&jd));
    let uuid = dump
        .lines()
        .find(|l| l.starts_with("Filesystem UUID:"))
        .unwrap();
    let uuid = uuid.split_whitespace().last().unwrap();
    debugfs(
        &img,
        &format!("ssv journal_uuid {uuid}\nfeature has_journal\n"),
    );
    let free = free_blocks(&img, 2, 3000);
    std::fs::write(
        dir.0.join("p.bin"),
        [vec![0x31; 1024], vec![0x32; 1024]].concat(),
    )
    .unwrap();
    debugfs(
        &img,
        &format!(
            "jo -f {}\njw -b {},{} {}\njc\n",
            jd.display(),
            free[0],
            free[1],
            dir.0.join("p.bin").display()
        ),
    );
    let (want, want_jd) = (img.with_extension("e2fsck"), dir.0.join("jd.e2fsck"));
    std::fs::copy(&img, &want).unwrap();
    std::fs::copy(&jd, &want_jd).unwrap();
    run(Command::new("e2fsck")
        .args(["-E", "journal_only", "-y", "-j"])
        .arg(&want_jd)
        .arg(&want));
    let (before, before_jd) = (sha(&img), sha(&jd));
    let fs = crate::common::open(&img);
    let none = Journal::locate(&fs, None).unwrap();
    assert!(matches!(
        none.lookup,
        JournalLookup::ExternalNotGiven { .. }
    ));
    let jv = FileView::open(&jd).unwrap();
    let located = Journal::locate(&fs, Some(&jv)).unwrap();
    let JournalLookup::Found(j) = located.lookup else {
        panic!("the external journal must be found");
    };
    assert_eq!(j.location, JournalLocation::External);
    let rec = j.recover();
    assert_eq!((rec.transactions(), rec.overlay.len()), (1, 2));
    let view = ReplayedView::new(fs.view(), &j, &rec, ReplayMode::Replayed).unwrap();
    same_state(&view, 1024, &want, &[]);
    let (b, bytes) = j.replayed_superblock(&rec).unwrap().unwrap();
    let theirs = std::fs::read(&want_jd).unwrap();
    assert_eq!(bytes, theirs[b.0 as usize * 1024..][..1024]);
    assert_eq!((sha(&img), sha(&jd)), (before, before_jd));
}

//! Corrupt journals: bad data-block tag, descriptor, commit and journal superblock checksums.

use super::*;

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

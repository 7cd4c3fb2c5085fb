//! The checksum report through the API: verifying the pending checksums as a copy reads the
//! copy set ([`PendingChecks::verify`] on arbitrary pieces, the rest by
//! [`WalkResult::finish_checks`]) gives exactly what `finish_checks` alone gives by reading
//! the blocks itself; the committed image verifies clean; a byte flipped in an inode record
//! is found through both paths.

use crate::common::{corpus_images, fixture, gunzip, open, shared_corpus, Scratch};
use ext::{walk, BlockNr, BlockView, ChecksumKind, PendingTally, WalkOptions, WalkResult};
use std::path::Path;

/// The walk of `img` with its pending checks finished by reading (`copy` false), or by a
/// simulated copy that reads the copy set in pieces of `piece` blocks first.
fn report(img: &Path, copy: Option<u64>) -> WalkResult {
    let fs = open(img);
    let mut w = walk(&fs, &WalkOptions::default());
    let mut tally = PendingTally::default();
    if let Some(piece) = copy {
        let bs = u64::from(fs.sb.block_size);
        for e in w.blocks.extents() {
            let mut s = e.start;
            while s < e.end() {
                let n = piece.min(e.end() - s);
                let mut buf = vec![0u8; (n * bs) as usize];
                fs.view()
                    .read_blocks(fs.sb.block_size, s, &mut buf)
                    .unwrap();
                tally.append(w.pending.verify(BlockNr(s), &buf));
                s += n;
            }
        }
    }
    w.finish_checks(fs.view(), tally);
    assert!(w.pending.is_empty());
    w
}

fn same(a: &WalkResult, b: &WalkResult, what: &str) {
    assert_eq!(a.checksums, b.checksums, "{what}");
    assert_eq!(a.warnings, b.warnings, "{what}");
    assert_eq!(a.omitted, b.omitted, "{what}");
}

#[test]
fn copy_path_and_read_path_agree_on_the_corpus() {
    let Some(dir) = shared_corpus() else {
        return;
    };
    let tmp = Scratch::new("csum", "corpus");
    let mut with_bad = 0;
    for gz in corpus_images(&dir) {
        let img = tmp.0.join("img");
        gunzip(&gz, &img);
        let Ok(fs) = ext::Filesystem::open(ext::FileView::open(&img).unwrap(), &Default::default())
        else {
            continue;
        };
        drop(fs);
        let read = report(&img, None);
        let copied = report(&img, Some(7));
        same(&read, &copied, &gz.display().to_string());
        let r = &read.checksums;
        assert!(r.failed() <= r.verified());
        let listed = r.bad.len() as u64;
        assert!(listed <= r.failed(), "{}", gz.display());
        with_bad += u32::from(r.failed() > 0);
    }
    assert!(
        with_bad >= 5,
        "only {with_bad} corpus images have bad checksums"
    );
}

#[test]
fn committed_image_verifies_clean_and_a_flipped_inode_is_found() {
    let tmp = Scratch::new("csum", "small");
    let img = tmp.0.join("small.img");
    gunzip(&fixture("ext4-small.img.gz"), &img);
    let clean = report(&img, Some(64));
    let r = &clean.checksums;
    assert_eq!(r.failed(), 0, "{r:?}");
    if !open(&img).sb.has_metadata_csum() {
        return;
    }
    assert!(r.count(ChecksumKind::Inode).verified > 0, "{r:?}");
    // Inode 2's record: byte 0x10 (i_mtime) of its slot in the first inode-table block.
    let fs = open(&img);
    let itable = {
        let w = walk(&fs, &WalkOptions::default());
        w.blocks
            .extents()
            .iter()
            .find(|e| e.class == ext::BlockClass::InodeTable)
            .unwrap()
            .start
    };
    let at = itable * u64::from(fs.sb.block_size) + u64::from(fs.sb.s_inode_size) + 0x10;
    drop(fs);
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[at as usize] ^= 0x55;
    std::fs::write(&img, &bytes).unwrap();
    for copy in [None, Some(3)] {
        let w = report(&img, copy);
        let bad: Vec<_> = w
            .checksums
            .bad
            .iter()
            .map(|b| (b.kind, b.block, b.inode))
            .collect();
        assert_eq!(
            bad,
            vec![(
                ChecksumKind::Inode,
                Some(BlockNr(itable)),
                Some(ext::InodeNr(2))
            )]
        );
        assert!(w
            .warnings
            .iter()
            .any(|w| w.reason.contains("inode checksum")));
    }
}

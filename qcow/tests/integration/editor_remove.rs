//! `Editor` removals: snapshots removed (the oldest, then one in the middle, then the newest
//! while the active layer it matched is kept), the remaining states byte-identical, `qemu-img
//! check` clean, the freed clusters punched (fewer blocks) and reused by the next append (the
//! file does not grow).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::common::archive::*;
use crate::common::*;
use qcow::Version;

const GEO: Geo = Geo {
    cluster_bits: 12,
    size: 16 << 20,
    version: Version::V3,
};

/// Five states, oldest first, 20 % of the clusters changing each time.
fn history(n: usize) -> Vec<Named> {
    let mut e = first_state(GEO, 800, 11);
    let mut out = Vec::new();
    for i in 1..=n {
        out.push(Named {
            name: format!("day-{i}"),
            expect: e.clone(),
        });
        e = evolve(GEO, &e, 20, 200 + i as u64);
    }
    out
}

fn blocks(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks()
}

fn len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

/// Removes snapshot `i` (an index in the current table) and commits, keeping the active layer.
fn remove(img: &Path, i: usize) -> qcow::CommitSummary {
    let mut ed = open_editor(img);
    ed.remove_snapshot(i).unwrap();
    ed.commit(None, &[]).unwrap()
}

#[test]
fn remove_oldest_and_middle_then_reuse() {
    require_qemu!();
    let dir = scratch("editor-remove");
    let img = dir.join("archive.qcow2");
    let all = history(5);
    let mut kept: Vec<Named> = all.iter().rev().cloned().collect();
    write_archive(&img, GEO, &kept);
    assert_archive(&img, GEO, &kept);

    let before = blocks(&img);
    let s = remove(&img, 4); // the oldest
    kept.remove(4);
    assert!(s.committed && s.freed_clusters > 0, "{s:?}");
    assert_eq!((s.snapshots, s.removed_snapshots), (4, 1));
    assert_archive(&img, GEO, &kept);
    assert!(
        blocks(&img) < before,
        "blocks {} -> {}",
        before,
        blocks(&img)
    );

    let before = blocks(&img);
    let s = remove(&img, 2); // a middle one
    kept.remove(2);
    assert!(s.freed_clusters > 0, "{s:?}");
    assert_archive(&img, GEO, &kept);
    assert!(
        blocks(&img) < before,
        "blocks {} -> {}",
        before,
        blocks(&img)
    );

    // The next append (a few % changed) fills the freed clusters before growing the file.
    let size = len(&img);
    let sixth = Named {
        name: "day-6".into(),
        expect: evolve(GEO, &all[4].expect, 3, 600),
    };
    let s = append(&img, GEO, &sixth);
    kept.insert(0, sixth);
    assert!(s.reused_clusters > 0, "{s:?}");
    assert_eq!(len(&img), size, "{s:?}");
    assert_archive(&img, GEO, &kept);
}

/// Removing the snapshot the active layer matches, keeping the active layer: its tables drop
/// to one reference, so COPIED must be set in them; the committed tables are copied, never
/// changed in place.
#[test]
fn remove_newest_keeps_active() {
    require_qemu!();
    let dir = scratch("editor-remove-newest");
    let img = dir.join("archive.qcow2");
    let mut kept: Vec<Named> = history(3).into_iter().rev().collect();
    write_archive(&img, GEO, &kept);
    let s = remove(&img, 0);
    assert!(s.l2_tables_copied > 0, "{s:?}");
    let v = verify::verify_image(&img);
    assert!(v.copied_l1 > 0 && v.copied_data > 0, "{v:?}");
    check_clean(&img);
    let newest = kept.remove(0);
    let names: Vec<String> = kept.iter().map(|n| n.name.clone()).collect();
    let got = qemu_digests(&img, &names);
    assert_eq!(got[""], expect_digest(GEO, &newest.expect));
    for st in &kept {
        assert_eq!(got[&st.name], expect_digest(GEO, &st.expect), "{}", st.name);
    }
    // QEMU writes into the now exclusive clusters in place and still checks clean.
    let i = img.to_str().unwrap();
    run_ok("qemu-io", &["-c", "write -P 0x5a 0 64k", i]);
    check_clean(&img);
    // Removing everything leaves the active layer alone.
    let mut ed = open_editor(&img);
    assert_eq!(ed.snapshot_matching_active(), None);
    (0..2).for_each(|i| ed.remove_snapshot(i).unwrap());
    let s = ed.commit(None, &[]).unwrap();
    assert_eq!(s.snapshots, 0);
    check_clean(&img);
    verify::verify_image(&img);
}

/// A commit without changes writes nothing, and what an unused state wrote is released.
#[test]
fn commit_without_changes_writes_no_header() {
    let dir = scratch("editor-noop");
    let img = dir.join("archive.qcow2");
    let kept: Vec<Named> = history(2).into_iter().rev().collect();
    write_archive(&img, GEO, &kept);
    let digest = file_digest(&img);
    let summary = open_editor(&img).commit(None, &[]).unwrap();
    assert!(
        !summary.committed && summary.bytes_written == 0,
        "{summary:?}"
    );
    assert_eq!(file_digest(&img), digest);
    let mut ed = open_editor(&img);
    let s = ed.writer().new_state();
    write_expect(ed.writer(), s, &kept[0].expect, None, GEO.c());
    let summary = ed.commit(None, &[]).unwrap();
    assert!(!summary.committed, "{summary:?}");
    assert_eq!(file_digest(&img), digest);
    verify::verify_image(&img);
}

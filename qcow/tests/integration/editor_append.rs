//! `Editor` appends: an archive of three states written by the `Writer`, then states 4 and 5
//! appended by the editor (changed, shared, dropped and new zero clusters), checked by QEMU
//! and the independent verifier after each append, at every cluster size and both versions;
//! the appended image stays close in size to a one-shot image of the same states.

use crate::common::archive::*;
use crate::common::*;
use qcow::{Error, Version};

fn states(geo: Geo, n: usize) -> Vec<Named> {
    // Oldest first here; archives list them newest first.
    let mut e = first_state(geo, geo.guest_clusters() / 6, 7);
    let mut out = Vec::new();
    for i in 1..=n {
        out.push(Named {
            name: format!("state-{i}"),
            expect: e.clone(),
        });
        e = evolve(geo, &e, 5, 100 + i as u64);
    }
    out
}

fn newest_first(s: &[Named]) -> Vec<Named> {
    s.iter().rev().cloned().collect()
}

fn append_two(name: &str, geo: Geo) {
    require_qemu!();
    let dir = scratch(name);
    let img = dir.join("archive.qcow2");
    let all = states(geo, 5);
    write_archive(&img, geo, &newest_first(&all[..3]));
    assert_archive(&img, geo, &newest_first(&all[..3]));
    for k in 4..=5 {
        let summary = append(&img, geo, &all[k - 1]);
        assert!(summary.committed);
        assert_eq!(summary.snapshots as usize, k);
        assert_archive(&img, geo, &newest_first(&all[..k]));
        let ed = open_editor(&img);
        assert_eq!(ed.leftover_bytes(), 0);
        assert_eq!(ed.snapshot_matching_active(), Some(0));
    }
    let one_shot = dir.join("one-shot.qcow2");
    write_archive(&one_shot, geo, &newest_first(&all));
    let (a, b) = (file_len(&img), file_len(&one_shot));
    eprintln!("{name}: appended {a} bytes, one-shot {b} bytes");
    assert!(
        a * 100 <= b * 115,
        "appended image {a} bytes, one-shot {b} bytes"
    );
}

fn file_len(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

#[test]
fn append_v3_4k() {
    let geo = Geo {
        cluster_bits: 12,
        size: 16 << 20,
        version: Version::V3,
    };
    append_two("editor-append-v3-4k", geo);
}

#[test]
fn append_v3_512() {
    let geo = Geo {
        cluster_bits: 9,
        size: (2 << 20) + 1536,
        version: Version::V3,
    };
    append_two("editor-append-v3-512", geo);
}

#[test]
fn append_v2_64k() {
    let geo = Geo {
        cluster_bits: 16,
        size: 256 << 20,
        version: Version::V2,
    };
    append_two("editor-append-v2-64k", geo);
}

#[test]
fn append_v3_2m() {
    let geo = Geo {
        cluster_bits: 21,
        size: 1 << 30,
        version: Version::V3,
    };
    append_two("editor-append-v3-2m", geo);
}

/// A loaded snapshot is a read-only base; cloned (or used directly) it becomes the active
/// layer again ("goto"), sharing its tables, whose stale COPIED bits (snapshot tables are not
/// checked) are fixed in copies. Invalid commits are refused before anything is committed.
#[test]
fn loaded_snapshots_restore_and_refusals() {
    require_qemu!();
    let geo = Geo {
        cluster_bits: 12,
        size: 8 << 20,
        version: Version::V3,
    };
    let dir = scratch("editor-restore");
    let img = dir.join("archive.qcow2");
    let all = newest_first(&states(geo, 3));
    write_archive(&img, geo, &all);

    let mut ed = open_editor(&img);
    let oldest = ed.load_snapshot(2).unwrap();
    assert_eq!(ed.load_snapshot(2).unwrap(), oldest);
    let e = ed.writer().write_clusters(oldest, 0, &vec![1u8; 4096]);
    assert!(matches!(e, Err(Error::InvalidArgument(_))), "{e:?}");
    let restored = ed.writer().clone_state(oldest).unwrap();
    let dup = ed.commit(Some(restored), &[spec(restored, "4", &all[0].name)]);
    assert!(matches!(dup, Err(Error::InvalidArgument(_))), "{dup:?}");
    check_clean(&img);
    assert_archive(&img, geo, &all);

    let mut ed = open_editor(&img);
    let oldest = ed.load_snapshot(2).unwrap();
    let restored = ed.writer().clone_state(oldest).unwrap();
    let s = ed
        .commit(
            Some(restored),
            &[spec(restored, "4", "restored"), spec(oldest, "5", "again")],
        )
        .unwrap();
    // The oldest state's tables were snapshot-only, some with COPIED still set on data it
    // alone held then: shared now, they are copied with COPIED cleared.
    assert!(
        s.committed && s.l2_tables == 0 && s.l2_tables_copied > 0,
        "{s:?}"
    );
    let mut expect = all.clone();
    let mut again = all[2].clone();
    again.name = "again".into();
    let mut restored = all[2].clone();
    restored.name = "restored".into();
    expect.insert(0, again);
    expect.insert(0, restored);
    assert_archive(&img, geo, &expect);
}

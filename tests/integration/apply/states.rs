//! Deltas made by `e2image-rs` itself: `--base` equals the qemu-built oracle delta, and
//! deltas between archive states and next3 snapshots apply onto FROM to give TO.

use super::{apply, builder, chain_in, differing_on_copy_set};
use crate::common::*;
use builder::make_delta;
use std::path::Path;

/// `e2image-rs --base` makes the delta the definition gives (`builder::oracle_delta`, built
/// with qemu's tools): the same replaced clusters, the same zero clusters, the same bytes.
#[test]
fn real_deltas_equal_the_oracles() {
    if skip() {
        return;
    }
    let (dir, [a, b, c]) = chain_in("ap-oracle");
    for (from, to, data) in [
        (&a, &b, false),
        (&a, &b, true),
        (&b, &c, true),
        (&a, &c, true),
    ] {
        let (real, oracle) = (dir.join("real.qcow2"), dir.join("oracle.qcow2"));
        make_delta(from, to, data, &real);
        builder::oracle_delta(from, to, data, &oracle);
        let bs = 4096;
        let zeros = |q: &Path| -> Vec<(u64, bool)> {
            builder::qemu_map(q, "qcow2")
                .into_iter()
                .flat_map(|(s, l, z)| (s / bs..(s + l) / bs).map(move |x| (x, z)))
                .collect()
        };
        assert_eq!(zeros(&real), zeros(&oracle), "{from:?}..{to:?} data {data}");
        let o = sh("qemu-img", &[&"compare", &"-q", &real, &oracle]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
}

/// Deltas between the states of a QCOW2 archive (`-x`, with file data) and between next3
/// snapshots, applied onto a copy of FROM: the target then holds TO on TO's copy set.
#[test]
fn archive_and_next3_deltas_apply() {
    if skip() {
        return;
    }
    let (dir, [a, b, c]) = chain_in("ap-states");
    let q = dir.join("arch.qcow2");
    expect(
        &[&"-Q", &"-d", &"--snapshot", &a, &"--snapshot", &b, &c, &q],
        0,
    );
    for (range, from, to) in [
        ("a.img..b.img", &a, &b),
        ("b.img", &b, &c),
        ("a.img", &a, &c),
    ] {
        let d = dir.join("d.qcow2");
        let _ = std::fs::remove_file(&d);
        expect(&[&"-Q", &"-d", &"-x", &range, &q, &d], 0);
        let t = sparse_copy(from, &dir.join("t.img"));
        let p = dir.join("p.patch");
        let _ = std::fs::remove_file(&p);
        apply(&[&d, &t, &"--patch", &p], 0);
        let bad = differing_on_copy_set(to, &t, true, &dir);
        assert!(bad.is_empty(), "{range}: blocks of TO differ: {bad:?}");
        assert_eq!(fsck(&t), fsck(to), "{range}");
    }
    let f = snapshot_fixtures(&["next3_3snap"])
        .remove("next3_3snap")
        .unwrap();
    let live: Vec<_> = f.snapshots.iter().filter(|r| !r.deleted).collect();
    let (older, newer) = (live[live.len() - 1], live[0]);
    let d = dir.join("n3.qcow2");
    let range = format!("{}..{}", older.name, newer.name);
    expect(&[&"-Q", &"-x", &range, &f.path, &d], 0);
    let t = sparse_copy(&older.expected, &dir.join("n3.img"));
    apply(&[&d, &t, &"--patch", &dir.join("n3.patch")], 0);
    let bad = differing_on_copy_set(&newer.expected, &t, false, &dir);
    assert!(bad.is_empty(), "next3 {range}: blocks differ: {bad:?}");
}

/// Files rewritten: in place (a file's data blocks overwritten, its inode unchanged) and as a
/// new file under the old name; a `-d` delta applied onto FROM gives TO, `--undo` gives FROM.
#[test]
fn rewritten_files_apply() {
    if skip() {
        return;
    }
    let (dir, [_a, _b, c]) = chain_in("ap-rewrite");
    let d = sparse_copy(&c, &dir.join("d.img"));
    // Three data blocks of a fragmented file (logical blocks 0, 32 and 64: one per extent).
    let blocks: Vec<u64> = [0, 32, 64]
        .iter()
        .map(|l| {
            let o = sh(
                "debugfs",
                &[&"-R", &format!("bmap /sparse/frag128.bin {l}"), &d],
            );
            stdout(&o).trim().parse().expect("a mapped block")
        })
        .collect();
    assert!(blocks.iter().all(|&b| b > 0), "{blocks:?}");
    let mut g = Xorshift::new(11);
    let f = std::fs::OpenOptions::new().write(true).open(&d).unwrap();
    for b in &blocks {
        std::os::unix::fs::FileExt::write_all_at(&f, &g.bytes(4096), b * 4096).unwrap();
    }
    drop(f);
    let small = dir.join("small.txt");
    std::fs::write(&small, b"rewritten as a new file\n").unwrap();
    debugfs_w(
        &d,
        &[
            "rm /xattr/small.txt",
            &format!("write {} /xattr/small.txt", small.display()),
        ],
    );
    let delta = dir.join("cd.qcow2");
    let replaced = make_delta(&c, &d, true, &delta);
    assert!(blocks.iter().all(|b| replaced.contains(b)), "{replaced:?}");
    let t = sparse_copy(&c, &dir.join("t.img"));
    let p = dir.join("cd.patch");
    apply(&[&delta, &t, &"--patch", &p], 0);
    assert!(differing_on_copy_set(&d, &t, true, &dir).is_empty());
    // (c, and so d, carries the xattr block debugfs leaks when deleting: e2fsck says on t
    // what it says on d)
    assert_eq!(fsck(&t), fsck(&d));
    let cat = sh("debugfs", &[&"-R", &"cat /xattr/small.txt", &t]);
    assert_eq!(cat.stdout, std::fs::read(&small).unwrap());
    apply(&[&"--undo", &p, &t], 0);
    assert_eq!(sha256(&t), sha256(&c), "--undo gives FROM back");
}

/// A delta written with `--backing FULL` (for QEMU) applies like one without: apply reads
/// only the delta's own clusters, never the backing file.
#[test]
fn deltas_with_a_backing_file_apply() {
    if skip() {
        return;
    }
    let (dir, [a, b, _c]) = chain_in("ap-backing");
    let full = dir.join("full-a.qcow2");
    expect(&[&"-Q", &a, &full], 0);
    let d = dir.join("ab.qcow2");
    expect(
        &[
            &"-Q",
            &"-d",
            &"--base",
            &a,
            &"--backing",
            &"full-a.qcow2",
            &b,
            &d,
        ],
        0,
    );
    let t = sparse_copy(&a, &dir.join("t.img"));
    // The backing file is gone on the replica's side: not needed.
    std::fs::remove_file(&full).unwrap();
    apply(&[&d, &t, &"--patch", &dir.join("ab.patch")], 0);
    assert!(differing_on_copy_set(&b, &t, true, &dir).is_empty());
}

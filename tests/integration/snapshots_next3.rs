//! In-filesystem snapshots (next3 / ext4-snapshots) as QCOW2 internal snapshots, on the
//! fixtures of fixtures/make-snapshots.sh, whose expected snapshot images come from an
//! independent reconstruction (fixtures/next3.py) checked against the images saved at each
//! take. For every image:
//! - `-Q --fs-snapshots` checks clean; `snapshot -l` lists `current` then the snapshots, newest
//!   first, with their names and ctimes; deleted snapshots are not states;
//! - every state extracted with `qemu-img convert -l` equals `e2image-rs -r --from-snapshot`;
//!   every block that copies equals the expected rebuilt image, it is a superset of what
//!   `e2image -r` copies from that image, and `e2fsck -fn` passes on it;
//! - the active layer is the current filesystem; the source is unchanged.

use crate::common::*;
use std::path::Path;

/// True if two raw files have the same size and content (sparse-aware, through qemu-img).
fn same(a: &Path, b: &Path) -> bool {
    std::fs::metadata(a).unwrap().len() == std::fs::metadata(b).unwrap().len()
        && sh(
            "qemu-img",
            &[&"compare", &"-f", &"raw", &"-F", &"raw", &a, &b],
        )
        .status
        .success()
}

/// Checks one fixture with the given extra export flags.
fn check(f: &SnapFixture, flags: &[&str], dir: &Path) {
    let q = dir.join("out.qcow2");
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"-Q", &"--fs-snapshots"];
    for fl in flags {
        args.push(fl);
    }
    args.extend([&f.path as &dyn AsRef<std::ffi::OsStr>, &q]);
    export_json(&args);
    assert_qemu_check(&q);
    let live: Vec<&SnapRow> = f.snapshots.iter().filter(|s| !s.deleted).collect();
    // Listing: current, then the snapshots newest first, dated by their ctime.
    let l = snapshot_list(&q);
    let snaps = l["snapshots"].as_array().unwrap();
    let names: Vec<&str> = snaps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    let want: Vec<&str> = std::iter::once("current")
        .chain(live.iter().map(|s| s.name.as_str()))
        .collect();
    assert_eq!(names, want, "{}", f.name);
    for (s, row) in snaps[1..].iter().zip(&live) {
        assert_eq!(s["date_sec"], row.ctime, "{}: {} date", f.name, row.name);
    }
    let data = flags.contains(&"-d");
    for row in &live {
        let ours = dir.join(format!("{}.raw", row.name));
        let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"-r", &"--from-snapshot", &row.name];
        if data {
            a.push(&"-d");
        }
        a.extend([&f.path as &dyn AsRef<std::ffi::OsStr>, &ours]);
        export_json(&a);
        let x = dir.join("x.raw");
        extract_state(&q, &row.name, &x);
        assert!(
            same(&x, &ours),
            "{}: state {} from qemu differs from e2image-rs -r --from-snapshot",
            f.name,
            row.name
        );
        let bs = f.block_size as usize;
        let bad = blocks_not_in(&ours, &row.expected, bs);
        assert!(
            bad.is_empty(),
            "{}: {}: blocks differ from the expected rebuilt image: {bad:?}",
            f.name,
            row.name
        );
        let e2i = dir.join("e2i.raw");
        assert!(sh("e2image", &[&"-r", &row.expected, &e2i])
            .status
            .success());
        let missing = blocks_not_in(&e2i, &ours, bs);
        assert!(
            missing.is_empty(),
            "{}: {}: blocks e2image copies from the rebuilt image are missing: {missing:?}",
            f.name,
            row.name
        );
        assert_eq!(
            fsck(&ours),
            0,
            "{}: e2fsck -fn fails on our image of {}",
            f.name,
            row.name
        );
        if data {
            // With -d the moved-on-write data blocks (X == P) are in the state.
            let map = std::fs::read_to_string(
                row.expected.with_file_name(format!("{}.map.tsv", row.name)),
            )
            .unwrap();
            let moved: Vec<u64> = map
                .lines()
                .filter(|l| l.ends_with("\tmoved"))
                .filter_map(|l| l.split('\t').next()?.parse().ok())
                .collect();
            assert_eq!(moved.len() as u64, row.moved);
            for p in moved {
                let want = block_at(&row.expected, p, bs);
                if want.iter().any(|&b| b != 0) {
                    assert_eq!(
                        block_at(&ours, p, bs),
                        want,
                        "{}: moved data block {p} missing from {}",
                        f.name,
                        row.name
                    );
                }
            }
        }
        for p in [&x, &e2i, &ours] {
            let _ = std::fs::remove_file(p);
        }
    }
    // The active layer is the current filesystem.
    let cur = dir.join("current.raw");
    let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"-r"];
    if data {
        a.push(&"-d");
    }
    a.extend([&f.path as &dyn AsRef<std::ffi::OsStr>, &cur]);
    export_json(&a);
    assert_qemu_identical(&q, &cur);
    let x = dir.join("x.raw");
    extract_state(&q, "current", &x);
    assert!(same(&x, &cur));
}

fn check_fixture(name: &str, flags: &[&str]) {
    if skip() {
        return;
    }
    let f = snapshot_fixtures(&[name]).remove(name).unwrap();
    let dir = scratch(&format!("next3-{name}-{}", flags.join("")));
    let before = sha256(&f.path);
    check(&f, flags, &dir);
    assert_eq!(sha256(&f.path), before, "{name}: the source changed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn next3_one_snapshot() {
    check_fixture("next3_1snap", &[]);
}

#[test]
fn next3_one_snapshot_with_data() {
    check_fixture("next3_1snap", &["-d"]);
}

#[test]
fn next3_three_snapshots() {
    check_fixture("next3_3snap", &[]);
}

#[test]
fn next3_three_snapshots_v2() {
    check_fixture("next3_3snap", &["--compat", "0.10"]);
}

#[test]
fn next3_metadata_csum() {
    check_fixture("next3_csum", &[]);
}

#[test]
fn next3_over_4_gib_uses_tind() {
    check_fixture("next3_big", &[]);
}

#[test]
fn next3_deleted_snapshot_is_a_link_only() {
    check_fixture("next3_deleted", &[]);
}

#[test]
fn qemu_operations_keep_the_image_clean() {
    if skip() {
        return;
    }
    let f = snapshot_fixtures(&["next3_3snap"])
        .remove("next3_3snap")
        .unwrap();
    let dir = scratch("next3-ops");
    let q = dir.join("out.qcow2");
    export_json(&[&"-Q", &"--fs-snapshots", &f.path, &q]);
    let states: Vec<String> = std::iter::once("current".to_string())
        .chain(f.snapshots.iter().map(|s| s.name.clone()))
        .collect();
    let expected: Vec<std::path::PathBuf> = states
        .iter()
        .map(|s| {
            let p = dir.join(format!("{s}.want"));
            extract_state(&q, s, &p);
            p
        })
        .collect();
    let copy = |n: &str| {
        let p = dir.join(n);
        sparse_copy(&q, &p);
        p
    };
    let intact = |img: &Path, skip: Option<&str>| {
        for (s, want) in states.iter().zip(&expected) {
            if Some(s.as_str()) != skip {
                let x = dir.join("x.raw");
                extract_state(img, s, &x);
                assert!(same(&x, want), "{}: state {s} changed", img.display());
            }
        }
    };
    let oldest = states.last().unwrap().clone();
    let qa = copy("a.qcow2");
    assert!(sh("qemu-img", &[&"snapshot", &"-a", &oldest, &qa])
        .status
        .success());
    assert_qemu_check(&qa);
    intact(&qa, None);
    let qd = copy("d.qcow2");
    assert!(sh("qemu-img", &[&"snapshot", &"-d", &states[1], &qd])
        .status
        .success());
    assert_qemu_check(&qd);
    intact(&qd, Some(&states[1]));
    let qc = copy("c.qcow2");
    assert!(sh("qemu-io", &[&"-c", &"write -P 0x33 0 128k", &qc])
        .status
        .success());
    assert!(sh("qemu-img", &[&"snapshot", &"-c", &"after-write", &qc])
        .status
        .success());
    assert_qemu_check(&qc);
    intact(&qc, None);
}

#[test]
fn plain_export_keeps_snapshot_files_unless_told() {
    if skip() {
        return;
    }
    let f = snapshot_fixtures(&["next3_1snap"])
        .remove("next3_1snap")
        .unwrap();
    let dir = scratch("next3-plain");
    let (with, without) = (dir.join("with.raw"), dir.join("without.raw"));
    let s = export_json(&[&"-r", &f.path, &with]);
    assert!(s["blocks_copied"]["snapshot_files"].as_u64().unwrap() > 0);
    let s = export_json(&[&"-r", &"--no-snapshots", &f.path, &without]);
    assert!(s["blocks_copied"].get("snapshot_files").is_none());
    // Every block of the snapshot file (copies, moved blocks and its tree) is in the plain export.
    let o = sh(
        "debugfs",
        &[&"-R", &format!("stat <{}>", f.snapshots[0].ino), &f.path],
    );
    let text = String::from_utf8_lossy(&o.stdout);
    let blocks: Vec<u64> = text
        .split(|c: char| !c.is_ascii_digit() && c != '-' && c != ':' && c != '(' && c != ')')
        .filter_map(|w| w.rsplit(':').next().and_then(|b| b.parse().ok()))
        .collect();
    let (w, wo, src) = (read(&with), read(&without), read(&f.path));
    let bs = f.block_size as usize;
    let snap_blocks: Vec<u64> = blocks
        .into_iter()
        .filter(|&b| b > 0 && (b as usize) < src.len() / bs)
        .collect();
    assert!(!snap_blocks.is_empty(), "no blocks found in: {text}");
    for b in &snap_blocks {
        let r = *b as usize * bs..(*b as usize + 1) * bs;
        assert_eq!(
            w[r.clone()],
            src[r],
            "block {b} of the snapshot file is missing from the plain export"
        );
    }
    assert!(snap_blocks
        .iter()
        .any(|&b| wo[b as usize * bs..(b as usize + 1) * bs]
            .iter()
            .all(|&x| x == 0)));
}

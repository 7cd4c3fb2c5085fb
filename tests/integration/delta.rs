//! Deltas between two states (`-x FROM..TO`, `--base BASE`, `--backing FILE`), with qemu-img
//! as the oracle:
//! - over a full export of FROM as backing file, `qemu-img check` exits 0, `info
//!   --backing-chain` shows the chain, `convert` reads TO on TO's copy set and zeros on the
//!   discarded blocks, and `qemu-img commit` turns the backing file into TO;
//! - every source kind: states of a QCOW2 archive, next3 snapshots, image files (`--base`),
//!   metadata only and with `-d`;
//! - a delta is about the size of the change; the summary reports changed, discarded and
//!   unchanged bytes; wrong arguments are refused.

use crate::common::*;
use std::path::{Path, PathBuf};

/// Block size of the fixtures used here.
const BS: usize = 4096;

/// `e2image-rs -r [-d] IMG` into `dir` (the reference of a state).
fn raw_ref(img: &Path, dir: &Path, data: bool, tag: &str) -> PathBuf {
    let out = dir.join(format!("{tag}.ref.raw"));
    if data {
        expect(&[&"-r", &"-d", &img, &out], 0);
    } else {
        expect(&[&"-r", &img, &out], 0);
    }
    out
}

/// Checks that `delta` (over its backing file) reads as TO (`to_ref`, an `-r` export of TO)
/// on TO's copy set and as zeros where FROM (`from_ref`) held blocks that TO does not.
fn assert_reads_as_to(delta: &Path, to_ref: &Path, from_ref: &Path, dir: &Path) {
    assert_qemu_check(delta);
    let got = dir.join("delta-read.raw");
    let _ = std::fs::remove_file(&got);
    let o = sh("qemu-img", &[&"convert", &"-O", &"raw", &delta, &got]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let (g, t, f) = (read(&got), read(to_ref), read(from_ref));
    let zero = vec![0u8; BS];
    for (b, want) in t.chunks(BS).enumerate() {
        let have = &g[b * BS..(b + 1) * BS];
        if want != zero.as_slice() {
            assert_eq!(have, want, "block {b} of TO's copy set");
        } else if f[b * BS..(b + 1) * BS] != zero[..] {
            assert_eq!(
                have,
                zero.as_slice(),
                "block {b}: FROM's, freed in TO, not discarded"
            );
        }
    }
}

/// The delta part of a `--json` summary.
fn delta_json(args: &[&dyn AsRef<std::ffi::OsStr>]) -> serde_json::Value {
    export_json(args)["delta"].clone()
}

#[test]
fn base_images_with_backing_read_as_to_and_commit() {
    if skip() {
        return;
    }
    for data in [false, true] {
        let dir = scratch(if data { "delta-base-d" } else { "delta-base" });
        let [a, _b, c] = chain(&dir);
        let full_a = dir.join("full-a.qcow2");
        let d = dir.join("a-c.qcow2");
        let flag: &dyn AsRef<std::ffi::OsStr> = if data { &"-d" } else { &"--sync" };
        expect(&[&"-Q", flag, &a, &full_a], 0);
        let j = delta_json(&[
            &"-Q",
            flag,
            &"--base",
            &a,
            &"--backing",
            &"full-a.qcow2",
            &c,
            &d,
        ]);
        assert!(j["changed_bytes"].as_u64().unwrap() > 0, "{j}");
        if data {
            assert!(j["discarded_bytes"].as_u64().unwrap() > 0, "{j}");
        }
        let info = stdout(&sh("qemu-img", &[&"info", &"--backing-chain", &d]));
        assert!(info.contains("backing file: full-a.qcow2"), "{info}");
        let (to_ref, from_ref) = (raw_ref(&c, &dir, data, "c"), raw_ref(&a, &dir, data, "a"));
        assert_reads_as_to(&d, &to_ref, &from_ref, &dir);
        // The delta is about the size of the change (4 KiB clusters: data, L2 tables, L1,
        // refcounts, header).
        let size = std::fs::metadata(&d).unwrap().len();
        let changed = j["changed_bytes"].as_u64().unwrap();
        assert!(
            size <= changed + 64 * 1024,
            "{size} bytes for {changed} changed"
        );
        // `snapshots` names the delta and its backing file; taken for a complete image (-r,
        // -Q, rollback) it is refused with a message saying what it is.
        let l = stdout(&expect(&[&"snapshots", &d], 0));
        assert!(
            l.contains("delta a.img..current") && l.contains("backing file full-a.qcow2"),
            "{l}"
        );
        let lj = snapshot_list(&d);
        assert_eq!(lj["backing_file"], "full-a.qcow2");
        assert_eq!(lj["delta"]["from"], "a.img");
        let out = dir.join("x.raw");
        let e = stderr(&expect(&[&"-r", &d, &out], 1));
        assert!(e.contains("has a backing file (full-a.qcow2)"), "{e}");
        let p = dir.join("x.patch");
        let e = stderr(&expect(&[&"rollback", &d, &a, &"--patch", &p], 1));
        assert!(e.contains("has a backing file"), "{e}");
        // qemu-img commit turns the backing file into TO.
        assert_eq!(code(&sh("qemu-img", &[&"commit", &d])), 0);
        let committed = dir.join("committed.raw");
        assert_eq!(
            code(&sh(
                "qemu-img",
                &[&"convert", &"-O", &"raw", &full_a, &committed]
            )),
            0
        );
        assert!(blocks_not_in(&to_ref, &committed, BS).is_empty());
    }
}

#[test]
fn archive_states_and_next3_snapshots() {
    if skip() {
        return;
    }
    let dir = scratch("delta-states");
    let [a, b, c] = chain(&dir);
    let q = dir.join("arch.qcow2");
    expect(&[&"-Q", &"--snapshot", &a, &"--snapshot", &b, &c, &q], 0);
    // Between two internal snapshots, and from one to the active layer.
    for (range, from, to) in [("a.img..b.img", &a, &b), ("b.img", &b, &c)] {
        let d = dir.join(format!("d-{}.qcow2", range.replace('.', "_")));
        let full = dir.join("full-from.qcow2");
        let _ = std::fs::remove_file(&full);
        expect(&[&"-Q", from, &full], 0);
        expect(
            &[
                &"-Q",
                &"-x",
                &range,
                &"--backing",
                &"full-from.qcow2",
                &q,
                &d,
            ],
            0,
        );
        let (tr, fr) = (
            raw_ref(to, &dir, false, "to"),
            raw_ref(from, &dir, false, "from"),
        );
        assert_reads_as_to(&d, &tr, &fr, &dir);
    }
    // next3: snapshot to snapshot and to the live state, against the rebuilt images.
    let f = snapshot_fixtures(&["next3_3snap"])
        .remove("next3_3snap")
        .unwrap();
    let rows = &f.snapshots;
    let live: Vec<_> = rows.iter().filter(|r| !r.deleted).collect();
    let (older, newer) = (live[live.len() - 1], live[0]);
    let full = dir.join("full-older.qcow2");
    expect(&[&"-Q", &older.expected, &full], 0);
    let d = dir.join("n3.qcow2");
    let range = format!("{}..{}", older.name, newer.name);
    expect(
        &[
            &"-Q",
            &"-x",
            &range,
            &"--backing",
            &"full-older.qcow2",
            &f.path,
            &d,
        ],
        0,
    );
    let (tr, fr) = (
        raw_ref(&newer.expected, &dir, false, "n3to"),
        raw_ref(&older.expected, &dir, false, "n3from"),
    );
    assert_reads_as_to(&d, &tr, &fr, &dir);
    let d2 = dir.join("n3-live.qcow2");
    let _ = std::fs::remove_file(&full);
    expect(&[&"-Q", &newer.expected, &full], 0);
    expect(
        &[
            &"-Q",
            &"-x",
            &newer.name,
            &"--backing",
            &"full-older.qcow2",
            &f.path,
            &d2,
        ],
        0,
    );
    let tr = raw_ref(&f.path, &dir, false, "live");
    let fr = raw_ref(&newer.expected, &dir, false, "n3newer");
    assert_reads_as_to(&d2, &tr, &fr, &dir);
}

#[test]
fn wrong_deltas_are_refused() {
    if skip() {
        return;
    }
    let dir = scratch("delta-refuse");
    let [a, b, c] = chain(&dir);
    let out = dir.join("d.qcow2");
    let other = dir.join("other.img");
    assert_eq!(
        code(&sh(
            "mke2fs",
            &[&"-q", &"-F", &"-t", &"ext4", &other, &"16M"]
        )),
        0
    );
    let e = stderr(&expect(&[&"-Q", &"--base", &other, &c, &out], 1));
    assert!(e.contains("not states of one filesystem"), "{e}");
    expect(&[&"-Q", &"--compat", &"0.10", &"--base", &a, &c, &out], 2);
    expect(&[&"-r", &"--base", &a, &c, &out], 2);
    expect(
        &[&"-Q", &"--cluster-size", &"1024", &"--base", &a, &c, &out],
        2,
    );
    expect(&[&"-Q", &"--backing", &a, &c, &out], 2);
    expect(&[&"-Q", &"-x", &"nosuch..current", &c, &out], 1);
    // A backing file that does not hold FROM.
    let full_b = dir.join("full-b.qcow2");
    expect(&[&"-Q", &b, &full_b], 0);
    let e = stderr(&expect(
        &[&"-Q", &"--base", &a, &"--backing", &full_b, &c, &out],
        1,
    ));
    assert!(e.contains("does not hold FROM"), "{e}");
    assert!(!out.exists());
    // OUT is never an input: the --base image (also through a symlink) or the --backing file.
    let (sa, sf) = (sha256(&a), sha256(&full_b));
    let link = dir.join("a-link");
    std::os::unix::fs::symlink(&a, &link).unwrap();
    for base in [&a, &link] {
        let e = stderr(&expect(&[&"-Q", &"--base", base, &c, &a], 2));
        assert!(e.contains("is --base"), "{e}");
    }
    let e = stderr(&expect(
        &[
            &"-Q",
            &"--base",
            &b,
            &"--backing",
            &"full-b.qcow2",
            &c,
            &full_b,
        ],
        2,
    ));
    assert!(e.contains("is --backing"), "{e}");
    assert_eq!(
        (sha256(&a), sha256(&full_b)),
        (sa, sf),
        "an input was written"
    );
}

//! Older point-in-time images as QCOW2 internal snapshots (`--snapshot OLDEST --snapshot OLDER
//! SOURCE`): an inverted chain, checked with qemu-img as the oracle.
//! - `qemu-img check` exits 0 with 1 and 3 snapshots, v3 and v2;
//! - `qemu-img snapshot -l` lists every state with its name and date;
//! - each state extracted with `qemu-img convert -l snapshot.name=X` equals `e2image-rs -r X`;
//! - `snapshot -a`, `-d` and `-c` on a copy leave it clean and the other states intact;
//! - an older state costs exactly its differing clusters, the L2 tables mapping them and one
//!   L1 table (`e2image-rs snapshots --json`);
//! - a mismatched image is refused and nothing is written; sources are unchanged.

use crate::common::*;
use std::path::Path;

fn raw_of(img: &Path, dir: &Path, data: bool) -> Vec<u8> {
    let out = dir.join(format!(
        "{}.expected{}.raw",
        img.file_name().unwrap().to_string_lossy(),
        if data { "-d" } else { "" }
    ));
    let o = if data {
        run(&[&"-r", &"-d", &img, &out])
    } else {
        run(&[&"-r", &img, &out])
    };
    assert_eq!(code(&o), 0);
    read(&out)
}

fn extract(q: &Path, name: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("x-{name}.raw"));
    extract_state(q, name, &out);
    read(&out)
}

/// Every state of `q` (current first) extracts to exactly `expected`.
fn assert_states(q: &Path, names: &[&str], expected: &[Vec<u8>], dir: &Path) {
    for (name, want) in names.iter().zip(expected) {
        assert!(
            extract(q, name, dir) == *want,
            "state {name} differs from e2image-rs -r of its image"
        );
    }
}

#[test]
fn three_point_in_time_images() {
    if skip() {
        return;
    }
    let dir = scratch("pit-3");
    let [a, b, c] = chain(&dir);
    let shas: Vec<_> = [&a, &b, &c].iter().map(|p| sha256(p)).collect();
    for (compat, data) in [("1.1", false), ("0.10", false), ("1.1", true)] {
        let q = dir.join(format!("out-{compat}-{data}.qcow2"));
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
            &"-Q",
            &"--compat",
            &compat,
            &"--snapshot",
            &a,
            &"--snapshot",
            &b,
            &c,
            &q,
        ];
        if data {
            args.insert(0, &"-d");
        }
        let summary = export_json(&args);
        assert_eq!(summary["states"].as_array().unwrap().len(), 3);
        assert_qemu_check(&q);
        let expected = [
            raw_of(&c, &dir, data),
            raw_of(&b, &dir, data),
            raw_of(&a, &dir, data),
        ];
        assert_states(&q, &["current", "b.img", "a.img"], &expected, &dir);
        let cur = dir.join("current.raw");
        std::fs::write(&cur, &expected[0]).unwrap();
        assert_qemu_identical(&q, &cur);
        // Listing: names, ids and dates (each image's last write time).
        let l = snapshot_list(&q);
        let snaps = l["snapshots"].as_array().unwrap();
        let names: Vec<&str> = snaps.iter().map(|s| s["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["current", "b.img", "a.img"]);
        assert_eq!(
            snaps
                .iter()
                .map(|s| s["id"].as_str().unwrap())
                .collect::<Vec<_>>(),
            ["1", "2", "3"]
        );
        let wtime = |p: &Path| {
            let raw = read(p);
            u64::from(u32::from_le_bytes(
                raw[1024 + 0x30..1024 + 0x34].try_into().unwrap(),
            ))
        };
        assert_eq!(
            snaps[2]["date_sec"],
            wtime(&a),
            "a.img's date is its last write time"
        );
        assert_eq!(
            snaps[1]["date_sec"],
            wtime(&b),
            "b.img's date is its last write time"
        );
        let o = sh("qemu-img", &[&"snapshot", &"-l", &q]);
        let listing = String::from_utf8_lossy(&o.stdout);
        assert!(
            ["current", "b.img", "a.img"]
                .iter()
                .all(|n| listing.contains(n)),
            "{listing}"
        );
    }
    for (p, sha) in [&a, &b, &c].iter().zip(shas) {
        assert_eq!(sha256(p), sha, "{} changed", p.display());
    }
}

#[test]
fn one_snapshot_and_qemu_operations() {
    if skip() {
        return;
    }
    let dir = scratch("pit-1");
    let [a, _, c] = chain(&dir);
    let q = dir.join("out.qcow2");
    export_json(&[&"-Q", &"--snapshot", &a, &c, &q]);
    assert_qemu_check(&q);
    let expected = [raw_of(&c, &dir, false), raw_of(&a, &dir, false)];
    assert_states(&q, &["current", "a.img"], &expected, &dir);
    // On copies: go to the old state, delete a state, create a new one; each stays clean and
    // the remaining states stay intact.
    let copy = |n: &str| {
        let p = dir.join(n);
        sparse_copy(&q, &p);
        p
    };
    let qa = copy("a.qcow2");
    assert_eq!(
        code(&sh("qemu-img", &[&"snapshot", &"-a", &"a.img", &qa])),
        0
    );
    assert_qemu_check(&qa);
    let now = dir.join("now.raw");
    std::fs::write(&now, &expected[1]).unwrap();
    assert_qemu_identical(&qa, &now);
    assert_states(&qa, &["current", "a.img"], &expected, &dir);
    let qd = copy("d.qcow2");
    assert_eq!(
        code(&sh("qemu-img", &[&"snapshot", &"-d", &"current", &qd])),
        0
    );
    assert_qemu_check(&qd);
    assert_states(&qd, &["a.img"], &expected[1..], &dir);
    let qc = copy("c.qcow2");
    assert_eq!(
        code(&sh("qemu-io", &[&"-c", &"write -P 0x5a 1M 64k", &qc])),
        0
    );
    assert_eq!(
        code(&sh("qemu-img", &[&"snapshot", &"-c", &"later", &qc])),
        0
    );
    assert_qemu_check(&qc);
    assert_states(&qc, &["current", "a.img"], &expected, &dir);
}

/// Clusters of `older` that must be stored for it (non-zero and different from `newer`), and
/// the L2 windows whose mapping differs from `newer`'s.
fn delta(older: &[u8], newer: &[u8], cs: usize) -> (usize, usize) {
    let per_l2 = cs / 8;
    let mut data = 0;
    let mut windows = std::collections::BTreeSet::new();
    for (i, (o, n)) in older.chunks(cs).zip(newer.chunks(cs)).enumerate() {
        let (o_zero, n_zero) = (o.iter().all(|&x| x == 0), n.iter().all(|&x| x == 0));
        if !o_zero && o != n {
            data += 1;
            windows.insert(i / per_l2);
        } else if o_zero && !n_zero {
            windows.insert(i / per_l2);
        }
    }
    (data, windows.len())
}

#[test]
fn an_older_state_costs_its_differing_clusters() {
    if skip() {
        return;
    }
    let dir = scratch("pit-size");
    let [a, b, c] = chain(&dir);
    let (q1, q2, q3) = (
        dir.join("one.qcow2"),
        dir.join("two.qcow2"),
        dir.join("three.qcow2"),
    );
    export_json(&[&"-Q", &c, &q1]);
    export_json(&[&"-Q", &"--snapshot", &b, &c, &q2]);
    export_json(&[&"-Q", &"--snapshot", &a, &"--snapshot", &b, &c, &q3]);
    let raws = [
        raw_of(&c, &dir, false),
        raw_of(&b, &dir, false),
        raw_of(&a, &dir, false),
    ];
    let cs = snapshot_list(&q3)["cluster_size"].as_u64().unwrap() as usize;
    let l1 = (raws[0].len().div_ceil(cs * cs / 8) * 8).div_ceil(cs);
    let (db, wb) = delta(&raws[1], &raws[0], cs);
    let (da, wa) = delta(&raws[2], &raws[1], cs);
    assert!(db > 0 && da > 0, "the states do not differ");
    // The oldest state owns exactly its differing clusters, their L2 tables and its L1.
    assert_eq!(
        snapshot_list(&q2)["snapshots"][1]["own_clusters"],
        (db + wb + l1) as u64
    );
    assert_eq!(
        snapshot_list(&q3)["snapshots"][2]["own_clusters"],
        (da + wa + l1) as u64
    );
    // And the file grows by that, plus (for the first older state) the current state's own
    // snapshot L1; the snapshot table and refcount blocks may add a cluster, nothing more.
    let size = |p: &Path| std::fs::metadata(p).unwrap().len() as usize;
    for (small, big, growth) in [
        (&q1, &q2, (db + wb + 2 * l1) * cs),
        (&q2, &q3, (da + wa + l1) * cs),
    ] {
        let (s, b) = (size(small), size(big));
        assert!(
            b >= s + growth && b <= s + growth + 2 * cs,
            "{} -> {}: grew {} bytes, expected {growth}",
            s,
            b,
            b - s
        );
    }
}

#[test]
fn mismatched_images_are_refused() {
    if skip() {
        return;
    }
    let dir = scratch("pit-mismatch");
    let [a, _, c] = chain(&dir);
    let other = dir.join("other.img");
    std::fs::File::create(&other)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    assert_eq!(
        code(&sh(
            "mke2fs",
            &[&"-q", &"-F", &"-t", &"ext4", &"-b", &"4096", &other]
        )),
        0
    );
    let k1 = dir.join("k1.img");
    std::fs::File::create(&k1)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let uuid = fs_uuid(&a);
    assert_eq!(
        code(&sh(
            "mke2fs",
            &[&"-q", &"-F", &"-t", &"ext4", &"-b", &"1024", &"-U", &uuid, &k1]
        )),
        0
    );
    for (bad, what) in [(&other, "UUID"), (&k1, "block size")] {
        let q = dir.join("out.qcow2");
        let o = run(&[&"-Q", &"--snapshot", &a, &"--snapshot", bad, &c, &q]);
        assert_eq!(code(&o), 1);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(what) && err.contains(&*bad.display().to_string()),
            "{err}"
        );
        assert!(!q.exists());
        assert_eq!(
            std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
                .count(),
            0
        );
    }
    // Snapshots need QCOW2 output.
    let o = run(&[&"-r", &"--snapshot", &a, &c, &dir.join("x.raw")]);
    assert_eq!(code(&o), 2);
}

/// A QCOW2 source keeps its states: `-Q ARCHIVE OUT` carries every internal snapshot across
/// (same names, same bytes, same sharing), `-Q --from-snapshot N ARCHIVE OUT` exports that
/// state alone, and `-r ARCHIVE OUT` notes that only the active layer was converted.
#[test]
fn qcow2_sources_keep_their_states() {
    if skip() {
        return;
    }
    let dir = scratch("pit-qcow-source");
    let [a, b, c] = chain(&dir);
    let archive = dir.join("archive.qcow2");
    export_json(&[&"-Q", &"--snapshot", &a, &"--snapshot", &b, &c, &archive]);
    let carried = dir.join("carried.qcow2");
    let o = run(&[&"-Q", &archive, &carried]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert_qemu_check(&carried);
    let names = ["current", "b.img", "a.img"];
    let expected: Vec<Vec<u8>> = [&c, &b, &a]
        .iter()
        .map(|p| raw_of(p, &dir, false))
        .collect();
    assert_states(&carried, &names, &expected, &dir);
    let list = |q: &Path| -> Vec<(String, String)> {
        snapshot_list(q)["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["id"].to_string(), s["name"].to_string()))
            .collect()
    };
    assert_eq!(list(&carried), list(&archive));
    // Shared clusters stay shared: the copy is no larger than the original.
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(
        size(&carried) <= size(&archive),
        "{} > {}",
        size(&carried),
        size(&archive)
    );
    // One state, by name, as QCOW2 and as raw.
    let one = dir.join("one.qcow2");
    let o = run(&[&"-Q", &"--from-snapshot", &"a.img", &archive, &one]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert_qemu_check(&one);
    let direct = dir.join("direct.qcow2");
    assert_eq!(code(&run(&[&"-Q", &a, &direct])), 0);
    assert_qemu_identical(&one, &direct);
    let raw = dir.join("active.raw");
    let o = run(&[&"-r", &archive, &raw]);
    assert_eq!(code(&o), 0);
    assert!(String::from_utf8_lossy(&o.stderr).contains("only the active layer"));
    // Adding older states to a source that has its own is refused.
    let o = run(&[&"-Q", &"--snapshot", &a, &archive, &dir.join("mixed.qcow2")]);
    assert_eq!(code(&o), 1, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("internal snapshots"));
}

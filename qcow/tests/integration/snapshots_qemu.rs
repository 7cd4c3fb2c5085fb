//! Multi-state images (the "inverted chain": active = newest state, snapshots = older ones)
//! built with write_clusters, write_clusters_dedup, share_cluster and clone_state, including
//! L2 table sharing; checked by the independent verifier, this crate's reader and QEMU
//! (check, snapshot -l/-a/-d/-c, convert -l, qemu-io writes).

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::common::*;
use qcow::{Layer, Reader, SnapshotSpec, StateId, Version, Writer, WriterOptions, WriterSummary};

struct Chain {
    img: PathBuf,
    size: u64,
    c: u64,
    /// Expected content: S0 (active), S1, S2, S3.
    models: Vec<Model>,
    summary: WriterSummary,
}

fn spec(state: StateId, id: &str, name: &str) -> SnapshotSpec {
    SnapshotSpec {
        state,
        id: id.into(),
        name: name.into(),
        date_sec: 1_700_000_000 + id.len() as u32,
        date_nsec: 5,
    }
}

/// The four states' contents. Windows are L2 windows (C/8 guest clusters).
fn models(epl: u64, last: u64, c: u64) -> Vec<Model> {
    let mut s0 = Model::new();
    for g in (0..4)
        .chain(epl..epl + 3)
        .chain(2 * epl + 5..2 * epl + 9)
        .chain(5 * epl..5 * epl + 2)
        .chain([7 * epl + 1, last])
    {
        s0.insert(g, cluster_data(1000 + g, c));
    }
    // S1: cluster 1 modified, window 1 partly removed, window 3 added, the last cluster
    // removed; windows 2 and 5 unchanged (their L2 tables are shared with S0).
    let mut s1 = s0.clone();
    s1.insert(1, cluster_data(2001, c));
    s1.remove(&(epl + 1));
    s1.remove(&(epl + 2));
    s1.insert(3 * epl + 7, cluster_data(2002, c));
    s1.remove(&last);
    // S2 = S1 plus two clusters after S1's last one (one in S1's last window).
    let mut s2 = s1.clone();
    s2.insert(7 * epl + 4, cluster_data(3001, c));
    s2.insert(last, cluster_data(3002, c));
    // S3: mostly S0, one new cluster, a copy of S0's cluster 0 at 6, two removed.
    let mut s3 = s0.clone();
    s3.insert(6, s0[&0].clone());
    s3.insert(2 * epl + 5, cluster_data(4001, c));
    s3.remove(&(7 * epl + 1));
    s3.remove(&(epl + 1)); // now only S0 has it
    vec![s0, s1, s2, s3]
}

/// Writes S3 cluster by cluster: content equal to S0's cluster 0 or to S0 at the same guest
/// cluster is shared explicitly, the rest is deduplicated against S2.
fn write_s3(w: &mut Writer, s3: StateId, s0: StateId, s2: StateId, m: &[Model]) {
    for (&g, data) in &m[3] {
        if *data == m[0][&0] {
            let host = w.lookup(s0, 0).unwrap().unwrap();
            w.share_cluster(s3, g, host).unwrap();
        } else if m[0].get(&g) == Some(data) {
            let host = w.lookup(s0, g).unwrap().unwrap();
            w.share_cluster(s3, g, host).unwrap();
        } else {
            w.write_clusters_dedup(s3, g, data, s2).unwrap();
        }
    }
}

fn build(name: &str, cluster_bits: u32, version: Version, all_as_snapshots: bool) -> Chain {
    let dir = scratch(name);
    let img = dir.join("chain.qcow2");
    let c = 1u64 << cluster_bits;
    let epl = c / 8;
    let size = (8 * epl + 3) * c;
    let last = size / c - 1;
    let m = models(epl, last, c);
    let mut w = new_writer(
        &img,
        WriterOptions {
            cluster_bits,
            virtual_size: size,
            version,
        },
    );
    let s0 = w.new_state();
    write_model(&mut w, s0, &m[0]);
    let s1 = w.new_state();
    for (g, data) in runs(&m[1]) {
        w.write_clusters_dedup(s1, g, &data, s0).unwrap();
    }
    let s2 = w.clone_state(s1).unwrap();
    for g in [7 * epl + 4, last] {
        w.write_clusters(s2, g, &m[2][&g]).unwrap();
    }
    let s3 = w.new_state();
    write_s3(&mut w, s3, s0, s2, &m);
    assert_eq!(w.lookup(s2, 1).unwrap(), w.lookup(s1, 1).unwrap());
    assert_eq!(w.lookup(s3, 6).unwrap(), w.lookup(s0, 0).unwrap());
    let snaps = if all_as_snapshots {
        // S0 twice (active and snapshot "current"), S1 once, S2 and S3 unused.
        vec![spec(s0, "1", "current"), spec(s1, "2", "older")]
    } else {
        vec![
            spec(s1, "1", "s1"),
            spec(s2, "2", "s2"),
            spec(s3, "3", "s3"),
        ]
    };
    let summary = w.finish(s0, &snaps).unwrap();
    Chain {
        img,
        size,
        c,
        models: m,
        summary,
    }
}

fn snapshot_names(chain_all: bool) -> Vec<(&'static str, usize)> {
    if chain_all {
        vec![("current", 0), ("older", 1)]
    } else {
        vec![("s1", 1), ("s2", 2), ("s3", 3)]
    }
}

/// Checks that need no QEMU: refcounts/COPIED, and every layer through this crate's reader.
fn check_offline(ch: &Chain, all: bool) {
    let v = verify::verify_image(&ch.img);
    assert!(v.shared_l1 > 0 && v.shared_data > 0, "{v:?}");
    if !all {
        assert!(v.copied_l1 > 0 && v.copied_data > 0, "{v:?}");
    }
    assert_layer_equals(&ch.img, Layer::Active, &ch.models[0]);
    let r = Reader::open(File::open(&ch.img).unwrap()).unwrap();
    for (i, (name, state)) in snapshot_names(all).into_iter().enumerate() {
        assert_eq!(r.find_snapshot(name), Some(i));
        assert_eq!(r.find_snapshot(&(i + 1).to_string()), Some(i));
        let s = &r.snapshots()[i];
        assert_eq!(
            (s.disk_size, s.icount, s.vm_clock_nsec),
            (Some(ch.size), None, 0)
        );
        assert_layer_equals(&ch.img, Layer::Snapshot(i), &ch.models[state]);
    }
}

fn check_with_qemu(ch: &Chain, all: bool) {
    check_clean(&ch.img);
    let list = run_ok("qemu-img", &["snapshot", "-l", ch.img.to_str().unwrap()]);
    for (name, _) in snapshot_names(all) {
        assert!(list.contains(name), "snapshot -l: {list}");
    }
    assert_active_equals(&ch.img, ch.size, ch.c, &ch.models[0]);
    for (name, state) in snapshot_names(all) {
        assert_snapshot_equals(&ch.img, name, ch.size, ch.c, &ch.models[state]);
    }
}

fn qemu_mutations(ch: &Chain) {
    let img = ch.img.to_str().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    // snapshot -a: the active layer becomes s2.
    let a = copy_to(&ch.img, "apply.qcow2");
    run_ok("qemu-img", &["snapshot", "-a", "s2", &s(&a)]);
    check_clean(&a);
    assert_active_equals(&a, ch.size, ch.c, &ch.models[2]);
    assert_snapshot_equals(&a, "s3", ch.size, ch.c, &ch.models[3]);
    // snapshot -d of each snapshot.
    for (name, _) in snapshot_names(false) {
        let d = copy_to(&ch.img, "delete.qcow2");
        run_ok("qemu-img", &["snapshot", "-d", name, &s(&d)]);
        check_clean(&d);
        assert_active_equals(&d, ch.size, ch.c, &ch.models[0]);
        for (other, state) in snapshot_names(false)
            .into_iter()
            .filter(|(o, _)| *o != name)
        {
            assert_snapshot_equals(&d, other, ch.size, ch.c, &ch.models[state]);
        }
    }
    // snapshot -c: a new snapshot of the active layer.
    let n = copy_to(&ch.img, "create.qcow2");
    run_ok("qemu-img", &["snapshot", "-c", "extra", &s(&n)]);
    check_clean(&n);
    assert_snapshot_equals(&n, "extra", ch.size, ch.c, &ch.models[0]);
    // qemu-io writes on the active layer (shared and exclusive clusters, a shared L2 window).
    let q = copy_to(&ch.img, "write.qcow2");
    let epl = ch.c / 8;
    let mut active = ch.models[0].clone();
    for g in [0, 1, 2 * epl + 6, 5 * epl, 7 * epl + 1] {
        let cmd = format!("write -P 0x5a {} {}", g * ch.c, ch.c);
        run_ok("qemu-io", &["-f", "qcow2", "-c", &cmd, &s(&q)]);
        active.insert(g, vec![0x5a; ch.c as usize]);
    }
    check_clean(&q);
    assert_active_equals(&q, ch.size, ch.c, &active);
    for (name, state) in snapshot_names(false) {
        assert_snapshot_equals(&q, name, ch.size, ch.c, &ch.models[state]);
    }
    let _ = img;
}

fn chain_test(name: &str, cluster_bits: u32, version: Version) {
    let ch = build(name, cluster_bits, version, false);
    assert!(
        ch.summary.shared_l2_refs > 0 && ch.summary.shared_data_refs > 0,
        "{:?}",
        ch.summary
    );
    assert_eq!(ch.summary.states, 4);
    check_offline(&ch, false);
    require_qemu!();
    check_with_qemu(&ch, false);
    qemu_mutations(&ch);
}

#[test]
fn chain_v3_512() {
    chain_test("chain-v3-512", 9, Version::V3);
}

#[test]
fn chain_v3_4k() {
    chain_test("chain-v3-4k", 12, Version::V3);
}

#[test]
fn chain_v3_64k() {
    chain_test("chain-v3-64k", 16, Version::V3);
}

#[test]
fn chain_v2_4k() {
    chain_test("chain-v2-4k", 12, Version::V2);
}

/// A state used twice (active and a snapshot) and two states never used (their references are
/// given back, so no leaks).
#[test]
fn state_used_twice_or_never() {
    let ch = build("chain-uses", 12, Version::V3, true);
    assert_eq!(ch.summary.states, 3);
    check_offline(&ch, true);
    require_qemu!();
    check_with_qemu(&ch, true);
    let a = copy_to(&ch.img, "apply.qcow2");
    run_ok(
        "qemu-img",
        &["snapshot", "-a", "older", a.to_str().unwrap()],
    );
    check_clean(&a);
    assert_active_equals(&a, ch.size, ch.c, &ch.models[1]);
}

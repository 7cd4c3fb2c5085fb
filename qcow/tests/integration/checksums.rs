//! The cluster checksum table (docs/verify.md): written by the writer when asked, kept current
//! by the editor through appends and removals (also when clusters freed inside the image are
//! reused), intact when an append stops at any physical event; [`qcow::verify`] finds one
//! flipped byte; `qemu-img check` stays clean throughout.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::common::archive::*;
use crate::common::*;
use qcow::{ClusterKind, Error, SnapshotSpec, TableStatus, Version, WriteEvent};

const GEO: Geo = Geo {
    cluster_bits: 12,
    size: 8 << 20,
    version: Version::V3,
};

fn history(n: usize) -> Vec<Named> {
    let mut e = first_state(GEO, 400, 41);
    let mut out = Vec::new();
    for i in 1..=n {
        out.push(Named {
            name: format!("s{i}"),
            expect: e.clone(),
        });
        e = evolve(GEO, &e, 15, 500 + i as u64);
    }
    out
}

/// An archive of `states` (newest first) with a checksum table.
fn write_with_table(path: &Path, states: &[Named]) {
    let mut w = new_writer(path, GEO.opts());
    w.set_cluster_checksums().unwrap();
    let mut ids = Vec::new();
    let mut prev = None;
    for st in states {
        let s = w.new_state();
        write_expect(&mut w, s, &st.expect, prev, GEO.c());
        ids.push(s);
        prev = Some(s);
    }
    let specs: Vec<SnapshotSpec> = states
        .iter()
        .zip(&ids)
        .enumerate()
        .map(|(i, (st, &s))| spec(s, &(i + 1).to_string(), &st.name))
        .collect();
    w.finish(ids[0], &specs).unwrap();
}

fn assert_verified(path: &Path) -> u64 {
    let r = qcow::verify(File::open(path).unwrap()).unwrap();
    assert_eq!(r.table, TableStatus::Current, "{r:?}");
    assert!(
        r.bad.is_empty() && r.structure_errors.is_empty() && r.leaks.is_empty(),
        "{r:?}"
    );
    assert!(r.clusters_checked > 0);
    r.clusters_checked
}

#[test]
fn table_kept_through_appends_and_removals() {
    require_qemu!();
    let dir = scratch("checksums-kept");
    let img = dir.join("a.qcow2");
    let all = history(6);
    let mut kept: Vec<Named> = all[..2].iter().rev().cloned().collect();
    write_with_table(&img, &kept);
    assert_verified(&img);
    check_clean(&img);
    for st in &all[2..4] {
        let ed = open_editor(&img);
        assert!(ed.keeps_checksums());
        append_with(ed, GEO, st).unwrap();
        kept.insert(0, st.clone());
        assert_verified(&img);
        check_clean(&img);
    }
    let mut ed = open_editor(&img);
    ed.remove_snapshot(3).unwrap();
    ed.remove_snapshot(2).unwrap();
    ed.commit(None, &[]).unwrap();
    kept.truncate(2);
    assert_verified(&img);
    check_clean(&img);
    // The next appends reuse the clusters freed inside the image.
    for st in &all[4..] {
        let s = append(&img, GEO, st);
        assert!(s.reused_clusters > 0 || st.name == "s6", "{s:?}");
        kept.insert(0, st.clone());
        assert_verified(&img);
        check_clean(&img);
    }
    assert_archive(&img, GEO, &kept);
}

#[test]
fn an_interrupted_append_leaves_the_table_current() {
    let dir = scratch("checksums-faults");
    let img = dir.join("base.qcow2");
    let all = history(3);
    write_with_table(&img, &[all[0].clone()]);
    append(&img, GEO, &all[1]);
    let events = Arc::new(Mutex::new(0u32));
    let count = events.clone();
    let probe = dir.join("probe.qcow2");
    std::fs::copy(&img, &probe).unwrap();
    let mut ed = open_editor(&probe);
    ed.set_write_hook(Box::new(move |_| {
        *count.lock().unwrap() += 1;
        Ok(())
    }));
    append_with(ed, GEO, &all[2]).unwrap();
    let n = *events.lock().unwrap();
    for stop in 0..n {
        let f = dir.join("f.qcow2");
        std::fs::copy(&img, &f).unwrap();
        let mut ed = open_editor(&f);
        let mut seen = 0;
        ed.set_write_hook(Box::new(move |e: WriteEvent| {
            seen += 1;
            if seen > stop {
                return Err(Error::InvalidArgument(format!("stopped at {e:?}")));
            }
            Ok(())
        }));
        assert!(append_with(ed, GEO, &all[2]).is_err());
        assert_verified(&f);
        // A fresh open truncates the leftovers, the append then succeeds (unless the stop
        // came after the commit).
        let ed = open_editor(&f);
        if ed.snapshots().iter().all(|s| s.name != all[2].name) {
            append_with(ed, GEO, &all[2]).unwrap();
        }
        assert_verified(&f);
    }
}

#[test]
fn a_flipped_byte_is_found() {
    let dir = scratch("checksums-flip");
    let img = dir.join("a.qcow2");
    let all = history(2);
    write_with_table(&img, &all.iter().rev().cloned().collect::<Vec<_>>());
    assert_verified(&img);
    let r = qcow::Reader::open(File::open(&img).unwrap()).unwrap();
    let mut host = None;
    r.layer(qcow::Layer::Active)
        .unwrap()
        .for_each_allocated(|_, m| {
            if let (None, qcow::ClusterMapping::Normal { host_offset }) = (host, m) {
                host = Some(host_offset);
            }
            Ok(())
        })
        .unwrap();
    let host = host.unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, host + 7).unwrap();
    f.write_all_at(&[b[0] ^ 1], host + 7).unwrap();
    let rep = qcow::verify(File::open(&img).unwrap()).unwrap();
    assert_eq!(rep.bad.len(), 1, "{rep:?}");
    assert_eq!(rep.bad[0].host_offset, host);
    assert_eq!(rep.bad[0].kind, ClusterKind::Data);
    assert!(rep.bad[0]
        .uses
        .iter()
        .any(|u| u.layer == qcow::Layer::Active));
}

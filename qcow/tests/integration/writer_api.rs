//! Writer and reader API behaviour that needs no QEMU: argument validation, lookups, the
//! summary, per-layer cluster statistics, thread safety of the reader.

use std::fs::{File, OpenOptions};
use std::path::Path;

use crate::common::*;
use qcow::{
    Error, HostCluster, Layer, LayerReader, LayerStats, Reader, SnapshotSpec, Version, Writer,
    WriterOptions,
};

const C: u64 = 4096;

fn opts(virtual_size: u64) -> WriterOptions {
    WriterOptions {
        cluster_bits: 12,
        virtual_size,
        version: Version::V3,
    }
}

fn spec(state: qcow::StateId, id: &str, name: &str) -> SnapshotSpec {
    SnapshotSpec {
        state,
        id: id.into(),
        name: name.into(),
        date_sec: 0,
        date_nsec: 0,
    }
}

fn is_invalid<T: std::fmt::Debug>(r: Result<T, Error>) -> bool {
    matches!(r, Err(Error::InvalidArgument(_)))
}

fn fresh(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap()
}

#[test]
fn create_validates_options() {
    let dir = scratch("api-create");
    let p = dir.join("x.qcow2");
    let limit = |o| matches!(Writer::create(fresh(&p), o), Err(Error::Limit(_)));
    assert!(limit(WriterOptions {
        cluster_bits: 8,
        ..opts(1 << 20)
    }));
    assert!(limit(WriterOptions {
        cluster_bits: 22,
        ..opts(1 << 20)
    }));
    assert!(limit(WriterOptions {
        cluster_bits: 9,
        ..opts(1 << 40)
    })); // L1 of 32 Mi entries
    assert!(limit(opts(9 << 40))); // 4 KiB clusters stop at 8 TiB
    assert!(Writer::create(fresh(&p), opts(8 << 40)).is_ok());
    assert!(is_invalid(Writer::create(fresh(&p), opts(0))));
    assert!(is_invalid(Writer::create(fresh(&p), opts(1000))));
    std::fs::write(&p, b"x").unwrap();
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    assert!(is_invalid(Writer::create(f, opts(1 << 20))));
}

#[test]
fn write_arguments_are_validated() {
    let dir = scratch("api-args");
    let mut w = new_writer(&dir.join("x.qcow2"), opts(1 << 20)); // 256 clusters
    let s = w.new_state();
    let t = w.new_state();
    let one = vec![7u8; C as usize];
    assert!(is_invalid(w.write_clusters(s, 0, &one[..100])));
    assert!(is_invalid(w.write_clusters(s, 256, &one)));
    assert!(is_invalid(w.write_clusters(s, u64::MAX, &one)));
    w.write_clusters(s, 5, &one).unwrap();
    assert!(is_invalid(w.write_clusters(s, 5, &one)));
    assert!(is_invalid(w.write_clusters(s, 4, &one)));
    let host = w.lookup(s, 5).unwrap().unwrap();
    assert_eq!(w.lookup(s, 4).unwrap(), None);
    assert!(is_invalid(w.lookup(s, 256)));
    // The header, and clusters not allocated (nothing follows the data cluster yet).
    assert!(is_invalid(w.share_cluster(t, 1, HostCluster(0))));
    assert!(is_invalid(w.share_cluster(t, 1, HostCluster(host.0 + 1))));
    assert!(is_invalid(w.share_cluster(t, 1, HostCluster(host.0 + 100))));
    w.share_cluster(t, 1, host).unwrap();
    assert!(is_invalid(w.share_cluster(t, 1, host)));
    assert!(is_invalid(w.write_clusters_dedup(t, 9, &one, t)));
    assert_eq!(w.lookup(t, 1).unwrap(), Some(host));
    // A StateId this writer never issued.
    let mut other = new_writer(&dir.join("y.qcow2"), opts(1 << 20));
    let _ = (other.new_state(), other.new_state());
    let foreign = other.new_state();
    assert!(is_invalid(w.write_clusters(foreign, 9, &one)));
    assert!(is_invalid(w.finish(foreign, &[])));
}

#[test]
fn finish_validates_snapshots() {
    let dir = scratch("api-finish");
    for bad in [
        vec![("1", "a"), ("1", "b")],
        vec![("1", "a"), ("2", "a")],
        vec![("1", "2"), ("2", "b")],
        vec![("", "a")],
    ] {
        let mut w = new_writer(&dir.join("x.qcow2"), opts(1 << 20));
        let s = w.new_state();
        let specs: Vec<_> = bad.iter().map(|(id, name)| spec(s, id, name)).collect();
        assert!(is_invalid(w.finish(s, &specs)), "{bad:?}");
    }
}

/// Builds: S0 = clusters 0..4; S1 = S0 with cluster 2 changed (dedup); S2 = clone of S0.
fn three_states(path: &Path) -> (qcow::WriterSummary, Model, Model) {
    let mut w = new_writer(path, opts(64 << 20));
    let s0 = w.new_state();
    let m0: Model = (0..4).map(|g| (g, cluster_data(g, C))).collect();
    write_model(&mut w, s0, &m0);
    let s1 = w.new_state();
    let mut m1 = m0.clone();
    m1.insert(2, cluster_data(77, C));
    m1.remove(&3);
    for (g, data) in runs(&m1) {
        w.write_clusters_dedup(s1, g, &data, s0).unwrap();
    }
    let s2 = w.clone_state(s0).unwrap();
    assert_eq!(w.lookup(s1, 0).unwrap(), w.lookup(s0, 0).unwrap());
    assert_ne!(w.lookup(s1, 2).unwrap(), w.lookup(s0, 2).unwrap());
    assert_eq!(w.lookup(s2, 3).unwrap(), w.lookup(s0, 3).unwrap());
    assert_eq!(w.l1_size(), 32);
    assert_eq!(w.cluster_size(), C);
    let summary = w
        .finish(s0, &[spec(s1, "1", "one"), spec(s2, "2", "two")])
        .unwrap();
    (summary, m0, m1)
}

#[test]
fn summary_lookup_and_layers() {
    let dir = scratch("api-summary");
    let img = dir.join("x.qcow2");
    let (summary, m0, m1) = three_states(&img);
    assert_eq!(summary.data_clusters, 5);
    assert_eq!(summary.shared_data_refs, 2);
    assert_eq!(summary.l2_tables, 2);
    assert_eq!(summary.shared_l2_refs, 1);
    assert_eq!(summary.states, 3);
    verify::verify_image(&img);
    assert_layer_equals(&img, Layer::Active, &m0);
    assert_layer_equals(&img, Layer::Snapshot(0), &m1);
    assert_layer_equals(&img, Layer::Snapshot(1), &m0);
}

#[test]
fn cluster_stats_counts_shared_and_exclusive() {
    let dir = scratch("api-stats");
    let img = dir.join("x.qcow2");
    three_states(&img);
    let r = Reader::open(File::open(&img).unwrap()).unwrap();
    let st = r.cluster_stats().unwrap();
    let want = |layer, shared_clusters, exclusive_clusters| LayerStats {
        layer,
        shared_clusters,
        exclusive_clusters,
    };
    // Active: own L1; shares L2_0 and d0..d3 with S2 (d0, d1 also with S1).
    // S1: L1, L2_1, d2' own; d0, d1 shared. S2: own L1, the rest shared.
    assert_eq!(
        st,
        vec![
            want(Layer::Active, 5, 1),
            want(Layer::Snapshot(0), 2, 3),
            want(Layer::Snapshot(1), 5, 1)
        ]
    );
}

#[test]
fn reader_is_send_sync_and_parallel() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Reader>();
    assert_send_sync::<LayerReader<'static>>();
    assert_send_sync::<qcow::Writer>();
    assert_send_sync::<qcow::Editor>();
    let dir = scratch("api-parallel");
    let img = dir.join("x.qcow2");
    let mut w = new_writer(&img, opts(64 << 20));
    let s = w.new_state();
    let model: Model = (0..2000).map(|g| (g * 3, cluster_data(g, C))).collect();
    write_model(&mut w, s, &model);
    w.finish(s, &[]).unwrap();
    let r = Reader::open(File::open(&img).unwrap()).unwrap();
    let lr = r.layer(Layer::Active).unwrap();
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let (lr, model) = (&lr, &model);
            scope.spawn(move || {
                let mut buf = vec![0u8; C as usize];
                for (&g, data) in model.iter().filter(|(g, _)| *g % 4 == t) {
                    lr.read_cluster(g, &mut buf).unwrap();
                    assert!(buf == *data);
                }
            });
        }
    });
}

#[test]
fn writes_larger_than_the_buffer_and_across_windows() {
    let dir = scratch("api-large");
    let img = dir.join("x.qcow2");
    let mut w = new_writer(&img, opts(256 << 20));
    let s = w.new_state();
    // 20 MiB in one call (larger than the 8 MiB buffer), crossing ten 2 MiB L2 windows.
    let model: Model = (100..100 + 5120).map(|g| (g, cluster_data(g, C))).collect();
    write_model(&mut w, s, &model);
    let summary = w.finish(s, &[]).unwrap();
    assert_eq!(summary.l2_tables, 11);
    let v = verify::verify_image(&img);
    assert_eq!(v.copied_data, 5120);
    assert_layer_equals(&img, Layer::Active, &model);
}

/// Header patches of a valid image that the reader must refuse as unsupported.
#[test]
fn reader_refuses_patched_features() {
    let dir = scratch("api-features");
    let img = dir.join("x.qcow2");
    three_states(&img);
    let good = std::fs::read(&img).unwrap();
    let patched = dir.join("patched.qcow2");
    let cases: [(usize, &[u8], &str); 5] = [
        (32, &[0, 0, 0, 1], "encryption"),            // crypt_method AES
        (8, &[0, 0, 0, 0, 0, 0, 0, 0x70], "backing"), // backing_file_offset (size 0)
        (79, &[0x04], "external data file"),          // incompatible bit 2
        (79, &[0x10], "extended L2"),                 // incompatible bit 4
        (79, &[0x20], "unknown incompatible"),        // incompatible bit 5
    ];
    for (at, bytes, what) in cases {
        let mut b = good.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        std::fs::write(&patched, &b).unwrap();
        match Reader::open(File::open(&patched).unwrap()) {
            Err(Error::Unsupported(msg)) => assert!(msg.contains(what), "{msg}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    // compression_type 1 with incompatible bit 3 is zstd, which the reader reads.
    let mut b = good.clone();
    b[104] = 1;
    b[79] = 0x08;
    std::fs::write(&patched, &b).unwrap();
    let r = Reader::open(File::open(&patched).unwrap()).unwrap();
    assert_eq!(r.compression_type(), qcow::CompressionType::Zstd);
}

/// After clone_state, both the source and the clone keep writing in the shared last window
/// (each gets a private copy of that L2 table) and in later windows.
#[test]
fn clone_then_write_both() {
    let dir = scratch("api-clone");
    let img = dir.join("x.qcow2");
    let mut w = new_writer(&img, opts(64 << 20));
    let a = w.new_state();
    let base: Model = [0u64, 1, 600, 601]
        .iter()
        .map(|&g| (g, cluster_data(g, C)))
        .collect();
    write_model(&mut w, a, &base);
    let b = w.clone_state(a).unwrap();
    let (mut ma, mut mb) = (base.clone(), base);
    for (g, tag) in [(602u64, 1u64), (5000, 2)] {
        ma.insert(g, cluster_data(tag, C));
        w.write_clusters(a, g, &ma[&g]).unwrap();
    }
    for (g, tag) in [(700u64, 3u64), (5000, 2)] {
        mb.insert(g, cluster_data(tag, C));
        w.write_clusters_dedup(b, g, &mb[&g], a).unwrap();
    }
    let summary = w.finish(b, &[spec(a, "1", "a")]).unwrap();
    assert_eq!(summary.data_clusters, 7); // 4 + 602 + 5000 + 700; b's 5000 is shared
    let v = verify::verify_image(&img);
    assert!(v.copied_l1 > 0 && v.shared_l1 > 0, "{v:?}");
    assert_layer_equals(&img, Layer::Active, &mb);
    assert_layer_equals(&img, Layer::Snapshot(0), &ma);
}

//! Compressed clusters written by this crate (deflate and zstd, 512 B to 2 MiB clusters,
//! payloads packed across host clusters, clusters that do not compress stored plain, shared
//! between states) checked by QEMU; QEMU-made zstd images read, and appended to in place.

use std::fs::File;
use std::path::Path;

use crate::common::*;
use qcow::{
    ClusterMapping, CompressedCluster, Compression, CompressionType, Editor, Layer, Reader,
    SnapshotSpec, StateId, Version, Writer, WriterOptions,
};

/// Text-like cluster `tag` (compresses several times over).
fn text_cluster(tag: u64, c: u64) -> Vec<u8> {
    let line = format!(
        "inode {tag}: mode 0644 links 1 size {} blocks 8\n",
        tag * 4096
    );
    line.as_bytes()
        .iter()
        .copied()
        .cycle()
        .take(c as usize)
        .collect()
}

/// A model of compressible clusters around an L2 window boundary and at the end, with one
/// cluster of random bytes (stored plain).
fn model(guest_clusters: u64, c: u64) -> (Model, u64) {
    let epl = c / 8;
    let mut m = Model::new();
    for g in (0..6).chain(epl - 3..epl + 3).chain([guest_clusters - 1]) {
        if g < guest_clusters {
            m.insert(g, text_cluster(g + 1, c));
        }
    }
    let random = 3;
    m.insert(random, cluster_data(99, c));
    (m, random)
}

/// Writes `model` into `state`, each cluster compressed (or stored plain) by `comp`.
fn write_compressed(w: &mut Writer, state: StateId, comp: &Compression, model: &Model) {
    for (&g, data) in model {
        match comp.compress_cluster(data).unwrap() {
            CompressedCluster::Payload(p) => w.write_compressed_cluster(state, g, &p).unwrap(),
            CompressedCluster::Plain => w.write_clusters(state, g, data).unwrap(),
        }
    }
}

fn open_writer(img: &Path, cb: u32, size: u64, kind: CompressionType) -> Writer {
    let opts = WriterOptions {
        cluster_bits: cb,
        virtual_size: size,
        version: Version::V3,
    };
    let mut w = new_writer(img, opts);
    w.set_compression_type(kind).unwrap();
    w
}

#[test]
fn compressed_images_check_clean_and_read_back() {
    require_qemu!();
    let dir = scratch("compressed-write");
    for kind in [CompressionType::Deflate, CompressionType::Zstd] {
        for cb in [9, 12, 16, 21] {
            let c = 1u64 << cb;
            let size = (c * c / 8) * 2; // two L2 windows
            let img = dir.join(format!("{}-{cb}.qcow2", kind.name()));
            let (m, random) = model(size / c, c);
            let comp = Compression::new(kind, None).unwrap();
            let mut w = open_writer(&img, cb, size, kind);
            let s = w.new_state();
            write_compressed(&mut w, s, &comp, &m);
            let summary = w.finish(s, &[]).unwrap();
            assert_eq!(
                summary.compressed_clusters,
                m.len() as u64 - 1,
                "{kind:?} {cb}"
            );
            assert_eq!(summary.data_clusters, 1);
            check_clean(&img);
            assert_active_equals(&img, size, c, &m);
            assert_layer_equals(&img, Layer::Active, &m);
            let r = Reader::open(File::open(&img).unwrap()).unwrap();
            assert_eq!(r.compression_type(), kind);
            assert_eq!(r.header().compression_type, kind.header_value());
            assert_eq!(
                r.header().incompatible_features,
                u64::from(kind == CompressionType::Zstd) << 3
            );
            let lr = r.layer(Layer::Active).unwrap();
            assert!(matches!(
                lr.mapping(random).unwrap(),
                ClusterMapping::Normal { .. }
            ));
            // Payloads are packed: several share a host cluster, and some cross into the next.
            let mut hosts = Vec::new();
            for &g in m.keys().filter(|&&g| g != random) {
                let ClusterMapping::Compressed { host_offset, .. } = lr.mapping(g).unwrap() else {
                    panic!("{kind:?} {cb}: guest cluster {g} not compressed");
                };
                hosts.push(host_offset >> cb);
            }
            hosts.dedup();
            assert!(hosts.len() < m.len() - 1, "{kind:?} {cb}: {hosts:?}");
            let info = run_ok("qemu-img", &["info", img.to_str().unwrap()]);
            assert!(
                info.contains(&format!("compression type: {}", kind.name())),
                "{info}"
            );
        }
    }
}

#[test]
fn compressed_clusters_are_shared_between_states() {
    require_qemu!();
    let dir = scratch("compressed-shared");
    for kind in [CompressionType::Deflate, CompressionType::Zstd] {
        let (cb, c) = (12, 4096u64);
        let size = 8 << 20;
        let img = dir.join(format!("{}.qcow2", kind.name()));
        let (m0, _) = model(size / c, c);
        let mut m1 = m0.clone();
        m1.insert(1, text_cluster(1000, c));
        m1.remove(&2);
        let comp = Compression::new(kind, Some(1)).unwrap();
        let mut w = open_writer(&img, cb, size, kind);
        let a = w.new_state();
        write_compressed(&mut w, a, &comp, &m0);
        // The second state: equal guest bytes found through the compressed base (shared),
        // the others compressed anew.
        let b = w.new_state();
        for (&g, data) in &m1 {
            let same = match w.stored_cluster(a, g).unwrap() {
                Some(st) => st.holds(data).unwrap(),
                None => false,
            };
            if same {
                assert!(w.share_base_cluster(b, g, a).unwrap());
            } else if let CompressedCluster::Payload(p) = comp.compress_cluster(data).unwrap() {
                w.write_compressed_cluster(b, g, &p).unwrap();
            } else {
                w.write_clusters(b, g, data).unwrap();
            }
        }
        // A third state through the plain dedup path, which also decodes compressed bases.
        let d = w.new_state();
        for (&g, data) in &m1 {
            w.write_clusters_dedup(d, g, data, b).unwrap();
        }
        let specs = [
            spec(b, "1", "new"),
            spec(d, "2", "dedup"),
            spec(a, "3", "old"),
        ];
        let summary = w.finish(b, &specs).unwrap();
        assert_eq!(
            summary.compressed_clusters,
            m0.len() as u64 - 1 + 1,
            "{kind:?}"
        );
        assert_eq!(
            summary.data_clusters, 1,
            "{kind:?}: the random cluster, once"
        );
        check_clean(&img);
        assert_active_equals(&img, size, c, &m1);
        assert_snapshot_equals(&img, "old", size, c, &m0);
        assert_snapshot_equals(&img, "dedup", size, c, &m1);
        let stats = Reader::open(File::open(&img).unwrap())
            .unwrap()
            .cluster_stats()
            .unwrap();
        assert!(stats.iter().all(|s| s.shared_clusters > 0), "{stats:?}");
    }
}

fn spec(state: StateId, id: &str, name: &str) -> SnapshotSpec {
    SnapshotSpec {
        state,
        id: id.into(),
        name: name.into(),
        date_sec: 0,
        date_nsec: 0,
    }
}

#[test]
fn zstd_in_a_v2_image_is_refused() {
    let dir = scratch("compressed-v2");
    let opts = WriterOptions {
        cluster_bits: 16,
        virtual_size: 1 << 20,
        version: Version::V2,
    };
    let mut w = new_writer(&dir.join("v2.qcow2"), opts);
    assert!(w.set_compression_type(CompressionType::Zstd).is_err());
    w.set_compression_type(CompressionType::Deflate).unwrap();
}

#[test]
fn qemu_made_zstd_images_are_read_and_appended_to() {
    require_qemu!();
    let dir = scratch("compressed-qemu-zstd");
    let c = 65536u64;
    let size = 4 << 20;
    let mut base = Model::new();
    for g in 0..size / c {
        if g % 3 != 1 {
            base.insert(g, text_cluster(g + 7, c));
        }
    }
    let raw = dir.join("src.raw");
    write_raw(&raw, size, c, &base);
    for cs in ["512", "4096", "65536", "2097152"] {
        let img = dir.join(format!("z{cs}.qcow2"));
        qemu_compress(
            &raw,
            &img,
            &format!("compression_type=zstd,cluster_size={cs}"),
        );
        let r = Reader::open(File::open(&img).unwrap()).unwrap();
        assert_eq!(r.compression_type(), CompressionType::Zstd);
        let lr = r.layer(Layer::Active).unwrap();
        let mut got = vec![0u8; size as usize];
        lr.read_at(0, &mut got).unwrap();
        assert!(got == std::fs::read(&raw).unwrap(), "zstd {cs}");
    }
    // Append a state in place: new clusters compressed with zstd, the rest shared.
    let img = dir.join("z65536.qcow2");
    run_ok(
        "qemu-img",
        &["snapshot", "-c", "base", img.to_str().unwrap()],
    );
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let mut ed = Editor::open(f).unwrap();
    let b = ed.load_snapshot(0).unwrap();
    let w = ed.writer();
    assert!(w.set_compression_type(CompressionType::Deflate).is_err());
    let comp = Compression::new(CompressionType::Zstd, Some(19)).unwrap();
    let s = w.new_state();
    let mut next = base.clone();
    next.insert(1, text_cluster(500, c));
    next.insert(5, cluster_data(5, c));
    for (&g, data) in &next {
        if w.stored_cluster(b, g)
            .unwrap()
            .is_some_and(|st| st.holds(data).unwrap())
        {
            assert!(w.share_base_cluster(s, g, b).unwrap());
        } else if let CompressedCluster::Payload(p) = comp.compress_cluster(data).unwrap() {
            w.write_compressed_cluster(s, g, &p).unwrap();
        } else {
            w.write_clusters(s, g, data).unwrap();
        }
    }
    ed.commit(Some(s), &[spec(s, "2", "next")]).unwrap();
    check_clean(&img);
    assert_active_equals(&img, size, c, &next);
    assert_snapshot_equals(&img, "base", size, c, &base);
    let info = run_ok("qemu-img", &["info", img.to_str().unwrap()]);
    assert!(info.contains("compression type: zstd"), "{info}");
}

/// A host cluster packed with 256 payloads, shared by ever more states: once another
/// reference would leave too little room below the 16-bit refcount limit, the writer stores
/// the guest bytes again (plain) instead of overflowing; every state still reads right and the
/// refcounts agree with the references (the editor's census, and `qemu-img check`).
#[test]
fn sharing_packed_payloads_stops_short_of_the_refcount_limit() {
    let dir = scratch("compressed-share-limit");
    let img = dir.join("many.qcow2");
    let (cb, c) = (16, 65536u64);
    let size = 256 * c;
    let mut w = open_writer(&img, cb, size, CompressionType::Zstd);
    let comp = Compression::new(CompressionType::Zstd, None).unwrap();
    let mut m = Model::new();
    for g in 0..256 {
        let mut data = vec![0u8; c as usize];
        data[..2].copy_from_slice(&[g as u8, 1]); // a few bytes compressed: 256 in one host cluster
        m.insert(g, data);
    }
    let a = w.new_state();
    write_compressed(&mut w, a, &comp, &m);
    let mut states = vec![a];
    for _ in 0..300 {
        let s = w.new_state();
        for g in 0..256 {
            assert!(w.share_base_cluster(s, g, a).unwrap());
        }
        states.push(s);
    }
    let specs: Vec<SnapshotSpec> = states
        .iter()
        .enumerate()
        .map(|(i, &s)| spec(s, &(i + 1).to_string(), &format!("s{i}")))
        .collect();
    let summary = w.finish(a, &specs).unwrap();
    assert_eq!(summary.compressed_clusters, 256);
    assert!(
        summary.data_clusters > 0,
        "no cluster was stored again: {summary:?}"
    );
    assert_layer_equals(&img, Layer::Snapshot(300), &m);
    assert_layer_equals(&img, Layer::Snapshot(150), &m);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    Editor::open(f).unwrap(); // every refcount equals its references
    require_qemu!();
    check_clean(&img);
}

//! `Reader::cluster_stats` on images with many snapshots over the same tables: snapshots that
//! share one L1 table (the snapshot table patched so that every use of a state points at one
//! L1 copy), snapshots with their own L1 copies over shared L2 tables (our writer, and
//! `qemu-img snapshot -c` in a loop), compressed clusters. Every count is checked against a
//! straightforward computation written here from the spec: one set of host clusters per layer
//! (its L1 clusters, L2 tables, data clusters, clusters a compressed payload touches), then a
//! count of layers per cluster. No timings (measured by hand: see the stats module comment).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::common::*;
use qcow::{
    ClusterMapping, Header, Layer, LayerStats, Reader, SnapshotSpec, StateId, Version,
    WriterOptions,
};

const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COMPRESSED: u64 = 1 << 62;

fn be64(b: &[u8], at: u64) -> u64 {
    u64::from_be_bytes(b[at as usize..at as usize + 8].try_into().unwrap())
}

fn be32(b: &[u8], at: u64) -> u32 {
    u32::from_be_bytes(b[at as usize..at as usize + 4].try_into().unwrap())
}

fn be16(b: &[u8], at: u64) -> u64 {
    u64::from(u16::from_be_bytes(
        b[at as usize..at as usize + 2].try_into().unwrap(),
    ))
}

/// Byte offsets of the snapshot table entries.
fn snapshot_entries(img: &[u8], h: &Header) -> Vec<u64> {
    let mut out = Vec::new();
    let mut off = h.snapshots_offset;
    for _ in 0..h.nb_snapshots {
        out.push(off);
        let (id, name, extra) = (
            be16(img, off + 12),
            be16(img, off + 14),
            be32(img, off + 36),
        );
        off = (off + 40 + u64::from(extra) + id + name).next_multiple_of(8);
    }
    out
}

/// Host clusters one layer references, from its L1 table (offset, entries).
fn layer_clusters(img: &[u8], h: &Header, (l1, l1_size): (u64, u32)) -> HashSet<u64> {
    let (cb, c) = (h.cluster_bits, h.cluster_size());
    let file_clusters = (img.len() as u64).div_ceil(c);
    let mut set: HashSet<u64> = (0..(u64::from(l1_size) * 8).div_ceil(c))
        .map(|k| (l1 >> cb) + k)
        .collect();
    for i in 0..u64::from(l1_size) {
        let l2 = be64(img, l1 + 8 * i) & L1_OFFSET_MASK;
        if l2 == 0 {
            continue;
        }
        set.insert(l2 >> cb);
        for j in 0..c / 8 {
            let e = be64(img, l2 + 8 * j);
            let (first, last) = if e & COMPRESSED != 0 {
                let x = 62 - (cb - 8);
                let host = e & ((1 << x) - 1);
                let sectors = (e & !(3 << 62)) >> x;
                let len = (sectors + 1) * 512 - (host & 511);
                (host >> cb, (host + len - 1) >> cb)
            } else if e & L1_OFFSET_MASK != 0 {
                ((e & L1_OFFSET_MASK) >> cb, (e & L1_OFFSET_MASK) >> cb)
            } else {
                continue;
            };
            set.extend(first..=last);
        }
    }
    set.retain(|&k| k < file_clusters);
    set
}

/// The expected statistics, layer by layer (active first).
fn straightforward(path: &Path) -> Vec<LayerStats> {
    let img = std::fs::read(path).unwrap();
    let h = Header::parse(&img).unwrap();
    let mut l1s = vec![(h.l1_table_offset, h.l1_size)];
    l1s.extend(
        snapshot_entries(&img, &h)
            .into_iter()
            .map(|e| (be64(&img, e), be32(&img, e + 8))),
    );
    let sets: Vec<HashSet<u64>> = l1s.iter().map(|&l1| layer_clusters(&img, &h, l1)).collect();
    let mut layers_of: HashMap<u64, u32> = HashMap::new();
    for c in sets.iter().flatten() {
        *layers_of.entry(*c).or_default() += 1;
    }
    sets.iter()
        .enumerate()
        .map(|(i, set)| {
            let shared = set.iter().filter(|c| layers_of[c] > 1).count() as u64;
            LayerStats {
                layer: if i == 0 {
                    Layer::Active
                } else {
                    Layer::Snapshot(i - 1)
                },
                shared_clusters: shared,
                exclusive_clusters: set.len() as u64 - shared,
            }
        })
        .collect()
}

fn check(path: &Path) -> Vec<LayerStats> {
    let r = Reader::open(File::open(path).unwrap()).unwrap();
    let got = r.cluster_stats().unwrap();
    assert_eq!(got, straightforward(path), "{}", path.display());
    got
}

/// Points every snapshot at the L1 table of the first snapshot with the same `l1_size` and
/// whose L1 has the same content (the uses of one state): they then share one L1 table.
fn share_l1_tables(path: &Path) {
    let img = std::fs::read(path).unwrap();
    let h = Header::parse(&img).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let mut first_of: HashMap<Vec<u8>, u64> = HashMap::new();
    for e in snapshot_entries(&img, &h) {
        let (l1, size) = (be64(&img, e), u64::from(be32(&img, e + 8)));
        let content = img[l1 as usize..(l1 + 8 * size) as usize].to_vec();
        let shared = *first_of.entry(content).or_insert(l1);
        f.write_all_at(&shared.to_be_bytes(), e).unwrap();
    }
}

/// 64 MiB, 4 KiB clusters: three states (s1 dedups s0, s2 clones s1), used by `n` snapshots.
fn writer_image(path: &Path, n: usize) {
    let mut w = new_writer(
        path,
        WriterOptions {
            cluster_bits: 12,
            virtual_size: 64 << 20,
            version: Version::V3,
        },
    );
    let (s0, s1) = (w.new_state(), w.new_state());
    for g in (0..8000).step_by(5) {
        w.write_clusters(s0, g, &cluster_data(g, 4096)).unwrap();
        let tag = if g % 3 == 0 { g + 1 } else { g };
        w.write_clusters_dedup(s1, g, &cluster_data(tag, 4096), s0)
            .unwrap();
    }
    let s2 = w.clone_state(s1).unwrap();
    w.write_clusters(s2, 9000, &cluster_data(9000, 4096))
        .unwrap();
    let states: [StateId; 3] = [s0, s1, s2];
    let specs: Vec<SnapshotSpec> = (0..n)
        .map(|i| SnapshotSpec {
            state: states[i % 3],
            id: format!("{}", i + 1),
            name: format!("snap{i}"),
            date_sec: i as u32,
            date_nsec: 0,
        })
        .collect();
    w.finish(s0, &specs).unwrap();
}

#[test]
fn many_snapshots_sharing_one_l1_table() {
    let dir = scratch("stats-shared-l1");
    let img = dir.join("shared.qcow2");
    writer_image(&img, 300);
    // Own L1 copies over shared L2 tables first, then one L1 per state.
    let copies = check(&img);
    assert!(
        copies.iter().all(|s| s.exclusive_clusters == 1),
        "{copies:?}"
    );
    share_l1_tables(&img);
    let shared = check(&img);
    // Layers sharing an L1 table share everything they reference.
    assert!(
        shared[1..].iter().all(|s| s.exclusive_clusters == 0),
        "{shared:?}"
    );
    assert_eq!(shared[0], copies[0], "the active layer keeps its own L1");
    for (s, c) in shared[1..].iter().zip(&copies[1..]) {
        assert_eq!(
            s.shared_clusters,
            c.shared_clusters + 1,
            "its L1 is now shared"
        );
    }
}

fn qemu_io(img: &Path, cmd: &str) {
    run_ok(
        "qemu-io",
        &["-f", "qcow2", "-c", cmd, img.to_str().unwrap()],
    );
}

#[test]
fn qemu_snapshot_loop_and_compressed_clusters() {
    require_qemu!();
    let dir = scratch("stats-qemu-loop");
    let img = dir.join("loop.qcow2");
    let p = img.to_str().unwrap();
    run_ok("qemu-img", &["create", "-q", "-f", "qcow2", p, "4G"]);
    for i in 0..40u64 {
        qemu_io(&img, &format!("write -P {} {}M 64k", i + 1, i * 37 % 3000));
        qemu_io(&img, &format!("write -P {} {}k 4k", i + 7, i * 4));
        run_ok("qemu-img", &["snapshot", "-c", &format!("s{i}"), p]);
    }
    let stats = check(&img);
    assert_eq!(stats.len(), 41);
    // Compressed clusters pack several payloads per host cluster; with 4 KiB clusters (an L2
    // table maps 2 MiB) payloads of neighbouring L2 tables share host clusters.
    let src = dir.join("src.raw");
    let model: Model = (0..600).map(|g| (g, text_cluster(g))).collect();
    write_raw(&src, 64 << 20, 65536, &model);
    let cimg = dir.join("compressed.qcow2");
    qemu_compress(&src, &cimg, "cluster_size=4096");
    let r = Reader::open(File::open(&cimg).unwrap()).unwrap();
    let m = r.layer(Layer::Active).unwrap().mapping(513).unwrap();
    assert!(matches!(m, ClusterMapping::Compressed { .. }), "{m:?}");
    let c = cimg.to_str().unwrap();
    for i in 0..12u64 {
        // Compressed writes only go to unallocated clusters (past the model's 37.5 MiB).
        qemu_io(&cimg, &format!("write -c -P {} {}M 64k", i + 1, 40 + i * 2));
        run_ok("qemu-img", &["snapshot", "-c", &format!("c{i}"), c]);
    }
    check(&cimg);
    share_l1_tables(&cimg);
    check(&cimg);
}

/// A compressible cluster (text-like), different per `g`.
fn text_cluster(g: u64) -> Vec<u8> {
    let line = format!("cluster {g}: the quick brown fox jumps over the lazy dog\n");
    line.bytes().cycle().take(65536).collect()
}

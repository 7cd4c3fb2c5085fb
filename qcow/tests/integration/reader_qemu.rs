//! The reader on QEMU-made images: plain, v2, 512 B and 2 MiB clusters, zero clusters,
//! deflate- and zstd-compressed clusters, internal snapshots; each layer compared byte for byte with
//! `qemu-img convert -O raw`. Also: features the reader must refuse.

use std::fs::{self, File};
use std::path::Path;

use crate::common::*;
use qcow::{ClusterMapping, Error, Layer, Reader};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The layer's full content through `read_at` (in odd-sized pieces) and `read_cluster`.
fn read_layer(r: &Reader, layer: Layer) -> Vec<u8> {
    let lr = r.layer(layer).unwrap();
    let size = r.virtual_size() as usize;
    let mut out = vec![0u8; size];
    let piece = 100_000usize;
    for start in (0..size).step_by(piece) {
        let end = (start + piece).min(size);
        lr.read_at(start as u64, &mut out[start..end]).unwrap();
    }
    let c = r.cluster_size() as usize;
    let mut buf = vec![0u8; c];
    for g in 0..size.div_ceil(c) {
        lr.read_cluster(g as u64, &mut buf).unwrap();
        let end = ((g + 1) * c).min(size);
        assert!(
            buf[..end - g * c] == out[g * c..end],
            "read_cluster {g} != read_at"
        );
    }
    out
}

/// Asserts every layer of `img` equals what `qemu-img convert` extracts.
fn compare_all_layers(img: &Path) -> Reader {
    let r = Reader::open(File::open(img).unwrap()).unwrap();
    let raw = img.with_extension("raw");
    run_ok("qemu-img", &["convert", "-O", "raw", s(img), s(&raw)]);
    assert!(
        read_layer(&r, Layer::Active) == fs::read(&raw).unwrap(),
        "active layer of {}",
        img.display()
    );
    for (i, snap) in r.snapshots().iter().enumerate() {
        extract_snapshot(img, &snap.name, &raw);
        assert!(
            read_layer(&r, Layer::Snapshot(i)) == fs::read(&raw).unwrap(),
            "snapshot {} of {}",
            snap.name,
            img.display()
        );
    }
    r
}

fn mappings(r: &Reader, layer: Layer) -> Vec<(u64, ClusterMapping)> {
    let lr = r.layer(layer).unwrap();
    let mut v = Vec::new();
    lr.for_each_allocated(|g, m| {
        assert_eq!(lr.mapping(g).unwrap(), m);
        v.push((g, m));
        Ok(())
    })
    .unwrap();
    v
}

fn qemu_io(img: &Path, cmds: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(s(img));
    run_ok("qemu-io", &args);
}

fn create(img: &Path, size: &str, opts: &str) {
    let mut args = vec!["create", "-f", "qcow2"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([s(img), size]);
    run_ok("qemu-img", &args);
}

const WRITES: &[&str] = &[
    "write -P 0xaa 0 64k",
    "write -P 0xbb 1000 5000",
    "write -P 0xcc 1M 3M",
    "write -P 0xdd 60M 4k",
    "write -P 0xee 67108352 512",
];

#[test]
fn plain_images_all_cluster_sizes() {
    require_qemu!();
    let dir = scratch("reader-plain");
    for (i, opts) in [
        "",
        "cluster_size=512",
        "cluster_size=4k",
        "cluster_size=2M",
        "compat=0.10,cluster_size=4k",
        "compat=0.10",
    ]
    .iter()
    .enumerate()
    {
        let img = dir.join(format!("p{i}.qcow2"));
        create(&img, "64M", opts);
        qemu_io(&img, WRITES);
        let r = compare_all_layers(&img);
        assert!(!mappings(&r, Layer::Active).is_empty());
    }
}

#[test]
fn zero_clusters() {
    require_qemu!();
    let dir = scratch("reader-zero");
    let img = dir.join("z.qcow2");
    create(&img, "16M", "");
    qemu_io(
        &img,
        &[
            "write -P 0x11 0 256k",
            "write -z 64k 64k",
            "write -z 1M 128k",
            "write -z -u 2M 64k",
        ],
    );
    run_ok("qemu-img", &["snapshot", "-c", "s", s(&img)]);
    qemu_io(&img, &["write -z 128k 64k"]); // on a shared cluster: ZERO_ALLOC
    let r = compare_all_layers(&img);
    let m = mappings(&r, Layer::Active);
    assert!(
        m.iter()
            .any(|&(g, mm)| g == 1 && mm == ClusterMapping::Zero),
        "{m:?}"
    );
    assert!(
        m.iter()
            .any(|&(g, mm)| g == 16 && mm == ClusterMapping::Zero),
        "{m:?}"
    );
    assert!(
        m.iter()
            .any(|&(g, mm)| g == 2 && mm == ClusterMapping::Zero),
        "{m:?}"
    );
}

/// Compressible but varied data: numbered text lines.
fn text_file(path: &Path, len: usize) {
    let mut v = Vec::with_capacity(len + 100);
    let mut i = 0u64;
    while v.len() < len {
        v.extend_from_slice(
            format!("line {i}: the quick brown fox {} jumps\n", i * 7919 % 1000).as_bytes(),
        );
        i += 1;
    }
    v.truncate(len);
    fs::write(path, v).unwrap();
}

#[test]
fn compressed_clusters() {
    require_qemu!();
    let dir = scratch("reader-compressed");
    let src = dir.join("src.raw");
    text_file(&src, (3 << 20) + 100_352 % 65536 + 4096);
    for (i, (cs, kind)) in [
        ("64k", "zlib"),
        ("4k", "zlib"),
        ("512", "zlib"),
        ("64k", "zstd"),
        ("4k", "zstd"),
        ("512", "zstd"),
    ]
    .iter()
    .enumerate()
    {
        let img = dir.join(format!("c{i}.qcow2"));
        qemu_compress(
            &src,
            &img,
            &format!("cluster_size={cs},compression_type={kind}"),
        );
        let r = compare_all_layers(&img);
        let m = mappings(&r, Layer::Active);
        assert!(
            m.iter()
                .all(|(_, mm)| matches!(mm, ClusterMapping::Compressed { .. })),
            "{cs}: {m:?}"
        );
    }
}

#[test]
fn qemu_snapshots() {
    require_qemu!();
    let dir = scratch("reader-snapshots");
    for (i, opts) in ["", "compat=0.10,cluster_size=4k"].iter().enumerate() {
        let img = dir.join(format!("a{i}.qcow2"));
        create(&img, "128M", opts);
        qemu_io(&img, &["write -P 0xaa 0 64k", "write -P 0xa1 1M 64k"]);
        run_ok("qemu-img", &["snapshot", "-c", "s1", s(&img)]);
        qemu_io(&img, &["write -P 0xbb 0 64k", "write -P 0xb2 2M 64k"]);
        run_ok("qemu-img", &["snapshot", "-c", "s2", s(&img)]);
        qemu_io(&img, &["write -P 0xcc 0 64k", "write -P 0 1M 64k"]);
        let r = compare_all_layers(&img);
        assert_eq!(r.snapshots().len(), 2);
        assert_eq!(r.find_snapshot("s2"), Some(1));
        assert_eq!(r.find_snapshot("1"), Some(0));
        assert_eq!(r.snapshots()[0].icount, Some(0));
        let stats = r.cluster_stats().unwrap();
        assert_eq!(stats.len(), 3);
        assert!(
            stats
                .iter()
                .all(|s| s.exclusive_clusters > 0 && s.shared_clusters > 0),
            "{stats:?}"
        );
    }
}

fn expect_unsupported(img: &Path, what: &str) {
    match Reader::open(File::open(img).unwrap()) {
        Err(Error::Unsupported(msg)) => assert!(msg.contains(what), "{msg}"),
        other => panic!(
            "{}: expected Unsupported({what}), got {other:?}",
            img.display()
        ),
    }
}

#[test]
fn refuses_unsupported_features() {
    require_qemu!();
    let dir = scratch("reader-unsupported");
    let src = dir.join("src.raw");
    text_file(&src, 1 << 20);
    let base = dir.join("base.qcow2");
    create(&base, "16M", "");
    let overlay = dir.join("overlay.qcow2");
    run_ok(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            s(&base),
            "-F",
            "qcow2",
            s(&overlay),
        ],
    );
    expect_unsupported(&overlay, "backing");
    let ext = dir.join("ext.qcow2");
    create(&ext, "16M", "extended_l2=on");
    expect_unsupported(&ext, "extended L2");
    let data = dir.join("data.qcow2");
    let data_opt = format!("data_file={}", s(&dir.join("data.raw")));
    create(&data, "16M", &data_opt);
    expect_unsupported(&data, "external data file");
}

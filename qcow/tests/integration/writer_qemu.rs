//! Single-state writer output checked by QEMU: `qemu-img check` clean, `qemu-img compare` equal
//! to the expected raw bytes, at several cluster sizes, both versions, huge and odd virtual
//! sizes; and read back with this crate's reader.

use crate::common::*;
use qcow::{Layer, Reader, Version, WriterOptions};
use std::fs::File;

/// Clusters at the start, across an L2 window boundary, in the middle and at the very end.
fn spread_model(guest_clusters: u64, cluster_bits: u32) -> Model {
    let c = 1u64 << cluster_bits;
    let epl = c / 8;
    let mut m = Model::new();
    let mut put = |g: u64| {
        if g < guest_clusters {
            m.insert(g, cluster_data(g + 1, c));
        }
    };
    for g in 0..5 {
        put(g);
    }
    for g in epl - 2..epl + 3 {
        put(g); // a run crossing into the second L2 window
    }
    put(guest_clusters / 2);
    put(guest_clusters / 2 + 2);
    put(guest_clusters - 1);
    m
}

fn write_single(name: &str, cluster_bits: u32, size: u64, version: Version) {
    let dir = scratch(name);
    let img = dir.join("a.qcow2");
    let c = 1u64 << cluster_bits;
    let model = spread_model(size.div_ceil(c), cluster_bits);
    let opts = WriterOptions {
        cluster_bits,
        virtual_size: size,
        version,
    };
    let summary = write_one_state(&img, opts, &model);
    assert_eq!(summary.data_clusters, model.len() as u64);
    assert_eq!(summary.file_size, std::fs::metadata(&img).unwrap().len());
    assert_eq!(summary.file_size % c, 0);
    let v = verify::verify_image(&img);
    assert_eq!((v.shared_l1, v.shared_data), (0, 0));
    assert_eq!(v.copied_data, model.len() as u64);
    assert_layer_equals(&img, Layer::Active, &model);
    let r = Reader::open(File::open(&img).unwrap()).unwrap();
    assert_eq!(r.header().version, version);
    assert_eq!(r.virtual_size(), size);
    assert_eq!(r.header().nb_snapshots, 0);
    assert_eq!(r.header().snapshots_offset, 0);
    require_qemu!();
    check_clean(&img);
    assert_active_equals(&img, size, c, &model);
}

#[test]
fn v3_512_byte_clusters() {
    write_single("v3-512", 9, 64 << 20, Version::V3);
}

#[test]
fn v3_4k_clusters() {
    write_single("v3-4k", 12, 1 << 30, Version::V3);
}

#[test]
fn v3_64k_clusters() {
    write_single("v3-64k", 16, 4 << 30, Version::V3);
}

#[test]
fn v3_2m_clusters() {
    write_single("v3-2m", 21, 1 << 40, Version::V3);
}

#[test]
fn v2_512_byte_clusters() {
    write_single("v2-512", 9, 16 << 20, Version::V2);
}

#[test]
fn v2_4k_clusters() {
    write_single("v2-4k", 12, 1 << 30, Version::V2);
}

#[test]
fn v2_64k_clusters() {
    write_single("v2-64k", 16, 4 << 30, Version::V2);
}

#[test]
fn virtual_size_not_a_cluster_multiple() {
    write_single("odd-4k", 12, 100 * 4096 + 512, Version::V3);
    write_single("odd-64k", 16, (3 << 20) + 4096 + 1536, Version::V3);
}

/// 16 TiB with clusters at the start, the middle and the last cluster; verified with
/// `qemu-io -r -c 'read -P'` (no 16 TiB raw file).
fn huge(name: &str, cluster_bits: u32) {
    let dir = scratch(name);
    let img = dir.join("huge.qcow2");
    let size = 16u64 << 40;
    let c = 1u64 << cluster_bits;
    let last = size / c - 1;
    let gs = [0u64, 1, last / 2, last];
    let mut w = new_writer(
        &img,
        WriterOptions {
            cluster_bits,
            virtual_size: size,
            version: Version::V3,
        },
    );
    let s = w.new_state();
    for (i, &g) in gs.iter().enumerate() {
        w.write_clusters(s, g, &vec![0x11 * (i as u8 + 1); c as usize])
            .unwrap();
    }
    let summary = w.finish(s, &[]).unwrap();
    assert!(
        summary.file_size < 64 << 20,
        "file size {}",
        summary.file_size
    );
    verify::verify_image(&img);
    let r = Reader::open(File::open(&img).unwrap()).unwrap();
    let mut seen = Vec::new();
    r.layer(Layer::Active)
        .unwrap()
        .for_each_allocated(|g, _| {
            seen.push(g);
            Ok(())
        })
        .unwrap();
    assert_eq!(seen, gs);
    require_qemu!();
    check_clean(&img);
    for (i, &g) in gs.iter().enumerate() {
        let cmd = format!("read -P {:#x} {} {}", 0x11 * (i + 1), g * c, c);
        let out = run_ok(
            "qemu-io",
            &["-r", "-f", "qcow2", "-c", &cmd, img.to_str().unwrap()],
        );
        assert!(!out.contains("failed"), "{cmd}: {out}");
    }
    let cmd = format!("read -P 0 {} {}", 2 * c, 4 * c);
    let out = run_ok(
        "qemu-io",
        &["-r", "-f", "qcow2", "-c", &cmd, img.to_str().unwrap()],
    );
    assert!(!out.contains("failed"), "{cmd}: {out}");
}

#[test]
fn huge_16tib_64k_clusters() {
    huge("huge-64k", 16);
}

#[test]
fn huge_16tib_8k_clusters() {
    huge("huge-8k", 13);
}

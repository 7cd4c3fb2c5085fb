//! Cross-read of this crate's writer output with imago, an independent pure-Rust QCOW2 reader
//! (active layer only): single-state images at several cluster sizes and versions, and a
//! multi-state image whose active layer shares L2 tables and data with its snapshots.

use std::path::Path;

use crate::common::*;
use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::{FormatAccess, FormatDriverBuilder, PermissiveImplicitOpenGate};
use qcow::{SnapshotSpec, Version, WriterOptions};

/// Reads the whole active layer with imago and compares it with `model`.
fn imago_equals(img: &Path, size: u64, c: u64, model: &Model) {
    // imago's "sync" feature makes its whole API synchronous (no runtime).
    let q = Qcow2::<ImagoFile>::builder_path(img)
        .open(PermissiveImplicitOpenGate::default())
        .unwrap();
    let access = FormatAccess::new(q);
    let mut buf = vec![0u8; c as usize];
    for g in 0..size.div_ceil(c) {
        let len = (size - g * c).min(c) as usize;
        access.read(&mut buf[..len], g * c).unwrap();
        match model.get(&g) {
            Some(data) => assert!(buf[..len] == data[..len], "guest cluster {g} differs"),
            None => assert!(
                buf[..len].iter().all(|&b| b == 0),
                "guest cluster {g} not zero"
            ),
        }
    }
}

fn single(name: &str, cluster_bits: u32, size: u64, version: Version) {
    let dir = scratch(name);
    let img = dir.join("a.qcow2");
    let c = 1u64 << cluster_bits;
    let n = size.div_ceil(c);
    let mut model = Model::new();
    for g in [0, 1, 2, c / 8 - 1, c / 8, n / 2, n - 1] {
        model.insert(g, cluster_data(g + 7, c));
    }
    let opts = WriterOptions {
        cluster_bits,
        virtual_size: size,
        version,
    };
    write_one_state(&img, opts, &model);
    imago_equals(&img, size, c, &model);
}

#[test]
fn imago_reads_single_state_images() {
    single("imago-512", 9, 8 << 20, Version::V3);
    single("imago-4k", 12, 64 << 20, Version::V3);
    single("imago-64k-v2", 16, 1 << 30, Version::V2);
    single("imago-odd", 12, (16 << 20) + 512 * 3, Version::V3);
}

#[test]
fn imago_reads_shared_active_layer() {
    let dir = scratch("imago-chain");
    let img = dir.join("chain.qcow2");
    let (cb, c) = (12, 4096u64);
    let size = 32u64 << 20;
    let mut newest = Model::new();
    for g in (0..40).chain(600..620).chain([8191]) {
        newest.insert(g, cluster_data(g, c));
    }
    let mut older = newest.clone();
    older.insert(5, cluster_data(99_999, c));
    older.remove(&600);
    let mut w = new_writer(
        &img,
        WriterOptions {
            cluster_bits: cb,
            virtual_size: size,
            version: Version::V3,
        },
    );
    let s0 = w.new_state();
    write_model(&mut w, s0, &newest);
    let s1 = w.new_state();
    for (g, data) in runs(&older) {
        w.write_clusters_dedup(s1, g, &data, s0).unwrap();
    }
    let spec = |state, id: &str, name: &str| SnapshotSpec {
        state,
        id: id.into(),
        name: name.into(),
        date_sec: 0,
        date_nsec: 0,
    };
    w.finish(s0, &[spec(s0, "1", "current"), spec(s1, "2", "older")])
        .unwrap();
    verify::verify_image(&img);
    imago_equals(&img, size, c, &newest);
}

//! Private header extensions (`Writer::add_header_extension`, `Reader::header_extension`):
//! written after the header in v2 and v3 images and at the smallest cluster size, read back by
//! this crate, accepted by `qemu-img check`, and kept by QEMU when it rewrites the header
//! (`qemu-img snapshot -c`, `qemu-img amend`).

use crate::common::*;
use qcow::{Error, Reader, Version, WriterOptions};
use std::fs::File;
use std::path::Path;

const PRIVATE: u32 = 0x7465_7374;
const OTHER: u32 = 0x7465_7375;

fn model() -> Model {
    let mut m = Model::new();
    m.insert(3, cluster_data(3, 512));
    m.insert(9, cluster_data(9, 512));
    m
}

fn write(path: &Path, version: Version) {
    let opts = WriterOptions {
        cluster_bits: 9,
        virtual_size: 64 << 10,
        version,
    };
    let mut w = new_writer(path, opts);
    w.add_header_extension(PRIVATE, b"e2image-rs").unwrap();
    w.add_header_extension(OTHER, &[7; 16]).unwrap();
    let s = w.new_state();
    write_model(&mut w, s, &model());
    w.finish(s, &[]).unwrap();
}

fn ext(path: &Path, t: u32) -> Option<Vec<u8>> {
    let r = Reader::open(File::open(path).unwrap()).unwrap();
    r.header_extension(t).map(<[u8]>::to_vec)
}

#[test]
fn written_read_back_and_kept_by_qemu() {
    let dir = scratch("header-extensions");
    for (version, compat) in [(Version::V2, "0.10"), (Version::V3, "1.1")] {
        let img = dir.join(format!("{compat}.qcow2"));
        write(&img, version);
        assert_eq!(ext(&img, PRIVATE).as_deref(), Some(&b"e2image-rs"[..]));
        assert_eq!(ext(&img, OTHER), Some(vec![7; 16]));
        assert_eq!(ext(&img, 1), None);
        assert_layer_equals(&img, qcow::Layer::Active, &model());
        if !require_for("the QEMU checks", &QEMU) {
            continue;
        }
        check_clean(&img);
        let info = run_ok("qemu-img", &["info", img.to_str().unwrap()]);
        assert!(info.contains(&format!("compat: {compat}")), "{info}");
        // QEMU rewrites the header (snapshot table, feature table) and keeps both extensions.
        run_ok("qemu-img", &["snapshot", "-c", "s1", img.to_str().unwrap()]);
        if version == Version::V3 {
            run_ok(
                "qemu-img",
                &["amend", "-o", "lazy_refcounts=on", img.to_str().unwrap()],
            );
        }
        check_clean(&img);
        assert_eq!(ext(&img, PRIVATE).as_deref(), Some(&b"e2image-rs"[..]));
        assert_eq!(ext(&img, OTHER), Some(vec![7; 16]));
    }
}

#[test]
fn spec_types_repeats_and_oversize_are_refused() {
    let dir = scratch("header-extensions-refused");
    let opts = WriterOptions {
        cluster_bits: 9,
        virtual_size: 64 << 10,
        version: Version::V3,
    };
    let mut w = new_writer(&dir.join("a.qcow2"), opts);
    let bad = |r: Result<(), Error>| assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    bad(w.add_header_extension(0, b""));
    bad(w.add_header_extension(qcow::EXT_FEATURE_TABLE, b""));
    w.add_header_extension(PRIVATE, b"x").unwrap();
    bad(w.add_header_extension(PRIVATE, b"y"));
    // 512-byte cluster 0: 112 header bytes + 8 + 400 + 8 end marker do not fit.
    assert!(matches!(
        w.add_header_extension(OTHER, &[0; 400]),
        Err(Error::Limit(_))
    ));
    w.add_header_extension(OTHER, &[0; 300]).unwrap();
}

#[test]
fn an_extension_past_cluster_0_is_corrupt() {
    let dir = scratch("header-extensions-corrupt");
    let img = dir.join("a.qcow2");
    write(&img, Version::V3);
    let mut b = std::fs::read(&img).unwrap();
    // The first extension starts at 112: make its length run past the 512-byte cluster 0.
    b[116..120].copy_from_slice(&1000u32.to_be_bytes());
    std::fs::write(&img, &b).unwrap();
    let e = Reader::open(File::open(&img).unwrap()).unwrap_err();
    assert!(matches!(e, Error::Corrupt { offset: 112, .. }), "{e}");
}

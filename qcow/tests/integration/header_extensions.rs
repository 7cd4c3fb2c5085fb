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

/// `qemu-img info` on `img`: Ok, or Err with its stderr.
fn qemu_info(img: &Path) -> Result<(), String> {
    let o = run("qemu-img", &["info", "-U", img.to_str().unwrap()]);
    match o.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&o.stderr).into_owned()),
    }
}

/// A v3 image with 512-byte clusters and no extension: the end marker at 112, then zeros to
/// the end of cluster 0. `patch` changes its first 512 bytes.
fn crafted(dir: &Path, name: &str, patch: impl FnOnce(&mut [u8])) -> std::path::PathBuf {
    let img = dir.join(name);
    let opts = WriterOptions {
        cluster_bits: 9,
        virtual_size: 64 << 10,
        version: Version::V3,
    };
    let mut w = new_writer(&img, opts);
    let s = w.new_state();
    write_model(&mut w, s, &model());
    w.finish(s, &[]).unwrap();
    let mut b = std::fs::read(&img).unwrap();
    patch(&mut b[..512]);
    std::fs::write(&img, &b).unwrap();
    img
}

fn open(img: &Path) -> Result<Reader, Error> {
    Reader::open_with_backing(File::open(img).unwrap())
}

/// The end marker's length and a tail too short for an extension: refused exactly where
/// `qemu-img info` refuses them ("Header extension too large"), accepted where it accepts
/// them.
#[test]
fn end_marker_length_as_qemu() {
    let dir = scratch("header-extensions-end");
    let len = |n: u32| move |b: &mut [u8]| b[116..120].copy_from_slice(&n.to_be_bytes());
    // 120..512 is the rest of cluster 0: a length of 392 fits, 393 does not.
    let fits = [
        crafted(&dir, "end-8.qcow2", len(8)),
        crafted(&dir, "end-392.qcow2", len(392)),
    ];
    let too_long = [
        crafted(&dir, "end-393.qcow2", len(393)),
        crafted(&dir, "end-max.qcow2", len(u32::MAX)),
    ];
    // A backing file name at 116 leaves 4 bytes for the extensions.
    let short = crafted(&dir, "short.qcow2", |b| {
        b[8..16].copy_from_slice(&116u64.to_be_bytes());
        b[16..20].copy_from_slice(&1u32.to_be_bytes());
        b[116] = b'x';
    });
    for img in &fits {
        let r = open(img).unwrap();
        assert!(r.header_extensions().is_empty());
        assert_layer_equals(img, qcow::Layer::Active, &model());
    }
    for img in &too_long {
        let e = open(img).unwrap_err();
        assert!(matches!(e, Error::Corrupt { offset: 112, .. }), "{e}");
        assert!(
            e.to_string().contains("end of the header extensions"),
            "{e}"
        );
    }
    let e = open(&short).unwrap_err();
    assert!(matches!(e, Error::Corrupt { offset: 112, .. }), "{e}");
    assert!(e.to_string().contains("4 bytes left"), "{e}");
    if !require_for("QEMU accepting the images that fit", &QEMU) {
        return;
    }
    for img in &fits {
        qemu_info(img).unwrap();
        check_clean(img);
    }
    for img in too_long.iter().chain([&short]) {
        let e = qemu_info(img).unwrap_err();
        assert!(e.contains("Header extension too large"), "{e}");
    }
}

//! The small committed images in fixtures/images, which need neither root nor e2fsprogs:
//! every export is read back with imago (an independent QCOW2 reader) and with our own
//! raw output, and every copied block must equal the source. With qemu-img present, the
//! output must also check clean. The `--json` summary is pinned with insta.

use crate::common::*;
use std::path::{Path, PathBuf};

fn committed() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("fixtures/images"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gz"))
        .collect();
    v.sort();
    assert!(v.len() >= 4, "committed images missing");
    v
}

/// Reads the active layer of a QCOW2 image with imago.
fn imago_read(path: &Path) -> Vec<u8> {
    use imago::{FormatAccess, FormatDriverBuilder, PermissiveImplicitOpenGate};
    let q = imago::qcow2::Qcow2::<imago::file::File>::builder_path(path)
        .open(PermissiveImplicitOpenGate::default())
        .unwrap();
    let access = FormatAccess::new(q);
    let mut buf = vec![0u8; access.size() as usize];
    for chunk in (0..buf.len()).step_by(1 << 20) {
        let end = (chunk + (1 << 20)).min(buf.len());
        access.read(&mut buf[chunk..end], chunk as u64).unwrap();
    }
    buf
}

fn check(img: &Path, dir: &Path, flags: &[&str]) {
    let (q, r) = (dir.join("out.qcow2"), dir.join("out.raw"));
    let mut qa: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"-Q"];
    let mut ra: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"-r"];
    for f in flags {
        qa.push(f);
        ra.push(f);
    }
    qa.extend([&img as &dyn AsRef<std::ffi::OsStr>, &q]);
    ra.extend([&img as &dyn AsRef<std::ffi::OsStr>, &r]);
    let (oq, or) = (run(&qa), run(&ra));
    assert_eq!(code(&oq), 0, "{}", String::from_utf8_lossy(&oq.stderr));
    assert_eq!(code(&or), 0, "{}", String::from_utf8_lossy(&or.stderr));
    let (ours_raw, src) = (read(&r), read(img));
    assert_eq!(
        imago_read(&q),
        ours_raw,
        "{}: imago's view of our QCOW2 differs from our raw",
        img.display()
    );
    assert_eq!(ours_raw.len(), src.len());
    for b in nonzero_blocks(&ours_raw, 1024) {
        assert_eq!(
            ours_raw[b * 1024..(b + 1) * 1024],
            src[b * 1024..(b + 1) * 1024],
            "block {b} differs from the source"
        );
    }
    if require_for("the qemu-img check and compare", &["qemu-img"]) {
        assert_qemu_check(&q);
        assert_qemu_identical(&q, &r);
    }
}

#[test]
fn committed_images_export_and_read_back() {
    let dir = scratch("committed");
    for gz in committed() {
        let img = gunzip_to(&gz, &dir);
        let before = sha256(&img);
        for flags in [
            &[][..],
            &["-d"],
            &["--compat", "0.10"],
            &["--cluster-size", "512"],
            &["--cluster-size", "65536"],
        ] {
            check(&img, &dir, flags);
        }
        assert_eq!(sha256(&img), before, "source changed");
    }
}

#[test]
fn json_summary() {
    let dir = scratch("committed-json");
    let img = gunzip_to(&root().join("fixtures/images/ext4-small.img.gz"), &dir);
    let out = dir.join("out.qcow2");
    let o = run(&[&"-Q", &"--json", &img, &out]);
    assert_eq!(code(&o), 0);
    let mut v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let m = v.as_object_mut().unwrap();
    m.remove("source");
    m.remove("output");
    insta::assert_json_snapshot!("ext4_small_qcow2", v);
}

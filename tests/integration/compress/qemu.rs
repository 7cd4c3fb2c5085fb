//! Images QEMU compressed, read back by every pipeline: `qemu-img convert -c` of our plain
//! exports (zlib and zstd) through `-r` and `rollback`; a delta whose clusters QEMU wrote
//! compressed (`qemu-io write -c` into an image with our delta's header extensions) through
//! `apply`.

use super::TYPES;
use crate::common::*;
use qcow::{ClusterMapping, Layer, Reader};
use std::path::{Path, PathBuf};

/// `qemu-img convert -c -O qcow2 [-o compression_type=KIND] src out`.
fn qemu_compress(src: &Path, out: &Path, kind: &str, cluster: u64) {
    let o = format!("compression_type={kind},cluster_size={cluster}");
    let r = sh(
        "qemu-img",
        &[&"convert", &"-c", &"-O", &"qcow2", &"-o", &o, &src, &out],
    );
    assert_eq!(code(&r), 0, "{}", stderr(&r));
}

#[test]
fn qemu_compressed_images_convert_and_roll_back() {
    if skip() {
        return;
    }
    let dir = scratch("compress-qemu-rollback");
    let [a, _, c] = chain(&dir);
    let plain = dir.join("c.qcow2");
    expect(&[&"-Q", &"-d", &c, &plain], 0);
    let want = dir.join("want.raw");
    expect(&[&"-r", &"-d", &c, &want], 0);
    for (_, kind) in TYPES {
        let q = dir.join(format!("qemu-{kind}.qcow2"));
        qemu_compress(&plain, &q, kind, 65536);
        assert_eq!(super::info_type(&q), kind);
        assert!(super::mapping_counts(&q, Layer::Active).0 > 0);
        let raw = dir.join(format!("{kind}.raw"));
        expect(&[&"-r", &q, &raw], 0);
        assert!(read(&raw) == read(&want), "{kind}: -r of QEMU's image");
        let t = dir.join(format!("{kind}-target.img"));
        sparse_copy(&a, &t);
        expect_sub(
            "rollback",
            &[&q, &t, &"--patch", &dir.join(format!("{kind}.patch"))],
            0,
        );
        let back = dir.join(format!("{kind}-back.raw"));
        expect(&[&"-r", &"-d", &t, &back], 0);
        assert!(read(&back) == read(&want), "{kind}: rolled back target");
    }
}

/// Copies the header extensions of `from` (ours) into `to` (QEMU's), before its end marker.
fn splice_extensions(from: &Path, to: &Path) {
    use std::os::unix::fs::FileExt;
    let r = Reader::open(std::fs::File::open(from).unwrap()).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(to)
        .unwrap();
    let mut head = vec![0u8; 4096];
    f.read_exact_at(&mut head, 0).unwrap();
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
    let mut at = be32(&head, 100) as usize;
    while be32(&head, at) != 0 {
        at += 8 + (be32(&head, at + 4) as usize).div_ceil(8) * 8;
    }
    let mut ext = Vec::new();
    for e in r.header_extensions() {
        ext.extend_from_slice(&e.ext_type.to_be_bytes());
        ext.extend_from_slice(&(e.data.len() as u32).to_be_bytes());
        ext.extend_from_slice(&e.data);
        ext.resize(ext.len().next_multiple_of(8), 0);
    }
    ext.extend_from_slice(&[0u8; 8]);
    f.write_all_at(&ext, at as u64).unwrap();
}

/// Our delta `d` rewritten by QEMU: an image of the same geometry whose data clusters
/// `qemu-io write -c` wrote compressed and whose zero clusters `write -z` wrote, with our
/// header extensions (the delta record) spliced in.
fn qemu_rewritten_delta(d: &Path, kind: &str, dir: &Path) -> PathBuf {
    let r = Reader::open(std::fs::File::open(d).unwrap()).unwrap();
    let c = r.cluster_size();
    let out = dir.join(format!("qemu-{kind}.delta"));
    let o = format!("compression_type={kind},cluster_size={c}");
    let size = r.virtual_size().to_string();
    let cr = sh(
        "qemu-img",
        &[&"create", &"-q", &"-f", &"qcow2", &"-o", &o, &out, &size],
    );
    assert_eq!(code(&cr), 0, "{}", stderr(&cr));
    let lr = r.layer(Layer::Active).unwrap();
    let mut cmds = Vec::new();
    let mut buf = vec![0u8; c as usize];
    lr.for_each_allocated(|g, m| {
        let off = g * c;
        match m {
            ClusterMapping::Zero => cmds.push(format!("write -q -z {off} {c}")),
            _ => {
                lr.read_cluster(g, &mut buf)?;
                let f = dir.join(format!("cl-{kind}-{g}"));
                std::fs::write(&f, &buf).unwrap();
                cmds.push(format!("write -q -c -s {} {off} {c}", f.display()));
            }
        }
        Ok(())
    })
    .unwrap();
    let mut io = std::process::Command::new("qemu-io");
    for cmd in &cmds {
        io.arg("-c").arg(cmd);
    }
    let o = io.arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    splice_extensions(d, &out);
    out
}

#[test]
fn deltas_qemu_compressed_apply() {
    if skip() {
        return;
    }
    let dir = scratch("compress-qemu-apply");
    let [a, _, c] = chain(&dir);
    let d = dir.join("plain.delta");
    expect(&[&"-Q", &"-d", &"--base", &a, &c, &d], 0);
    let want = dir.join("want.img");
    sparse_copy(&a, &want);
    expect_sub("apply", &[&d, &want, &"--patch", &dir.join("p0")], 0);
    for (_, kind) in TYPES {
        let q = qemu_rewritten_delta(&d, kind, &dir);
        assert_qemu_check(&q);
        assert_qemu_identical(&q, &d);
        assert_eq!(super::info_type(&q), kind);
        assert!(
            super::mapping_counts(&q, Layer::Active).0 > 0,
            "{kind}: QEMU compressed nothing"
        );
        let t = dir.join(format!("{kind}.img"));
        sparse_copy(&a, &t);
        expect_sub(
            "apply",
            &[&q, &t, &"--patch", &dir.join(format!("p-{kind}"))],
            0,
        );
        assert!(
            read(&t) == read(&want),
            "{kind}: applied QEMU-compressed delta differs"
        );
    }
}

//! QCOW2 → raw (`-r IMAGE.qcow2 OUT.raw`) on images made by qemu-img: v2 and v3, cluster
//! sizes 512 B to 2 MiB, deflate-compressed and zero clusters, and a disk whose last byte is
//! data (e2image zeroes it) and whose L2 tables lie past the virtual size (e2image drops them).

use crate::common::*;
use std::path::Path;

/// Deterministic pseudo-random bytes.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|i| {
            if i % 3 == 0 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
            }
            if (i / 65536) % 5 == 2 {
                0
            } else if (i / 4096) % 3 == 1 {
                b"compressible text "[i % 18]
            } else {
                x as u8
            }
        })
        .collect()
}

fn convert_and_compare(q: &Path, expected: &Path, dir: &Path) {
    let out = dir.join("conv.raw");
    let _ = std::fs::remove_file(&out);
    let o = run(&[&"-r", &q, &out]);
    assert_eq!(
        code(&o),
        0,
        "{}: {}",
        q.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        read(&out),
        read(expected),
        "{}: conversion differs",
        q.display()
    );
}

#[test]
fn qemu_made_images_convert_exactly() {
    if !require(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = scratch("convert");
    let raw = dir.join("src.raw");
    // 3 MiB + 512 bytes: the last cluster is partial and its last byte is data.
    let mut data = pattern((3 << 20) + 512, 7);
    *data.last_mut().unwrap() = 0xdf;
    std::fs::write(&raw, &data).unwrap();
    let mut n = 0;
    for opts in [
        "cluster_size=65536",
        "cluster_size=512",
        "cluster_size=4096,compat=0.10",
        "cluster_size=2097152",
    ] {
        for compress in [false, true] {
            n += 1;
            let q = dir.join(format!("q{n}.qcow2"));
            let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
                vec![&"convert", &"-O", &"qcow2", &"-o", &opts];
            if compress {
                args.push(&"-c");
            }
            args.extend([&raw as &dyn AsRef<std::ffi::OsStr>, &q]);
            assert_eq!(code(&sh("qemu-img", &args)), 0);
            convert_and_compare(&q, &raw, &dir);
        }
    }
}

#[test]
fn zero_clusters_and_snapshots() {
    if !require(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = scratch("convert-zero");
    let q = dir.join("z.qcow2");
    assert_eq!(
        code(&sh("qemu-img", &[&"create", &"-f", &"qcow2", &q, &"8M"])),
        0
    );
    assert_eq!(code(&sh("qemu-io", &[&"-c", &"write -P 0xaa 0 1M", &q])), 0);
    assert_eq!(code(&sh("qemu-img", &[&"snapshot", &"-c", &"s1", &q])), 0);
    // A zero write on a shared cluster keeps the allocation (ZERO_ALLOC); one elsewhere is plain.
    assert_eq!(
        code(&sh(
            "qemu-io",
            &[
                &"-c",
                &"write -z 64k 128k",
                &"-c",
                &"write -z 4M 64k",
                &"-c",
                &"write -P 0xbb 6M 64k",
                &q
            ]
        )),
        0
    );
    let expected = dir.join("expected.raw");
    assert_eq!(
        code(&sh("qemu-img", &[&"convert", &"-O", &"raw", &q, &expected])),
        0
    );
    convert_and_compare(&q, &expected, &dir);
}

#[test]
fn l2_tables_past_the_virtual_size_are_read() {
    if !require(&["qemu-img"]) {
        return;
    }
    // A fully allocated disk at 512-byte clusters: its metadata pushes L2 tables to host
    // offsets above the virtual size, which e2image's converter skips.
    let dir = scratch("convert-l2-past");
    let raw = dir.join("full.raw");
    std::fs::write(
        &raw,
        pattern(1 << 20, 3)
            .iter()
            .map(|b| b | 1)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let q = dir.join("full.qcow2");
    assert_eq!(
        code(&sh(
            "qemu-img",
            &[
                &"convert",
                &"-O",
                &"qcow2",
                &"-o",
                &"cluster_size=512",
                &raw,
                &q
            ]
        )),
        0
    );
    assert!(std::fs::metadata(&q).unwrap().len() > 1 << 20);
    convert_and_compare(&q, &raw, &dir);
}

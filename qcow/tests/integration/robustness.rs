//! The reader and the editor's open (which counts every reference and compares the refcounts)
//! on garbage, truncated and byte-patched images must return errors, never panic. Patches
//! come from a fixed-seed xorshift generator, so failures are reproducible.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::common::*;
use qcow::{Editor, Layer, Reader, SnapshotSpec, Version, WriterOptions};

/// Exercises every reader entry point on `bytes`, then `Editor::open` (last: it may truncate
/// the file); only panics count as failures.
fn exercise(path: &Path, bytes: &[u8]) {
    read_everything(path, bytes);
    let rw = fs::OpenOptions::new().read(true).write(true).open(path);
    let _ = Editor::open(rw.unwrap());
}

fn read_everything(path: &Path, bytes: &[u8]) {
    // Rewrite in place rather than truncate to 0 (which makes ext4 flush on close).
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    f.write_all_at(bytes, 0).unwrap();
    f.set_len(bytes.len() as u64).unwrap();
    drop(f);
    let Ok(r) = Reader::open(File::open(path).unwrap()) else {
        return;
    };
    let _ = r.cluster_stats();
    let layers =
        std::iter::once(Layer::Active).chain((0..r.snapshots().len().min(8)).map(Layer::Snapshot));
    let _ = r.find_snapshot("1");
    let c = r.cluster_size();
    let mut buf = vec![0u8; c as usize];
    for layer in layers {
        let Ok(lr) = r.layer(layer) else { continue };
        let mut allocated = Vec::new();
        let _ = lr.for_each_allocated(|g, _| {
            allocated.push(g);
            Ok(())
        });
        for &g in allocated.iter().take(16) {
            let _ = lr.read_cluster(g, &mut buf);
            let _ = lr.mapping(g);
        }
        let _ = lr.mapping(0);
        let _ = lr.mapping(u64::MAX);
        let _ = lr.read_cluster(0, &mut buf[..1]);
        let mut range = vec![0u8; (3 * c as usize).min(r.virtual_size() as usize)];
        let _ = lr.read_at(c / 2, &mut range);
        let _ = lr.read_at(u64::MAX - 1, &mut buf[..4]);
    }
}

/// A small multi-state image (512-byte clusters) from this crate's writer.
fn our_image(dir: &Path) -> Vec<u8> {
    let img = dir.join("ours.qcow2");
    let c = 512u64;
    let mut w = new_writer(
        &img,
        WriterOptions {
            cluster_bits: 9,
            virtual_size: 1 << 20,
            version: Version::V3,
        },
    );
    let s0 = w.new_state();
    for g in [0u64, 1, 2, 63, 64, 65, 500, 2047] {
        w.write_clusters(s0, g, &cluster_data(g, c)).unwrap();
    }
    let s1 = w.new_state();
    for g in [0u64, 1, 64, 700] {
        w.write_clusters_dedup(s1, g, &cluster_data(g + u64::from(g == 1), c), s0)
            .unwrap();
    }
    let spec = |state, id: &str, name: &str| SnapshotSpec {
        state,
        id: id.into(),
        name: name.into(),
        date_sec: 1,
        date_nsec: 2,
    };
    w.finish(s0, &[spec(s1, "1", "old"), spec(s0, "2", "new")])
        .unwrap();
    fs::read(&img).unwrap()
}

/// A small compressed image made by QEMU, when QEMU is installed.
fn qemu_compressed_image(dir: &Path) -> Option<Vec<u8>> {
    if !require_for("fuzzing a QEMU-made image", &QEMU) {
        return None;
    }
    let src = dir.join("src.raw");
    let text: Vec<u8> = (0..40_000u32)
        .flat_map(|i| format!("{i} ").into_bytes())
        .take(64 << 10)
        .collect();
    fs::write(&src, text).unwrap();
    let img = dir.join("qemu.qcow2");
    let i = img.to_str().unwrap();
    qemu_compress(&src, &img, "cluster_size=512");
    run_ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -z 0 512",
            "-c",
            "write -P 1 4096 512",
            i,
        ],
    );
    run_ok("qemu-img", &["snapshot", "-c", "s", i]);
    Some(fs::read(&img).unwrap())
}

#[test]
fn garbage_and_truncated_files() {
    let dir = scratch("robust-garbage");
    let path = dir.join("t.qcow2");
    let mut rng = XorShift(0x5eed);
    for len in [0usize, 1, 4, 71, 72, 104, 111, 112, 512, 4096, 70_000] {
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        exercise(&path, &bytes);
        let mut magic = bytes.clone();
        if len >= 4 {
            magic[..4].copy_from_slice(&qcow::QCOW2_MAGIC);
            exercise(&path, &magic);
        }
    }
    let ours = our_image(&dir);
    for len in (0..ours.len()).step_by(97).chain([ours.len() - 1]) {
        exercise(&path, &ours[..len]);
    }
}

#[test]
fn byte_patched_images() {
    let dir = scratch("robust-patched");
    let path = dir.join("t.qcow2");
    let mut images = vec![our_image(&dir)];
    images.extend(qemu_compressed_image(&dir));
    let mut rng = XorShift(0x0123_4567_89ab_cdef);
    // QCOW_FUZZ_ITERATIONS raises the count for a longer local run.
    let iterations: usize = std::env::var("QCOW_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    for image in &images {
        exercise(&path, image); // the unpatched image reads fine
        let r = Reader::open(File::open(&path).unwrap()).unwrap();
        assert!(!r.snapshots().is_empty());
        for _ in 0..iterations {
            let mut b = image.clone();
            for _ in 0..1 + rng.below(4) {
                // A third of the patches hit the header, a third the last quarter of the file
                // (L1 tables, snapshot table, refcounts), a third anywhere.
                let len = b.len() as u64;
                let at = match rng.below(3) {
                    0 => rng.below(112),
                    1 => len - 1 - rng.below(len / 4),
                    _ => rng.below(len),
                } as usize;
                b[at] = match rng.below(4) {
                    0 => 0,
                    1 => 0xff,
                    2 => b[at] ^ (1 << rng.below(8)),
                    _ => rng.next() as u8,
                };
            }
            exercise(&path, &b);
        }
    }
}

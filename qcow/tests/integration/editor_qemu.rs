//! The `Editor` on QEMU-made images: snapshots taken by `qemu-img snapshot -c` over data
//! written by `qemu-io` (preallocated zero clusters included), an active layer modified since
//! its last snapshot or matching it, v2 with 512-byte clusters, and deflate-compressed clusters
//! (`qemu-img convert -c`) whose references are dropped when their states go. QEMU's own
//! snapshot operations still work on the results. Unsupported images are refused, unchanged.

use std::path::Path;

use crate::common::archive::*;
use crate::common::*;
use qcow::{Editor, Error, Layer, StateId};

fn qemu_img(args: &[&str]) {
    run_ok("qemu-img", args);
}

fn qemu_io(img: &Path, cmds: &[&str]) {
    let mut args = Vec::new();
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(img.to_str().unwrap());
    run_ok("qemu-io", &args);
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Writes a new state into `ed`: snapshot `from`'s clusters (read back through the editor's
/// reader), with every `every`-th data cluster replaced and the last one dropped, deduplicated
/// against that snapshot. Returns the state and its expected content.
fn derived_state(ed: &mut Editor, from: usize, every: u64) -> (StateId, Model) {
    let c = ed.reader().cluster_size();
    let mut model = Model::new();
    {
        let layer = ed.reader().layer(Layer::Snapshot(from)).unwrap();
        let mut gs = Vec::new();
        layer
            .for_each_allocated(|g, _| {
                gs.push(g);
                Ok(())
            })
            .unwrap();
        gs.pop();
        for (i, g) in gs.into_iter().enumerate() {
            let mut buf = vec![0u8; c as usize];
            layer.read_cluster(g, &mut buf).unwrap();
            if (i as u64).is_multiple_of(every) {
                buf = cluster_data(0xe000 + g, c);
            }
            model.insert(g, buf);
        }
    }
    let base = ed.load_snapshot(from).unwrap();
    let w = ed.writer();
    let s = w.new_state();
    for (g, data) in runs(&model) {
        w.write_clusters_dedup(s, g, &data, base).unwrap();
    }
    (s, model)
}

fn model_digest(img: &Path, size: u64, c: u64, model: &Model) -> String {
    let raw = img.with_extension("model.raw");
    write_raw(&raw, size, c, model);
    let d = file_digest(&raw);
    std::fs::remove_file(raw).unwrap();
    d
}

#[test]
fn qemu_snapshots_active_modified_since() {
    require_qemu!();
    let dir = scratch("editor-qemu-modified");
    let img = dir.join("a.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "64M"]);
    qemu_io(
        &img,
        &[
            "write -P 0xaa 0 256k",
            "write -P 0xa1 1M 64k",
            "write -P 0xa2 10M 128k",
        ],
    );
    qemu_img(&["snapshot", "-c", "s1", img.to_str().unwrap()]);
    qemu_io(
        &img,
        &[
            "write -P 0xbb 0 64k",
            "write -P 0xb2 2M 64k",
            "write -z 1M 64k",
        ],
    );
    qemu_img(&["snapshot", "-c", "s2", img.to_str().unwrap()]);
    qemu_io(&img, &["write -P 0xcc 64k 64k", "write -P 0xc3 20M 64k"]);
    check_clean(&img);
    let old = qemu_digests(&img, &names(&["s1", "s2"]));

    let mut ed = open_editor(&img);
    assert_eq!(ed.snapshot_matching_active(), None);
    let (size, c) = (ed.reader().virtual_size(), ed.reader().cluster_size());
    let (s, model) = derived_state(&mut ed, 1, 3);
    let summary = ed.commit(Some(s), &[spec(s, "3", "s3")]).unwrap();
    assert!(
        summary.committed && summary.l2_tables_read > 0,
        "{summary:?}"
    );
    check_clean(&img);
    verify::verify_image(&img);
    let got = qemu_digests(&img, &names(&["s1", "s2", "s3"]));
    assert_eq!((&got["s1"], &got["s2"]), (&old["s1"], &old["s2"]));
    let want = model_digest(&img, size, c, &model);
    assert_eq!((&got["s3"], &got[""]), (&want, &want));

    // QEMU's own operations on the result.
    let i = img.to_str().unwrap();
    qemu_img(&["snapshot", "-a", "s1", i]);
    check_clean(&img);
    qemu_io(&img, &["write -P 0xdd 0 128k"]);
    qemu_img(&["snapshot", "-c", "s4", i]);
    qemu_img(&["snapshot", "-d", "s2", i]);
    check_clean(&img);
    let after = qemu_digests(&img, &names(&["s1", "s3"]));
    assert_eq!((&after["s1"], &after["s3"]), (&old["s1"], &want));
    // And the editor again on what QEMU left.
    let mut ed = open_editor(&img);
    let i3 = ed.snapshots().iter().position(|x| x.name == "s3").unwrap();
    ed.remove_snapshot(i3).unwrap();
    ed.commit(None, &[]).unwrap();
    check_clean(&img);
    verify::verify_image(&img);
}

/// Active layer equal to its snapshot; v3 at 64 KiB and v2 at 512-byte clusters.
fn qemu_matching(name: &str, create_opts: &str) {
    require_qemu!();
    let dir = scratch(name);
    let img = dir.join("a.qcow2");
    let i = img.to_str().unwrap();
    qemu_img(&["create", "-q", "-f", "qcow2", "-o", create_opts, i, "8M"]);
    qemu_io(
        &img,
        &[
            "write -P 0x11 0 300k",
            "write -P 0x12 4M 20k",
            "write -P 0x13 8188k 4k",
        ],
    );
    qemu_img(&["snapshot", "-c", "first", i]);
    let old = qemu_digests(&img, &names(&["first"]));
    let mut ed = open_editor(&img);
    assert_eq!(ed.snapshot_matching_active(), Some(0));
    let (size, c) = (ed.reader().virtual_size(), ed.reader().cluster_size());
    let (s, model) = derived_state(&mut ed, 0, 5);
    ed.commit(Some(s), &[spec(s, "2", "second")]).unwrap();
    check_clean(&img);
    verify::verify_image(&img);
    let got = qemu_digests(&img, &names(&["first", "second"]));
    let want = model_digest(&img, size, c, &model);
    assert_eq!(got["first"], old["first"]);
    assert_eq!((&got["second"], &got[""]), (&want, &want));
    qemu_img(&["snapshot", "-d", "first", i]);
    check_clean(&img);
}

#[test]
fn qemu_matching_active_v3_64k() {
    qemu_matching("editor-qemu-matching-64k", "cluster_size=65536");
}

#[test]
fn qemu_matching_active_v2_512() {
    qemu_matching(
        "editor-qemu-matching-v2-512",
        "compat=0.10,cluster_size=512",
    );
}

/// A raw disk of recognisable, compressible clusters at the start and around 5 MiB.
fn compressible_raw(path: &Path) {
    let mut model = Model::new();
    for g in (0u64..40).chain(80..90) {
        let mut d = vec![(g % 251) as u8; 65536];
        d[..8].copy_from_slice(&g.to_le_bytes());
        model.insert(g, d);
    }
    write_raw(path, 8 << 20, 65536, &model);
}

/// Compressed clusters shared by the active layer and a snapshot: replacing the active layer
/// and then removing the snapshot drops every reference to them (no leaks).
#[test]
fn compressed_clusters_released_with_their_states() {
    require_qemu!();
    let dir = scratch("editor-qemu-compressed");
    let (raw, img) = (dir.join("src.raw"), dir.join("c.qcow2"));
    compressible_raw(&raw);
    qemu_compress(&raw, &img, "cluster_size=65536");
    let i = img.to_str().unwrap();
    qemu_img(&["snapshot", "-c", "base", i]);
    check_clean(&img);
    let old = qemu_digests(&img, &names(&["base"]));
    assert_eq!(old["base"], file_digest(&raw));

    let mut ed = open_editor(&img);
    let (s, model) = derived_state(&mut ed, 0, 2);
    ed.commit(Some(s), &[spec(s, "2", "next")]).unwrap();
    check_clean(&img);
    verify::verify_image(&img);
    assert_eq!(qemu_digests(&img, &names(&["base"]))["base"], old["base"]);

    let mut ed = open_editor(&img);
    let b = ed
        .snapshots()
        .iter()
        .position(|x| x.name == "base")
        .unwrap();
    ed.remove_snapshot(b).unwrap();
    let summary = ed.commit(None, &[]).unwrap();
    assert!(summary.freed_clusters > 0, "{summary:?}");
    check_clean(&img);
    verify::verify_image(&img);
    let want = model_digest(&img, 8 << 20, 65536, &model);
    assert_eq!(qemu_digests(&img, &names(&["next"]))["next"], want);
}

/// The snapshot of a compressed image removed while the active layer is kept: its tables
/// become exclusive again (COPIED on the L1 entries; compressed entries never get it).
#[test]
fn compressed_snapshot_removed_active_kept() {
    require_qemu!();
    let dir = scratch("editor-qemu-compressed-keep");
    let (raw, img) = (dir.join("src.raw"), dir.join("c.qcow2"));
    compressible_raw(&raw);
    qemu_compress(&raw, &img, "cluster_size=65536");
    qemu_img(&["snapshot", "-c", "base", img.to_str().unwrap()]);
    let mut ed = open_editor(&img);
    ed.remove_snapshot(0).unwrap();
    ed.commit(None, &[]).unwrap();
    check_clean(&img);
    verify::verify_image(&img);
    compare_raw(&img, &raw);
}

/// `Editor::open` refuses `img` with an [`Error::Unsupported`] naming `what`, and leaves the
/// file as it was.
fn assert_refused(img: &Path, what: &str) {
    let before = file_digest(img);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    match Editor::open(f) {
        Err(Error::Unsupported(msg)) => assert!(msg.contains(what), "{msg}"),
        other => panic!("expected Unsupported({what}), got {other:?}"),
    }
    assert_eq!(file_digest(img), before);
}

#[test]
fn unsupported_images_are_refused_unchanged() {
    require_qemu!();
    let dir = scratch("editor-refuse");
    let base = dir.join("base.qcow2");
    let b = base.to_str().unwrap();
    qemu_img(&["create", "-q", "-f", "qcow2", b, "8M"]);
    qemu_io(&base, &["write -P 0x11 0 64k"]);
    let overlay = dir.join("overlay.qcow2");
    let o = overlay.to_str().unwrap();
    qemu_img(&["create", "-q", "-f", "qcow2", "-b", b, "-F", "qcow2", o]);
    assert_refused(&overlay, "backing file");

    let wide = dir.join("wide.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "refcount_bits=32",
        wide.to_str().unwrap(),
        "8M",
    ]);
    assert_refused(&wide, "refcount_order 5");

    // Incompatible bit 0 (dirty) and bit 1 (corrupt): the last byte of the field at 0x48.
    for (bit, what) in [(1u8, "dirty"), (2u8, "corrupt")] {
        let img = copy_to(&base, &format!("bit{bit}.qcow2"));
        let mut bytes = std::fs::read(&img).unwrap();
        bytes[0x4f] |= bit;
        std::fs::write(&img, bytes).unwrap();
        assert_refused(&img, what);
    }
}

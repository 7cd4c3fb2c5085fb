//! `Editor::open` trusts no refcount: an archive whose stored refcounts disagree with the
//! references of its L1 and L2 tables (a data cluster's refcount zeroed, lowered, raised; a
//! refcount block missing from the table) is refused before anything is written, leftovers
//! included, with the cluster, its refcount, its references and the `qemu-img check -r` repair
//! named; `qemu-img check` flags the same images, and after its repair the editor appends.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::common::archive::*;
use crate::common::*;
use qcow::{ClusterMapping, Editor, Error, Layer, Reader, Version};

const GEO: Geo = Geo {
    cluster_bits: 9,
    size: 1 << 20,
    version: Version::V3,
};

/// States oldest first: the first three make the archive, the fourth is appended.
fn history() -> Vec<Named> {
    let mut e = first_state(GEO, 300, 17);
    let mut out = Vec::new();
    for i in 1..=4 {
        out.push(Named {
            name: format!("s{i}"),
            expect: e.clone(),
        });
        e = evolve(GEO, &e, 20, 40 + i as u64);
    }
    out
}

/// An archive of states 1..=3 (newest first), written in `dir`.
fn archive(dir: &Path) -> PathBuf {
    let img = dir.join("archive.qcow2");
    let mut states: Vec<Named> = history()[..3].to_vec();
    states.reverse();
    write_archive(&img, GEO, &states);
    img
}

/// Byte position of the stored refcount of host cluster `cluster` (16-bit refcounts), or
/// `None` when the refcount table has no block there.
fn refcount_pos(img: &Path, cluster: u64) -> Option<u64> {
    let r = Reader::open(File::open(img).unwrap()).unwrap();
    let h = r.header();
    let per_block = r.cluster_size() / 2;
    let mut entry = [0u8; 8];
    let at = h.refcount_table_offset + 8 * (cluster / per_block);
    File::open(img)
        .unwrap()
        .read_exact_at(&mut entry, at)
        .unwrap();
    let block = u64::from_be_bytes(entry);
    (block != 0).then_some(block + 2 * (cluster % per_block))
}

fn refcount(img: &Path, cluster: u64) -> u16 {
    let mut b = [0u8; 2];
    let pos = refcount_pos(img, cluster).unwrap();
    File::open(img).unwrap().read_exact_at(&mut b, pos).unwrap();
    u16::from_be_bytes(b)
}

fn set_refcount(img: &Path, cluster: u64, value: u16) {
    let pos = refcount_pos(img, cluster).unwrap();
    let f = OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(&value.to_be_bytes(), pos).unwrap();
}

/// The first data cluster (host cluster number) the oldest state maps whose refcount
/// satisfies `want`.
fn data_cluster(img: &Path, want: impl Fn(u16) -> bool) -> u64 {
    let r = Reader::open(File::open(img).unwrap()).unwrap();
    let oldest = r.layer(Layer::Snapshot(r.snapshots().len() - 1)).unwrap();
    let mut hosts = Vec::new();
    oldest
        .for_each_allocated(|_, m| {
            if let ClusterMapping::Normal { host_offset } = m {
                hosts.push(host_offset / r.cluster_size());
            }
            Ok(())
        })
        .unwrap();
    hosts
        .into_iter()
        .find(|&c| want(refcount(img, c)))
        .expect("a data cluster with such a refcount")
}

/// `Editor::open` refuses `img` with an [`Error::Corrupt`] at byte `offset` whose message
/// holds every one of `parts`, and leaves the file byte for byte as it was.
fn assert_refused(img: &Path, offset: Option<u64>, parts: &[&str]) -> String {
    let before = file_digest(img);
    let f = OpenOptions::new().read(true).write(true).open(img).unwrap();
    let msg = match Editor::open(f) {
        Err(e @ Error::Corrupt { offset: at, .. }) => {
            assert!(offset.is_none_or(|o| o == at), "{e}");
            e.to_string()
        }
        other => panic!("expected Corrupt, got {other:?}"),
    };
    for p in parts {
        assert!(msg.contains(p), "{p:?} not in {msg}");
    }
    assert_eq!(file_digest(img), before, "the refused image changed");
    msg
}

/// `qemu-img check` flags `img` (exit status 2 for corruptions, 3 for leaks).
fn assert_qemu_flags(img: &Path, status: i32) {
    let o = run("qemu-img", &["check", img.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(status), "{o:?}");
}

/// After `qemu-img check -r mode`, the archive checks clean and takes an append.
fn repaired_then_appended(img: &Path, mode: &str) {
    run("qemu-img", &["check", "-r", mode, img.to_str().unwrap()]);
    check_clean(img);
    append(img, GEO, &history()[3]);
    check_clean(img);
    let mut states = history();
    states.reverse();
    assert_archive(img, GEO, &states);
}

#[test]
fn zeroed_data_refcount_is_refused_before_leftovers_are_truncated() {
    let dir = scratch("editor-refcount-zero");
    let img = archive(&dir);
    let c = data_cluster(&img, |n| n == 1);
    set_refcount(&img, c, 0);
    // Leftovers of an interrupted edit past the end: not truncated when the open is refused.
    let len = std::fs::metadata(&img).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .write_all_at(&[0xee; 1536], len)
        .unwrap();
    let want = format!("host cluster {c} has refcount 0 but 1 reference");
    assert_refused(&img, Some(c * 512), &[&want, "`qemu-img check -r all`"]);
    assert_eq!(std::fs::metadata(&img).unwrap().len(), len + 1536);
    if require_for("the qemu-img verdict and repair", &QEMU) {
        assert_qemu_flags(&img, 2);
        repaired_then_appended(&img, "all");
    }
}

#[test]
fn lowered_shared_refcount_is_refused() {
    let dir = scratch("editor-refcount-low");
    let img = archive(&dir);
    let c = data_cluster(&img, |n| n >= 2);
    let n = refcount(&img, c);
    set_refcount(&img, c, 1);
    let want = format!("host cluster {c} has refcount 1 but {n} references");
    assert_refused(&img, Some(c * 512), &[&want, "-r all"]);
    if require_for("the qemu-img verdict and repair", &QEMU) {
        assert_qemu_flags(&img, 2);
        repaired_then_appended(&img, "all");
    }
}

#[test]
fn raised_refcount_is_refused_as_a_leak() {
    let dir = scratch("editor-refcount-leak");
    let img = archive(&dir);
    let c = data_cluster(&img, |n| n >= 1);
    let n = refcount(&img, c);
    set_refcount(&img, c, n + 1);
    let want = format!("host cluster {c} has refcount {} but {n} reference", n + 1);
    let msg = assert_refused(&img, Some(c * 512), &[&want, "leaked", "-r leaks"]);
    assert!(!msg.contains("-r all"), "{msg}");
    if require_for("the qemu-img verdict and repair", &QEMU) {
        assert_qemu_flags(&img, 3);
        repaired_then_appended(&img, "leaks");
    }
}

/// A refcount table entry cleared: every cluster that block covered has refcount 0 now, and
/// the first one referenced is named.
#[test]
fn missing_refcount_block_is_refused() {
    let dir = scratch("editor-refcount-block");
    let img = archive(&dir);
    let r = Reader::open(File::open(&img).unwrap()).unwrap();
    let blocks = r.file_len().div_ceil(512).div_ceil(256);
    assert!(blocks >= 2, "{blocks} refcount blocks");
    let entry = r.header().refcount_table_offset + 8;
    let f = OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&[0; 8], entry).unwrap();
    let msg = assert_refused(&img, None, &["has refcount 0 but", "-r all"]);
    let cluster: u64 = msg
        .split("host cluster ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!((256..512).contains(&cluster), "{msg}");
    if require_for("the qemu-img verdict and repair", &QEMU) {
        assert_qemu_flags(&img, 2);
    }
}

/// A clean archive (no disagreement) still opens, appends, and checks clean.
#[test]
fn clean_archive_appends() {
    require_qemu!();
    let dir = scratch("editor-refcount-clean");
    let img = archive(&dir);
    append(&img, GEO, &history()[3]);
    let mut states = history();
    states.reverse();
    assert_archive(&img, GEO, &states);
}

/// A QEMU image with a preallocated zero cluster (a zero flag with a host offset) shared by a
/// snapshot: its references count, so the image opens and edits; lowering its refcount is
/// refused.
#[test]
fn preallocated_zero_clusters_count() {
    require_qemu!();
    let dir = scratch("editor-refcount-zero-alloc");
    let img = dir.join("z.qcow2");
    let i = img.to_str().unwrap();
    run_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            i,
            "1M",
        ],
    );
    run_ok(
        "qemu-io",
        &["-c", "write -P 0x11 0 64k", "-c", "write -z 0 8k", i],
    );
    run_ok("qemu-img", &["snapshot", "-c", "s1", i]);
    run_ok("qemu-io", &["-c", "write -P 0x22 8k 4k", i]);
    let r = Reader::open(File::open(&img).unwrap()).unwrap();
    let layer = r.layer(Layer::Active).unwrap();
    assert_eq!(layer.mapping(0).unwrap(), ClusterMapping::Zero);
    drop(layer);
    drop(r);
    let map = run_ok("qemu-img", &["map", "--output=json", i]);
    let offset: u64 = map
        .split("\"offset\": ")
        .nth(1)
        .and_then(|s| s.split('}').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap();
    let cluster = offset / 4096;
    assert_eq!(refcount(&img, cluster), 2, "{map}");
    let copy = copy_to(&img, "lowered.qcow2");
    set_refcount(&copy, cluster, 1);
    let want = format!("host cluster {cluster} has refcount 1 but 2 references");
    assert_refused(&copy, Some(offset), &[&want]);
    let mut ed = open_editor(&img);
    ed.remove_snapshot(0).unwrap();
    ed.commit(None, &[]).unwrap();
    check_clean(&img);
}

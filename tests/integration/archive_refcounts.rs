//! Appending to and pruning an archive trust no refcount (issue 17): an archive whose stored
//! refcounts disagree with its tables is refused with exit 1, a message naming the cluster and
//! the `qemu-img check -r` repair, and the archive byte for byte as it was (SHA-256):
//! - a data cluster an old state maps, its refcount zeroed: an append would reuse the cluster
//!   and change that old state;
//! - a data cluster four L1 tables share, its refcount lowered from 4 to 1: `prune
//!   --keep-last 1` would punch it out of the kept newest state.
//!
//! `qemu-img check` flags both images; a clean archive still appends and prunes.

use crate::common::*;
use qcow::{ClusterMapping, Layer, Reader};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// An archive of the chain's states s1 (oldest), s2, s3 made one append at a time, and a
/// fourth image (s3 changed) for a later append.
fn archive(dir: &Path) -> (PathBuf, PathBuf) {
    let [a, b, c] = chain(dir);
    let q = dir.join("arch.qcow2");
    expect(&[&"-Q", &"--name", &"s1", &a, &q], 0);
    expect(&[&"-Q", &"--append", &"--name", &"s2", &b, &q], 0);
    expect(&[&"-Q", &"--append", &"--name", &"s3", &c, &q], 0);
    assert_qemu_check(&q);
    let d = sparse_copy(&c, &dir.join("d.img"));
    let note = dir.join("note4.txt");
    std::fs::write(&note, b"state four\n").unwrap();
    debugfs_w(
        &d,
        &[
            "mkdir /four",
            &format!("write {} /four/note.txt", note.display()),
        ],
    );
    (q, d)
}

/// Byte position of the stored 16-bit refcount of host cluster `cluster`.
fn refcount_pos(q: &Path, cluster: u64) -> u64 {
    let r = Reader::open(File::open(q).unwrap()).unwrap();
    let per_block = r.cluster_size() / 2;
    let mut entry = [0u8; 8];
    let at = r.header().refcount_table_offset + 8 * (cluster / per_block);
    File::open(q)
        .unwrap()
        .read_exact_at(&mut entry, at)
        .unwrap();
    let block = u64::from_be_bytes(entry);
    assert_ne!(block, 0, "no refcount block for cluster {cluster}");
    block + 2 * (cluster % per_block)
}

fn refcount(q: &Path, cluster: u64) -> u16 {
    let mut b = [0u8; 2];
    File::open(q)
        .unwrap()
        .read_exact_at(&mut b, refcount_pos(q, cluster))
        .unwrap();
    u16::from_be_bytes(b)
}

fn set_refcount(q: &Path, cluster: u64, value: u16) {
    let f = OpenOptions::new().write(true).open(q).unwrap();
    f.write_all_at(&value.to_be_bytes(), refcount_pos(q, cluster))
        .unwrap();
}

/// The host clusters (numbers) of the data clusters the oldest state s1 maps, in guest order.
fn oldest_data_clusters(q: &Path) -> Vec<u64> {
    let r = Reader::open(File::open(q).unwrap()).unwrap();
    let s1 = r.find_snapshot("s1").unwrap();
    let mut out = Vec::new();
    r.layer(Layer::Snapshot(s1))
        .unwrap()
        .for_each_allocated(|_, m| {
            if let ClusterMapping::Normal { host_offset } = m {
                out.push(host_offset / r.cluster_size());
            }
            Ok(())
        })
        .unwrap();
    out
}

/// `qemu-img check` exits 2: corruptions found.
fn assert_qemu_flags(q: &Path) {
    let o = sh("qemu-img", &[&"check", &q]);
    assert_eq!(code(&o), 2, "{}", stdout(&o));
}

/// The refusal of an edit of `q`: its stderr names `cluster` and the repair.
fn assert_refusal(o: &std::process::Output, cluster: u64) {
    let e = stderr(o);
    assert!(
        e.contains(&format!("host cluster {cluster} has refcount")),
        "{e}"
    );
    assert!(e.contains("qemu-img check -r all"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn append_refuses_a_zeroed_data_refcount() {
    if skip() {
        return;
    }
    let dir = scratch("arch-rc-zero");
    let (q, d) = archive(&dir);
    let cluster = *oldest_data_clusters(&q).first().unwrap();
    set_refcount(&q, cluster, 0);
    assert_qemu_flags(&q);
    let before = sha256(&q);
    let o = expect(&[&"-Q", &"--append", &"--name", &"s4", &d, &q], 1);
    assert_refusal(&o, cluster);
    assert!(stderr(&o).contains("refcount 0 but"), "{}", stderr(&o));
    assert_eq!(sha256(&q), before, "the refused append changed the archive");
}

#[test]
fn prune_refuses_a_lowered_data_refcount() {
    if skip() {
        return;
    }
    let dir = scratch("arch-rc-low");
    let (q, _) = archive(&dir);
    let shared = oldest_data_clusters(&q)
        .into_iter()
        .find(|&c| refcount(&q, c) == 4)
        .expect("a data cluster shared by all four L1 tables");
    set_refcount(&q, shared, 1);
    assert_qemu_flags(&q);
    let before = sha256(&q);
    let o = expect_sub("prune", &[&q, &"--keep-last", &"1"], 1);
    assert_refusal(&o, shared);
    assert!(
        stderr(&o).contains("refcount 1 but 4 references"),
        "{}",
        stderr(&o)
    );
    assert_eq!(sha256(&q), before, "the refused prune changed the archive");
}

#[test]
fn clean_archive_appends_and_prunes() {
    if skip() {
        return;
    }
    let dir = scratch("arch-rc-clean");
    let (q, d) = archive(&dir);
    expect(&[&"-Q", &"--append", &"--name", &"s4", &d, &q], 0);
    assert_qemu_check(&q);
    let state = |name: &str, tag: &str| {
        let out = dir.join(format!("{name}-{tag}.raw"));
        extract_state(&q, name, &out);
        sha256(&out)
    };
    let newest = state("s4", "before");
    expect_sub("prune", &[&q, &"--keep-last", &"1"], 0);
    assert_qemu_check(&q);
    let names: Vec<String> = snapshot_list(&q)["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.len() < 4 && names[0] == "s4", "{names:?}");
    assert_eq!(state("s4", "after"), newest);
}

//! `e2image-rs verify IMAGE [--json]` and the cluster checksum table (docs/verify.md), with
//! qemu-img as the oracle:
//! - clean images pass with the table current: a plain export, a delta (`--base`), archives
//!   plain and `-c` compressed after several appends and a prune (and an append reusing the
//!   freed space); `qemu-img check` exits 0 on every one of them;
//! - one byte flipped in a data cluster, an L2 table, a refcount block or the snapshot table
//!   is found (exit 3) and named: host offset, kind, and for data the states, the guest offset
//!   and the ext objects it holds;
//! - QCOW2 written to a pipe carries its table too (after the image, its CRC-32C after the
//!   entries): streamed exports, compressed or not, and a streamed archive grown by appends
//!   and a prune verify clean, and a flipped data byte in a stream is found;
//! - an image QEMU wrote gets the structure check and a note (exit 0); an archive QEMU changed
//!   read-write (`qemu-io -c write`, `qemu-img snapshot -c`) is reported stale, not as bad
//!   clusters, and a later append keeps it structurally clean.

use crate::common::*;
use qcow::{ClusterMapping, Layer, Reader};
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// `verify --json IMAGE`, expecting exit status `want`; returns the document.
fn verify(q: &Path, want: i32) -> Value {
    let o = expect_sub("verify", &[&"--json", &q], want);
    let doc: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(doc["exit_status"], want, "{doc}");
    doc
}

/// The image verifies clean against a current table, and `qemu-img check` exits 0.
fn assert_clean(q: &Path) {
    assert_qemu_check(q);
    let doc = verify(q, 0);
    assert_eq!(doc["table"], "current", "{}: {doc}", q.display());
    assert!(doc["clusters_checked"].as_u64().unwrap() > 3, "{doc}");
    assert_eq!(doc["bad"].as_array().unwrap().len(), 0, "{doc}");
}

#[test]
fn clean_images_pass() {
    if skip() {
        return;
    }
    let dir = scratch("verify-clean");
    let [a, b, c] = chain(&dir);
    let plain = dir.join("plain.qcow2");
    expect(&[&"-Q", &"-d", &c, &plain], 0);
    assert_clean(&plain);
    let delta = dir.join("delta.qcow2");
    expect(&[&"-Q", &"--base", &a, &c, &delta], 0);
    assert_clean(&delta);
    for (tag, extra) in [("plain", None), ("compressed", Some("-c"))] {
        let q = dir.join(format!("arch-{tag}.qcow2"));
        let mut i = 0;
        for img in [&a, &b, &c, &a] {
            i += 1;
            let name = format!("s{i}");
            let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"-Q", &"-d", &"--name", &name];
            if let Some(flag) = &extra {
                args.push(flag);
            }
            if i > 1 {
                args.push(&"--append");
            }
            args.push(img);
            args.push(&q);
            expect(&args, 0);
            assert_clean(&q);
        }
        expect_sub("prune", &[&"--keep-last", &"2", &q], 0);
        assert_clean(&q);
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"-Q", &"-d", &"--append"];
        if let Some(flag) = &extra {
            args.push(flag);
        }
        args.extend([&"--name" as &dyn AsRef<std::ffi::OsStr>, &"s5", &b, &q]);
        expect(&args, 0);
        assert_clean(&q);
    }
}

/// `args` with OUT `-`, standard output into `out`; expects exit 0.
fn stream_to(args: &[&str], src: &Path, out: &Path) {
    let o = std::process::Command::new(bin())
        .args(args)
        .arg(src)
        .arg("-")
        .stdout(File::create(out).unwrap())
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{args:?}: {}", stderr(&o));
}

#[test]
fn streamed_images_carry_their_table() {
    if skip() {
        return;
    }
    let dir = scratch("verify-stream");
    let [a, b, c] = chain(&dir);
    for (tag, args) in [("d", &["-Q", "-d"][..]), ("c", &["-Q", "-d", "-c"][..])] {
        let q = dir.join(format!("stream-{tag}.qcow2"));
        stream_to(args, &c, &q);
        assert_clean(&q);
    }
    let q = dir.join("stream-archive.qcow2");
    stream_to(&["-Q", "-d", "--name", "s1"], &a, &q);
    assert_clean(&q);
    expect(&[&"-Q", &"-d", &"--append", &"--name", &"s2", &b, &q], 0);
    assert_clean(&q);
    expect_sub("prune", &[&"--keep-last", &"1", &q], 0);
    assert_clean(&q);
    let q = dir.join("stream-d.qcow2");
    let r = Reader::open(File::open(&q).unwrap()).unwrap();
    let mut host = None;
    r.layer(Layer::Active)
        .unwrap()
        .for_each_allocated(|_, m| {
            if let (None, ClusterMapping::Normal { host_offset }) = (host, m) {
                host = Some(host_offset);
            }
            Ok(())
        })
        .unwrap();
    let host = host.expect("a data cluster");
    flip(&q, host + 7);
    let doc = verify(&q, 3);
    bad_at(&doc, host, "data");
}

/// Flips one bit of the byte at `at` in `q`.
fn flip(q: &Path, at: u64) {
    let f = OpenOptions::new().read(true).write(true).open(q).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x80;
    f.write_all_at(&b, at).unwrap();
}

fn u64_at(q: &Path, at: u64) -> u64 {
    let mut b = [0u8; 8];
    File::open(q).unwrap().read_exact_at(&mut b, at).unwrap();
    u64::from_be_bytes(b)
}

/// The bad cluster at `host` in a verify document, which must say `kind`.
fn bad_at<'a>(doc: &'a Value, host: u64, kind: &str) -> &'a Value {
    let bad = doc["bad"].as_array().unwrap();
    let b = bad
        .iter()
        .find(|b| b["host_offset"] == host)
        .unwrap_or_else(|| panic!("no bad cluster at {host:#x}: {doc}"));
    assert_eq!(b["kind"], kind, "{doc}");
    b
}

#[test]
fn flipped_bytes_are_found_and_named() {
    if skip() {
        return;
    }
    let dir = scratch("verify-flips");
    let [a, b, c] = chain(&dir);
    let q = dir.join("arch.qcow2");
    expect(&[&"-Q", &"-d", &"--name", &"s1", &a, &q], 0);
    expect(&[&"-Q", &"-d", &"--append", &"--name", &"s2", &b, &q], 0);
    expect(&[&"-Q", &"-d", &"--append", &"--name", &"s3", &c, &q], 0);
    assert_clean(&q);
    let r = Reader::open(File::open(&q).unwrap()).unwrap();
    let cs = r.cluster_size();
    let h = r.header().clone();
    let s1 = r.find_snapshot("s1").unwrap();
    let mut data = None;
    r.layer(Layer::Snapshot(s1))
        .unwrap()
        .for_each_allocated(|g, m| {
            if let (None, ClusterMapping::Normal { host_offset }) = (data, m) {
                data = Some((g * cs, host_offset));
            }
            Ok(())
        })
        .unwrap();
    let (guest, data_host) = data.unwrap();
    let l2 = u64_at(&q, h.l1_table_offset) & 0x00ff_ffff_ffff_fe00;
    let refblock = u64_at(&q, h.refcount_table_offset);
    let cases = [
        ("data", data_host, data_host + 100),
        ("l2", l2, l2 + cs - 1),
        ("refcount_block", refblock, refblock + cs - 2),
        (
            "snapshot_table",
            h.snapshots_offset,
            h.snapshots_offset + cs - 1,
        ),
    ];
    for (kind, host, at) in cases {
        let f = dir.join(format!("flip-{kind}.qcow2"));
        std::fs::copy(&q, &f).unwrap();
        flip(&f, at);
        let doc = verify(&f, 3);
        let bad = bad_at(&doc, host, kind);
        if kind == "data" {
            let states = bad["states"].as_array().unwrap();
            assert!(states.iter().any(|s| s == "s1"), "{doc}");
            assert_eq!(bad["guest_offset"], guest, "{doc}");
            assert!(bad["ext_object"].is_string(), "{doc}");
        }
        if kind == "l2" {
            assert!(
                bad["states"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s == "active"),
                "{doc}"
            );
        }
        let text = stdout(&expect_sub("verify", &[&f], 3));
        assert!(
            text.contains(&format!("{host:#x}")) && text.contains(kind),
            "{text}"
        );
    }
}

#[test]
fn qemu_images_get_the_structure_check() {
    if skip() || !have("qemu-io") {
        return;
    }
    let dir = scratch("verify-qemu");
    let qe = dir.join("qemu.qcow2");
    assert_eq!(
        code(&sh("qemu-img", &[&"create", &"-f", &"qcow2", &qe, &"16M"])),
        0
    );
    assert_eq!(code(&sh("qemu-io", &[&"-c", &"write 0 1M", &qe])), 0);
    let doc = verify(&qe, 0);
    assert_eq!(doc["table"], "absent", "{doc}");
    assert!(!doc["notes"].as_array().unwrap().is_empty(), "{doc}");
    let [a, b, c] = chain(&dir);
    let q = dir.join("arch.qcow2");
    expect(&[&"-Q", &"-d", &"--name", &"s1", &a, &q], 0);
    expect(&[&"-Q", &"-d", &"--append", &"--name", &"s2", &b, &q], 0);
    assert_clean(&q);
    // QEMU writes in place and allocates: it clears auto-clear bit 40, the table is stale.
    let w = dir.join("written.qcow2");
    std::fs::copy(&q, &w).unwrap();
    assert_eq!(
        code(&sh("qemu-io", &[&"-c", &"write -P 0x55 0 256k", &w])),
        0
    );
    let doc = verify(&w, 0);
    assert_eq!(doc["table"], "stale", "{doc}");
    assert_eq!(doc["bad"].as_array().unwrap().len(), 0, "{doc}");
    // A snapshot QEMU took, then an append of ours: still stale, still clean to qemu-img.
    assert_eq!(code(&sh("qemu-img", &[&"snapshot", &"-c", &"qs", &q])), 0);
    assert_eq!(verify(&q, 0)["table"], "stale");
    expect(&[&"-Q", &"-d", &"--append", &"--name", &"s3", &c, &q], 0);
    assert_qemu_check(&q);
    assert_eq!(verify(&q, 0)["table"], "stale");
}

//! Every image of the fixture matrix (fixtures/build-matrix.sh), exported with `-Q`, `-r` and
//! `-d`, against the oracles:
//! - `qemu-img check` exits 0 and `qemu-img compare` says our QCOW2 equals our raw output;
//! - `qemu-img info` reports the filesystem size as the virtual size;
//! - every non-zero block `e2image -r` (`-ra`) copies is identical in ours;
//! - every block we copy equals the source;
//! - `e2fsck -fn` passes on our raw output wherever it passes on e2image's;
//! - the source's SHA-256 is unchanged.
//!
//! Skips (with a message) when e2fsprogs or qemu-img is missing.

use crate::common::*;
use std::path::Path;

/// Exit status we expect for a fixture: 3 for the corrupt ones whose damage we skip. A bad
/// data pointer of a regular file only matters when data is exported.
fn expected_status(f: &Fixture, data: bool) -> i32 {
    match f.name.as_str() {
        "corrupt_dir_inode_extent_header"
        | "corrupt_etb_magic"
        | "corrupt_extent_loop"
        | "corrupt_missing_itable" => 3,
        "corrupt_out_of_range_extent" | "corrupt_ind_block" if data => 3,
        _ => 0,
    }
}

/// Extra arguments to open a fixture (the zeroed-primary one needs a backup superblock).
fn open_args(f: &Fixture) -> Vec<String> {
    if f.name == "corrupt_primary_sb" {
        vec!["-b".into(), "32768".into(), "-B".into(), "4096".into()]
    } else {
        Vec::new()
    }
}

fn export(f: &Fixture, mode: &[&str], out: &Path) -> i32 {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = Vec::new();
    let extra = open_args(f);
    for a in mode {
        args.push(a);
    }
    for a in &extra {
        args.push(a);
    }
    args.push(&f.path);
    args.push(&out);
    let o = run(&args);
    let c = code(&o);
    assert!(
        c == 0 || c == 3,
        "{} {mode:?}: exit {c}: {}",
        f.name,
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.exists(), "{}: no output", f.name);
    c
}

/// Every non-zero block of `reference` must be identical in `ours`.
fn assert_superset(f: &Fixture, reference: &[u8], ours: &[u8], what: &str) {
    let bs = f.block_size as usize;
    let bad: Vec<usize> = nonzero_blocks(reference, bs)
        .into_iter()
        .filter(|&b| ours.get(b * bs..(b + 1) * bs) != reference.get(b * bs..(b + 1) * bs))
        .collect();
    assert!(
        bad.is_empty(),
        "{}: {} blocks of {what} differ in ours, first {:?}",
        f.name,
        bad.len(),
        &bad[..bad.len().min(10)]
    );
}

/// Every non-zero block of ours equals the source.
fn assert_equals_source(f: &Fixture, source: &[u8], ours: &[u8]) {
    assert_eq!(
        ours.len(),
        source.len(),
        "{}: raw size differs from the filesystem size",
        f.name
    );
    assert_superset(f, ours, source, "our output vs the source");
}

fn virtual_size(img: &Path) -> u64 {
    let o = sh("qemu-img", &[&"info", &"--output=json", &img]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

fn e2image(f: &Fixture, flags: &str, out: &Path) -> bool {
    let mut c = std::process::Command::new("e2image");
    c.arg(flags).args(open_args(f)).arg(&f.path).arg(out);
    c.output().unwrap().status.success()
}

fn check_fixture(name: &str) {
    if skip() {
        return;
    }
    let f = fixtures(&[name]).remove(name).unwrap();
    let dir = scratch(&format!("matrix-{name}"));
    let before = sha256(&f.path);
    let source = read(&f.path);
    let want = expected_status(&f, false);

    let (q, r) = (dir.join("out.qcow2"), dir.join("out.raw"));
    assert_eq!(export(&f, &["-Q"], &q), want, "{name}: -Q exit status");
    assert_eq!(export(&f, &["-r"], &r), want, "{name}: -r exit status");
    assert_qemu_check(&q);
    assert_qemu_identical(&q, &r);
    assert_eq!(
        virtual_size(&q),
        source.len() as u64,
        "{name}: virtual size"
    );
    let ours = read(&r);
    assert_equals_source(&f, &source, &ours);

    let e2i = dir.join("e2i.raw");
    if e2image(&f, "-r", &e2i) {
        assert_superset(&f, &read(&e2i), &ours, "e2image -r");
        let fsck_extra: Vec<&str> = if name == "corrupt_primary_sb" {
            vec!["-b", "32768", "-B", "4096"]
        } else {
            vec![]
        };
        if fsck_with(&e2i, &fsck_extra) == 0 {
            assert_eq!(
                fsck_with(&r, &fsck_extra),
                0,
                "{name}: e2fsck -fn fails on ours but passes on e2image's"
            );
        }
    }

    let (qd, rd) = (dir.join("data.qcow2"), dir.join("data.raw"));
    let want = expected_status(&f, true);
    assert_eq!(
        export(&f, &["-Q", "-d"], &qd),
        want,
        "{name}: -Q -d exit status"
    );
    assert_eq!(
        export(&f, &["-r", "-d"], &rd),
        want,
        "{name}: -r -d exit status"
    );
    assert_qemu_check(&qd);
    assert_qemu_identical(&qd, &rd);
    let ours_d = read(&rd);
    assert_equals_source(&f, &source, &ours_d);
    let e2ia = dir.join("e2i-a.raw");
    if e2image(&f, "-ra", &e2ia) {
        assert_superset(&f, &read(&e2ia), &ours_d, "e2image -ra");
    }
    assert_superset(&f, &ours, &ours_d, "our metadata export (in -d)");

    assert_eq!(sha256(&f.path), before, "{name}: the source changed");
    let _ = std::fs::remove_dir_all(&dir);
}

macro_rules! matrix {
    ($($name:ident),* $(,)?) => {
        $( #[test] fn $name() { check_fixture(stringify!($name)); } )*
    };
}

matrix!(
    ext2_1k,
    ext2_4k_nosparse,
    ext3_1k,
    ext3_2k,
    ext3_4k,
    ext4_default_4k,
    ext4_1k,
    ext4_2k,
    ext4_64k_block,
    ext4_32bit,
    ext4_no_flexbg,
    ext4_meta_bg,
    ext4_meta_bg_1k,
    ext4_uninit_bg_nocsum,
    ext4_no_gdtcsum,
    ext4_noextent,
    ext4_nojournal,
    ext4_bigalloc_4k,
    ext4_bigalloc_1k,
    ext4_inline,
    ext4_sparse_super2,
    ext4_orphan_file,
    ext4_quota,
    ext4_mmp,
    ext4_ea_inode,
    ext4_csum_seed,
    ext4_largedir,
    ext4_casefold,
    ext4_inode128,
    ext4_fast_commit,
    ext4_encrypt_verity,
    ext4_debian_4k,
    ext4_4k_256m,
    ext4_ea_inode_1k,
    ext4_default_4k_htree,
    ext3_1k_htree,
    ext4_largedir_htree,
    ext4_64k_htree,
    ext2_1k_badblocks,
    ext4_orphan_list,
    ext4_orphan_file_entry,
    ext4_1k_tind,
    corrupt_dir_inode_extent_header,
    corrupt_etb_magic,
    corrupt_ind_block,
    corrupt_out_of_range_extent,
    corrupt_primary_sb,
    corrupt_missing_itable,
    corrupt_extent_loop,
    corrupt_dirty_garbage_itable_tail,
);

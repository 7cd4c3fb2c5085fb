//! e2image's `-o SRC_OFFSET` and `-O DST_OFFSET`: a filesystem inside a partitioned disk image
//! is exported as the same filesystem alone would be (`-Q`, `-r`, `-d`), with e2image as the
//! oracle; a raw image placed at an offset of an existing disk image keeps the bytes before
//! the offset (its partition table) and holds the image after it; misuses are refused.

use crate::common::*;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const OFFSET: u64 = 1 << 20;

/// A disk image: 1 MiB of "partition table" (random bytes), then an ext4 of 16 MiB made in
/// place by mke2fs (`-E offset=`); and the same filesystem copied out alone.
fn disk(dir: &Path) -> (PathBuf, PathBuf) {
    let disk = dir.join("disk.img");
    let mut x = Xorshift::new(7);
    let prefix: Vec<u8> = (0..OFFSET).map(|_| x.next_u64() as u8).collect();
    std::fs::write(&disk, &prefix).unwrap();
    let o = sh(
        "mke2fs",
        &[
            &"-q",
            &"-F",
            &"-t",
            &"ext4",
            &"-E",
            &format!("offset={OFFSET}"),
            &disk,
            &"16M",
        ],
    );
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let part = dir.join("part.img");
    let bytes = std::fs::read(&disk).unwrap();
    std::fs::write(&part, &bytes[OFFSET as usize..]).unwrap();
    (disk, part)
}

#[test]
fn a_filesystem_inside_a_disk_image_exports_as_itself() {
    if skip() {
        return;
    }
    let dir = scratch("offsets-src");
    let (disk, part) = disk(&dir);
    let o = format!("{OFFSET}");
    for (flags, ext) in [
        (&["-Q"][..], "qcow2"),
        (&["-Q", "-d"][..], "qcow2"),
        (&["-r"][..], "raw"),
    ] {
        let (a, b) = (dir.join(format!("a.{ext}")), dir.join(format!("b.{ext}")));
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = flags
            .iter()
            .map(|f| f as &dyn AsRef<std::ffi::OsStr>)
            .collect();
        args.extend([&"-o" as &dyn AsRef<std::ffi::OsStr>, &o, &disk, &a]);
        expect(&args, 0);
        let mut alone: Vec<&dyn AsRef<std::ffi::OsStr>> = flags
            .iter()
            .map(|f| f as &dyn AsRef<std::ffi::OsStr>)
            .collect();
        alone.extend([&part as &dyn AsRef<std::ffi::OsStr>, &b]);
        expect(&alone, 0);
        assert_qemu_identical(&a, &b);
    }
    // e2image reads the same filesystem at the same offset: every block it copies is ours.
    let (ours, theirs) = (dir.join("ours.raw"), dir.join("e2image.raw"));
    expect(&[&"-r", &"-o", &o, &disk, &ours], 0);
    let e = sh("e2image", &[&"-r", &"-o", &o, &disk, &theirs]);
    assert_eq!(code(&e), 0, "{}", String::from_utf8_lossy(&e.stderr));
    assert!(blocks_not_in(&theirs, &ours, 4096).is_empty());
}

#[test]
fn a_raw_image_placed_at_an_offset_keeps_what_is_before_it() {
    if skip() {
        return;
    }
    let dir = scratch("offsets-dst");
    let (disk, part) = disk(&dir);
    let prefix = block_at(&disk, 0, OFFSET as usize);
    // An existing disk image with a partition table and old bytes where the filesystem goes.
    let target = sparse_copy(&disk, &dir.join("target.img"));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&target)
        .unwrap()
        .write_all_at(&[0xAB; 8192], OFFSET + 4096 * 3)
        .unwrap();
    let o = format!("{OFFSET}");
    expect(&[&"-r", &"-O", &o, &part, &target], 0);
    assert_eq!(
        block_at(&target, 0, OFFSET as usize),
        prefix,
        "the partition table"
    );
    let alone = dir.join("alone.raw");
    expect(&[&"-r", &part, &alone], 0);
    let placed = std::fs::read(&target).unwrap();
    assert_eq!(
        &placed[OFFSET as usize..],
        &std::fs::read(&alone).unwrap()[..]
    );
    // As e2image places it, on every block e2image writes.
    let theirs = sparse_copy(&disk, &dir.join("theirs.img"));
    let e = sh("e2image", &[&"-r", &"-O", &o, &part, &theirs]);
    assert_eq!(code(&e), 0, "{}", String::from_utf8_lossy(&e.stderr));
    assert!(blocks_not_in(&theirs, &target, 4096).is_empty());
    // To standard output: the offset is zeros, then the image.
    let piped = dir.join("piped.raw");
    let out = std::fs::File::create(&piped).unwrap();
    let st = std::process::Command::new(bin())
        .args(["-r", "-O", &o])
        .arg(&part)
        .arg("-")
        .stdout(out)
        .status()
        .unwrap();
    assert!(st.success());
    let bytes = std::fs::read(&piped).unwrap();
    assert!(bytes[..OFFSET as usize].iter().all(|&b| b == 0));
    assert_eq!(
        &bytes[OFFSET as usize..],
        &std::fs::read(&alone).unwrap()[..]
    );
}

#[test]
fn offsets_that_do_not_apply_are_refused() {
    if skip() {
        return;
    }
    let dir = scratch("offsets-refused");
    let img = small_image(&dir);
    let q = dir.join("x.qcow2");
    expect(&[&"-Q", &img, &q], 0);
    let out = dir.join("out");
    for (args, says) in [
        (vec!["-Q", "-O", "4096"], "-O DST_OFFSET places a raw image"),
        (vec!["-r", "-o", "4096"], "is a QCOW2 image"),
    ] {
        let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = args
            .iter()
            .map(|s| s as &dyn AsRef<std::ffi::OsStr>)
            .collect();
        let src: &dyn AsRef<std::ffi::OsStr> = if args[0] == "-r" { &q } else { &img };
        a.push(src);
        a.push(&out);
        let e = stderr(&expect(&a, 2));
        assert!(e.contains(says), "{args:?}: {e}");
    }
    let e = stderr(&expect(&[&"-Q", &"-o", &"999999999999", &img, &out], 2));
    assert!(e.contains("is only"), "{e}");
    assert!(!out.exists());
}

//! Corrupt journals, fast commits, an external journal device and the superblock fallback.

use super::{differing, dirty, make_dirty, pattern, unavailable};
use crate::common::{assert_qemu_check, block_at, code, expect, run, scratch, sh, stderr};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The device block of journal block `jblock` (`debugfs bmap <8>`).
fn journal_block(img: &Path, jblock: u64) -> u64 {
    let o = sh("debugfs", &[&"-R", &format!("bmap <8> {jblock}"), &img]);
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .expect("a mapped journal block")
}

fn write_at(img: &Path, at: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

#[test]
fn corrupt_journals_are_reported_and_the_rest_exported() {
    if unavailable() {
        return;
    }
    let dir = scratch("journal-corrupt");
    let d = dirty(&dir, "magic", &["-t", "ext4", "-b", "4096"], "64M", "-c");
    let jsb = journal_block(&d.img, 0) * d.bs as u64;
    // A bad journal superblock magic: the journal is unusable; both modes warn and export.
    write_at(&d.img, jsb, &[0, 0, 0, 0]);
    let sha = crate::common::sha256(&d.img);
    for args in [&["-Q"][..], &["-Q", "--replay"][..]] {
        let out = dir.join("out.qcow2");
        let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = args.iter().map(|s| s as _).collect();
        a.push(&d.img);
        a.push(&out);
        let o = run(&a);
        assert_eq!(code(&o), 3, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("journal is unusable"), "{}", stderr(&o));
        assert!(stderr(&o).contains("journal block 0"), "{}", stderr(&o));
        assert_qemu_check(&out);
        assert_eq!(crate::common::sha256(&d.img), sha);
    }
    // A corrupt descriptor block (journal block 1, the first transaction's): jbd2 stops
    // there; the replay warns, the export completes.
    let d = dirty(&dir, "descr", &["-t", "ext4", "-b", "4096"], "64M", "-c");
    let descr = journal_block(&d.img, 1) * d.bs as u64;
    write_at(&d.img, descr + 100, &[0x5a; 8]);
    let sha = crate::common::sha256(&d.img);
    let out = dir.join("descr.raw");
    let o = run(&[&"-r", &"--replay", &d.img, &out]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("journal"), "{}", stderr(&o));
    assert_eq!(crate::common::sha256(&d.img), sha);
}

/// A filesystem with fast commits pending for the end of its block log: a fast-commit block
/// (HEAD, ADD_RANGE naming block `x`, TAIL with the crc32c of the tags) written by hand into
/// the area; `x` holds bytes no walk would copy. The ADD_RANGE names an inode the block log
/// deletes: the kernel's replay skips it, so `--replay` equals the block-level replay. With a
/// bad tail checksum the kernel's recovery fails: `--replay` says so.
#[test]
fn fast_commits_are_copied_and_replayed() {
    if unavailable() {
        return;
    }
    let dir = scratch("journal-fc");
    let mkfs = ["-t", "ext4", "-O", "fast_commit", "-b", "4096"];
    let d = dirty(&dir, "fc", &mkfs, "64M", "");
    let bs = d.bs as u64;
    // The journal superblock: FAST_COMMIT (incompat 0x20) set, no checksum (jo without -c).
    let jsb = journal_block(&d.img, 0) * bs;
    let head = block_at(&d.img, jsb / bs, d.bs);
    let incompat = u32::from_be_bytes(head[0x28..0x2C].try_into().unwrap()) | 0x20;
    write_at(&d.img, jsb + 0x28, &incompat.to_be_bytes());
    let maxlen = u64::from(u32::from_be_bytes(head[0x10..0x14].try_into().unwrap()));
    let nfc = u64::from(u32::from_be_bytes(head[0x54..0x58].try_into().unwrap()));
    // The block log's end tid, from the faithful export's note.
    let o = expect(&[&"-r", &d.img, &dir.join("probe.raw")], 0);
    let tids = stderr(&o);
    let end: u32 = tids
        .split("tids ")
        .nth(1)
        .and_then(|t| t.split(')').next())
        .and_then(|t| t.split("..").nth(1))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no tids in {tids}"));
    let x = super::file_blocks(&d.oracle, &d.new_path)[0] + 200;
    write_at(&d.img, x * bs, &pattern(d.bs, 5));
    let tl = |tag: u16, v: &[u8]| {
        let mut b = tag.to_le_bytes().to_vec();
        b.extend((v.len() as u16).to_le_bytes());
        b.extend(v);
        b
    };
    let mut fc = tl(9, &[&[0u8; 4][..], &end.to_le_bytes()].concat());
    let mut range = 12u32.to_le_bytes().to_vec();
    range.extend(0u32.to_le_bytes());
    range.extend(1u16.to_le_bytes());
    range.extend(0u16.to_le_bytes());
    range.extend((x as u32).to_le_bytes());
    fc.extend(tl(1, &range));
    // The tail fills the block; its crc covers the tags and the tail's tid.
    fc.extend(8u16.to_le_bytes());
    fc.extend(((d.bs - fc.len() - 2) as u16).to_le_bytes());
    fc.extend(end.to_le_bytes());
    let crc = !crc32c::crc32c_append(!0, &fc);
    fc.extend(crc.to_le_bytes());
    let at = journal_block(&d.img, maxlen - nfc + 1) * bs;
    write_at(&d.img, at, &fc);
    let sha = crate::common::sha256(&d.img);
    let faithful = dir.join("faithful.raw");
    expect(&[&"-r", &d.img, &faithful], 0);
    assert_eq!(
        block_at(&faithful, x, d.bs),
        pattern(d.bs, 5),
        "the named block is copied"
    );
    let replayed = dir.join("replayed.raw");
    let o = expect(&[&"-r", &"--replay", &d.img, &replayed], 0);
    assert!(
        stderr(&o).contains("3 fast-commit tags were replayed"),
        "{}",
        stderr(&o)
    );
    // The oracle was replayed before FAST_COMMIT was set: the journal superblock differs in
    // s_feature_incompat alone.
    let bad = differing(&replayed, &d.oracle, false, d.bs);
    assert!(bad.iter().all(|&b| b == jsb / bs), "blocks {bad:?} differ");
    let (mut ours, theirs) = (
        block_at(&replayed, jsb / bs, d.bs),
        block_at(&d.oracle, jsb / bs, d.bs),
    );
    ours[0x28..0x2C].copy_from_slice(&theirs[0x28..0x2C]);
    assert!(
        ours == theirs,
        "the journal superblock differs beyond s_feature_incompat"
    );
    // A bad tail checksum: the kernel's recovery fails; the block journal is still replayed.
    write_at(&d.img, at + fc.len() as u64 - 4, &(!crc).to_le_bytes());
    let o = run(&[&"-r", &"--replay", &d.img, &replayed]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the kernel's recovery fails"),
        "{}",
        stderr(&o)
    );
    let bad = differing(&replayed, &d.oracle, false, d.bs);
    assert!(bad.iter().all(|&b| b == jsb / bs), "blocks {bad:?} differ");
    write_at(&d.img, at + fc.len() as u64 - 4, &crc.to_le_bytes());
    assert_eq!(crate::common::sha256(&d.img), sha);
}

#[test]
fn an_external_journal_is_read_from_journal_dev() {
    if unavailable() {
        return;
    }
    let dir = scratch("journal-external");
    let jd = dir.join("jd.img");
    let o = sh(
        "mke2fs",
        &[
            &"-q",
            &"-F",
            &"-O",
            &"journal_dev",
            &"-b",
            &"4096",
            &jd,
            &"8M",
        ],
    );
    assert_eq!(code(&o), 0);
    let img = dir.join("fs.img");
    let o = sh(
        "mke2fs",
        &[
            &"-q",
            &"-F",
            &"-t",
            &"ext4",
            &"-O",
            &"^has_journal",
            &"-b",
            &"4096",
            &img,
            &"64M",
        ],
    );
    assert_eq!(code(&o), 0);
    let uuid = crate::common::fs_uuid(&jd);
    crate::common::debugfs_w(
        &img,
        &[&format!("ssv journal_uuid {uuid}"), "feature has_journal"],
    );
    let old = dir.join("old.bin");
    std::fs::write(&old, pattern(30_000, 7)).unwrap();
    crate::common::debugfs_w(&img, &[&format!("write {} /old.bin", old.display())]);
    let jo = format!("-f {}", jd.display());
    let d = make_dirty(&img, &jo, "/newdir", "/old.bin", Some(&jd));
    let jd_sha = crate::common::sha256(&jd);
    // Not given: --replay warns and exports as on disk.
    let out = dir.join("out.raw");
    let o = run(&[&"-r", &"--replay", &img, &out]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("--journal-dev"), "{}", stderr(&o));
    // Given: the replayed state.
    expect(
        &[&"-r", &"-d", &"--replay", &"--journal-dev", &jd, &img, &out],
        0,
    );
    assert!(differing(&out, &d.oracle, true, d.bs).is_empty());
    assert_eq!(super::cat(&out, &d.new_path), d.new_file);
    // OUT must not be the journal device.
    let o = run(&[&"-r", &"--journal-dev", &jd, &img, &jd]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    // A filesystem whose journal is internal: --journal-dev is not used, and a note says so.
    let internal = dir.join("internal.img");
    let o = sh(
        "mke2fs",
        &[
            &"-q", &"-F", &"-t", &"ext4", &"-b", &"4096", &internal, &"32M",
        ],
    );
    assert_eq!(code(&o), 0);
    let o = expect(&[&"-r", &"--journal-dev", &jd, &internal, &out], 0);
    assert!(
        stderr(&o).contains("--journal-dev was not used"),
        "{}",
        stderr(&o)
    );
    d.assert_unchanged();
    assert_eq!(
        crate::common::sha256(&jd),
        jd_sha,
        "the journal device was written"
    );
}

#[test]
fn an_unusable_primary_superblock_falls_back_to_a_backup() {
    if unavailable() {
        return;
    }
    let dir = scratch("journal-sb-fallback");
    let img = dir.join("fs.img");
    let o = sh(
        "mke2fs",
        &[&"-q", &"-F", &"-t", &"ext4", &"-b", &"1024", &img, &"32M"],
    );
    assert_eq!(code(&o), 0);
    let file = dir.join("f.bin");
    std::fs::write(&file, pattern(50_000, 3)).unwrap();
    crate::common::debugfs_w(&img, &[&format!("write {} /f.bin", file.display())]);
    let bs = 1024u64;
    write_at(&img, 1024, &[0u8; 1024]);
    let sha = crate::common::sha256(&img);
    let auto = dir.join("auto.raw");
    let o = run(&[&"-r", &img, &auto]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("primary superblock"), "{}", stderr(&o));
    let backup = 8193;
    let forced = dir.join("forced.raw");
    let o = run(&[
        &"-r",
        &"-b",
        &backup.to_string(),
        &"-B",
        &bs.to_string(),
        &img,
        &forced,
    ]);
    assert!(code(&o) == 0 || code(&o) == 3, "{}", stderr(&o));
    assert_eq!(
        std::fs::read(&auto).unwrap(),
        std::fs::read(&forced).unwrap()
    );
    assert_eq!(
        block_at(&auto, 1024 / bs, bs as usize),
        block_at(&img, 1024 / bs, bs as usize)
    );
    assert_eq!(crate::common::sha256(&img), sha);
}

//! The checksum report (`--json` `checksums`): every metadata checksum the export meets is
//! verified and counted, and each bad one is listed (kind, block, inode) and warned about, so
//! the export exits 3.
//! - clean images of the fixture matrix report no bad checksum, and verify some where the
//!   filesystem has checksums (none where it has none);
//! - one byte flipped in each kind of checksummed block is reported with that kind, block and
//!   inode, and `e2fsck -fn` complains about the same image;
//! - a group descriptor that fails its checksum is not trusted for BLOCK_UNINIT and
//!   INODE_UNINIT: the group's bitmaps and whole inode table are copied;
//! - the log blocks of a journal that needs recovery (CSUM_V3) are counted, a bad descriptor
//!   is listed (once: the recovery's warning names it);
//! - e2fsprogs corpus images with bad checksums report them.

use crate::common::*;
use serde_json::Value;
use std::path::Path;

/// Exports `img` with `-Q --json`; returns the exit status and the JSON document.
fn export(img: &Path, out: &Path, extra: &[&str]) -> (i32, Value) {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"-Q", &"--json"];
    for a in extra {
        args.push(a);
    }
    args.push(&img);
    args.push(&out);
    let o = run(&args);
    let c = code(&o);
    assert!(
        c == 0 || c == 3,
        "{}: exit {c}: {}",
        img.display(),
        stderr(&o)
    );
    let _ = std::fs::remove_file(out);
    (c, serde_json::from_slice(&o.stdout).unwrap())
}

/// The `checksums` member's bad list as (kind, block, inode).
fn bad(doc: &Value) -> Vec<(String, u64, Option<u64>)> {
    doc["checksums"]["bad"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["kind"].as_str().unwrap().to_string(),
                b["block"].as_u64().unwrap(),
                b["inode"].as_u64(),
            )
        })
        .collect()
}

/// Verified checksums of `kind`.
fn verified(doc: &Value, kind: &str) -> u64 {
    doc["checksums"]["by_kind"][kind]["verified"]
        .as_u64()
        .unwrap_or(0)
}

/// XORs the byte at `offset` of block `block` of `img` with 0x55.
fn flip(img: &Path, bs: u64, block: u64, offset: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let at = block * bs + offset;
    let mut b = [0u8];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x55]).unwrap();
}

/// `e2fsck -fn` output (stdout and stderr).
fn fsck_text(img: &Path) -> String {
    let o = sh("e2fsck", &[&"-fn", &img]);
    format!("{}{}", stdout(&o), stderr(&o))
}

/// `debugfs -R CMD` output.
fn debugfs(img: &Path, cmd: &str) -> String {
    stdout(&sh("debugfs", &[&"-R", &cmd, &img]))
}

/// The first block of `inode`'s extents (debugfs `stat`: "EXTENTS:" then "(0-N):B-...").
fn first_block(img: &Path, inode: &str) -> u64 {
    let stat = debugfs(img, &format!("stat {inode}"));
    let extents = &stat[stat.find("EXTENTS:").expect("an extent-mapped inode")..];
    number_after(extents, "):")
}

/// The first number after `key` in `text`.
fn number_after(text: &str, key: &str) -> u64 {
    let at = text
        .find(key)
        .unwrap_or_else(|| panic!("no {key:?} in {text}"))
        + key.len();
    let digits: String = text[at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap()
}

#[test]
fn clean_matrix_images_report_no_bad_checksum() {
    if skip() {
        return;
    }
    // (fixture, what it has: "csum" metadata_csum, "gdt" gdt_csum only, "none")
    let cases = [
        ("ext4_default_4k", "csum"),
        ("ext4_debian_4k", "csum"),
        ("ext4_32bit", "csum"),
        ("ext4_inode128", "csum"),
        ("ext4_1k", "csum"),
        ("ext4_64k_block", "csum"),
        ("ext4_bigalloc_1k", "csum"),
        ("ext4_meta_bg", "csum"),
        ("ext4_noextent", "csum"),
        ("ext4_mmp", "csum"),
        ("ext4_default_4k_htree", "csum"),
        ("ext4_inline", "csum"),
        ("ext4_uninit_bg_nocsum", "gdt"),
        ("ext4_no_gdtcsum", "none"),
        ("ext3_4k", "none"),
        ("ext2_1k", "none"),
    ];
    let names: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let fx = fixtures(&names);
    let dir = scratch("csum-clean");
    for (name, has) in cases {
        let (c, doc) = export(&fx[name].path, &dir.join("out.qcow2"), &[]);
        let sums = &doc["checksums"];
        assert_eq!(c, 0, "{name}: {doc}");
        assert_eq!(sums["failed"], 0, "{name}: {sums}");
        assert!(bad(&doc).is_empty(), "{name}: {sums}");
        match has {
            "csum" => {
                for kind in ["superblock", "group_descriptor", "inode", "dir_leaf"] {
                    assert!(
                        verified(&doc, kind) > 0,
                        "{name}: no {kind} verified: {sums}"
                    );
                }
                assert!(verified(&doc, "block_bitmap") > 0, "{name}: {sums}");
            }
            "gdt" => {
                let kinds: Vec<&String> = sums["by_kind"].as_object().unwrap().keys().collect();
                assert_eq!(kinds, ["group_descriptor"], "{name}: {sums}");
                assert!(verified(&doc, "group_descriptor") > 0);
            }
            _ => assert_eq!(sums["verified"], 0, "{name}: {sums}"),
        }
    }
    let htree = export(&fx["ext4_default_4k_htree"].path, &dir.join("h.qcow2"), &[]).1;
    assert!(verified(&htree, "htree_node") > 0, "{}", htree["checksums"]);
    let mmp = export(&fx["ext4_mmp"].path, &dir.join("m.qcow2"), &[]).1;
    assert_eq!(verified(&mmp, "mmp"), 1, "{}", mmp["checksums"]);
    let orphan = export(&fx["ext4_default_4k"].path, &dir.join("o.qcow2"), &[]).1;
    assert!(
        verified(&orphan, "orphan_block") > 0,
        "{}",
        orphan["checksums"]
    );
}

/// One corruption: its name, the block and byte offset flipped, the expected (kind, block,
/// inode) and a phrase of `e2fsck -fn`'s complaint.
struct Flip {
    name: &'static str,
    block: u64,
    offset: u64,
    inode: Option<u64>,
    kind: &'static str,
    fsck: &'static str,
}

/// Where the structures of the htree fixture are (found with dumpe2fs and debugfs).
fn flips(img: &Path) -> Vec<Flip> {
    let group0 = stdout(&sh("dumpe2fs", &[&img]));
    let bbitmap = number_after(&group0, "Block bitmap at");
    let ibitmap = number_after(&group0, "Inode bitmap at");
    let itable = number_after(&group0, "Inode table at");
    let big = number_after(&debugfs(img, "stat /xattr/big300k.bin"), "Inode:");
    let xattr = number_after(&debugfs(img, "stat /xattr/big300k.bin"), "File ACL:");
    let many = number_after(&debugfs(img, "stat /many"), "Inode:");
    let many_blocks: Vec<u64> = debugfs(img, "blocks /many")
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    let frag = number_after(&debugfs(img, "stat /sparse/frag128.bin"), "Inode:");
    let etb = number_after(&debugfs(img, "stat /sparse/frag128.bin"), "(ETB0):");
    let orphan_block: u64 = debugfs(img, "blocks <12>")
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    let (ipb, isz) = (4096 / 256, 256);
    let (big_block, big_off) = (itable + (big - 1) / ipb, (big - 1) % ipb * isz);
    vec![
        Flip {
            name: "block bitmap",
            block: bbitmap,
            offset: 100,
            inode: None,
            kind: "block_bitmap",
            fsck: "Block bitmap differences",
        },
        Flip {
            name: "inode bitmap",
            block: ibitmap,
            offset: 10,
            inode: None,
            kind: "inode_bitmap",
            fsck: "Inode bitmap differences",
        },
        Flip {
            name: "inode",
            block: big_block,
            offset: big_off + 0x10,
            inode: Some(big),
            kind: "inode",
            fsck: "checksum does not match inode",
        },
        Flip {
            name: "extent block",
            block: etb,
            offset: 30,
            inode: Some(frag),
            kind: "extent_block",
            fsck: "checksum does not match extent",
        },
        Flip {
            name: "dir leaf",
            block: many_blocks[1],
            offset: 20,
            inode: Some(many),
            kind: "dir_leaf",
            fsck: "fails checksum",
        },
        Flip {
            name: "htree node",
            block: many_blocks[0],
            offset: 40,
            inode: Some(many),
            kind: "htree_node",
            fsck: "root node fails checksum",
        },
        Flip {
            name: "xattr block",
            block: xattr,
            offset: 100,
            inode: Some(big),
            kind: "xattr_block",
            fsck: "checksum does not match block",
        },
        Flip {
            name: "group descriptor",
            block: 1,
            offset: 12,
            inode: None,
            kind: "group_descriptor",
            fsck: "descriptor checksums are invalid",
        },
        Flip {
            name: "orphan file block",
            block: orphan_block,
            offset: 4094,
            inode: Some(12),
            kind: "orphan_block",
            fsck: "Orphan file (inode 12) block",
        },
    ]
}

#[test]
fn a_flipped_byte_is_reported_with_its_kind_block_and_inode() {
    if skip() {
        return;
    }
    let fx = fixtures(&["ext4_default_4k_htree"]);
    let clean = &fx["ext4_default_4k_htree"].path;
    let dir = scratch("csum-flip");
    for f in flips(clean) {
        let img = dir.join("img");
        sparse_copy(clean, &img);
        flip(&img, 4096, f.block, f.offset);
        let fsck = fsck_text(&img);
        assert!(
            fsck.contains(f.fsck),
            "{}: e2fsck -fn says:\n{fsck}",
            f.name
        );
        let (c, doc) = export(&img, &dir.join("out.qcow2"), &[]);
        assert_eq!(c, 3, "{}: {doc}", f.name);
        assert_eq!(
            bad(&doc),
            vec![(f.kind.to_string(), f.block, f.inode)],
            "{}",
            f.name
        );
        assert_eq!(doc["checksums"]["failed"], 1, "{}", f.name);
        let warned = doc["warnings"].as_array().unwrap().iter().any(|w| {
            w["block"].as_u64() == Some(f.block)
                && w["inode"].as_u64() == f.inode
                && w["reason"].as_str().unwrap().contains("checksum")
        });
        assert!(
            warned,
            "{}: no warning names the block: {}",
            f.name, doc["warnings"]
        );
    }
}

#[test]
fn bad_journal_superblock_and_mmp_checksums_are_reported() {
    if skip() {
        return;
    }
    let fx = fixtures(&["ext4_default_4k", "ext4_mmp"]);
    let dir = scratch("csum-jsb-mmp");
    let img = dir.join("j.img");
    sparse_copy(&fx["ext4_default_4k"].path, &img);
    debugfs_w(&img, &["jo -c", "jc"]); // the journal gets CSUM_V3
    let jsb = first_block(&img, "<8>");
    let (c, doc) = export(&img, &dir.join("o.qcow2"), &[]);
    assert_eq!((c, verified(&doc, "journal_superblock")), (0, 1), "{doc}");
    flip(&img, 4096, jsb, 0x300);
    assert!(fsck_text(&img).contains("Journal superblock is corrupt"));
    let (c, doc) = export(&img, &dir.join("o.qcow2"), &[]);
    assert_eq!(c, 3);
    assert_eq!(bad(&doc), vec![("journal_superblock".into(), jsb, Some(8))]);
    // Named once: by the journal lookup's warning, not again by the checksum report.
    let named = doc["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["reason"].as_str().unwrap().contains("s_checksum"));
    assert_eq!(named.count(), 1, "{}", doc["warnings"]);

    let img = dir.join("m.img");
    sparse_copy(&fx["ext4_mmp"].path, &img);
    let mmp = number_after(
        &stdout(&sh("dumpe2fs", &[&"-h", &img])),
        "MMP block number:",
    );
    flip(&img, 4096, mmp, 0x100);
    assert!(fsck_text(&img).contains("MMP block checksum does not match"));
    let (c, doc) = export(&img, &dir.join("o.qcow2"), &[]);
    assert_eq!(c, 3);
    assert_eq!(bad(&doc), vec![("mmp".into(), mmp, None)]);
}

#[test]
fn journal_log_checksums_are_counted_and_a_bad_descriptor_listed() {
    if skip() {
        return;
    }
    let fx = fixtures(&["ext4_default_4k"]);
    let dir = scratch("csum-log");
    let img = dir.join("d.img");
    sparse_copy(&fx["ext4_default_4k"].path, &img);
    let payload = dir.join("payload.bin");
    std::fs::write(&payload, vec![0x5Au8; 8192]).unwrap();
    let p = payload.display();
    // T1: descriptor + commit; T2: revoke + commit; T3: a descriptor never committed.
    let cmds = [
        "jo -c".to_string(),
        format!("jw -b 3000,3001 {p}"),
        "jw -r 3000".to_string(),
        format!("jw -b 3002 -c {p}"),
        "jc".to_string(),
    ];
    debugfs_w(&img, &cmds.iter().map(String::as_str).collect::<Vec<_>>());
    for extra in [&[][..], &["--replay"][..]] {
        let (c, doc) = export(&img, &dir.join("o.qcow2"), extra);
        assert_eq!(c, 0, "{extra:?}: {doc}");
        for kind in ["journal_descriptor", "journal_commit", "journal_revoke"] {
            assert!(
                verified(&doc, kind) > 0,
                "{extra:?}: no {kind}: {}",
                doc["checksums"]
            );
        }
    }
    // Journal block 1 (the first descriptor) is the block after the journal superblock.
    let jsb = first_block(&img, "<8>");
    flip(&img, 4096, jsb + 1, 200);
    let (c, doc) = export(&img, &dir.join("o.qcow2"), &[]);
    assert_eq!(c, 3);
    assert_eq!(
        bad(&doc),
        vec![("journal_descriptor".into(), jsb + 1, Some(8))]
    );
}

#[test]
fn a_descriptor_failing_its_checksum_is_not_trusted_for_lazy_init() {
    if skip() {
        return;
    }
    let fx = fixtures(&["ext4_meta_bg"]);
    let clean = &fx["ext4_meta_bg"].path;
    let dir = scratch("csum-uninit");
    let (_, before) = export(clean, &dir.join("o.qcow2"), &[]);
    // A group flagged BLOCK_UNINIT and INODE_UNINIT gets a flipped byte in its descriptor's
    // free inodes count (byte 0x0E); with meta_bg, its descriptor block is the first block of
    // its meta group's first group (64 descriptors of 64 bytes a block).
    let dump = stdout(&sh("dumpe2fs", &[&clean]));
    let line = dump
        .lines()
        .find(|l| l.starts_with("Group ") && l.contains("INODE_UNINIT, BLOCK_UNINIT"))
        .unwrap();
    let g = number_after(line, "Group ");
    let (dpb, ds) = (4096 / 64, 64);
    let meta = &dump[dump.find(&format!("\nGroup {}:", g - g % dpb)).unwrap()..];
    let gdt_block = number_after(meta, "Group descriptor at");
    let img = dir.join("u.img");
    sparse_copy(clean, &img);
    flip(&img, 4096, gdt_block, (g % dpb) * ds + 0x0E);
    assert!(fsck_text(&img).contains("descriptor checksums are invalid"));
    let (c, after) = export(&img, &dir.join("o.qcow2"), &[]);
    assert_eq!(c, 3);
    assert_eq!(
        bad(&after),
        vec![("group_descriptor".into(), gdt_block, None)]
    );
    let copied = |d: &Value, class: &str| d["blocks_copied"][class].as_u64().unwrap_or(0);
    let itable = number_after(
        &stdout(&sh("dumpe2fs", &[&"-h", &img])),
        "Inode blocks per group:",
    );
    assert_eq!(
        copied(&after, "block_bitmaps"),
        copied(&before, "block_bitmaps") + 1
    );
    assert_eq!(
        copied(&after, "inode_bitmaps"),
        copied(&before, "inode_bitmaps") + 1
    );
    assert_eq!(
        copied(&after, "inode_tables"),
        copied(&before, "inode_tables") + itable
    );
}

#[test]
fn corpus_images_with_bad_checksums_report_them() {
    let Some(corpus) = shared_corpus() else {
        return;
    };
    if skip() {
        return;
    }
    let dir = scratch("csum-corpus");
    // (image, bad checksums expected among the listed: kind, block, inode), each also named by
    // `e2fsck -fn` (see the phrase).
    let cases: [(&str, &[(&str, u64, Option<u64>)], &str); 7] = [
        (
            "f_dir_bad_csum",
            &[("dir_leaf", 1090, Some(12))],
            "directory passes checks but fails checksum",
        ),
        (
            "f_ea_bad_csum",
            &[
                ("xattr_block", 1075, Some(13)),
                ("xattr_block", 1076, Some(14)),
            ],
            "checksum does not match block",
        ),
        (
            "f_extent_leaf_bad_extent",
            &[("extent_block", 1604, Some(12))],
            "checksum does not match extent",
        ),
        (
            "f_bad_bmap_csum",
            &[("block_bitmap", 2, None), ("inode_bitmap", 18, None)],
            "bitmap does not match checksum",
        ),
        (
            "f_uninit_checksum_bad",
            &[("group_descriptor", 2, None)],
            "descriptor checksums are invalid",
        ),
        (
            "m_mmp_bad_csum",
            &[("mmp", 8, None)],
            "MMP block checksum does not match",
        ),
        (
            "j_corrupt_sb_csum",
            &[("journal_superblock", 32, Some(8))],
            "journal superblock is corrupt",
        ),
    ];
    for (name, want, phrase) in cases {
        let img = gunzip_to(&corpus.join(format!("{name}.img.gz")), &dir);
        assert!(
            fsck_text(&img).contains(phrase),
            "{name}: e2fsck -fn does not say {phrase:?}"
        );
        let (c, doc) = export(&img, &dir.join("o.qcow2"), &[]);
        assert_eq!(c, 3, "{name}");
        let got = bad(&doc);
        for (kind, block, inode) in want {
            let w = (kind.to_string(), *block, *inode);
            assert!(got.contains(&w), "{name}: {w:?} not in {got:?}");
        }
        let failed = doc["checksums"]["failed"].as_u64().unwrap();
        assert_eq!(
            failed,
            got.len() as u64,
            "{name}: few enough to be all listed"
        );
    }
}

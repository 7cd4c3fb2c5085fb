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

/// A bad checksum as the report lists it: kind, block, inode.
type Bad = (&'static str, u64, Option<u64>);

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
    // (fixture, what it has: "csum" metadata_csum, "gdt" gdt_csum only, "none"; a kind it
    // has besides the common ones)
    let cases = [
        ("ext4_default_4k", "csum", "orphan_block"),
        ("ext4_debian_4k", "csum", "xattr_block"),
        ("ext4_32bit", "csum", "extent_block"),
        ("ext4_inode128", "csum", "xattr_block"),
        ("ext4_1k", "csum", "extent_block"),
        ("ext4_64k_block", "csum", "orphan_block"),
        ("ext4_bigalloc_1k", "csum", "extent_block"),
        ("ext4_meta_bg", "csum", "inode_bitmap"),
        ("ext4_noextent", "csum", "orphan_block"),
        ("ext4_mmp", "csum", "mmp"),
        ("ext4_default_4k_htree", "csum", "htree_node"),
        ("ext4_inline", "csum", "xattr_block"),
        ("ext4_uninit_bg_nocsum", "gdt", "group_descriptor"),
        ("ext4_no_gdtcsum", "none", ""),
        ("ext3_4k", "none", ""),
        ("ext2_1k", "none", ""),
    ];
    let names: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let fx = fixtures(&names);
    let dir = scratch("csum-clean");
    for (name, has, also) in cases {
        let (c, doc) = export(&fx[name].path, &dir.join("out.qcow2"), &[]);
        let sums = &doc["checksums"];
        assert_eq!(c, 0, "{name}: {doc}");
        assert_eq!(sums["failed"], 0, "{name}: {sums}");
        assert!(bad(&doc).is_empty(), "{name}: {sums}");
        let kinds: Vec<&String> = sums["by_kind"].as_object().unwrap().keys().collect();
        match has {
            "csum" => {
                let common = ["superblock", "group_descriptor", "block_bitmap", "inode"];
                for kind in common.iter().chain(&["dir_leaf", also]) {
                    assert!(verified(&doc, kind) > 0, "{name}: no {kind}: {sums}");
                }
            }
            "gdt" => assert_eq!(kinds, [also], "{name}: {sums}"),
            _ => assert_eq!(sums["verified"], 0, "{name}: {sums}"),
        }
    }
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
    let at = Places {
        bbitmap,
        ibitmap,
        big: (big, big_block, big_off, xattr),
        many: (many, many_blocks[0], many_blocks[1]),
        frag: (frag, etb),
        orphan_block,
    };
    table(&at)
}

/// The blocks [`flips`] found.
struct Places {
    bbitmap: u64,
    ibitmap: u64,
    /// /xattr/big300k.bin: inode, its inode-table block and offset, its xattr block.
    big: (u64, u64, u64, u64),
    /// /many: inode, htree root block, a leaf block.
    many: (u64, u64, u64),
    /// /sparse/frag128.bin: inode, extent leaf block.
    frag: (u64, u64),
    orphan_block: u64,
}

/// One flip per kind (a table: one line each).
#[rustfmt::skip]
fn table(p: &Places) -> Vec<Flip> {
    let f = |name, block, offset, inode, kind, fsck| Flip { name, block, offset, inode, kind, fsck };
    let (big, many, frag) = (p.big, p.many, p.frag);
    vec![
        f("block bitmap", p.bbitmap, 100, None, "block_bitmap", "Block bitmap differences"),
        f("inode bitmap", p.ibitmap, 10, None, "inode_bitmap", "Inode bitmap differences"),
        f("inode", big.1, big.2 + 0x10, Some(big.0), "inode", "checksum does not match inode"),
        f("extent", frag.1, 30, Some(frag.0), "extent_block", "does not match extent"),
        f("dir leaf", many.2, 20, Some(many.0), "dir_leaf", "fails checksum"),
        f("htree", many.1, 40, Some(many.0), "htree_node", "root node fails checksum"),
        f("xattr", big.3, 100, Some(big.0), "xattr_block", "checksum does not match block"),
        f("descriptor", 1, 12, None, "group_descriptor", "checksums are invalid"),
        f("orphan", p.orphan_block, 4094, Some(12), "orphan_block", "Orphan file (inode 12)"),
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

/// Corpus images with bad checksums: the image, bad checksums expected among those listed
/// (kind, block, inode), and the phrase of `e2fsck -fn` that names them (a table: one line
/// each).
#[rustfmt::skip]
fn corpus_cases() -> Vec<(&'static str, Vec<Bad>, &'static str)> {
    vec![
        ("f_dir_bad_csum", vec![("dir_leaf", 1090, Some(12))], "directory passes checks but fails checksum"),
        ("f_ea_bad_csum", vec![("xattr_block", 1075, Some(13)), ("xattr_block", 1076, Some(14))], "checksum does not match block"),
        ("f_extent_leaf_bad_extent", vec![("extent_block", 1604, Some(12))], "checksum does not match extent"),
        ("f_bad_bmap_csum", vec![("block_bitmap", 2, None), ("inode_bitmap", 18, None)], "bitmap does not match checksum"),
        ("f_uninit_checksum_bad", vec![("group_descriptor", 2, None)], "descriptor checksums are invalid"),
        ("m_mmp_bad_csum", vec![("mmp", 8, None)], "MMP block checksum does not match"),
        ("j_corrupt_sb_csum", vec![("journal_superblock", 32, Some(8))], "journal superblock is corrupt"),
    ]
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
    for (name, want, phrase) in corpus_cases() {
        let img = gunzip_to(&corpus.join(format!("{name}.img.gz")), &dir);
        assert!(
            fsck_text(&img).contains(phrase),
            "{name}: e2fsck -fn does not say {phrase:?}"
        );
        let (c, doc) = export(&img, &dir.join("o.qcow2"), &[]);
        assert_eq!(c, 3, "{name}");
        let got = bad(&doc);
        for (kind, block, inode) in want {
            let w = (kind.to_string(), block, inode);
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

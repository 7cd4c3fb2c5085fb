//! Deltas for the apply tests: `make_delta` runs `e2image-rs --base`; `oracle_delta` builds
//! the same delta without `e2image-rs -x`/`--base`, by the definition in
//! `src/delta_record.rs`, with qemu's tools and this module's own record encoder:
//!
//! 1. FROM's and TO's copy sets as raw images (`e2image-rs -r [-d]`: each state's copied
//!    blocks, zeros elsewhere) and as block lists (`-Q` with one block per cluster: every
//!    copied block is mapped, as data or as a zero cluster);
//! 2. the clusters where the two raw images differ, holding TO's bytes: an empty QCOW2
//!    overlay over TO's raw image, rebased (safe mode) onto FROM's, then cut loose from
//!    its backing file (`qemu-img rebase -u -b ''`);
//! 3. clusters of zeros become zero clusters, and blocks of FROM's copy set that TO's does not
//!    hold (the discards) become zero clusters too (`qemu-io write -z`);
//! 4. the record: fingerprints of both superblocks and group descriptor tables, the SHA-256 of
//!    FROM's bytes on the replaced clusters, inserted as the header extension "e2id".

use crate::common::*;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::Path;

/// Header extension type of the delta record ("e2id").
const EXT_DELTA_RECORD: u32 = 0x6532_6964;

/// A state's superblock fields the builder needs.
pub struct Geometry {
    pub block_size: u64,
    pub blocks_count: u64,
    pub uuid: [u8; 16],
    /// Blocks of the primary group descriptor table, in order.
    pub desc_blocks: Vec<u64>,
}

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()))
}

/// The geometry of the filesystem in `img` (no meta_bg: the test images have none).
pub fn geometry(img: &Path) -> Geometry {
    let sb = &read_range(img, 1024, 1024);
    let block_size = 1024u64 << le32(sb, 24);
    let incompat = le32(sb, 96);
    assert_eq!(
        incompat & 0x10,
        0,
        "meta_bg images are not supported by this builder"
    );
    let is64 = incompat & 0x80 != 0;
    let blocks_count = le32(sb, 4) | if is64 { le32(sb, 0x150) << 32 } else { 0 };
    let first = le32(sb, 20);
    let groups = (blocks_count - first).div_ceil(le32(sb, 32));
    let desc_size = if is64 {
        u64::from(u16::from_le_bytes([sb[254], sb[255]]))
    } else {
        32
    };
    let n = (groups * desc_size).div_ceil(block_size);
    Geometry {
        block_size,
        blocks_count,
        uuid: sb[104..120].try_into().unwrap(),
        desc_blocks: (first + 1..first + 1 + n).collect(),
    }
}

/// `len` bytes of `path` at byte `at` (zeros past its end).
pub fn read_range(path: &Path, at: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut b = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match f.read_at(&mut b[done..], at + done as u64).unwrap() {
            0 => break,
            k => done += k,
        }
    }
    b
}

/// SHA-256 of the superblock and the group descriptor blocks of the state in `img`.
pub fn fingerprint(img: &Path) -> [u8; 32] {
    let g = geometry(img);
    let mut h = Sha256::new();
    h.update(read_range(img, 1024, 1024));
    for b in &g.desc_blocks {
        h.update(read_range(img, b * g.block_size, g.block_size as usize));
    }
    h.finalize().into()
}

/// The ranges (start, length, zero) that `qemu-img map` reports as present in `img`.
pub fn qemu_map(img: &Path, format: &str) -> Vec<(u64, u64, bool)> {
    let o = sh(
        "qemu-img",
        &[&"map", &"-f", &format, &"--output=json", &img],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["present"].as_bool() == Some(true))
        .map(|e| {
            let n = |k: &str| e[k].as_u64().unwrap();
            (n("start"), n("length"), e["zero"].as_bool() == Some(true))
        })
        .collect()
}

/// The blocks of a state's copy set (`-d`: with file data).
pub fn copy_set(img: &Path, data: bool, dir: &Path) -> BTreeSet<u64> {
    let bs = geometry(img).block_size;
    let q = dir.join("copyset.qcow2");
    let _ = std::fs::remove_file(&q);
    let cs = bs.to_string();
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"-Q", &"--cluster-size", &cs];
    if data {
        args.push(&"-d");
    }
    args.push(&img);
    args.push(&q);
    expect(&args, 0);
    let mut set = BTreeSet::new();
    for (start, len, _) in qemu_map(&q, "qcow2") {
        set.extend(start / bs..(start + len) / bs);
    }
    set
}

/// The state's copy set as a raw image (its copied blocks, zeros elsewhere).
fn copy_image(img: &Path, data: bool, out: &Path) {
    let _ = std::fs::remove_file(out);
    if data {
        expect(&[&"-r", &"-d", &img, &out], 0);
    } else {
        expect(&[&"-r", &img, &out], 0);
    }
}

/// The record (`src/delta_record.rs` layout, big-endian).
#[allow(clippy::too_many_arguments)]
fn encode_record(
    flags: u32,
    g: &Geometry,
    from_fp: &[u8; 32],
    to_fp: &[u8; 32],
    digest: &[u8; 32],
    replaced: u64,
    names: (&str, &str),
) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&1u32.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&g.uuid);
    b.extend_from_slice(&(g.block_size as u32).to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&g.blocks_count.to_be_bytes());
    b.extend_from_slice(from_fp);
    b.extend_from_slice(to_fp);
    b.extend_from_slice(digest);
    b.extend_from_slice(&replaced.to_be_bytes());
    b.extend_from_slice(&(names.0.len() as u16).to_be_bytes());
    b.extend_from_slice(&(names.1.len() as u16).to_be_bytes());
    b.extend_from_slice(names.0.as_bytes());
    b.extend_from_slice(names.1.as_bytes());
    b
}

/// Inserts header extension (`ext_type`, `data`) before the end marker of the QCOW2 v3
/// header of `img` (which must have no backing file name after its extensions).
pub fn add_extension(img: &Path, ext_type: u32, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let mut head = vec![0u8; 4096];
    f.read_exact_at(&mut head, 0).unwrap();
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
    assert_eq!(be32(&head, 4), 3, "a v3 image");
    assert_eq!(&head[8..16], &[0u8; 8], "no backing file");
    let mut at = be32(&head, 100) as usize;
    while be32(&head, at) != 0 {
        at += 8 + (be32(&head, at + 4) as usize).div_ceil(8) * 8;
    }
    let mut ext = Vec::new();
    ext.extend_from_slice(&ext_type.to_be_bytes());
    ext.extend_from_slice(&(data.len() as u32).to_be_bytes());
    ext.extend_from_slice(data);
    ext.resize(8 + data.len().div_ceil(8) * 8, 0);
    ext.extend_from_slice(&[0u8; 8]);
    f.write_all_at(&ext, at as u64).unwrap();
}

/// A delta from state `from` to state `to` (image files of one filesystem), metadata only or
/// with file data, made by `e2image-rs -Q [-d] --base FROM TO OUT` with one block per cluster.
/// Returns the replaced blocks (allocated or zero clusters).
pub fn make_delta(from: &Path, to: &Path, data: bool, out: &Path) -> Vec<u64> {
    let bs = geometry(from).block_size;
    let _ = std::fs::remove_file(out);
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"-Q", &"--base", &from];
    if data {
        args.push(&"-d");
    }
    args.push(&to);
    args.push(&out);
    expect(&args, 0);
    let mut replaced = Vec::new();
    for (start, len, _) in qemu_map(out, "qcow2") {
        replaced.extend(start / bs..(start + len) / bs);
    }
    replaced
}

/// The same delta as `make_delta`, built independently of `e2image-rs -x`/`--base` (see the
/// module comment): the oracle the real deltas are checked against.
pub fn oracle_delta(from: &Path, to: &Path, data: bool, out: &Path) -> Vec<u64> {
    let dir = out.parent().unwrap().join(format!(
        "{}.work",
        out.file_name().unwrap().to_string_lossy()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let g = geometry(from);
    let bs = g.block_size;
    let (fr, tr) = (dir.join("from.raw"), dir.join("to.raw"));
    copy_image(from, data, &fr);
    copy_image(to, data, &tr);
    let (from_set, to_set) = (copy_set(from, data, &dir), copy_set(to, data, &dir));
    let _ = std::fs::remove_file(out);
    let cs = format!("cluster_size={bs}");
    let ok = |o: std::process::Output| assert_eq!(code(&o), 0, "{}", stderr(&o));
    ok(sh(
        "qemu-img",
        &[
            &"create", &"-q", &"-f", &"qcow2", &"-o", &cs, &"-b", &tr, &"-F", &"raw", &out,
        ],
    ));
    ok(sh(
        "qemu-img",
        &[&"rebase", &"-f", &"qcow2", &"-b", &fr, &"-F", &"raw", &out],
    ));
    ok(sh(
        "qemu-img",
        &[&"rebase", &"-u", &"-f", &"qcow2", &"-b", &"", &out],
    ));
    let mut zero: Vec<u64> = Vec::new();
    let mut replaced = BTreeSet::new();
    for (start, len, z) in qemu_map(out, "qcow2") {
        for b in start / bs..(start + len) / bs {
            replaced.insert(b);
            if !z && read_range(&tr, b * bs, bs as usize).iter().all(|&x| x == 0) {
                zero.push(b);
            }
        }
    }
    for &b in from_set.difference(&to_set) {
        if replaced.insert(b) {
            zero.push(b);
        }
    }
    let cmds: Vec<String> = zero
        .iter()
        .map(|b| format!("write -q -z -u {} {bs}", b * bs))
        .collect();
    for chunk in cmds.chunks(200) {
        let mut c = std::process::Command::new("qemu-io");
        for cmd in chunk {
            c.arg("-c").arg(cmd);
        }
        ok(c.arg(out).output().unwrap());
    }
    let mut h = Sha256::new();
    for &b in replaced.iter().filter(|b| from_set.contains(b)) {
        h.update(b.to_be_bytes());
        h.update(read_range(&fr, b * bs, bs as usize));
    }
    let flags = 2 | 4 | u32::from(data);
    let names = (name_of(from), name_of(to));
    let record = encode_record(
        flags,
        &g,
        &fingerprint(from),
        &fingerprint(to),
        &h.finalize().into(),
        replaced.len() as u64,
        (&names.0, &names.1),
    );
    add_extension(out, EXT_DELTA_RECORD, &record);
    let _ = std::fs::remove_dir_all(&dir);
    replaced.into_iter().collect()
}

fn name_of(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

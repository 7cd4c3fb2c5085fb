//! [`Editor::open`]: what an image must be for the editor to change it, the committed
//! refcounts loaded into memory, and the leftovers of an interrupted edit truncated.
//!
//! Design: the checks need no L2 table. Every metadata cluster the header, the snapshot table
//! and the L1 tables reveal (header, refcount table and blocks, snapshot table, L1 tables, L2
//! tables) is counted as §2.1 does; a stored refcount below that count would let the editor
//! hand out a live cluster as free, so it is refused, as is a refcount block whose refcount is
//! not exactly 1 (the copy-on-write of blocks frees the old ones). Data clusters are trusted.

use std::collections::{HashMap, HashSet};
use std::fs::File;

use super::{clusters_of, Blocks, Editor};
use crate::bytes::decode_be;
use crate::error::Error;
use crate::format::extension::EXT_BITMAPS;
use crate::format::header::{HEADER_SECTOR_BYTES, INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use crate::format::refcount::DEFAULT_REFCOUNT_ORDER;
use crate::format::table::{l1_entry_l2_offset, L1E_OFFSET_MASK};
use crate::reader::Reader;
use crate::writer::{RefcountChunks, Writer};

/// Reserved bits of a refcount table entry (0–8); a set bit is corruption.
const REFT_RESERVED_MASK: u64 = 0x1ff;
/// Autoclear bit 0: the bitmaps extension is consistent.
const AUTOCLEAR_BITMAPS: u64 = 1;

impl Editor {
    /// Opens an existing image for editing. `file` must be open read-write; the caller holds an
    /// exclusive lock for as long as the editor lives.
    ///
    /// Validates the header, the snapshot table, the refcount table and blocks (every block
    /// inside the file, refcount exactly 1) and every L1 table (entries' reserved bits,
    /// alignment, L2 tables inside the file), checks that no metadata cluster has a refcount
    /// below its number of references, and loads all refcounts into memory (2 bytes per
    /// cluster of the image). Bytes past the committed end (the last cluster whose refcount is
    /// not 0, + 1) are leftovers of an interrupted edit: they are truncated
    /// ([`Editor::leftover_bytes`]). Reads every L1 table once; no L2 table.
    ///
    /// Errors: [`Error::Unsupported`] for `refcount_order` other than 4, the dirty or corrupt
    /// bit, bitmaps, and what [`Reader::open`] refuses (backing file, encryption, external data
    /// file, extended L2, zstd, unknown incompatible bits); [`Error::Corrupt`] for invalid
    /// structures or refcounts lower than the metadata's references; [`Error::Limit`];
    /// [`Error::Io`].
    pub fn open(file: File) -> Result<Editor, Error> {
        let reader = Reader::open(clone(&file)?)?;
        check_editable(&reader)?;
        let (refblocks, blocks) = load_refcounts(&reader)?;
        let (uses, matching) = scan_metadata(&reader, &refblocks)?;
        let refcounts = RefcountChunks::over_image(reader.header().cluster_bits, blocks)?;
        check_metadata_refcounts(&refcounts, &uses, &refblocks, reader.cluster_size())?;
        let end = refcounts.allocated() << reader.header().cluster_bits;
        let leftover_bytes = reader.file_len().saturating_sub(end);
        let reader = if leftover_bytes > 0 {
            file.set_len(end).map_err(Error::io(
                "truncating the leftovers of an interrupted edit",
                end,
            ))?;
            Reader::open(clone(&file)?)?
        } else {
            reader
        };
        let sector = reader.read_bytes(0, HEADER_SECTOR_BYTES as u64, "the header sector")?;
        let writer = Writer::in_place(file, reader.header(), refcounts);
        Ok(Editor {
            reader,
            writer,
            sector,
            refblocks,
            matching,
            loaded: HashMap::new(),
            removed: Default::default(),
            leftover_bytes,
        })
    }
}

fn clone(file: &File) -> Result<File, Error> {
    file.try_clone()
        .map_err(Error::io("duplicating the file handle", 0))
}

/// Refuses what the reader accepts but the editor cannot change safely.
fn check_editable(r: &Reader) -> Result<(), Error> {
    let h = r.header();
    let refuse = |what: String| Err(Error::Unsupported(what));
    if h.refcount_order != DEFAULT_REFCOUNT_ORDER {
        return refuse(format!(
            "refcount_order {} ({}-bit refcounts): the editor needs 4 (16-bit)",
            h.refcount_order,
            1u64 << h.refcount_order.min(6)
        ));
    }
    if h.incompatible_features & INCOMPAT_DIRTY != 0 {
        return refuse(
            "dirty bit set (refcounts may be stale): repair with `qemu-img check -r all` first"
                .into(),
        );
    }
    if h.incompatible_features & INCOMPAT_CORRUPT != 0 {
        return refuse("image marked corrupt (incompatible bit 1)".into());
    }
    if h.autoclear_features & AUTOCLEAR_BITMAPS != 0 || r.header_extension(EXT_BITMAPS).is_some() {
        return refuse("persistent dirty bitmaps (bitmaps extension)".into());
    }
    Ok(())
}

/// Reads the refcount table and every refcount block: (block offsets, block counts). A block
/// of all zeros is kept as `None` (its offset stays in the first vector). Memory is bounded by
/// the file: each block is a distinct cluster covering clusters inside the file.
fn load_refcounts(r: &Reader) -> Result<(Vec<u64>, Blocks), Error> {
    let h = r.header();
    let c = r.cluster_size();
    // At most 8 MiB: the header's validation bounds refcount_table_clusters.
    let len = u64::from(h.refcount_table_clusters) * c;
    let table = r.read_bytes(h.refcount_table_offset, len, "refcount table")?;
    let mut offsets: Vec<u64> = decode_be(&table);
    while offsets.last() == Some(&0) {
        offsets.pop();
    }
    let file_clusters = r.file_len().div_ceil(c);
    let epb = c / 2;
    let mut seen = HashSet::new();
    let mut blocks = Vec::with_capacity(offsets.len());
    for (k, &e) in offsets.iter().enumerate() {
        let at = h.refcount_table_offset + 8 * k as u64;
        if e == 0 {
            blocks.push(None);
            continue;
        }
        if e & REFT_RESERVED_MASK != 0 || !e.is_multiple_of(c) {
            let what = format!("refcount table entry {e:#x}: reserved bits or not cluster aligned");
            return Err(Error::corrupt(what, at));
        }
        if k as u64 * epb >= file_clusters || !seen.insert(e) {
            let what = format!("refcount block {k} at {e:#x} is used twice or covers only clusters past the end of the file");
            return Err(Error::corrupt(what, at));
        }
        let counts: Box<[u16]> = decode_be(&r.read_bytes(e, c, "refcount block")?).into();
        blocks.push(Some(counts).filter(|b| b.iter().any(|&v| v != 0)));
    }
    Ok((offsets, blocks))
}

/// References to metadata clusters (notes §2.1, without the L2 tables' entries).
#[derive(Default)]
struct Uses(HashMap<u64, u32>);

impl Uses {
    /// One reference to every cluster of `[offset, offset + len)`.
    fn add(&mut self, offset: u64, len: u64, cluster_bits: u32) -> Result<(), Error> {
        for c in clusters_of(offset, len, cluster_bits)? {
            *self.0.entry(c).or_default() += 1;
        }
        Ok(())
    }

    /// The L1 table `l1` at `offset`: its clusters and each L2 table it references, after
    /// validating every entry (reserved bits, alignment, inside the file).
    fn add_l1(&mut self, r: &Reader, offset: u64, l1: &[u64]) -> Result<(), Error> {
        let cb = r.header().cluster_bits;
        self.add(offset, l1.len() as u64 * 8, cb)?;
        for (i, &e) in l1.iter().enumerate() {
            let at = offset + 8 * i as u64;
            let l2 = l1_entry_l2_offset(e, at)?;
            if !l2.is_multiple_of(r.cluster_size()) || (l2 != 0 && l2 >= r.file_len()) {
                let what = format!(
                    "L1 entry {e:#018x}: L2 table not cluster aligned or past the end of the file"
                );
                return Err(Error::corrupt(what, at));
            }
            if l2 != 0 {
                self.add(l2, 1, cb)?;
            }
        }
        Ok(())
    }
}

/// Counts the references to every metadata cluster, validating every L1 table on the way;
/// also finds the first snapshot whose L1 table maps through the active layer's L2 tables.
fn scan_metadata(r: &Reader, refblocks: &[u64]) -> Result<(Uses, Option<usize>), Error> {
    let h = r.header();
    let (cb, c) = (h.cluster_bits, r.cluster_size());
    let mut uses = Uses::default();
    uses.add(0, 1, cb)?;
    let reftable_len = u64::from(h.refcount_table_clusters) * c;
    uses.add(h.refcount_table_offset, reftable_len, cb)?;
    for &b in refblocks.iter().filter(|&&b| b != 0) {
        uses.add(b, 1, cb)?;
    }
    if let Some((_, end)) = r
        .snapshots()
        .len()
        .checked_sub(1)
        .and_then(|i| r.snapshot_extent(i))
    {
        uses.add(h.snapshots_offset, end - h.snapshots_offset, cb)?;
    }
    let active = r.active_l1();
    uses.add_l1(r, h.l1_table_offset, active)?;
    let mut matching = None;
    for (i, s) in r.snapshots().iter().enumerate() {
        if !s.l1_table_offset.is_multiple_of(c) || (s.l1_size > 0 && s.l1_table_offset == 0) {
            let what = format!("snapshot {i} ({}) L1 table is not cluster aligned", s.name);
            return Err(Error::corrupt(what, s.l1_table_offset));
        }
        let l1 = r.read_l1(s.l1_table_offset, s.l1_size)?;
        uses.add_l1(r, s.l1_table_offset, &l1)?;
        if matching.is_none() && same_tables(active, &l1) {
            matching = Some(i);
        }
    }
    Ok((uses, matching))
}

/// Whether two L1 tables reference the same L2 tables (flags and missing tail entries aside).
pub(super) fn same_tables(a: &[u64], b: &[u64]) -> bool {
    let at = |l1: &[u64], i: usize| l1.get(i).map_or(0, |e| e & L1E_OFFSET_MASK);
    (0..a.len().max(b.len())).all(|i| at(a, i) == at(b, i))
}

/// Refuses refcounts below the metadata's references, and refcount blocks whose refcount is
/// not exactly 1.
fn check_metadata_refcounts(
    rc: &RefcountChunks,
    uses: &Uses,
    refblocks: &[u64],
    cluster_size: u64,
) -> Result<(), Error> {
    for (&cluster, &n) in &uses.0 {
        let stored = rc.committed(cluster);
        if u32::from(stored) < n {
            let what = format!("cluster {cluster} has refcount {stored} but {n} metadata references: run `qemu-img check -r all`");
            return Err(Error::corrupt(what, cluster * cluster_size));
        }
    }
    for &b in refblocks.iter().filter(|&&b| b != 0) {
        let cluster = b / cluster_size;
        if rc.committed(cluster) != 1 || uses.0.get(&cluster) != Some(&1) {
            let what = format!(
                "refcount block at cluster {cluster} has refcount {} (must be 1) or other uses",
                rc.committed(cluster)
            );
            return Err(Error::corrupt(what, b));
        }
    }
    Ok(())
}

//! [`Editor::open`]: what an image must be for the editor to change it, the committed
//! refcounts loaded into memory, and the leftovers of an interrupted edit truncated.
//!
//! Design: validate, then load, then count (`census.rs`: every reference of every L1 and L2
//! table compared with every stored refcount; nothing is trusted), and only then change the
//! file, by truncating what an interrupted edit left past the committed end.

use std::collections::{HashMap, HashSet};
use std::fs::File;

use super::census::check_refcounts;
use super::checksums::live_table;
use super::{Blocks, Editor};
use crate::bytes::decode_be;
use crate::error::Error;
use crate::format::extension::EXT_BITMAPS;
use crate::format::header::{HEADER_SECTOR_BYTES, INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use crate::format::refcount::{DEFAULT_REFCOUNT_ORDER, REFT_RESERVED_MASK};
use crate::reader::Reader;
use crate::writer::{RefcountChunks, Writer};

/// Autoclear bit 0: the bitmaps extension is consistent.
const AUTOCLEAR_BITMAPS: u64 = 1;

impl Editor {
    /// Opens an existing image for editing. `file` must be open read-write; the caller holds an
    /// exclusive lock for as long as the editor lives.
    ///
    /// Validates the header, the snapshot table, the refcount table and blocks (every block
    /// inside the file, refcount exactly 1) and every L1 and L2 table (entries' reserved bits,
    /// alignment, L2 tables inside the file); counts the references of every L1 table (the
    /// active one and every snapshot's) through each distinct L2 table, read once in offset
    /// order, and refuses the image unless every cluster's stored refcount equals its
    /// references; loads all refcounts into memory (2 bytes per cluster of the image, 2 more
    /// while counting). Only then are the bytes past the committed end (the last cluster whose
    /// refcount is not 0, + 1, or the end of a current cluster checksum table), leftovers of an
    /// interrupted edit, truncated
    /// ([`Editor::leftover_bytes`]): a refused image is left as it was.
    ///
    /// Errors: [`Error::Unsupported`] for `refcount_order` other than 4, the dirty or corrupt
    /// bit, bitmaps, and what [`Reader::open`] refuses (backing file, encryption, external data
    /// file, extended L2, unknown incompatible bits); [`Error::Corrupt`] for invalid
    /// structures, and for a refcount that disagrees with the references counted (the message
    /// names the host cluster, its refcount and its references, and the repair: `qemu-img
    /// check -r all`, or `-r leaks` when every disagreement is a leak); [`Error::Limit`];
    /// [`Error::Io`].
    pub fn open(file: File) -> Result<Editor, Error> {
        let reader = Reader::open(clone(&file)?)?;
        check_editable(&reader)?;
        let (refblocks, blocks) = load_refcounts(&reader)?;
        let matching = check_refcounts(&reader, &refblocks, &blocks)?;
        let mut refcounts = RefcountChunks::over_image(reader.header().cluster_bits, blocks)?;
        let sector = reader.read_bytes(0, HEADER_SECTOR_BYTES as u64, "the header sector")?;
        let checksums = live_table(&reader, &sector)?;
        if let Some(live) = &checksums {
            refcounts.reserve_to(live.end);
        }
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
        let mut writer = Writer::in_place(file, reader.header(), refcounts);
        if let Some(live) = &checksums {
            writer.keep_checksums(live.sums.clone());
        }
        Ok(Editor {
            reader,
            writer,
            sector,
            refblocks,
            matching,
            loaded: HashMap::new(),
            removed: Default::default(),
            leftover_bytes,
            checksums,
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
pub(crate) fn load_refcounts(r: &Reader) -> Result<(Vec<u64>, Blocks), Error> {
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

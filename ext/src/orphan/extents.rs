//! Truncating an extent tree (kernel `ext4_ext_remove_space` for a truncate): from the
//! right, every extent at or past the first logical block to free is removed (its `ee_len`
//! and `ee_start` zeroed, `ee_block` left, `eh_entries` lowered) and the one across it
//! shortened; a tree block left without entries is freed and its index entry removed (the
//! entry's bytes stay, `eh_entries` lowered), and the walk goes on leftwards only while
//! children are removed whole. A root left without entries becomes an empty leaf (depth 0,
//! `eh_max` 4). The blocks the tree no longer maps are freed through [`Edits`].
//!
//! Every node is validated first (header, depth, checksum with metadata_csum, entries in
//! order, block numbers in the filesystem and not its static metadata); a loop in the tree
//! (a block visited twice) or a bad node stops the truncation: the caller rolls back.

use super::edits::Edits;
use super::{stop, Stop};
use crate::bytes::le32;
use crate::extent_header::{
    index_child, leaf_entry, parse_header, ExtentHeader, ENTRY_SIZE, EXT4_MAX_EXTENT_DEPTH,
    EXT_INIT_MAX_LEN,
};
use crate::types::InodeNr;
use crate::view::BlockView;
use std::collections::HashSet;

/// `eh_max` of an empty root in `i_block` (kernel `ext4_ext_space_root`).
const ROOT_MAX: u16 = 4;
/// One past the largest logical block an extent can map (kernel `EXT_MAX_BLOCKS`).
const EXT_MAX_BLOCKS: u64 = 0xFFFF_FFFF;

/// A truncation of one inode's tree.
struct Trim<'e, 'f, V> {
    ed: &'e mut Edits<'f, V>,
    ino: InodeNr,
    gen: u32,
    visited: HashSet<u64>,
    /// Blocks freed (data and tree blocks).
    freed: u64,
}

/// Truncates the extent tree rooted in `i_block` (the 60 bytes, edited in place) of inode
/// `ino` of generation `gen` so that it maps no logical block from `keep` on. Returns the
/// blocks freed.
///
/// # Errors
/// A corrupt node or block number (module comment); nothing is rolled back here.
pub(super) fn truncate<V: BlockView>(
    ed: &mut Edits<'_, V>,
    ino: InodeNr,
    gen: u32,
    i_block: &mut [u8],
    keep: u64,
) -> Result<u64, Stop> {
    if keep >= EXT_MAX_BLOCKS {
        return Ok(0);
    }
    let root = parse_header(i_block).map_err(|e| bad(ino, None, format!("{e} in i_block")))?;
    if root.eh_depth > EXT4_MAX_EXTENT_DEPTH {
        let why = format!(
            "eh_depth {} in i_block is above {EXT4_MAX_EXTENT_DEPTH}",
            root.eh_depth
        );
        return Err(bad(ino, None, why));
    }
    let mut t = Trim {
        ed,
        ino,
        gen,
        visited: HashSet::new(),
        freed: 0,
    };
    t.node(i_block, None, root.eh_depth, keep)?;
    if entries(i_block) == 0 {
        i_block[4..6].copy_from_slice(&ROOT_MAX.to_le_bytes());
        i_block[6..8].copy_from_slice(&0u16.to_le_bytes());
    }
    Ok(t.freed)
}

fn bad(ino: InodeNr, block: Option<u64>, why: String) -> Stop {
    stop(Some(ino), block, None, format!("bad extent tree: {why}"))
}

fn entries(node: &[u8]) -> u16 {
    u16::from_le_bytes([node[2], node[3]])
}

fn set_entries(node: &mut [u8], n: u16) {
    node[2..4].copy_from_slice(&n.to_le_bytes());
}

/// The 12 bytes of entry `i` of a node.
fn entry(node: &[u8], i: usize) -> &[u8] {
    &node[ENTRY_SIZE * (i + 1)..ENTRY_SIZE * (i + 2)]
}

impl<V: BlockView> Trim<'_, '_, V> {
    /// Validates the header of `node` (at tree block `at`, `None` for the root) against
    /// the depth its parent implies, and the order of its entries.
    fn header(&self, node: &[u8], at: Option<u64>, depth: u16) -> Result<ExtentHeader, Stop> {
        let h = parse_header(node).map_err(|e| bad(self.ino, at, e))?;
        if h.eh_depth != depth {
            let why = format!("eh_depth {} where the parent implies {depth}", h.eh_depth);
            return Err(bad(self.ino, at, why));
        }
        let mut next = 0u64;
        for i in 0..usize::from(h.eh_entries) {
            let e = entry(node, i);
            let (start, len) = if depth == 0 {
                let x = leaf_entry(e);
                (u64::from(x.ee_block), u64::from(x.len))
            } else {
                (u64::from(le32(e, 0)), 1)
            };
            if len == 0 || start < next {
                let why = format!(
                    "entry {i} (logical block {start}, {len} blocks) is empty or out of order"
                );
                return Err(bad(self.ino, at, why));
            }
            next = start + len;
        }
        Ok(h)
    }

    /// Trims `node`; returns whether it changed.
    fn node(
        &mut self,
        node: &mut [u8],
        at: Option<u64>,
        depth: u16,
        keep: u64,
    ) -> Result<bool, Stop> {
        let h = self.header(node, at, depth)?;
        if depth == 0 {
            return self.leaf(node, h, keep);
        }
        let mut n = h.eh_entries;
        let mut changed = false;
        while n > 0 {
            let child = index_child(entry(node, usize::from(n) - 1));
            let (removed, _) = self.child(child, depth - 1, keep)?;
            if !removed {
                break;
            }
            n -= 1;
            set_entries(node, n);
            changed = true;
        }
        Ok(changed)
    }

    /// Trims the tree block `child` of depth `depth`: returns (whether it was left without
    /// entries and freed, whether it changed).
    fn child(&mut self, child: u64, depth: u16, keep: u64) -> Result<(bool, bool), Stop> {
        let ino = self.ino;
        self.ed.check_owned(ino, child, 1)?;
        if !self.visited.insert(child) {
            return Err(bad(
                ino,
                Some(child),
                "tree block visited twice (loop)".into(),
            ));
        }
        let mut buf = self.ed.read(Some(ino), child)?;
        let tail = self.tail(&buf, child)?;
        if self.ed.csum.metadata() {
            let want = self.ed.csum.extent_block(ino.0, self.gen, &buf, tail);
            let stored = le32(&buf, tail);
            if want != Some(stored) {
                return Err(bad(
                    ino,
                    Some(child),
                    "the tree block fails its checksum".into(),
                ));
            }
        }
        let changed = self.node(&mut buf, Some(child), depth, keep)?;
        if entries(&buf) == 0 {
            self.ed.free_blocks(ino, child, 1)?;
            self.freed += 1;
            return Ok((true, true));
        }
        if changed {
            if let Some(c) = self.ed.csum.extent_block(ino.0, self.gen, &buf, tail) {
                buf[tail..tail + 4].copy_from_slice(&c.to_le_bytes());
            }
            self.ed.put(child, buf);
        }
        Ok((false, changed))
    }

    /// The byte offset of a tree block's checksum tail (12 + 12 × `eh_max`).
    fn tail(&self, buf: &[u8], at: u64) -> Result<usize, Stop> {
        let h = parse_header(buf).map_err(|e| bad(self.ino, Some(at), e))?;
        let tail = ENTRY_SIZE * (usize::from(h.eh_max) + 1);
        if tail + 4 > buf.len() {
            return Err(bad(
                self.ino,
                Some(at),
                "no room for the checksum tail".into(),
            ));
        }
        Ok(tail)
    }

    /// Trims a leaf (module comment); returns whether it changed.
    fn leaf(&mut self, node: &mut [u8], h: ExtentHeader, keep: u64) -> Result<bool, Stop> {
        let mut n = h.eh_entries;
        let mut changed = false;
        for i in (0..usize::from(h.eh_entries)).rev() {
            let x = leaf_entry(entry(node, i));
            let (start, len) = (u64::from(x.ee_block), u64::from(x.len));
            if start + len <= keep {
                break;
            }
            let at = ENTRY_SIZE * (i + 1);
            let kept = keep.saturating_sub(start);
            let start_block = x
                .ee_start
                .checked_add(kept)
                .ok_or_else(|| bad(self.ino, None, "ee_start overflows".into()))?;
            self.ed.free_blocks(self.ino, start_block, len - kept)?;
            self.freed += len - kept;
            if kept == 0 {
                node[at + 4..at + ENTRY_SIZE].fill(0);
                n -= 1;
            } else {
                let raw = kept as u16 + if x.unwritten { EXT_INIT_MAX_LEN } else { 0 };
                node[at + 4..at + 6].copy_from_slice(&raw.to_le_bytes());
            }
            changed = true;
        }
        set_entries(node, n);
        Ok(changed)
    }
}

/// The physical block logical block `logical` of the tree rooted in `i_block` maps, read
/// through `ed` (after the truncation), and whether its extent is unwritten; `None` for a
/// hole or a node that does not validate.
pub(super) fn map<V: BlockView>(
    ed: &Edits<'_, V>,
    ino: InodeNr,
    i_block: &[u8],
    logical: u64,
) -> Option<(u64, bool)> {
    let mut node = i_block.to_vec();
    for _ in 0..=EXT4_MAX_EXTENT_DEPTH {
        let h = parse_header(&node).ok()?;
        let n = usize::from(h.eh_entries);
        if h.eh_depth == 0 {
            return (0..n).map(|i| leaf_entry(entry(&node, i))).find_map(|x| {
                let off = logical.checked_sub(u64::from(x.ee_block))?;
                (off < u64::from(x.len)).then(|| (x.ee_start + off, x.unwritten))
            });
        }
        let i = (0..n)
            .rev()
            .find(|&i| u64::from(le32(entry(&node, i), 0)) <= logical)?;
        let child = index_child(entry(&node, i));
        ed.check_owned(ino, child, 1).ok()?;
        node = ed.read(Some(ino), child).ok()?;
    }
    None
}

//! Extent trees (kernel `ext4_extent_header`, `ext4_extent_idx`, `ext4_extent`).
//!
//! The walk is depth-first with strict validation: every header (magic, entry count against
//! its capacity, depth ≤ 5 and exactly one less than the parent's), every child pointer and
//! every leaf range is checked before use. A bad node is reported and its subtree skipped; a
//! bad entry is reported and skipped. A per-inode visited set stops loops and shared
//! subtrees, so the walk reads each tree block at most once. Mapped runs are reported with
//! their logical block (`ee_block`) and unwritten state, for the run sink of
//! [`crate::owners`].

use crate::blockset::BlockClass;
use crate::bytes::{join, le16, le32};
use crate::error::{Corrupt, CorruptKind};
use crate::walk::Collector;
use crate::InodeNr;
use std::collections::HashSet;

/// `eh_magic`.
pub const EXT4_EXT_MAGIC: u16 = 0xF30A;
/// Maximum tree depth the kernel accepts (EXT4_MAX_EXTENT_DEPTH). Deeper trees are reported
/// but still walked, up to [`MAX_WALK_DEPTH`], as e2fsprogs does.
pub const EXT4_MAX_EXTENT_DEPTH: u16 = 5;
/// Deepest tree walked at all: bounds the recursion on corrupt headers.
pub const MAX_WALK_DEPTH: u16 = 32;
/// Size of the header and of each entry, in bytes.
pub const ENTRY_SIZE: usize = 12;
/// An `ee_len` above this marks an unwritten extent of `ee_len - 32768` blocks.
pub const EXT_INIT_MAX_LEN: u16 = 32768;

/// A validated extent header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtentHeader {
    pub eh_entries: u16,
    pub eh_max: u16,
    pub eh_depth: u16,
}

/// Parses and validates the header at the start of `node` (60 bytes of `i_block`, or a tree
/// block).
///
/// # Errors
/// A description of the first rule broken: magic, `eh_max` above the node's capacity,
/// `eh_entries > eh_max`, or depth above [`MAX_WALK_DEPTH`].
pub fn parse_header(node: &[u8]) -> Result<ExtentHeader, String> {
    if node.len() < ENTRY_SIZE {
        return Err("node shorter than a header".into());
    }
    let magic = le16(node, 0);
    if magic != EXT4_EXT_MAGIC {
        return Err(format!("magic {magic:#06x} (want {EXT4_EXT_MAGIC:#06x})"));
    }
    let h = ExtentHeader {
        eh_entries: le16(node, 2),
        eh_max: le16(node, 4),
        eh_depth: le16(node, 6),
    };
    let capacity = (node.len() - ENTRY_SIZE) / ENTRY_SIZE;
    if usize::from(h.eh_max) > capacity {
        return Err(format!(
            "eh_max {} exceeds the node's capacity {capacity}",
            h.eh_max
        ));
    }
    if h.eh_entries > h.eh_max {
        return Err(format!("eh_entries {} > eh_max {}", h.eh_entries, h.eh_max));
    }
    if h.eh_depth > MAX_WALK_DEPTH {
        return Err(format!("eh_depth {} > {MAX_WALK_DEPTH}", h.eh_depth));
    }
    Ok(h)
}

/// What to record for one inode's tree.
#[derive(Clone, Copy, Debug)]
pub struct TreeClasses {
    /// Class of index and leaf blocks (and IND/DIND/TIND blocks for indirect maps).
    pub tree: BlockClass,
    /// Class of the mapped blocks, or `None` to skip them.
    pub data: Option<BlockClass>,
}

/// Walks the extent tree rooted in `i_block` of inode `ino`, adding tree blocks and (when
/// `classes.data` is set) mapped blocks to `out`, and reporting corruption there.
pub fn walk_extents(out: &mut Collector<'_>, ino: InodeNr, i_block: &[u8], classes: TreeClasses) {
    let root = match parse_header(i_block) {
        Ok(h) => h,
        Err(e) => {
            let c = Corrupt::new(CorruptKind::ExtentHeader(format!("{e} in i_block")));
            out.corrupt(c.at_inode(ino).at_offset(0x28));
            return;
        }
    };
    if root.eh_depth > EXT4_MAX_EXTENT_DEPTH {
        let what = format!(
            "eh_depth {} exceeds the kernel's limit {EXT4_MAX_EXTENT_DEPTH}; walked anyway",
            root.eh_depth
        );
        out.corrupt(
            Corrupt::new(CorruptKind::ExtentHeader(what))
                .at_inode(ino)
                .at_offset(0x28),
        );
    }
    let mut walk = ExtentWalk {
        out,
        ino,
        classes,
        visited: HashSet::new(),
    };
    walk.node(i_block, root, None);
}

struct ExtentWalk<'c, 'v> {
    out: &'c mut Collector<'v>,
    ino: InodeNr,
    classes: TreeClasses,
    visited: HashSet<u64>,
}

impl ExtentWalk<'_, '_> {
    /// Visits the entries of a validated node; `block` is `None` for the root in the inode.
    fn node(&mut self, node: &[u8], h: ExtentHeader, block: Option<u64>) {
        for i in 0..usize::from(h.eh_entries) {
            let off = ENTRY_SIZE * (i + 1);
            let e = &node[off..off + ENTRY_SIZE];
            if h.eh_depth == 0 {
                self.leaf_entry(e, block, off);
            } else {
                let child = join(le32(e, 4), u32::from(le16(e, 8)));
                self.child(child, h.eh_depth - 1, block, off);
            }
        }
    }

    fn corrupt(&mut self, kind: CorruptKind, block: Option<u64>, off: usize) {
        let c = Corrupt::new(kind).at_inode(self.ino);
        let off = u32::try_from(off).unwrap_or(u32::MAX);
        let c = match block {
            Some(b) => c.at_block(b, off),
            None => c.at_offset(0x28 + off),
        };
        self.out.corrupt(c);
    }

    fn leaf_entry(&mut self, e: &[u8], block: Option<u64>, off: usize) {
        let Some(data_class) = self.classes.data else {
            return;
        };
        let raw_len = le16(e, 4);
        let len = if raw_len > EXT_INIT_MAX_LEN {
            raw_len - EXT_INIT_MAX_LEN
        } else {
            raw_len
        };
        let unwritten = raw_len > EXT_INIT_MAX_LEN;
        let logical = le32(e, 0);
        let start = join(le32(e, 8), u32::from(le16(e, 6)));
        if len == 0 {
            let what = format!("zero-length extent at logical block {logical}");
            return self.corrupt(CorruptKind::ExtentEntry(what), block, off);
        }
        if let Err(kind) = self.out.check_range(start, u64::from(len)) {
            return self.corrupt(kind, block, off);
        }
        self.out.add_mapped(
            u64::from(logical),
            start,
            u64::from(len),
            unwritten,
            data_class,
        );
    }

    fn child(&mut self, child: u64, depth: u16, parent: Option<u64>, off: usize) {
        if let Err(kind) = self.out.check_range(child, 1) {
            return self.corrupt(kind, parent, off);
        }
        if !self.visited.insert(child) {
            return self.corrupt(CorruptKind::ExtentLoop, Some(child), 0);
        }
        self.out.add_tree(child, self.classes.tree);
        let Some(buf) = self.out.read_block(self.ino, child) else {
            return;
        };
        let h = match parse_header(&buf) {
            Ok(h) => h,
            Err(e) => return self.corrupt(CorruptKind::ExtentHeader(e), Some(child), 0),
        };
        if h.eh_depth != depth {
            let what = format!("eh_depth {} where the parent implies {depth}", h.eh_depth);
            return self.corrupt(CorruptKind::ExtentHeader(what), Some(child), 0);
        }
        self.node(&buf, h, Some(child));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(entries: u16, max: u16, depth: u16, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[0..2].copy_from_slice(&EXT4_EXT_MAGIC.to_le_bytes());
        b[2..4].copy_from_slice(&entries.to_le_bytes());
        b[4..6].copy_from_slice(&max.to_le_bytes());
        b[6..8].copy_from_slice(&depth.to_le_bytes());
        b
    }

    #[test]
    fn valid_root_header() {
        assert_eq!(
            parse_header(&header(1, 4, 0, 60)),
            Ok(ExtentHeader {
                eh_entries: 1,
                eh_max: 4,
                eh_depth: 0
            })
        );
    }

    #[test]
    fn bad_magic() {
        let mut b = header(1, 4, 0, 60);
        b[0] = 0;
        assert!(parse_header(&b).unwrap_err().contains("magic"));
    }

    #[test]
    fn max_above_capacity() {
        assert!(parse_header(&header(1, 5, 0, 60))
            .unwrap_err()
            .contains("capacity"));
        assert!(parse_header(&header(1, 340, 0, 4096)).is_ok());
        assert!(parse_header(&header(1, 341, 0, 4096)).is_err());
    }

    #[test]
    fn entries_above_max() {
        assert!(parse_header(&header(5, 4, 0, 60))
            .unwrap_err()
            .contains("eh_entries"));
    }

    #[test]
    fn too_deep() {
        assert!(parse_header(&header(1, 4, 6, 60)).is_ok());
        assert!(parse_header(&header(1, 4, 33, 60))
            .unwrap_err()
            .contains("eh_depth"));
    }

    #[test]
    fn too_short() {
        assert!(parse_header(&[0u8; 8]).is_err());
    }
}

//! Extent trees (kernel `ext4_extent_header`, `ext4_extent_idx`, `ext4_extent`).
//!
//! The walk is depth-first with strict validation: every header (magic, entry count against
//! its capacity, depth ≤ 5 and exactly one less than the parent's), every child pointer and
//! every leaf range is checked before use. A bad node is reported and its subtree skipped; a
//! bad entry is reported and skipped. A per-inode visited set stops loops and shared
//! subtrees, so the walk reads each tree block at most once. Mapped runs are reported with
//! their logical block (`ee_block`) and unwritten state, for the collector's run sink. In a
//! walk, the checksum of every tree block whose header parses is verified (a block whose
//! header does not is already reported).

use crate::collect::{Collector, TreeClasses};
use crate::error::{Corrupt, CorruptKind};
use crate::extent_header::{
    index_child, leaf_entry, parse_header, ExtentHeader, ENTRY_SIZE, EXT4_MAX_EXTENT_DEPTH,
};
use crate::inode::I_BLOCK_OFFSET;
use crate::types::InodeNr;
use std::collections::HashSet;

/// Byte offset of `i_block` in the inode record, as a warning offset.
const ROOT_OFFSET: u32 = I_BLOCK_OFFSET as u32;

/// Walks the extent tree rooted in `i_block` of inode `ino`, adding tree blocks and (when
/// `classes.data` is set) mapped blocks to `out`, and reporting corruption there.
pub(crate) fn walk_extents(
    out: &mut Collector<'_>,
    ino: InodeNr,
    i_block: &[u8],
    classes: TreeClasses,
) {
    let root = match parse_header(i_block) {
        Ok(h) => h,
        Err(e) => {
            let c = Corrupt::new(CorruptKind::ExtentHeader(format!("{e} in i_block")));
            out.corrupt(c.at_inode(ino).at_offset(ROOT_OFFSET));
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
                .at_offset(ROOT_OFFSET),
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
                self.child(index_child(e), h.eh_depth - 1, block, off);
            }
        }
    }

    fn corrupt(&mut self, kind: CorruptKind, block: Option<u64>, off: usize) {
        let c = Corrupt::new(kind).at_inode(self.ino);
        let off = u32::try_from(off).unwrap_or(u32::MAX);
        let c = match block {
            Some(b) => c.at_block(b, off),
            None => c.at_offset(ROOT_OFFSET + off),
        };
        self.out.corrupt(c);
    }

    fn leaf_entry(&mut self, e: &[u8], block: Option<u64>, off: usize) {
        let Some(data_class) = self.classes.data else {
            return;
        };
        let x = leaf_entry(e);
        if x.len == 0 {
            let what = format!("zero-length extent at logical block {}", x.ee_block);
            return self.corrupt(CorruptKind::ExtentEntry(what), block, off);
        }
        let len = u64::from(x.len);
        if let Err(kind) = self.out.check_range(x.ee_start, len) {
            return self.corrupt(kind, block, off);
        }
        self.out.add_mapped(
            u64::from(x.ee_block),
            x.ee_start,
            len,
            x.unwritten,
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
        self.out.check_extent_block(child, &buf, h.eh_max);
        if h.eh_depth != depth {
            let what = format!("eh_depth {} where the parent implies {depth}", h.eh_depth);
            return self.corrupt(CorruptKind::ExtentHeader(what), Some(child), 0);
        }
        self.node(&buf, h, Some(child));
    }
}

//! Indirect block maps (ext2/3, and ext4 inodes without EXTENTS_FL): `i_block[0..12]` direct,
//! `[12]` IND, `[13]` DIND, `[14]` TIND, with `block_size / 4` 32-bit pointers per block.
//!
//! The depth of each subtree is fixed by its slot, so the walk always ends; a per-inode
//! visited set keeps a block that is referenced many times from being read many times.
//! Out-of-range pointers in one block are reported once per block (with the first offending
//! offset and the count) and skipped.

use crate::blockset::BlockClass;
use crate::bytes::le32;
use crate::error::{Corrupt, CorruptKind};
use crate::extent::TreeClasses;
use crate::inode::Inode;
use crate::walk::Collector;
use crate::InodeNr;
use std::collections::HashSet;

/// Number of direct pointers in `i_block`.
pub const EXT2_NDIR_BLOCKS: usize = 12;
/// Slot of the IND pointer.
pub const EXT2_IND_BLOCK: usize = 12;
/// Slot of the DIND pointer.
pub const EXT2_DIND_BLOCK: usize = 13;
/// Slot of the TIND pointer.
pub const EXT2_TIND_BLOCK: usize = 14;

/// Walks the indirect map of `inode`, adding IND/DIND/TIND blocks as `classes.tree` and (when
/// `classes.data` is set) the mapped blocks.
pub fn walk_indirect(out: &mut Collector<'_>, ino: InodeNr, inode: &Inode, classes: TreeClasses) {
    let mut walk = IndirectWalk {
        out,
        ino,
        classes,
        visited: HashSet::new(),
    };
    walk.pointers_in_inode(inode, 0..EXT2_NDIR_BLOCKS, 0);
    for (slot, level) in [
        (EXT2_IND_BLOCK, 1),
        (EXT2_DIND_BLOCK, 2),
        (EXT2_TIND_BLOCK, 3),
    ] {
        walk.pointers_in_inode(inode, slot..slot + 1, level);
    }
}

/// Walks the subtree rooted at pointer `slot` of `inode` whose root has `level` (1 = IND), used
/// for nonstandard roots such as the extra TIND trees of snapshot files.
pub fn walk_root(
    out: &mut Collector<'_>,
    ino: InodeNr,
    inode: &Inode,
    slot: usize,
    level: u8,
    classes: TreeClasses,
) {
    let mut walk = IndirectWalk {
        out,
        ino,
        classes,
        visited: HashSet::new(),
    };
    walk.pointers_in_inode(inode, slot..slot + 1, level);
}

struct IndirectWalk<'c, 'v> {
    out: &'c mut Collector<'v>,
    ino: InodeNr,
    classes: TreeClasses,
    visited: HashSet<u64>,
}

impl IndirectWalk<'_, '_> {
    fn pointers_in_inode(&mut self, inode: &Inode, slots: std::ops::Range<usize>, level: u8) {
        for slot in slots {
            let p = u64::from(inode.block_ptr(slot));
            if p == 0 {
                continue;
            }
            if let Err(kind) = self.out.check_range(p, 1) {
                let c = Corrupt::new(kind)
                    .at_inode(self.ino)
                    .at_offset(0x28 + 4 * slot as u32);
                self.out.corrupt(c);
                continue;
            }
            self.pointer(p, level);
        }
    }

    /// A validated pointer to a block of `level` (0 = data).
    fn pointer(&mut self, p: u64, level: u8) {
        if level == 0 {
            if let Some(class) = self.classes.data {
                self.out.add(p, 1, class);
            }
            return;
        }
        if !self.visited.insert(p) {
            return;
        }
        self.out.add(p, 1, self.classes.tree);
        if level == 1 && self.classes.data.is_none() {
            return;
        }
        let Some(buf) = self.out.read_block(self.ino, p) else {
            return;
        };
        self.entries(&buf, p, level);
    }

    fn entries(&mut self, buf: &[u8], block: u64, level: u8) {
        let mut bad = 0u32;
        let mut first_bad = None;
        for off in (0..buf.len()).step_by(4) {
            let child = u64::from(le32(buf, off));
            if child == 0 {
                continue;
            }
            if self.out.check_range(child, 1).is_err() {
                bad += 1;
                first_bad.get_or_insert((off, child));
                continue;
            }
            self.pointer(child, level - 1);
        }
        if let Some((off, value)) = first_bad {
            let kind = CorruptKind::IndirectPointer { value };
            let mut c = Corrupt::new(kind)
                .at_inode(self.ino)
                .at_block(block, off as u32);
            if bad > 1 {
                c = c.with_note(format!("{bad} bad pointers in this block, all skipped"));
            }
            self.out.corrupt(c);
        }
    }
}

/// Class pair for indirect tree blocks of an ordinary file.
pub const fn indirect_classes(data: Option<BlockClass>) -> TreeClasses {
    TreeClasses {
        tree: BlockClass::Indirect,
        data,
    }
}

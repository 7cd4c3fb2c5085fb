//! Indirect block maps (ext2/3, and ext4 inodes without EXTENTS_FL): `i_block[0..12]` direct,
//! `[12]` IND, `[13]` DIND, `[14]` TIND, with `block_size / 4` 32-bit pointers per block.
//!
//! The depth of each subtree is fixed by its slot, so the walk always ends; a per-inode
//! visited set keeps a block that is referenced many times from being read many times.
//! Out-of-range pointers in one block are reported once per block (with the first offending
//! offset and the count) and skipped. Each root also carries the first logical block it maps,
//! so that the logical block of every mapped block follows from its slot position (reported
//! to the collector's run sink).
//!
//! next3 snapshot files are indirect-mapped with a fixed offset: image block P of the
//! snapshot is file block P + [`snapshot_block_offset`], and filesystems too large for the
//! DIND and TIND ranges put further TIND roots in `i_block[0..3]` ([`snapshot_roots`]).

use crate::bytes::le32;
use crate::collect::{Collector, TreeClasses};
use crate::error::{Corrupt, CorruptKind};
use crate::inode::{Inode, I_BLOCK_OFFSET};
use crate::superblock::Superblock;
use crate::types::InodeNr;
use std::collections::HashSet;

/// Number of direct pointers in `i_block`.
pub(crate) const EXT2_NDIR_BLOCKS: usize = 12;
/// Slot of the IND pointer.
pub(crate) const EXT2_IND_BLOCK: usize = 12;
/// Slot of the DIND pointer.
pub(crate) const EXT2_DIND_BLOCK: usize = 13;
/// Slot of the TIND pointer.
pub(crate) const EXT2_TIND_BLOCK: usize = 14;

/// One subtree root in `i_block`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Root {
    /// Pointer slot in `i_block` (0..15).
    pub(crate) slot: usize,
    /// Level of the block it points at: 0 = data block, 1 = IND, 2 = DIND, 3 = TIND.
    pub(crate) level: u8,
    /// First logical (file) block the subtree maps, in filesystem blocks.
    pub(crate) logical: u64,
}

/// The standard roots: 12 direct blocks at logical 0..12, IND at 12, DIND at
/// 12 + apb, TIND at 12 + apb + apb², where apb = `block_size / 4` pointers per block.
pub(crate) fn standard_roots(block_size: u32) -> Vec<Root> {
    let apb = u64::from(block_size / 4);
    let mut roots: Vec<Root> = (0..EXT2_NDIR_BLOCKS)
        .map(|slot| Root {
            slot,
            level: 0,
            logical: slot as u64,
        })
        .collect();
    let ind = EXT2_NDIR_BLOCKS as u64;
    for (slot, level, logical) in [
        (EXT2_IND_BLOCK, 1, ind),
        (EXT2_DIND_BLOCK, 2, ind + apb),
        (EXT2_TIND_BLOCK, 3, ind + apb + apb * apb),
    ] {
        roots.push(Root {
            slot,
            level,
            logical,
        });
    }
    roots
}

/// The extra TIND roots of next3 snapshot files of filesystems over 2^20 + 2^30 blocks
/// (at 4 KiB): `i_block[0..3]` map the k-th TIND range after the standard one (k = 1..3),
/// i.e. logical 12 + apb + apb² + k·apb³.
pub(crate) fn snapshot_extra_roots(block_size: u32) -> Vec<Root> {
    let apb = u64::from(block_size / 4);
    let tind = EXT2_NDIR_BLOCKS as u64 + apb + apb * apb;
    (1..=3u64)
        .map(|k| Root {
            slot: ((EXT2_TIND_BLOCK as u64 + k) % 15) as usize,
            level: 3,
            logical: tind + k * apb * apb * apb,
        })
        .collect()
}

/// Walks the indirect map of `inode`, adding IND/DIND/TIND blocks as `classes.tree` and (when
/// `classes.data` is set) the mapped blocks.
pub(crate) fn walk_indirect(
    out: &mut Collector<'_>,
    ino: InodeNr,
    inode: &Inode,
    classes: TreeClasses,
) {
    let roots = standard_roots(out.sb().block_size);
    walk_roots(out, ino, inode, &roots, classes);
}

/// Walks the subtrees rooted at `roots` of `inode` with one visited set, e.g. the standard
/// roots, or nonstandard roots such as the extra TIND trees of snapshot files.
pub(crate) fn walk_roots(
    out: &mut Collector<'_>,
    ino: InodeNr,
    inode: &Inode,
    roots: &[Root],
    classes: TreeClasses,
) {
    let apb = u64::from(out.sb().block_size / 4);
    let mut walk = IndirectWalk {
        out,
        ino,
        classes,
        apb,
        visited: HashSet::new(),
    };
    for root in roots {
        walk.root(inode, *root);
    }
}

struct IndirectWalk<'c, 'v> {
    out: &'c mut Collector<'v>,
    ino: InodeNr,
    classes: TreeClasses,
    /// Pointers per block (`block_size / 4`).
    apb: u64,
    visited: HashSet<u64>,
}

impl IndirectWalk<'_, '_> {
    fn root(&mut self, inode: &Inode, root: Root) {
        if root.slot >= 15 || root.level > 3 {
            return;
        }
        let p = u64::from(inode.block_ptr(root.slot));
        if p == 0 {
            return;
        }
        if let Err(kind) = self.out.check_range(p, 1) {
            let c = Corrupt::new(kind)
                .at_inode(self.ino)
                .at_offset((I_BLOCK_OFFSET + 4 * root.slot) as u32);
            self.out.corrupt(c);
            return;
        }
        self.pointer(p, root.level, root.logical);
    }

    /// A validated pointer to a block of `level` (0 = data) whose subtree maps logical blocks
    /// from `logical` on.
    fn pointer(&mut self, p: u64, level: u8, logical: u64) {
        if level == 0 {
            if let Some(class) = self.classes.data {
                self.out.add_mapped(logical, p, 1, false, class);
            }
            return;
        }
        if !self.visited.insert(p) {
            return;
        }
        self.out.add_tree(p, self.classes.tree);
        if level == 1 && self.classes.data.is_none() {
            return;
        }
        let Some(buf) = self.out.read_block(self.ino, p) else {
            return;
        };
        self.entries(&buf, p, level, logical);
    }

    fn entries(&mut self, buf: &[u8], block: u64, level: u8, logical: u64) {
        // Blocks mapped by one entry of this block: apb^(level - 1), at most 2^42 (level 3,
        // 64 KiB blocks); saturating all the same.
        let span = self.apb.saturating_pow(u32::from(level) - 1);
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
            let child_logical = logical.saturating_add((off as u64 / 4).saturating_mul(span));
            self.pointer(child, level - 1, child_logical);
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

/// Logical block of a next3 snapshot file that holds image block 0: `12 + block_size / 4`,
/// the first block the DIND pointer maps.
pub(crate) fn snapshot_block_offset(block_size: u32) -> u64 {
    EXT2_NDIR_BLOCKS as u64 + u64::from(block_size / 4)
}

/// Indirect roots of a snapshot file: the standard ones, except that on filesystems larger
/// than the DIND and TIND ranges can map (apb² + apb³ image blocks) `i_block[0..3]` are the
/// extra TIND roots rather than direct (snapshot meta) blocks.
pub(crate) fn snapshot_roots(sb: &Superblock) -> Vec<Root> {
    let apb = u64::from(sb.block_size / 4);
    let reach = apb
        .saturating_mul(apb)
        .saturating_add(apb.saturating_pow(3));
    let mut roots = standard_roots(sb.block_size);
    if sb.s_blocks_count > reach {
        let extra = snapshot_extra_roots(sb.block_size);
        roots.retain(|r| !extra.iter().any(|e| e.slot == r.slot));
        roots.extend(extra);
    }
    roots
}

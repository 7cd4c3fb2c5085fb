//! An inode's extent tree as the fast-commit replay changes it, node bytes edited as the
//! kernel edits them (so that stale slots, moved entries and checksums come out the same):
//! `ext4_find_extent` (paths and binary searches), `ext4_map_blocks` without allocation,
//! `ext4_ext_insert_extent` with its merges, the new leaf of `ext4_ext_split` or the deeper
//! tree of `ext4_ext_grow_indepth`, `ext4_ext_try_to_merge(_up)` and
//! `ext4_ext_correct_indexes`. Removal is in `extents_rm`.
//!
//! A node is the 60 bytes of `i_block` (the root) or a tree block; entries are 12 bytes after
//! a 12-byte header. Tree blocks read from the device are checked once as
//! `__ext4_ext_check` checks them (magic, depth, counts, entries, checksum).

use super::inode::MemInode;
use super::store::{corrupt, FcError, Fr, Fs};
use crate::bytes::{crc32c_raw, le16, le32};
use std::collections::BTreeSet;

/// `EXT_MAX_BLOCKS`: one past the last logical block.
pub(crate) const EXT_MAX_BLOCKS: u32 = u32::MAX;
const EXT4_EXT_MAGIC: u16 = 0xF30A;
/// `EXT_INIT_MAX_LEN`: `ee_len` above it marks an unwritten extent.
pub(crate) const EXT_INIT_MAX_LEN: u32 = 32768;
const EXT_UNWRITTEN_MAX_LEN: u32 = 32767;
const EXT4_MAX_EXTENT_DEPTH: u16 = 5;
pub(crate) const HDR: usize = 12;
pub(crate) const ENT: usize = 12;
/// Entries of the root (`ext4_ext_space_root`, `_idx`): (60 - 12) / 12.
pub(crate) const ROOT_MAX: u16 = 4;

/// Where a node lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Node {
    Root,
    Block(u64),
}

/// One level of a path (kernel `struct ext4_ext_path`): the node, the entry the search
/// stopped at (`p_idx` / `p_ext`; `None` for an empty leaf) and `p_block`.
#[derive(Clone, Debug)]
pub(crate) struct Level {
    pub(crate) node: Node,
    pub(crate) pos: Option<usize>,
    pub(crate) p_block: u64,
}

/// Root first, leaf last.
pub(crate) type Path = Vec<Level>;

/// An extent being inserted: `ee_block`, `ee_len` as stored (unwritten flag included),
/// start block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NewExt {
    pub(crate) lblk: u32,
    pub(crate) raw_len: u16,
    pub(crate) pblk: u64,
}

/// What `ext4_map_blocks` (no allocation) answers: `ret` blocks mapped (0 for a hole) and
/// `len` (`map.m_len`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Map {
    pub(crate) ret: u32,
    pub(crate) len: u32,
    pub(crate) pblk: u64,
}

// Field access in node bytes.
pub(crate) fn h_entries(n: &[u8]) -> usize {
    usize::from(le16(n, 2))
}
pub(crate) fn h_max(n: &[u8]) -> usize {
    usize::from(le16(n, 4))
}
pub(crate) fn h_depth(n: &[u8]) -> u16 {
    le16(n, 6)
}
pub(crate) fn set16(n: &mut [u8], at: usize, v: u16) {
    n[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn set32(n: &mut [u8], at: usize, v: u32) {
    n[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn at(i: usize) -> usize {
    HDR + ENT * i
}
pub(crate) fn e_block(n: &[u8], i: usize) -> u32 {
    le32(n, at(i))
}
pub(crate) fn e_raw_len(n: &[u8], i: usize) -> u16 {
    le16(n, at(i) + 4)
}
/// `ext4_ext_get_actual_len`.
pub(crate) fn actual(raw: u16) -> u32 {
    let r = u32::from(raw);
    if r <= EXT_INIT_MAX_LEN {
        r
    } else {
        r - EXT_INIT_MAX_LEN
    }
}
pub(crate) fn unwritten(raw: u16) -> bool {
    u32::from(raw) > EXT_INIT_MAX_LEN
}
pub(crate) fn e_len(n: &[u8], i: usize) -> u32 {
    actual(e_raw_len(n, i))
}
pub(crate) fn e_pblk(n: &[u8], i: usize) -> u64 {
    u64::from(le32(n, at(i) + 8)) | u64::from(le16(n, at(i) + 6)) << 32
}
/// `ext4_ext_store_pblock`.
pub(crate) fn set_e_pblk(n: &mut [u8], i: usize, p: u64) {
    set32(n, at(i) + 8, p as u32);
    set16(n, at(i) + 6, (p >> 32) as u16);
}
pub(crate) fn set_e_len(n: &mut [u8], i: usize, raw: u16) {
    set16(n, at(i) + 4, raw);
}
/// `ext4_ext_mark_unwritten`: the top bit of `ee_len` set.
pub(crate) fn mark_unwritten(n: &mut [u8], i: usize) {
    let v = e_raw_len(n, i) | EXT_INIT_MAX_LEN as u16;
    set_e_len(n, i, v);
}
/// `ext4_ext_mark_initialized`.
pub(crate) fn mark_initialized(n: &mut [u8], i: usize) {
    let v = e_len(n, i) as u16;
    set_e_len(n, i, v);
}
pub(crate) fn i_pblk(n: &[u8], i: usize) -> u64 {
    u64::from(le32(n, at(i) + 4)) | u64::from(le16(n, at(i) + 8)) << 32
}
/// `ext4_idx_store_pblock`.
pub(crate) fn set_i_pblk(n: &mut [u8], i: usize, p: u64) {
    set32(n, at(i) + 4, p as u32);
    set16(n, at(i) + 8, (p >> 32) as u16);
}

/// Kernel `ext4_ext_binsearch(_idx)`: the last entry whose first block is at most `lblk`,
/// or the first entry; `None` for an empty node.
fn binsearch(n: &[u8], lblk: u32) -> Option<usize> {
    let entries = h_entries(n);
    if entries == 0 {
        return None;
    }
    let (mut l, mut r) = (1isize, entries as isize - 1);
    while l <= r {
        let m = l + (r - l) / 2;
        if lblk < e_block(n, m as usize) {
            r = m - 1;
        } else {
            l = m + 1;
        }
    }
    Some((l - 1) as usize)
}

/// An inode's tree being edited: the filesystem and the in-memory inode.
pub(crate) struct Tree<'a, 'v> {
    pub(crate) fs: &'a mut Fs<'v>,
    pub(crate) i: &'a mut MemInode,
    /// Tree blocks already checked (kernel `buffer_verified`), shared by the replay.
    pub(crate) verified: &'a mut BTreeSet<u64>,
}

impl Tree<'_, '_> {
    /// The bytes of node `n` (a copy).
    pub(crate) fn read(&mut self, n: Node) -> Fr<Vec<u8>> {
        match n {
            Node::Root => Ok(self.i.i_block().to_vec()),
            Node::Block(b) => Ok(self.fs.block(b)?.to_vec()),
        }
    }

    /// Node `n`'s bytes, to change.
    pub(crate) fn edit(&mut self, n: Node) -> Fr<&mut [u8]> {
        match n {
            Node::Root => Ok(self.i.i_block_mut()),
            Node::Block(b) => Ok(self.fs.block_mut(b)?.as_mut_slice()),
        }
    }

    /// Kernel `ext4_ext_space_block` / `ext4_ext_space_root`: the entries a node holds.
    pub(crate) fn space(&self, n: Node) -> usize {
        match n {
            Node::Root => usize::from(ROOT_MAX),
            Node::Block(_) => (self.fs.bs - HDR) / ENT,
        }
    }

    /// The root header's depth, checked (module comment).
    pub(crate) fn depth(&self) -> Fr<u16> {
        let r = self.i.i_block();
        let ino = self.i.ino;
        if !self.i.has_extents() {
            return Err(FcError::Unsupported(format!(
                "inode {ino} maps its blocks without extents"
            )));
        }
        if le16(r, 0) != EXT4_EXT_MAGIC
            || h_max(r) > usize::from(ROOT_MAX)
            || h_entries(r) > h_max(r)
            || h_depth(r) > EXT4_MAX_EXTENT_DEPTH
            || (h_entries(r) == 0 && h_depth(r) > 0)
        {
            return corrupt(format!("inode {ino}: bad extent tree root"));
        }
        Ok(h_depth(r))
    }

    /// Kernel `__ext4_ext_check` of tree block `b` at `depth`, first entry `lblk`.
    pub(crate) fn check_block(&mut self, b: u64, depth: u16, lblk: u32) -> Fr<()> {
        if self.verified.contains(&b) {
            return Ok(());
        }
        let n = self.fs.block(b)?.to_vec();
        let ino = self.i.ino;
        let bad = |m: &str| corrupt(format!("inode {ino}: extent block {b}: {m}"));
        let entries = h_entries(&n);
        if le16(&n, 0) != EXT4_EXT_MAGIC || h_depth(&n) != depth {
            return bad("bad magic or depth");
        }
        if h_max(&n) == 0 || h_max(&n) > self.space(Node::Block(b)) || entries > h_max(&n) {
            return bad("bad eh_max or eh_entries");
        }
        if entries == 0 && depth > 0 {
            return bad("an empty index");
        }
        if !self.entries_valid(&n, depth, lblk) {
            return bad("invalid entries");
        }
        if self.fs.metadata_csum() {
            let off = at(h_max(&n));
            if le32(&n, off) != crc32c_raw(self.i.seed, &n[..off]) {
                return bad("checksum mismatch");
            }
        }
        self.verified.insert(b);
        Ok(())
    }

    /// Kernel `ext4_valid_extent_entries` for a tree block.
    fn entries_valid(&self, n: &[u8], depth: u16, lblk: u32) -> bool {
        let sb = &self.fs.sb;
        let inside = |p: u64, len: u64| {
            p > u64::from(sb.s_first_data_block)
                && p.checked_add(len).is_some_and(|e| e <= sb.s_blocks_count)
        };
        let entries = h_entries(n);
        if entries > 0 && e_block(n, 0) != lblk {
            return false;
        }
        let mut cur = 0u32;
        for k in 0..entries {
            let b = e_block(n, k);
            if b < cur {
                return false;
            }
            if depth == 0 {
                let len = e_len(n, k);
                if b.wrapping_add(len) <= b || !inside(e_pblk(n, k), u64::from(len)) {
                    return false;
                }
                cur = b.wrapping_add(len);
            } else {
                if !inside(i_pblk(n, k), 1) {
                    return false;
                }
                cur = b.wrapping_add(1);
            }
        }
        true
    }

    /// Kernel `ext4_find_extent`.
    pub(crate) fn find(&mut self, lblk: u32) -> Fr<Path> {
        let depth = self.depth()?;
        let mut path = Vec::with_capacity(usize::from(depth) + 1);
        let mut node = Node::Root;
        for level in 0..depth {
            let n = self.read(node)?;
            let pos = binsearch(&n, lblk).unwrap_or(0);
            let child = i_pblk(&n, pos);
            path.push(Level {
                node,
                pos: Some(pos),
                p_block: child,
            });
            self.check_block(child, depth - level - 1, e_block(&n, pos))?;
            node = Node::Block(child);
        }
        let n = self.read(node)?;
        let pos = binsearch(&n, lblk);
        let p_block = pos.map_or(0, |p| e_pblk(&n, p));
        path.push(Level { node, pos, p_block });
        Ok(path)
    }

    /// Kernel `ext4_map_blocks(NULL, inode, map, 0)` on `len` blocks from `lblk`.
    pub(crate) fn map(&mut self, lblk: u32, len: u32) -> Fr<Map> {
        let len = len.min(i32::MAX as u32);
        if lblk == EXT_MAX_BLOCKS {
            return corrupt(format!("inode {}: logical block {lblk}", self.i.ino));
        }
        let path = self.find(lblk)?;
        let leaf = path.last().expect("a leaf");
        let n = self.read(leaf.node)?;
        if let Some(e) = leaf.pos {
            let (b, l) = (e_block(&n, e), e_len(&n, e));
            if lblk >= b && lblk - b < l {
                let got = (l - (lblk - b)).min(len);
                return Ok(Map {
                    ret: got,
                    len: got,
                    pblk: e_pblk(&n, e) + u64::from(lblk - b),
                });
            }
        }
        let hole = match leaf.pos {
            None => EXT_MAX_BLOCKS - lblk,
            Some(e) if lblk < e_block(&n, e) => e_block(&n, e) - lblk,
            Some(_) => self.next_allocated(&path)?.saturating_sub(lblk),
        };
        if hole == 0 && len > 0 {
            return corrupt(format!(
                "inode {}: overlapping extents at {lblk}",
                self.i.ino
            ));
        }
        Ok(Map {
            ret: 0,
            len: len.min(hole),
            pblk: 0,
        })
    }

    /// Kernel `ext4_ext_next_allocated_block`.
    pub(crate) fn next_allocated(&mut self, path: &Path) -> Fr<u32> {
        let depth = path.len() - 1;
        if depth == 0 && path[0].pos.is_none() {
            return Ok(EXT_MAX_BLOCKS);
        }
        for d in (0..=depth).rev() {
            let n = self.read(path[d].node)?;
            if let Some(p) = path[d].pos {
                if p + 1 < h_entries(&n) {
                    return Ok(e_block(&n, p + 1));
                }
            }
        }
        Ok(EXT_MAX_BLOCKS)
    }

    /// Kernel `ext4_ext_dirty`: a tree block gets its checksum, the root is the inode's.
    pub(crate) fn dirty(&mut self, n: Node) -> Fr<()> {
        match n {
            Node::Root => self.fs.write_inode(self.i),
            Node::Block(b) => {
                if self.fs.metadata_csum() {
                    let seed = self.i.seed;
                    let blk = self.fs.block_mut(b)?;
                    let off = at(h_max(blk)).min(blk.len() - 4);
                    let c = crc32c_raw(seed, &blk[..off]);
                    set32(blk, off, c);
                }
                self.verified.insert(b);
                Ok(())
            }
        }
    }

    /// Dirties the node `ext4_ext_dirty(path + path->p_depth)` names: the leaf.
    pub(crate) fn dirty_leaf(&mut self, path: &Path) -> Fr<()> {
        let n = path.last().expect("a leaf").node;
        self.dirty(n)
    }

    /// Kernel `ext4_can_extents_be_merged` (`ex1` then `ex2`).
    fn can_merge(b1: u32, raw1: u16, p1: u64, b2: u32, raw2: u16, p2: u64) -> bool {
        if unwritten(raw1) != unwritten(raw2) {
            return false;
        }
        let (l1, l2) = (actual(raw1), actual(raw2));
        if b1.wrapping_add(l1) != b2 || l1 + l2 > EXT_INIT_MAX_LEN {
            return false;
        }
        if unwritten(raw1) && l1 + l2 > EXT_UNWRITTEN_MAX_LEN {
            return false;
        }
        p1.wrapping_add(u64::from(l1)) == p2
    }

    /// Kernel `ext4_ext_try_to_merge_right` at entry `ex` of the leaf.
    fn merge_right(&mut self, leaf: Node, ex: usize) -> Fr<bool> {
        let mut done = false;
        let n = self.edit(leaf)?;
        while ex + 1 < h_entries(n) {
            let (b1, r1, p1) = (e_block(n, ex), e_raw_len(n, ex), e_pblk(n, ex));
            let (b2, r2, p2) = (e_block(n, ex + 1), e_raw_len(n, ex + 1), e_pblk(n, ex + 1));
            if !Self::can_merge(b1, r1, p1, b2, r2, p2) {
                break;
            }
            set_e_len(n, ex, (actual(r1) + actual(r2)) as u16);
            if unwritten(r1) {
                mark_unwritten(n, ex);
            }
            let last = h_entries(n) - 1;
            if ex + 1 < last {
                n.copy_within(at(ex + 2)..at(last + 1), at(ex + 1));
            }
            set16(n, 2, (h_entries(n) - 1) as u16);
            done = true;
        }
        Ok(done)
    }

    /// Kernel `ext4_ext_try_to_merge`: with the left neighbour or else the right, then the
    /// collapse of a one-leaf tree into the inode.
    pub(crate) fn try_to_merge(&mut self, path: &mut Path, ex: usize) -> Fr<()> {
        let leaf = path.last().expect("a leaf").node;
        let mut done = false;
        if ex > 0 {
            done = self.merge_right(leaf, ex - 1)?;
        }
        if !done {
            self.merge_right(leaf, ex)?;
        }
        self.merge_up(path)
    }

    /// Kernel `ext4_ext_try_to_merge_up`.
    fn merge_up(&mut self, path: &mut Path) -> Fr<()> {
        if path.len() != 2 {
            return Ok(());
        }
        let root = self.read(Node::Root)?;
        let leaf = self.read(path[1].node)?;
        if h_entries(&root) != 1 || h_entries(&leaf) > usize::from(ROOT_MAX) {
            return Ok(());
        }
        let blk = i_pblk(&root, path[0].pos.unwrap_or(0));
        let s = at(h_entries(&leaf));
        let r = self.edit(Node::Root)?;
        r[..s].copy_from_slice(&leaf[..s]);
        set16(r, 4, ROOT_MAX);
        let (pos, p_block) = (path[1].pos, path[1].p_block);
        *path = vec![Level {
            node: Node::Root,
            pos,
            p_block,
        }];
        self.fs.free_blocks(blk, 1)
    }

    /// Kernel `ext4_ext_correct_indexes`.
    pub(crate) fn correct_indexes(&mut self, path: &Path) -> Fr<()> {
        let depth = path.len() - 1;
        let leaf = &path[depth];
        let Some(ex) = leaf.pos else {
            return corrupt(format!("inode {}: no extent to correct from", self.i.ino));
        };
        if depth == 0 || ex != 0 {
            return Ok(());
        }
        let border = e_block(&self.read(leaf.node)?, ex);
        let mut k = depth - 1;
        self.set_index_block(&path[k], border)?;
        while k > 0 {
            k -= 1;
            if path[k + 1].pos != Some(0) {
                break;
            }
            self.set_index_block(&path[k], border)?;
        }
        Ok(())
    }

    fn set_index_block(&mut self, l: &Level, v: u32) -> Fr<()> {
        let p = l.pos.unwrap_or(0);
        set32(self.edit(l.node)?, at(p), v);
        self.dirty(l.node)
    }

    /// Kernel `ext4_inode_to_goal_block` during a replay: delayed allocation (mounted so
    /// by default) and no flex groups yet (the kernel reads them after the journal), so the
    /// first block of the inode's group.
    pub(crate) fn inode_goal(&self) -> u64 {
        let sb = &self.fs.sb;
        let g = (self.i.ino - 1) / sb.s_inodes_per_group;
        u64::from(g) * u64::from(sb.s_blocks_per_group) + u64::from(sb.s_first_data_block)
    }

    /// Kernel `ext4_ext_find_goal`.
    pub(crate) fn find_goal(&mut self, path: &Path, lblk: u32) -> Fr<u64> {
        let leaf = path.last().expect("a leaf");
        if let Some(e) = leaf.pos {
            let n = self.read(leaf.node)?;
            let (b, p) = (e_block(&n, e), e_pblk(&n, e));
            return Ok(if lblk > b {
                p.wrapping_add(u64::from(lblk - b))
            } else {
                p.wrapping_sub(u64::from(b - lblk))
            });
        }
        if let Node::Block(b) = leaf.node {
            return Ok(b);
        }
        Ok(self.inode_goal())
    }

    /// Kernel `ext4_new_meta_blocks`: one block from `goal`, counted in `i_blocks` (the
    /// quota code's `inode_add_bytes`, then the inode written).
    pub(crate) fn new_meta_block(&mut self, goal: u64) -> Fr<u64> {
        let b = self.fs.new_block(goal)?;
        let n = self.i.blocks512(self.fs) + (self.fs.bs as u64 >> 9);
        self.i.set_blocks512(self.fs, n)?;
        self.fs.write_inode(self.i)?;
        Ok(b)
    }
}

//! Inserting into an extent tree (kernel `ext4_ext_insert_extent`): merged into a neighbour
//! when it continues it, else placed in its leaf, the next leaf, a new leaf split off the
//! full one (`ext4_ext_split`, `ext4_ext_insert_index`) or a tree one level deeper
//! (`ext4_ext_grow_indepth`), then merged and the indexes above corrected.

use super::extents::{
    actual, at, e_block, e_len, e_pblk, e_raw_len, h_entries, h_max, mark_unwritten, set16, set32,
    set_e_len, set_e_pblk, set_i_pblk, unwritten, Level, NewExt, Node, Path, Tree, EXT_MAX_BLOCKS,
    HDR, ROOT_MAX,
};
use super::store::{corrupt, Fr};

impl Tree<'_, '_> {
    /// Kernel `ext4_ext_insert_extent` of `new` at `path` (`pre_io`: the caller's
    /// EXT4_GET_BLOCKS_PRE_IO, no merging); returns the path to the new extent.
    pub(crate) fn insert_extent(&mut self, mut path: Path, new: NewExt, pre_io: bool) -> Fr<Path> {
        if actual(new.raw_len) == 0 {
            return corrupt(format!("inode {}: inserting an empty extent", self.i.ino));
        }
        let depth = path.len() - 1;
        let leaf = path[depth].node;
        if let (Some(mut ex), false) = (path[depth].pos, pre_io) {
            let n = self.read(leaf)?;
            let last = h_entries(&n).saturating_sub(1);
            let new_end = new.lblk.wrapping_add(actual(new.raw_len));
            let mut prepend_only = false;
            if ex < last && e_block(&n, ex).wrapping_add(e_len(&n, ex)) < new.lblk {
                ex += 1;
                prepend_only = true;
            } else if ex > 0 && new_end < e_block(&n, ex) {
                ex -= 1;
            }
            let (b, r, p) = (e_block(&n, ex), e_raw_len(&n, ex), e_pblk(&n, ex));
            if !prepend_only && Self::merges(b, r, p, new.lblk, new.raw_len, new.pblk) {
                let m = self.edit(leaf)?;
                set_e_len(m, ex, (actual(r) + actual(new.raw_len)) as u16);
                if unwritten(r) {
                    mark_unwritten(m, ex);
                }
                return self.insert_done(path, ex, pre_io);
            }
            if Self::merges(new.lblk, new.raw_len, new.pblk, b, r, p) {
                let m = self.edit(leaf)?;
                set32(m, at(ex), new.lblk);
                set_e_pblk(m, ex, new.pblk);
                set_e_len(m, ex, (actual(r) + actual(new.raw_len)) as u16);
                if unwritten(r) {
                    mark_unwritten(m, ex);
                }
                return self.insert_done(path, ex, pre_io);
            }
        }
        path = self.room_for(path, new)?;
        let depth = path.len() - 1;
        let leaf = path[depth].node;
        let n = self.edit(leaf)?;
        let near = match path[depth].pos {
            None => 0,
            Some(e) => {
                let near = if new.lblk > e_block(n, e) {
                    e + 1
                } else if new.lblk == e_block(n, e) {
                    return corrupt(format!("inode {}: extent {} exists", self.i.ino, new.lblk));
                } else {
                    e
                };
                let entries = h_entries(n);
                if near < entries {
                    n.copy_within(at(near)..at(entries), at(near + 1));
                }
                near
            }
        };
        set16(n, 2, (h_entries(n) + 1) as u16);
        set32(n, at(near), new.lblk);
        set_e_pblk(n, near, new.pblk);
        set_e_len(n, near, new.raw_len);
        path[depth].pos = Some(near);
        self.insert_done(path, near, pre_io)
    }

    /// `ext4_can_extents_be_merged`, by fields.
    fn merges(b1: u32, r1: u16, p1: u64, b2: u32, r2: u16, p2: u64) -> bool {
        if unwritten(r1) != unwritten(r2) {
            return false;
        }
        let (l1, l2) = (actual(r1), actual(r2));
        if b1.wrapping_add(l1) != b2 || l1 + l2 > 32768 || (unwritten(r1) && l1 + l2 > 32767) {
            return false;
        }
        p1.wrapping_add(u64::from(l1)) == p2
    }

    /// The end of an insertion (label `merge:`): merges, index correction (from the path's
    /// extent, which a merge into a neighbour leaves where the search put it), the leaf
    /// dirtied.
    fn insert_done(&mut self, mut path: Path, near: usize, pre_io: bool) -> Fr<Path> {
        if !pre_io {
            self.try_to_merge(&mut path, near)?;
        }
        self.correct_indexes(&path)?;
        self.dirty_leaf(&path)?;
        Ok(path)
    }

    /// A path whose leaf has a free slot for `new`: this one, the next leaf, or a new leaf.
    fn room_for(&mut self, path: Path, new: NewExt) -> Fr<Path> {
        let depth = path.len() - 1;
        let n = self.read(path[depth].node)?;
        if h_entries(&n) < h_max(&n) {
            return Ok(path);
        }
        let last = h_entries(&n).saturating_sub(1);
        let mut next = EXT_MAX_BLOCKS;
        if new.lblk > e_block(&n, last) {
            next = self.next_leaf(&path)?;
        }
        if next != EXT_MAX_BLOCKS {
            let npath = self.find(next)?;
            let nn = self.read(npath[npath.len() - 1].node)?;
            if h_entries(&nn) < h_max(&nn) {
                return Ok(npath);
            }
        }
        self.create_new_leaf(path, new)
    }

    /// Kernel `ext4_ext_next_leaf_block`.
    fn next_leaf(&mut self, path: &Path) -> Fr<u32> {
        for d in (0..path.len() - 1).rev() {
            let n = self.read(path[d].node)?;
            let p = path[d].pos.unwrap_or(0);
            if p + 1 < h_entries(&n) {
                return Ok(e_block(&n, p + 1));
            }
        }
        Ok(EXT_MAX_BLOCKS)
    }

    /// Kernel `ext4_ext_create_new_leaf`.
    fn create_new_leaf(&mut self, mut path: Path, new: NewExt) -> Fr<Path> {
        for _ in 0..8 {
            let depth = path.len() - 1;
            let mut i = depth;
            while i > 0 && !self.has_free(&path[i])? {
                i -= 1;
            }
            if self.has_free(&path[i])? {
                self.split(&mut path, new, i)?;
                return self.find(new.lblk);
            }
            self.grow_indepth()?;
            path = self.find(new.lblk)?;
            let n = self.read(path[path.len() - 1].node)?;
            if h_entries(&n) != h_max(&n) {
                return Ok(path);
            }
        }
        corrupt(format!(
            "inode {}: the extent tree does not grow",
            self.i.ino
        ))
    }

    fn has_free(&mut self, l: &Level) -> Fr<bool> {
        let n = self.read(l.node)?;
        Ok(h_entries(&n) < h_max(&n))
    }

    /// A new tree block: header (`entries`, `max`, `depth`), then `body` (entries), zeros.
    fn new_node(&self, entries: usize, max: usize, depth: u16, body: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; self.fs.bs];
        set16(&mut b, 0, 0xF30A);
        set16(&mut b, 2, entries as u16);
        set16(&mut b, 4, max as u16);
        set16(&mut b, 6, depth);
        b[HDR..HDR + body.len()].copy_from_slice(body);
        b
    }

    /// Kernel `ext4_ext_split`: the entries right of the path, at every level below `at`,
    /// moved into new blocks, the new subtree indexed at level `at`.
    fn split(&mut self, path: &mut Path, new: NewExt, at_level: usize) -> Fr<()> {
        let depth = path.len() - 1;
        let leaf = self.read(path[depth].node)?;
        let max = h_max(&leaf);
        let Some(lp) = path[depth].pos else {
            return corrupt(format!("inode {}: splitting an empty leaf", self.i.ino));
        };
        if lp + 1 > max || h_entries(&leaf) != max {
            return corrupt(format!("inode {}: splitting a leaf not full", self.i.ino));
        }
        let border = if lp + 1 != max {
            e_block(&leaf, lp + 1)
        } else {
            new.lblk
        };
        let goal = self.find_goal(path, new.lblk)?;
        let mut blocks = Vec::new();
        for _ in 0..depth - at_level {
            blocks.push(self.new_meta_block(goal)?);
        }
        let mut newblock = blocks.pop().expect("one block at least");
        let m = max - 1 - lp;
        let space = self.space(Node::Block(0));
        let moved = leaf[at(lp + 1)..at(lp + 1 + m)].to_vec();
        let node = self.new_node(m, space, 0, &moved);
        self.fs.put_block(newblock, node)?;
        self.dirty(Node::Block(newblock))?;
        if m > 0 {
            set16(self.edit(path[depth].node)?, 2, (max - m) as u16);
            self.dirty(path[depth].node)?;
        }
        let mut i = depth;
        while i > at_level + 1 {
            i -= 1;
            let old = newblock;
            newblock = blocks.pop().expect("a block per level");
            let n = self.read(path[i].node)?;
            let (imax, ip) = (h_max(&n), path[i].pos.unwrap_or(0));
            if h_entries(&n) != imax {
                return corrupt(format!("inode {}: splitting an index not full", self.i.ino));
            }
            let m = imax - 1 - ip;
            let mut body = vec![0u8; 12];
            set32(&mut body, 0, border);
            set_i_pblk_at(&mut body, old);
            body.extend_from_slice(&n[at(ip + 1)..at(ip + 1 + m)]);
            let node = self.new_node(1 + m, space, (depth - i) as u16, &body);
            self.fs.put_block(newblock, node)?;
            self.dirty(Node::Block(newblock))?;
            if m > 0 {
                set16(self.edit(path[i].node)?, 2, (imax - m) as u16);
                self.dirty(path[i].node)?;
            }
        }
        self.insert_index(&path[at_level], border, newblock)
    }

    /// Kernel `ext4_ext_insert_index`: entry (`logical`, `ptr`) next to the path's index.
    fn insert_index(&mut self, l: &Level, logical: u32, ptr: u64) -> Fr<()> {
        let ino = self.i.ino;
        let n = self.edit(l.node)?;
        let p = l.pos.unwrap_or(0);
        let (entries, max) = (h_entries(n), h_max(n));
        if logical == e_block(n, p) || entries >= max {
            return corrupt(format!("inode {ino}: bad index insertion"));
        }
        let ix = if logical > e_block(n, p) { p + 1 } else { p };
        if ix >= max {
            return corrupt(format!("inode {ino}: index past the node"));
        }
        if ix < entries {
            n.copy_within(at(ix)..at(entries), at(ix + 1));
        }
        set32(n, at(ix), logical);
        set_i_pblk(n, ix, ptr);
        set16(n, 2, (entries + 1) as u16);
        self.dirty(l.node)
    }

    /// Kernel `ext4_ext_grow_indepth`: the root's entries moved into a new block, the root
    /// an index of one entry.
    fn grow_indepth(&mut self) -> Fr<()> {
        let root = self.read(Node::Root)?;
        let depth = super::extents::h_depth(&root);
        let first = u64::from(self.fs.sb.s_first_data_block);
        let mut goal = if depth > 0 {
            super::extents::i_pblk(&root, 0)
        } else {
            0
        };
        if goal > first {
            goal -= 1;
        } else {
            goal = self.inode_goal();
        }
        let newblock = self.new_meta_block(goal)?;
        let root = self.read(Node::Root)?;
        let mut node = vec![0u8; self.fs.bs];
        node[..60].copy_from_slice(&root);
        let space = self.space(Node::Block(0));
        set16(&mut node, 4, space as u16);
        set16(&mut node, 0, 0xF30A);
        self.fs.put_block(newblock, node)?;
        self.dirty(Node::Block(newblock))?;
        let r = self.edit(Node::Root)?;
        set16(r, 2, 1);
        set_i_pblk(r, 0, newblock);
        if depth == 0 {
            set16(r, 4, ROOT_MAX);
        }
        set16(r, 6, depth + 1);
        self.fs.write_inode(self.i)
    }
}

/// `ext4_idx_store_pblock` into a lone index entry.
fn set_i_pblk_at(e: &mut [u8], p: u64) {
    set32(e, 4, p as u32);
    set16(e, 8, (p >> 32) as u16);
}

//! Removing from an extent tree and the replay's own tree steps: kernel
//! `ext4_ext_remove_space` (`ext4_ext_rm_leaf`, `ext4_ext_rm_idx`, `ext4_remove_blocks`
//! without bigalloc's partial clusters), `ext4_split_extent_at` as
//! `ext4_force_split_extent_at` calls it, and the fast-commit helpers
//! `ext4_ext_replay_update_ex`, `ext4_ext_replay_shrink_inode`,
//! `ext4_ext_replay_set_iblocks` and `ext4_ext_clear_bb`.
//!
//! Every loop is bounded: by the entries of a node, the depth of the tree, or the logical
//! blocks it maps; a shrink through a hole jumps to the hole's end once a pass over it would
//! change nothing (what the kernel's block-by-block walk does, without its cost).

use super::extents::{
    at, e_block, e_len, e_pblk, e_raw_len, h_entries, i_pblk, mark_initialized, mark_unwritten,
    set16, set32, set_e_len, set_e_pblk, unwritten, Level, NewExt, Node, Path, Tree,
    EXT_MAX_BLOCKS, ROOT_MAX,
};
use super::scan::Region;
use super::store::{corrupt, FcError, Fr};

/// Most passes of a shrink or block count (each maps at least one more extent or hole).
const MAX_PASSES: u64 = 1 << 22;

/// A level of `ext4_ext_remove_space`'s own path: `p_idx` may step before the first entry.
#[derive(Clone, Copy, Debug)]
struct RmLevel {
    node: Option<Node>,
    pos: Option<isize>,
    p_block: u64,
}

impl Tree<'_, '_> {
    /// Kernel `ext4_ext_remove_space(inode, start, end)`.
    pub(crate) fn remove_space(&mut self, start: u32, end: u32) -> Fr<()> {
        let mut depth = usize::from(self.depth()?);
        let mut found: Option<Path> = None;
        if end < EXT_MAX_BLOCKS - 1 {
            let path = self.find(end)?;
            let leaf = path.last().expect("a leaf");
            let Some(e) = leaf.pos else {
                if depth > 0 {
                    return corrupt(format!("inode {}: an empty leaf", self.i.ino));
                }
                return Ok(());
            };
            let n = self.read(leaf.node)?;
            let b = e_block(&n, e);
            let ex_end = b.wrapping_add(e_len(&n, e)).wrapping_sub(1);
            found = Some(if end >= b && end < ex_end {
                self.force_split(path, end + 1)?
            } else {
                path
            });
        }
        depth = usize::from(self.depth()?);
        let mut path = vec![
            RmLevel {
                node: None,
                pos: None,
                p_block: 0
            };
            depth + 1
        ];
        path[0].node = Some(Node::Root);
        let mut i: isize = 0;
        if let Some(fp) = found {
            if fp.len() != depth + 1 {
                return corrupt(format!("inode {}: the tree changed depth", self.i.ino));
            }
            for (k, l) in fp.iter().enumerate() {
                path[k] = RmLevel {
                    node: Some(l.node),
                    pos: l.pos.map(|p| p as isize),
                    p_block: l.p_block,
                };
            }
            for l in path.iter_mut().take(depth).skip(1) {
                let n = self.read(l.node.expect("found"))?;
                l.p_block = h_entries(&n) as u64 + 1;
            }
            i = depth as isize;
        }
        self.remove_walk(&mut path, depth, i, start, end)?;
        let root = self.read(Node::Root)?;
        if h_entries(&root) == 0 {
            let r = self.edit(Node::Root)?;
            set16(r, 6, 0);
            set16(r, 4, ROOT_MAX);
            self.dirty(Node::Root)?;
        }
        Ok(())
    }

    /// The walk of `ext4_ext_remove_space` from level `i`, right to left, depth first.
    fn remove_walk(
        &mut self,
        path: &mut [RmLevel],
        depth: usize,
        mut i: isize,
        start: u32,
        end: u32,
    ) -> Fr<()> {
        let mut steps = 0u64;
        while i >= 0 {
            steps += 1;
            if steps > MAX_PASSES {
                return Err(FcError::Fatal("an extent tree too large to walk".into()));
            }
            let k = i as usize;
            if k == depth {
                self.rm_leaf(path, depth, start, end)?;
                i -= 1;
                continue;
            }
            let node = path[k].node.expect("an index level");
            let n = self.read(node)?;
            let entries = h_entries(&n) as isize;
            match path[k].pos {
                None => {
                    path[k].pos = Some(entries - 1);
                    path[k].p_block = entries as u64 + 1;
                }
                Some(p) => path[k].pos = Some(p - 1),
            }
            let p = path[k].pos.expect("set");
            if p >= 0 && entries as u64 != path[k].p_block {
                let child = i_pblk(&n, p as usize);
                self.check_block(child, (depth - k - 1) as u16, e_block(&n, p as usize))?;
                path[k + 1] = RmLevel {
                    node: Some(Node::Block(child)),
                    pos: None,
                    p_block: 0,
                };
                path[k].p_block = entries as u64;
                i += 1;
            } else {
                if entries == 0 && k > 0 {
                    self.rm_idx(path, k)?;
                }
                i -= 1;
            }
        }
        Ok(())
    }

    /// Kernel `ext4_ext_rm_leaf`.
    fn rm_leaf(&mut self, path: &mut [RmLevel], depth: usize, start: u32, end: u32) -> Fr<()> {
        let leaf = path[depth].node.expect("a leaf");
        let n = self.read(leaf)?;
        let mut ex = path[depth].pos.unwrap_or(h_entries(&n) as isize - 1);
        let mut correct_index = false;
        while ex >= 0 {
            let n = self.read(leaf)?;
            let e = ex as usize;
            let (b, len) = (e_block(&n, e), e_len(&n, e));
            if b.wrapping_add(len) <= start {
                break;
            }
            let uw = unwritten(e_raw_len(&n, e));
            path[depth].pos = Some(ex);
            let last = b.wrapping_add(len).wrapping_sub(1);
            let a = b.max(start);
            let bb = last.min(end);
            if end < b {
                ex -= 1;
                continue;
            }
            if bb != last {
                return corrupt(format!(
                    "inode {}: cannot remove {start}..={end} from extent {b}+{len}",
                    self.i.ino
                ));
            }
            let num = if a != b { a - b } else { 0 };
            if e == 0 {
                correct_index = true;
            }
            // ext4_remove_blocks: the tail from `a` freed.
            let freed = b.wrapping_add(len).wrapping_sub(a);
            let pblk = e_pblk(&n, e) + u64::from(len) - u64::from(freed);
            self.fs.free_blocks(pblk, u64::from(freed))?;
            let entries = h_entries(&n);
            let m = self.edit(leaf)?;
            if num == 0 {
                set_e_pblk(m, e, 0);
            }
            set_e_len(m, e, num as u16);
            if uw && num != 0 {
                mark_unwritten(m, e);
            }
            if num == 0 {
                if end != EXT_MAX_BLOCKS - 1 {
                    m.copy_within(at(e + 1)..at(entries), at(e));
                    m[at(entries - 1)..at(entries)].fill(0);
                }
                set16(m, 2, (entries - 1) as u16);
            }
            self.dirty(leaf)?;
            ex -= 1;
        }
        let entries = h_entries(&self.read(leaf)?);
        if correct_index && entries > 0 {
            let p = self.rm_path(path, depth);
            self.correct_indexes(&p)?;
        }
        if entries == 0 && matches!(leaf, Node::Block(_)) {
            self.rm_idx(path, depth)?;
        }
        Ok(())
    }

    /// The remove walk's levels `0..=depth` as a search path.
    fn rm_path(&self, path: &[RmLevel], depth: usize) -> Path {
        path[..=depth]
            .iter()
            .map(|l| Level {
                node: l.node.unwrap_or(Node::Root),
                pos: l.pos.and_then(|p| usize::try_from(p).ok()),
                p_block: l.p_block,
            })
            .collect()
    }

    /// Kernel `ext4_ext_rm_idx`: the index entry of level `depth`'s node removed from its
    /// parent, the node's block freed, the keys above corrected.
    fn rm_idx(&mut self, path: &mut [RmLevel], depth: usize) -> Fr<()> {
        let mut k = depth - 1;
        let node = path[k].node.expect("a parent");
        let n = self.read(node)?;
        let p = path[k]
            .pos
            .and_then(|p| usize::try_from(p).ok())
            .unwrap_or(0);
        let entries = h_entries(&n);
        if entries == 0 {
            return corrupt(format!(
                "inode {}: removing from an empty index",
                self.i.ino
            ));
        }
        let leaf = i_pblk(&n, p);
        let m = self.edit(node)?;
        if p + 1 < entries {
            m.copy_within(at(p + 1)..at(entries), at(p));
        }
        set16(m, 2, (entries - 1) as u16);
        self.dirty(node)?;
        self.fs.free_blocks(leaf, 1)?;
        while k > 0 {
            k -= 1;
            if path[k + 1].pos != Some(0) {
                break;
            }
            let child = self.read(path[k + 1].node.expect("a level"))?;
            let key = e_block(&child, 0);
            let up = path[k].node.expect("a level");
            let pk = path[k]
                .pos
                .and_then(|p| usize::try_from(p).ok())
                .unwrap_or(0);
            set32(self.edit(up)?, at(pk), key);
            self.dirty(up)?;
        }
        Ok(())
    }

    /// Kernel `ext4_force_split_extent_at(path, lblk)` (PRE_IO: no merge).
    pub(crate) fn force_split(&mut self, path: Path, split: u32) -> Fr<Path> {
        let leaf = path.last().expect("a leaf");
        let Some(e) = leaf.pos else {
            return corrupt(format!("inode {}: splitting no extent", self.i.ino));
        };
        let n = self.read(leaf.node)?;
        let uw = unwritten(e_raw_len(&n, e));
        self.split_at(path, split, uw)
    }

    /// Kernel `ext4_split_extent_at` with both halves keeping the extent's state (`uw`).
    fn split_at(&mut self, path: Path, split: u32, uw: bool) -> Fr<Path> {
        let leaf = path.last().expect("a leaf").node;
        let e = path.last().expect("a leaf").pos.expect("an extent");
        let n = self.read(leaf)?;
        let (b, raw, len, p) = (
            e_block(&n, e),
            e_raw_len(&n, e),
            e_len(&n, e),
            e_pblk(&n, e),
        );
        if split < b || split - b >= len {
            return corrupt(format!(
                "inode {}: split at {split} outside {b}+{len}",
                self.i.ino
            ));
        }
        if split == b {
            let m = self.edit(leaf)?;
            if uw {
                mark_unwritten(m, e);
            } else {
                mark_initialized(m, e);
            }
            self.dirty_leaf(&path)?;
            return Ok(path);
        }
        let m = self.edit(leaf)?;
        set_e_len(m, e, (split - b) as u16);
        if uw {
            mark_unwritten(m, e);
        }
        self.dirty(leaf)?;
        let mut raw2 = (len - (split - b)) as u16;
        if uw {
            raw2 |= 0x8000;
        }
        let new = NewExt {
            lblk: split,
            raw_len: raw2,
            pblk: p + u64::from(split - b),
        };
        match self.insert_extent(path, new, true) {
            Ok(p) => Ok(p),
            Err(e2) => {
                if let Ok(fix) = self.find(b) {
                    let l = fix.last().expect("a leaf");
                    if let Some(fe) = l.pos {
                        set_e_len(self.edit(l.node)?, fe, raw);
                        self.dirty_leaf(&fix)?;
                    }
                }
                Err(e2)
            }
        }
    }

    /// Kernel `ext4_ext_replay_update_ex`: the `len` blocks from `start` made one extent
    /// mapped at `pblk`, written or not (`uw`).
    pub(crate) fn replay_update_ex(&mut self, start: u32, len: u32, uw: bool, pblk: u64) -> Fr<()> {
        let r = self.update_ex(start, len, uw, pblk);
        self.fs.write_inode(self.i)?;
        r
    }

    fn update_ex(&mut self, start: u32, len: u32, uw: bool, pblk: u64) -> Fr<()> {
        let mut path = self.find(start)?;
        let ex_of = |t: &mut Self, p: &Path| -> Fr<(usize, Vec<u8>)> {
            let l = p.last().expect("a leaf");
            match l.pos {
                Some(e) => Ok((e, t.read(l.node)?)),
                None => corrupt(format!("inode {}: no extent at {start}", t.i.ino)),
            }
        };
        let (e, n) = ex_of(self, &path)?;
        if e_block(&n, e) != start || e_len(&n, e) != len {
            self.force_split(path, start)?;
            path = self.find(start)?;
            let (e, n) = ex_of(self, &path)?;
            if e_len(&n, e) != len {
                self.force_split(path, start.wrapping_add(len))?;
                path = self.find(start)?;
            }
        }
        let (e, _) = ex_of(self, &path)?;
        let leaf = path.last().expect("a leaf").node;
        let m = self.edit(leaf)?;
        if uw {
            mark_unwritten(m, e);
        } else {
            mark_initialized(m, e);
        }
        set_e_pblk(m, e, pblk);
        self.dirty_leaf(&path)
    }

    /// Kernel `ext4_ext_replay_shrink_inode(inode, end)`: every extent from the first to
    /// `end` tried for merges.
    pub(crate) fn replay_shrink(&mut self, end: u32) -> Fr<()> {
        let mut cur = 0u32;
        let mut passes = 0u64;
        while cur < end {
            passes += 1;
            if passes > MAX_PASSES {
                return Err(FcError::Fatal("an extent tree too large to shrink".into()));
            }
            let Ok(mut path) = self.find(cur) else {
                return Ok(());
            };
            let l = path.last().expect("a leaf").clone();
            let Some(e) = l.pos else {
                return self.fs.write_inode(self.i);
            };
            let n = self.read(l.node)?;
            let old = cur;
            let ext_end = e_block(&n, e).wrapping_add(e_len(&n, e));
            cur = if ext_end <= old { old + 1 } else { ext_end };
            let before = (self.i.raw.clone(), self.read(l.node)?);
            self.try_to_merge(&mut path, e)?;
            self.dirty_leaf(&path)?;
            self.fs.write_inode(self.i)?;
            let unchanged = before == (self.i.raw.clone(), self.read(l.node).unwrap_or_default());
            if ext_end <= old && unchanged {
                // In a hole: every block until the next extent passes the same way.
                let next = self.next_allocated(&path)?;
                cur = cur.max(next.min(end));
            }
        }
        Ok(())
    }

    /// Kernel `ext4_ext_replay_set_iblocks`: `i_blocks` counted from the tree (data blocks
    /// and tree blocks), the inode written. A corrupt tree stops the count where the kernel
    /// stops it.
    pub(crate) fn replay_set_iblocks(&mut self) -> Fr<()> {
        let Some(path) = soft(self.find(EXT_MAX_BLOCKS - 1))? else {
            return Ok(());
        };
        let l = path.last().expect("a leaf").clone();
        let Some(e) = l.pos else {
            return self.set_iblocks(0);
        };
        let n = self.read(l.node)?;
        let end = e_block(&n, e).wrapping_add(e_len(&n, e));
        let mut numblks = 0u64;
        let mut cur = 0u32;
        while cur < end {
            let Some(m) = soft(self.map(cur, end - cur))? else {
                break;
            };
            if m.len == 0 {
                break;
            }
            numblks += u64::from(m.ret);
            cur = cur.wrapping_add(m.len);
        }
        match self.count_tree_blocks(end)? {
            Some(t) => self.set_iblocks(numblks + t),
            None => Ok(()),
        }
    }

    /// The tree blocks `ext4_ext_replay_set_iblocks` counts up to logical block `end`;
    /// `None` when it stops without setting `i_blocks`.
    fn count_tree_blocks(&mut self, end: u32) -> Fr<Option<u64>> {
        let mut cur = 0u32;
        if soft(self.skip_hole(&mut cur))?.is_none() {
            return Ok(Some(0));
        }
        let Some(first) = soft(self.find(cur))? else {
            return Ok(Some(0));
        };
        let mut numblks = (first.len() - 1) as u64;
        let mut passes = 0u64;
        while cur < end {
            passes += 1;
            if passes > MAX_PASSES {
                return Err(FcError::Fatal("an extent tree too large to count".into()));
            }
            let Some(path) = soft(self.find(cur))? else {
                break;
            };
            let l = path.last().expect("a leaf").clone();
            let Some(e) = l.pos else {
                return Ok(None);
            };
            let n = self.read(l.node)?;
            cur = (cur + 1).max(e_block(&n, e).wrapping_add(e_len(&n, e)));
            if soft(self.skip_hole(&mut cur))?.is_none() {
                break;
            }
            let Some(path2) = soft(self.find(cur))? else {
                break;
            };
            let blocks = |p: &Path, i: usize| match p.get(i).map(|l| l.node) {
                Some(Node::Block(b)) => b,
                _ => 0,
            };
            for i in 0..path.len().max(path2.len()) {
                let (c1, c2) = (blocks(&path, i), blocks(&path2, i));
                if c1 != c2 && c2 != 0 {
                    numblks += 1;
                }
            }
        }
        Ok(Some(numblks))
    }

    fn set_iblocks(&mut self, blocks: u64) -> Fr<()> {
        let n = blocks << (self.fs.sb.s_log_block_size + 1);
        self.i.set_blocks512(self.fs, n)?;
        self.fs.write_inode(self.i)
    }

    /// `skip_hole`: past the hole at `cur`, if it is one (the map's length up to `i_size`).
    fn skip_hole(&mut self, cur: &mut u32) -> Fr<()> {
        let size_blocks = (self.i.size(self.fs) >> (10 + self.fs.sb.s_log_block_size)) as u32;
        let m = self.map(*cur, size_blocks.wrapping_sub(*cur))?;
        if m.ret == 0 {
            *cur = cur.wrapping_add(m.len);
        }
        Ok(())
    }

    /// Kernel `ext4_ext_clear_bb`: every block the tree maps, and its tree blocks, marked free
    /// and excluded from the replay's allocations.
    pub(crate) fn clear_bb(&mut self) -> Fr<()> {
        if self.i.inline_data() {
            return Ok(());
        }
        let Some(path) = soft(self.find(EXT_MAX_BLOCKS - 1))? else {
            return Ok(());
        };
        let l = path.last().expect("a leaf").clone();
        let Some(e) = l.pos else {
            return Ok(());
        };
        let n = self.read(l.node)?;
        let end = e_block(&n, e).wrapping_add(e_len(&n, e));
        let ino = self.i.ino;
        let mut cur = 0u32;
        while cur < end {
            let Some(m) = soft(self.map(cur, end - cur))? else {
                break;
            };
            if m.len == 0 {
                break;
            }
            if m.ret > 0 {
                if let Some(p) = soft(self.find(cur))? {
                    for lv in &p[..p.len() - 1] {
                        self.fs.mark_bb(lv.p_block, 1, false)?;
                        self.fs.excluded.push(Region {
                            ino,
                            pblk: lv.p_block,
                            len: 1,
                        });
                    }
                }
                self.fs.mark_bb(m.pblk, u64::from(m.len), false)?;
                self.fs.excluded.push(Region {
                    ino,
                    pblk: m.pblk,
                    len: u64::from(m.len),
                });
            }
            cur = cur.wrapping_add(m.len);
        }
        Ok(())
    }

    /// The blocks of the tree `ext4_fc_set_bitmaps_and_counters` marks used: every mapped
    /// range and the tree blocks above it.
    pub(crate) fn mark_used(&mut self) -> Fr<()> {
        let mut cur = 0u32;
        while cur < EXT_MAX_BLOCKS {
            let Some(m) = soft(self.map(cur, EXT_MAX_BLOCKS - cur))? else {
                break;
            };
            if m.ret > 0 {
                if let Some(p) = soft(self.find(cur))? {
                    for lv in &p[..p.len() - 1] {
                        self.fs.mark_bb(lv.p_block, 1, true)?;
                    }
                }
                cur = cur.wrapping_add(m.ret);
                self.fs.mark_bb(m.pblk, u64::from(m.len), true)?;
            } else {
                cur = cur.saturating_add(m.len.max(1));
            }
        }
        Ok(())
    }
}

/// A step whose corruption ends the caller's loop as the kernel's `if (ret < 0) break;`:
/// `None` then; read errors and bounds still abandon the replay.
pub(crate) fn soft<T>(r: Fr<T>) -> Fr<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(FcError::Fatal(m)) => Err(FcError::Fatal(m)),
        Err(_) => Ok(None),
    }
}

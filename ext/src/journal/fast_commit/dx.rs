//! Entries added to htree directories as the kernel adds them (`ext4_dx_add_entry`):
//! `dx_probe` down to the leaf a name's hash picks, the entry placed there, or the leaf split
//! (`do_split`: entries sorted by hash as `dx_sort_map` sorts them, the upper half moved to
//! a new block, an index entry inserted with `dx_insert_block`), an index node split or the
//! tree made one level deeper when the index is full; and a full one-block directory made an
//! htree (`make_indexed_dir`). Index nodes carry the `dx_tail` checksum.
//!
//! Byte for byte: the sort map the kernel builds at the end of the new block stays there
//! under the moved entries' slack, as it does in the kernel's buffer.

use super::dir::{init_tail, rec_len_for, Added, TAIL};
use super::dx_hash::{dirhash, DX_HASH_TEA};
use super::dx_leaf::{move_dirents, pack, sort_map, split_point};
use super::extents::Tree;
use super::inode::EXT4_INDEX_FL;
use super::store::{corrupt, FcError, Fr};
use crate::bytes::{crc32c_raw, le16, le32};
use crate::features::incompat;

/// One level of an htree path (kernel `struct dx_frame`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Frame {
    pblk: u64,
    /// Byte offset of the entries (the count/limit pair first).
    entries: usize,
    at: usize,
}

/// The hash setup of a directory's root.
#[derive(Clone, Copy)]
struct Hinfo {
    version: u8,
    seed: [u32; 4],
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn count(b: &[u8], e: usize) -> usize {
    usize::from(le16(b, e + 2))
}
fn limit(b: &[u8], e: usize) -> usize {
    usize::from(le16(b, e))
}
fn ent_hash(b: &[u8], e: usize, i: usize) -> u32 {
    le32(b, e + 8 * i)
}
fn ent_block(b: &[u8], e: usize, i: usize) -> u32 {
    le32(b, e + 8 * i + 4) & 0x0fff_ffff
}

/// The result of a probe that fails as the kernel's `ERR_BAD_DX_DIR`.
pub(crate) struct BadDx;

/// A probe's result: the frames, the hash setup, the name's hash.
type Probe = (Vec<Frame>, Hinfo, u32);

impl Tree<'_, '_> {
    fn csum_size(&self) -> usize {
        if self.fs.metadata_csum() {
            TAIL
        } else {
            0
        }
    }

    /// `dx_root_limit` / `dx_node_limit`.
    fn dx_limit(&self, root_info: Option<usize>) -> usize {
        let bs = self.fs.bs;
        let space = match root_info {
            Some(info) => bs - rec_len_for(1) - rec_len_for(2) - info,
            None => bs - 8,
        };
        let space = if self.fs.metadata_csum() {
            space - 8
        } else {
            space
        };
        space / 8
    }

    /// Kernel `ext4_dx_csum_set` of the index block `b` (entries at `entries`).
    fn dx_csum_set(&mut self, b: u64, entries: usize) -> Fr<()> {
        if !self.fs.metadata_csum() {
            return Ok(());
        }
        let seed = self.i.seed;
        let bs = self.fs.bs;
        let blk = self.fs.block_mut(b)?;
        let (lim, cnt) = (limit(blk, entries), count(blk, entries));
        let t = entries + 8 * lim;
        if t + 8 > bs {
            return corrupt(format!("index block {b}: no room for its checksum"));
        }
        let mut c = crc32c_raw(seed, &blk[..entries + 8 * cnt]);
        c = crc32c_raw(c, &blk[t..t + 4]);
        c = crc32c_raw(c, &[0; 4]);
        put32(blk, t + 4, c);
        Ok(())
    }

    /// The device block of directory block `l` (a hole is corrupt here).
    fn dir_pblk(&mut self, l: u32) -> Fr<u64> {
        let m = self.map(l, 1)?;
        if m.ret == 0 {
            return corrupt(format!("directory {}: hole at block {l}", self.i.ino));
        }
        Ok(m.pblk)
    }

    /// An index block read: its `dx_tail` checksum checked.
    fn index_block(&mut self, b: u64, entries: usize) -> Fr<Vec<u8>> {
        let blk = self.fs.block(b)?.to_vec();
        if self.fs.metadata_csum() {
            let (lim, cnt) = (limit(&blk, entries), count(&blk, entries));
            let t = entries + 8 * lim;
            if t + 8 > blk.len() || cnt > lim {
                return corrupt(format!("index block {b}: bad count or limit"));
            }
            let mut c = crc32c_raw(self.i.seed, &blk[..entries + 8 * cnt]);
            c = crc32c_raw(c, &blk[t..t + 4]);
            c = crc32c_raw(c, &[0; 4]);
            if le32(&blk, t + 4) != c {
                return corrupt(format!("index block {b}: checksum mismatch"));
            }
        }
        Ok(blk)
    }

    /// The hash version (unsigned variants included) and seed of version `v`.
    fn hinfo(&self, v: u8) -> Hinfo {
        let raw = &self.fs.sb.raw;
        let unsigned = le32(raw, 0x160) & 0x2 != 0;
        let mut seed = [0u32; 4];
        for (k, s) in seed.iter_mut().enumerate() {
            *s = le32(raw, 0xEC + 4 * k);
        }
        Hinfo {
            version: if v <= DX_HASH_TEA && unsigned {
                v + 3
            } else {
                v
            },
            seed,
        }
    }

    fn hash(&self, h: Hinfo, name: &[u8]) -> Fr<u32> {
        dirhash(name, h.version, &h.seed).ok_or_else(|| {
            FcError::Corrupt(format!(
                "directory {}: hash version {}",
                self.i.ino, h.version
            ))
        })
    }

    /// Kernel `dx_probe`: the frames from the root to the leaf's index entry, the hash
    /// setup and the name's hash.
    fn dx_probe(&mut self, name: &[u8]) -> Fr<Result<Probe, BadDx>> {
        let b0 = self.dir_pblk(0)?;
        let head = self.fs.block(b0)?.to_vec();
        if self.fs.metadata_csum() && (le32(&head, 24) != 0 || head[29] != 8) {
            return corrupt(format!("directory {}: a bad index root", self.i.ino));
        }
        let root = self.index_block(b0, 24 + usize::from(head[29]))?;
        let (hv, info_len, indirect, flags) = (root[28], usize::from(root[29]), root[30], root[31]);
        if hv > DX_HASH_TEA || flags & 1 != 0 {
            return Ok(Err(BadDx));
        }
        let levels = if self.fs.sb.has_incompat(incompat::LARGEDIR) {
            3
        } else {
            2
        };
        let e0 = 24 + info_len;
        if indirect >= levels
            || e0 + 8 > root.len()
            || limit(&root, e0) != self.dx_limit(Some(info_len))
        {
            return Ok(Err(BadDx));
        }
        let h = self.hinfo(hv);
        let hash = self.hash(h, name)?;
        let mut frames = Vec::new();
        let (mut blk, mut pblk, mut e) = (root, b0, e0);
        let mut seen = vec![0u32];
        loop {
            let n = count(&blk, e);
            if n == 0 || n > limit(&blk, e) || e + 8 * n > blk.len() {
                return Ok(Err(BadDx));
            }
            let (mut p, mut q) = (1isize, n as isize - 1);
            while p <= q {
                let m = p + (q - p) / 2;
                if ent_hash(&blk, e, m as usize) > hash {
                    q = m - 1;
                } else {
                    p = m + 1;
                }
            }
            let at = (p - 1) as usize;
            frames.push(Frame {
                pblk,
                entries: e,
                at,
            });
            let block = ent_block(&blk, e, at);
            if seen.contains(&block) {
                return Ok(Err(BadDx));
            }
            if frames.len() > usize::from(indirect) {
                return Ok(Ok((frames, h, hash)));
            }
            seen.push(block);
            pblk = self.dir_pblk(block)?;
            e = 8;
            blk = self.index_block(pblk, e)?;
            if limit(&blk, e) != self.dx_limit(None) {
                return Ok(Err(BadDx));
            }
        }
    }

    /// Kernel `ext4_dx_add_entry`; `None` when the probe fails (`ERR_BAD_DX_DIR`).
    pub(crate) fn dx_add_entry(
        &mut self,
        name: &[u8],
        target: u32,
        mode: u16,
    ) -> Fr<Option<Added>> {
        for _ in 0..4 {
            let Ok((mut frames, h, hash)) = self.dx_probe(name)? else {
                return Ok(None);
            };
            let f = *frames.last().expect("a frame");
            let fb = self.fs.block(f.pblk)?.to_vec();
            let leaf = self.dir_pblk(ent_block(&fb, f.entries, f.at))?;
            if let Some(a) = self.add_to_block(leaf, name, target, mode)? {
                return Ok(Some(a));
            }
            if count(&fb, f.entries) == limit(&fb, f.entries) && self.split_index(&mut frames)? {
                continue;
            }
            let f = *frames.last().expect("a frame");
            let (tb, toff) = self.do_split(leaf, f, h, hash)?;
            self.insert_at(tb, toff, name, target, mode)?;
            return Ok(Some(Added::Exact));
        }
        corrupt(format!(
            "directory {}: the index keeps changing",
            self.i.ino
        ))
    }

    /// The index split of `ext4_dx_add_entry` when the leaf's index node is full; true when
    /// the probe must be redone (`restart`).
    fn split_index(&mut self, frames: &mut [Frame]) -> Fr<bool> {
        let nlev = frames.len();
        let mut k = nlev - 1;
        let mut add_level = true;
        let mut restart = false;
        while k > 0 {
            let up = self.fs.block(frames[k - 1].pblk)?.to_vec();
            if count(&up, frames[k - 1].entries) < limit(&up, frames[k - 1].entries) {
                add_level = false;
                break;
            }
            k -= 1;
            restart = true;
        }
        let levels = if self.fs.sb.has_incompat(incompat::LARGEDIR) {
            3
        } else {
            2
        };
        if add_level && nlev == levels {
            // The kernel's -ENOSPC: the link fails, and with it the recovery.
            return corrupt(format!(
                "directory {}: its index is full at its deepest level",
                self.i.ino
            ));
        }
        let f = frames[k];
        let node = self.fs.block(f.pblk)?.to_vec();
        let size = self.i.size(self.fs);
        let newl = (size >> (10 + self.fs.sb.s_log_block_size)) as u32;
        let nb = self.append_block(size)?;
        let mut n2 = vec![0u8; self.fs.bs];
        put16(&mut n2, 4, self.fs.bs as u16);
        if add_level {
            self.add_index_level(f, &node, n2, nb, newl)?;
            return Ok(true);
        }
        let up = frames[k - 1];
        frames[k] = self.split_node(f, up, &node, n2, (nb, newl))?;
        Ok(restart)
    }

    /// The index node of frame `f` (bytes `node`) split in halves, the upper half into the
    /// new block (`nb`, logical `newl`; `n2` its bytes), indexed in the parent `up`; the
    /// frame's new place.
    fn split_node(
        &mut self,
        f: Frame,
        up: Frame,
        node: &[u8],
        mut n2: Vec<u8>,
        (nb, newl): (u64, u32),
    ) -> Fr<Frame> {
        let icount = count(node, f.entries);
        let c1 = icount / 2;
        let hash2 = ent_hash(node, f.entries, c1);
        n2[8..8 + 8 * (icount - c1)]
            .copy_from_slice(&node[f.entries + 8 * c1..f.entries + 8 * icount]);
        put16(&mut n2, 8, self.dx_limit(None) as u16);
        put16(&mut n2, 10, (icount - c1) as u16);
        put16(self.fs.block_mut(f.pblk)?, f.entries + 2, c1 as u16);
        let (mut cur, mut other, mut at) = (f.pblk, nb, f.at);
        if f.at >= c1 {
            at = f.at - c1;
            (cur, other) = (nb, f.pblk);
        }
        self.fs.put_block(nb, n2)?;
        self.dx_insert_block(up, hash2, newl)?;
        self.dx_csum_set(other, if other == f.pblk { f.entries } else { 8 })?;
        self.dx_csum_set(up.pblk, up.entries)?;
        let entries = if cur == f.pblk { f.entries } else { 8 };
        self.dx_csum_set(cur, entries)?;
        Ok(Frame {
            pblk: cur,
            entries,
            at,
        })
    }

    /// The root's entries (frame `f`, bytes `node`) moved into the new block `nb` (logical
    /// `newl`; `n2` its bytes), the root left with one entry and one more level.
    fn add_index_level(
        &mut self,
        f: Frame,
        node: &[u8],
        mut n2: Vec<u8>,
        nb: u64,
        newl: u32,
    ) -> Fr<()> {
        let icount = count(node, f.entries);
        n2[8..8 + 8 * icount].copy_from_slice(&node[f.entries..f.entries + 8 * icount]);
        put16(&mut n2, 8, self.dx_limit(None) as u16);
        self.fs.put_block(nb, n2)?;
        let r = self.fs.block_mut(f.pblk)?;
        put16(r, f.entries + 2, 1);
        put32(r, f.entries + 4, newl);
        r[30] = r[30].wrapping_add(1);
        self.dx_csum_set(f.pblk, f.entries)?;
        self.dx_csum_set(nb, 8)
    }

    /// Kernel `dx_insert_block`: (`hash`, `block`) after the frame's entry.
    fn dx_insert_block(&mut self, f: Frame, hash: u32, block: u32) -> Fr<()> {
        let b = self.fs.block_mut(f.pblk)?;
        let n = count(b, f.entries);
        let new = f.at + 1;
        if n >= limit(b, f.entries) || new > n || f.entries + 8 * (n + 1) > b.len() {
            return corrupt("an index entry past its node".into());
        }
        b.copy_within(
            f.entries + 8 * new..f.entries + 8 * n,
            f.entries + 8 * (new + 1),
        );
        put32(b, f.entries + 8 * new, hash);
        put32(b, f.entries + 8 * new + 4, block);
        put16(b, f.entries + 2, (n + 1) as u16);
        Ok(())
    }

    /// Kernel `do_split` of leaf block `leaf` under frame `f`: returns the block and the
    /// offset of the entry after which the new name goes.
    fn do_split(&mut self, leaf: u64, f: Frame, h: Hinfo, hash: u32) -> Fr<(u64, usize)> {
        let bs = self.fs.bs;
        let cs = self.csum_size();
        let size = self.i.size(self.fs);
        let newl = (size >> (10 + self.fs.sb.s_log_block_size)) as u32;
        let nb = self.append_block(size)?;
        let mut d1 = self.fs.block(leaf)?.to_vec();
        let mut d2 = vec![0u8; bs];
        let map = self.make_map(&d1, h, &mut d2)?;
        let split = split_point(&map, bs);
        if split == 0 || split >= map.len() {
            return corrupt(format!(
                "directory {}: a leaf that cannot split",
                self.i.ino
            ));
        }
        let hash2 = map[split].0;
        let continued = u32::from(hash2 == map[split - 1].0);
        let de2 = move_dirents(&mut d1, &mut d2, &map[split..]);
        let de1 = pack(&mut d1)?;
        put16(&mut d1, de1 + 4, (bs - cs - de1) as u16);
        put16(&mut d2, de2 + 4, (bs - cs - de2) as u16);
        if cs > 0 {
            init_tail(&mut d1);
            init_tail(&mut d2);
        }
        *self.fs.block_mut(leaf)? = d1;
        *self.fs.block_mut(nb)? = d2;
        let (target, other) = if hash >= hash2 {
            ((nb, de2), leaf)
        } else {
            ((leaf, de1), nb)
        };
        self.dx_insert_block(f, hash2.wrapping_add(continued), newl)?;
        self.fs.dirblock_csum_set(other, self.i.seed)?;
        self.dx_csum_set(f.pblk, f.entries)?;
        Ok(target)
    }

    /// Kernel `dx_make_map` of leaf `d1` then `dx_sort_map`: (hash, offset / 4, rec_len) of
    /// each live entry, sorted, also written at the end of the new block `d2` where the
    /// kernel builds it.
    fn make_map(&self, d1: &[u8], h: Hinfo, d2: &mut [u8]) -> Fr<Vec<(u32, u16, u16)>> {
        let bs = self.fs.bs;
        let cs = self.csum_size();
        let mut map: Vec<(u32, u16, u16)> = Vec::new();
        let mut off = 0;
        while off < bs - cs {
            let r = self.fs.check_de(d1, off, bs - cs)?;
            let nl = usize::from(d1[off + 6]);
            if nl != 0 && le32(d1, off) != 0 {
                let hh = self.hash(h, &d1[off + 8..off + 8 + nl])?;
                map.push((hh, (off >> 2) as u16, r as u16));
            }
            off += r;
        }
        map.reverse();
        sort_map(&mut map);
        let n = map.len();
        for (k, &(hh, o, s)) in map.iter().enumerate() {
            let at = bs - 8 * n + 8 * k;
            put32(d2, at, hh);
            put16(d2, at + 4, o);
            put16(d2, at + 6, s);
        }
        Ok(map)
    }

    /// `make_indexed_dir`'s move of the entries after `..` (from offset `de0` of block 0,
    /// `d`) to the start of a new block, the last one stretched to the block's end.
    fn move_out_of_root(&self, d: &mut [u8], de0: usize) -> Fr<Vec<u8>> {
        let bs = self.fs.bs;
        let cs = self.csum_size();
        let len = (bs - cs).saturating_sub(de0);
        let mut d2 = vec![0u8; bs];
        d2[..len].copy_from_slice(&d[de0..de0 + len]);
        d[de0..de0 + len].fill(0);
        let mut de = 0usize;
        loop {
            let r = usize::from(le16(&d2, de + 4));
            if r == 0 || de + r >= len {
                break;
            }
            self.fs.check_de(&d2, de, len)?;
            de += r;
        }
        put16(&mut d2, de + 4, (bs - cs - de) as u16);
        if cs > 0 {
            init_tail(&mut d2);
        }
        Ok(d2)
    }

    /// Kernel `make_indexed_dir` of the full one-block directory (block 0 at `b0`), then the
    /// entry added.
    pub(crate) fn make_indexed_dir(
        &mut self,
        b0: u64,
        name: &[u8],
        target: u32,
        mode: u16,
    ) -> Fr<()> {
        let bs = self.fs.bs;
        let mut d = self.fs.block(b0)?.to_vec();
        let r_dot = usize::from(le16(&d, 4));
        let r_dd = usize::from(le16(&d, 16));
        if d[6] != 1
            || d[8] != b'.'
            || r_dot >= bs
            || d[18] != 2
            || &d[20..22] != b".."
            || 12 + r_dd >= bs
        {
            return corrupt(format!(
                "directory {}: bad . or .. for an index",
                self.i.ino
            ));
        }
        let size = self.i.size(self.fs);
        let nb = self.append_block(size)?;
        let f = self.i.flags() | EXT4_INDEX_FL;
        self.i.set_flags(f);
        let d2 = self.move_out_of_root(&mut d, 12 + r_dd)?;
        put16(&mut d, 16, (bs - rec_len_for(2)) as u16);
        d[24..32].fill(0);
        d[29] = 8;
        d[28] = self.fs.sb.raw[0xFC];
        let lim = self.dx_limit(Some(8));
        put16(&mut d, 32, lim as u16);
        put16(&mut d, 34, 1);
        put32(&mut d, 36, 1);
        *self.fs.block_mut(b0)? = d;
        *self.fs.block_mut(nb)? = d2;
        let h = self.hinfo(self.fs.sb.raw[0xFC]);
        let hash = self.hash(h, name)?;
        let frame = Frame {
            pblk: b0,
            entries: 32,
            at: 0,
        };
        self.dx_csum_set(b0, 32)?;
        self.fs.dirblock_csum_set(nb, self.i.seed)?;
        let (tb, toff) = self.do_split(nb, frame, h, hash)?;
        self.insert_at(tb, toff, name, target, mode)
    }
}

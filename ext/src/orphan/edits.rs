//! The blocks orphan processing changes, kept in memory over the filesystem's view, with
//! one open transaction: an orphan is processed inside it and committed whole, or rolled
//! back whole when something on its way is corrupt (so that a bad orphan leaves no half
//! release behind). Also the allocation edits: freeing blocks and inodes in the bitmaps and
//! the group descriptors' counts, as the kernel's `ext4_free_blocks` and `ext4_free_inode`
//! do; the checksums of what changed are recomputed once, in [`Edits::finish`].
//!
//! Every block number comes from disk: it is checked against the filesystem, the static
//! metadata (the "system zone": superblocks, descriptor tables, bitmaps, inode tables) and
//! the bitmap (a block or inode to free must be in use) before anything changes.

use super::csum::Csum;
use super::{stop, Stop};
use crate::bytes::le16;
use crate::fs::Filesystem;
use crate::group_desc::{EXT4_BG_BLOCK_UNINIT, EXT4_BG_INODE_UNINIT};
use crate::layout::static_regions;
use crate::superblock::{SuperblockBytes, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};
use crate::types::{BlockNr, InodeNr};
use crate::view::BlockView;
use std::collections::{BTreeMap, BTreeSet};

/// Descriptor fields (offsets of the `_lo` u16 and the `_hi` u16 halves) edited here.
const FREE_BLOCKS: (usize, usize) = (0x0C, 0x2C);
const FREE_INODES: (usize, usize) = (0x0E, 0x2E);
const USED_DIRS: (usize, usize) = (0x10, 0x30);
/// `bg_block_bitmap_csum_lo`/`_hi` and `bg_inode_bitmap_csum_lo`/`_hi`.
const BLOCK_BITMAP_CSUM: (usize, usize) = (0x18, 0x38);
const INODE_BITMAP_CSUM: (usize, usize) = (0x1A, 0x3A);

/// What was changed, in memory (module comment).
pub(super) struct Edits<'f, V> {
    pub(super) fs: &'f Filesystem<V>,
    pub(super) csum: Csum,
    done: BTreeMap<u64, Vec<u8>>,
    tx: BTreeMap<u64, Vec<u8>>,
    /// Groups whose block (`.0`) or inode (`.1`) bitmap changed, committed and in the
    /// transaction.
    groups_done: (BTreeSet<u32>, BTreeSet<u32>),
    groups_tx: (BTreeSet<u32>, BTreeSet<u32>),
    /// Blocks freed, committed and in the transaction.
    freed_done: u64,
    freed_tx: u64,
    /// The system zone: sorted, disjoint `[start, end)` block ranges (built when first
    /// needed).
    zone: std::cell::OnceCell<Vec<(u64, u64)>>,
}

impl<'f, V: BlockView> Edits<'f, V> {
    /// Nothing changed yet on `fs`.
    pub(super) fn new(fs: &'f Filesystem<V>) -> Edits<'f, V> {
        Edits {
            fs,
            csum: Csum::new(&fs.sb),
            done: BTreeMap::new(),
            tx: BTreeMap::new(),
            groups_done: Default::default(),
            groups_tx: Default::default(),
            freed_done: 0,
            freed_tx: 0,
            zone: std::cell::OnceCell::new(),
        }
    }

    /// Keeps what the transaction changed.
    pub(super) fn commit(&mut self) {
        self.done.append(&mut self.tx);
        self.groups_done.0.append(&mut self.groups_tx.0);
        self.groups_done.1.append(&mut self.groups_tx.1);
        self.freed_done += std::mem::take(&mut self.freed_tx);
    }

    /// Forgets what the transaction changed.
    pub(super) fn rollback(&mut self) {
        self.tx.clear();
        self.groups_tx = Default::default();
        self.freed_tx = 0;
    }

    /// Blocks freed so far (committed).
    pub(super) fn freed(&self) -> u64 {
        self.freed_done
    }

    /// True if nothing was committed.
    pub(super) fn is_empty(&self) -> bool {
        self.done.is_empty()
    }

    /// The current bytes of block `b` (changed, or read from the view).
    pub(super) fn read(&self, ino: Option<InodeNr>, b: u64) -> Result<Vec<u8>, Stop> {
        if let Some(v) = self.tx.get(&b).or_else(|| self.done.get(&b)) {
            return Ok(v.clone());
        }
        self.check_in_fs(ino, b, 1)?;
        let mut buf = vec![0u8; self.fs.sb.block_size as usize];
        self.fs
            .read_blocks(BlockNr(b), &mut buf)
            .map_err(|e| stop(ino, Some(b), None, format!("cannot read the block: {e}")))?;
        Ok(buf)
    }

    /// Block `b`, to be changed in the transaction.
    fn block_mut(&mut self, ino: Option<InodeNr>, b: u64) -> Result<&mut Vec<u8>, Stop> {
        if !self.tx.contains_key(&b) {
            let v = self.read(ino, b)?;
            self.tx.insert(b, v);
        }
        Ok(self.tx.get_mut(&b).expect("inserted above"))
    }

    /// Replaces block `b` with `bytes` (one block) in the transaction.
    pub(super) fn put(&mut self, b: u64, bytes: Vec<u8>) {
        self.tx.insert(b, bytes);
    }

    /// `[start, start + len)` lies in the filesystem (past `s_first_data_block`).
    pub(super) fn check_in_fs(
        &self,
        ino: Option<InodeNr>,
        start: u64,
        len: u64,
    ) -> Result<(), Stop> {
        let sb = &self.fs.sb;
        let end = start.checked_add(len);
        if start < u64::from(sb.s_first_data_block) || end.is_none_or(|e| e > sb.s_blocks_count) {
            return Err(stop(
                ino,
                Some(start),
                None,
                format!(
                    "{len} blocks from block {start} are outside the filesystem (blocks_count {})",
                    sb.s_blocks_count
                ),
            ));
        }
        Ok(())
    }

    /// `[start, start + len)` holds no static metadata (superblocks, descriptor tables,
    /// bitmaps, inode tables): blocks an inode may own.
    pub(super) fn check_owned(&self, ino: InodeNr, start: u64, len: u64) -> Result<(), Stop> {
        self.check_in_fs(Some(ino), start, len)?;
        let end = start + len;
        let zone = self.zone.get_or_init(|| system_zone(self.fs));
        let i = zone.partition_point(|&(_, e)| e <= start);
        if let Some(&(zs, ze)) = zone.get(i).filter(|&&(zs, _)| zs < end) {
            let at = zs.max(start);
            return Err(stop(
                Some(ino),
                Some(at),
                None,
                format!("block {at} is filesystem metadata (blocks {zs}..{ze}), not the inode's"),
            ));
        }
        Ok(())
    }

    /// The group of block `b` and its descriptor's block bitmap, for freeing.
    fn block_group(&self, ino: InodeNr, b: u64) -> Result<(u32, u64), Stop> {
        let sb = &self.fs.sb;
        let g = (b - u64::from(sb.s_first_data_block)) / u64::from(sb.s_blocks_per_group);
        let g = u32::try_from(g).unwrap_or(u32::MAX);
        let gd = self.fs.groups.get(g as usize).ok_or_else(|| {
            stop(
                Some(ino),
                Some(b),
                None,
                format!("group {g} has no descriptor"),
            )
        })?;
        if gd.has_flag(sb, EXT4_BG_BLOCK_UNINIT) {
            return Err(stop(
                Some(ino),
                Some(b),
                None,
                format!(
                "block {b} lies in group {g}, whose block bitmap is not initialized (BLOCK_UNINIT)"
            ),
            ));
        }
        self.check_in_fs(Some(ino), gd.bg_block_bitmap, 1)?;
        Ok((g, gd.bg_block_bitmap))
    }

    /// Frees blocks `[start, start + len)` owned by inode `ino`: their bits are cleared in
    /// the block bitmaps (each must be set: in use) and the groups' `bg_free_blocks_count`
    /// raised.
    pub(super) fn free_blocks(&mut self, ino: InodeNr, start: u64, len: u64) -> Result<(), Stop> {
        self.check_owned(ino, start, len)?;
        let sb = &self.fs.sb;
        let (first, bpg) = (
            u64::from(sb.s_first_data_block),
            u64::from(sb.s_blocks_per_group),
        );
        let end = start + len;
        let mut b = start;
        while b < end {
            let (g, bitmap) = self.block_group(ino, b)?;
            let group_start = first + u64::from(g) * bpg;
            let stop_at = end.min(group_start + bpg);
            let bits = self.block_mut(Some(ino), bitmap)?;
            for x in b..stop_at {
                let bit = (x - group_start) as usize;
                let (byte, mask) = (bit / 8, 1u8 << (bit % 8));
                if bits.get(byte).is_none_or(|v| v & mask == 0) {
                    return Err(stop(
                        Some(ino),
                        Some(x),
                        None,
                        format!("block {x} is already free in the block bitmap of group {g}"),
                    ));
                }
                bits[byte] &= !mask;
            }
            self.add_count(g, FREE_BLOCKS, stop_at - b)?;
            self.groups_tx.0.insert(g);
            b = stop_at;
        }
        self.freed_tx += len;
        Ok(())
    }

    /// The group of inode `ino` and the bit of it in the group's inode bitmap.
    fn inode_group(&self, ino: InodeNr) -> Result<(u32, usize), Stop> {
        let sb = &self.fs.sb;
        if ino.0 == 0 || ino.0 > sb.s_inodes_count {
            return Err(stop(
                Some(ino),
                None,
                None,
                format!("inode number out of range 1..={}", sb.s_inodes_count),
            ));
        }
        let g = (ino.0 - 1) / sb.s_inodes_per_group;
        Ok((g, ((ino.0 - 1) % sb.s_inodes_per_group) as usize))
    }

    /// True if inode `ino` is in use in its group's inode bitmap (an INODE_UNINIT group has
    /// none in use).
    pub(super) fn inode_in_use(&self, ino: InodeNr) -> Result<bool, Stop> {
        let (g, bit) = self.inode_group(ino)?;
        let gd = self.descriptor(Some(ino), g)?;
        if gd.has_flag(&self.fs.sb, EXT4_BG_INODE_UNINIT) {
            return Ok(false);
        }
        let bits = self.read(Some(ino), gd.bg_inode_bitmap)?;
        Ok(bits.get(bit / 8).is_some_and(|v| v & (1 << (bit % 8)) != 0))
    }

    fn descriptor(
        &self,
        ino: Option<InodeNr>,
        g: u32,
    ) -> Result<crate::group_desc::GroupDesc, Stop> {
        self.fs.groups.get(g as usize).copied().ok_or_else(|| {
            stop(
                ino,
                None,
                None,
                format!("group {g} lies past the end of the source"),
            )
        })
    }

    /// Frees inode `ino` (a directory when `dir`): its bit cleared in the inode bitmap (it
    /// must be set), `bg_free_inodes_count` raised and, for a directory,
    /// `bg_used_dirs_count` lowered.
    pub(super) fn free_inode(&mut self, ino: InodeNr, dir: bool) -> Result<(), Stop> {
        if !self.inode_in_use(ino)? {
            return Err(stop(
                Some(ino),
                None,
                None,
                "the inode is already free in the inode bitmap".into(),
            ));
        }
        let (g, bit) = self.inode_group(ino)?;
        let bitmap = self.descriptor(Some(ino), g)?.bg_inode_bitmap;
        let bits = self.block_mut(Some(ino), bitmap)?;
        bits[bit / 8] &= !(1 << (bit % 8));
        self.add_count(g, FREE_INODES, 1)?;
        if dir {
            self.sub_count(g, USED_DIRS)?;
        }
        self.groups_tx.1.insert(g);
        Ok(())
    }

    /// Where inode `ino`'s record lies: its inode table block and the byte offset in it.
    pub(super) fn inode_location(&self, ino: InodeNr) -> Result<(u64, usize), Stop> {
        let sb = &self.fs.sb;
        let (g, idx) = self.inode_group(ino)?;
        let table = self.descriptor(Some(ino), g)?.bg_inode_table;
        let end = table.checked_add(u64::from(sb.inode_table_blocks));
        if table == 0 || end.is_none_or(|e| e > sb.s_blocks_count) {
            return Err(stop(
                Some(ino),
                None,
                None,
                format!("group {g}: bg_inode_table {table} is outside the filesystem"),
            ));
        }
        let per = sb.inodes_per_block as usize;
        Ok((
            table + (idx / per) as u64,
            (idx % per) * usize::from(sb.s_inode_size),
        ))
    }

    /// The current record of inode `ino` (`s_inode_size` bytes).
    pub(super) fn read_inode(&self, ino: InodeNr) -> Result<Vec<u8>, Stop> {
        let (b, at) = self.inode_location(ino)?;
        let block = self.read(Some(ino), b)?;
        Ok(block[at..at + usize::from(self.fs.sb.s_inode_size)].to_vec())
    }

    /// Replaces the record of inode `ino` with `raw`, its checksum stored first.
    pub(super) fn write_inode(&mut self, ino: InodeNr, mut raw: Vec<u8>) -> Result<(), Stop> {
        self.csum.set_inode(ino.0, &mut raw);
        let (b, at) = self.inode_location(ino)?;
        let block = self.block_mut(Some(ino), b)?;
        block[at..at + raw.len()].copy_from_slice(&raw);
        Ok(())
    }

    /// Block and byte offset of group `g`'s descriptor in the primary table.
    fn desc_at(&self, g: u32) -> (u64, usize) {
        let sb = &self.fs.sb;
        let i = g / sb.descs_per_block;
        let b = crate::layout::desc_block_location(sb, self.fs.sb_block.0, i);
        (b, ((g % sb.descs_per_block) * sb.desc_size) as usize)
    }

    /// Reads a `_lo`/`_hi` descriptor count of group `g` (the `_hi` half with 64-byte
    /// descriptors).
    fn count(&self, g: u32, field: (usize, usize)) -> Result<u32, Stop> {
        let (b, at) = self.desc_at(g);
        let d = self.read(None, b)?;
        let hi = if self.csum.wide_desc() {
            u32::from(le16(&d, at + field.1))
        } else {
            0
        };
        Ok(u32::from(le16(&d, at + field.0)) | hi << 16)
    }

    fn set_count(&mut self, g: u32, field: (usize, usize), v: u32) -> Result<(), Stop> {
        let wide = self.csum.wide_desc();
        if !wide && v > u32::from(u16::MAX) {
            return Err(stop(
                None,
                None,
                None,
                format!("group {g}: a count of {v} does not fit the descriptor"),
            ));
        }
        let (b, at) = self.desc_at(g);
        let d = self.block_mut(None, b)?;
        d[at + field.0..at + field.0 + 2].copy_from_slice(&(v as u16).to_le_bytes());
        if wide {
            d[at + field.1..at + field.1 + 2].copy_from_slice(&((v >> 16) as u16).to_le_bytes());
        }
        Ok(())
    }

    fn add_count(&mut self, g: u32, field: (usize, usize), n: u64) -> Result<(), Stop> {
        let v = u64::from(self.count(g, field)?) + n;
        let v = u32::try_from(v).map_err(|_| {
            stop(
                None,
                None,
                None,
                format!("group {g}: a free count overflows"),
            )
        })?;
        self.set_count(g, field, v)
    }

    fn sub_count(&mut self, g: u32, field: (usize, usize)) -> Result<(), Stop> {
        let v = self.count(g, field)?.saturating_sub(1);
        self.set_count(g, field, v)
    }

    /// Recomputes the checksums of what changed (bitmaps, descriptors), sets the primary
    /// superblock's free counts to the sums of the descriptors' (as e2fsck computes them),
    /// applies `edit` to it and recomputes its checksum. Returns every changed block, in
    /// block order. Call after the last commit.
    ///
    /// # Errors
    /// A descriptor block or bitmap cannot be read.
    pub(super) fn finish(
        mut self,
        edit: impl FnOnce(&mut SuperblockBytes<&mut [u8]>),
    ) -> Result<Vec<(BlockNr, Vec<u8>)>, Stop> {
        self.rollback();
        let (blocks, inodes) = std::mem::take(&mut self.groups_done);
        for &g in blocks.union(&inodes) {
            self.group_checksums(g, blocks.contains(&g), inodes.contains(&g))?;
        }
        let (mut free_blocks, mut free_inodes) = (0u64, 0u64);
        for g in 0..self.fs.sb.group_count {
            free_blocks += u64::from(self.count(g, FREE_BLOCKS)?);
            free_inodes += u64::from(self.count(g, FREE_INODES)?);
        }
        let bs = u64::from(self.fs.sb.block_size);
        let sb_block = SUPERBLOCK_OFFSET / bs;
        let at = (SUPERBLOCK_OFFSET % bs) as usize;
        let buf = self.block_mut(None, sb_block)?;
        let mut sb = SuperblockBytes::new(&mut buf[at..at + SUPERBLOCK_SIZE])
            .map_err(|e| stop(None, Some(sb_block), None, e.to_string()))?;
        sb.set_free_blocks_count(free_blocks);
        sb.set_free_inodes_count(u32::try_from(free_inodes).unwrap_or(u32::MAX));
        edit(&mut sb);
        sb.update_checksum();
        self.commit();
        Ok(self
            .done
            .into_iter()
            .map(|(b, v)| (BlockNr(b), v))
            .collect())
    }

    /// Stores the checksums of group `g`'s changed bitmaps and of its descriptor.
    fn group_checksums(&mut self, g: u32, block_bits: bool, inode_bits: bool) -> Result<(), Stop> {
        let sb = &self.fs.sb;
        let gd = self.descriptor(None, g)?;
        let mut sums = Vec::new();
        if block_bits {
            let bits = self.read(None, gd.bg_block_bitmap)?;
            let n = (sb.s_clusters_per_group / 8) as usize;
            sums.push((
                BLOCK_BITMAP_CSUM,
                self.csum.bitmap(&bits[..n.min(bits.len())]),
            ));
        }
        if inode_bits {
            let bits = self.read(None, gd.bg_inode_bitmap)?;
            let n = (sb.s_inodes_per_group / 8) as usize;
            sums.push((
                INODE_BITMAP_CSUM,
                self.csum.bitmap(&bits[..n.min(bits.len())]),
            ));
        }
        let (b, at) = self.desc_at(g);
        let size = sb.desc_size as usize;
        let wide = self.csum.wide_desc();
        let csum = self.csum.clone();
        let d = self.block_mut(None, b)?;
        for (field, sum) in sums {
            let Some(c) = sum else { continue };
            d[at + field.0..at + field.0 + 2].copy_from_slice(&(c as u16).to_le_bytes());
            if wide {
                d[at + field.1..at + field.1 + 2]
                    .copy_from_slice(&((c >> 16) as u16).to_le_bytes());
            }
        }
        csum.set_group_desc(g, &mut d[at..at + size]);
        Ok(())
    }
}

/// The static metadata of every group, as sorted disjoint `[start, end)` ranges.
fn system_zone<V: BlockView>(fs: &Filesystem<V>) -> Vec<(u64, u64)> {
    let sb = &fs.sb;
    let mut v: Vec<(u64, u64)> = static_regions(sb, fs.groups.len() as u32)
        .into_iter()
        .map(|r| (r.start, r.start.saturating_add(r.len)))
        .collect();
    for gd in &fs.groups {
        v.push((gd.bg_block_bitmap, gd.bg_block_bitmap.saturating_add(1)));
        v.push((gd.bg_inode_bitmap, gd.bg_inode_bitmap.saturating_add(1)));
        let it = gd.bg_inode_table;
        v.push((it, it.saturating_add(u64::from(sb.inode_table_blocks))));
    }
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

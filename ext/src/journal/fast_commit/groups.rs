//! Bitmaps and group counts as the fast-commit replay changes them: kernel
//! `ext4_mb_mark_context` / `ext4_mb_mark_bb` (set or clear block bits, the group's free count
//! moving by the bits that changed), the replay's allocator `ext4_mb_new_blocks_simple` (the
//! first free block from the goal on, skipping the regions fast commits name),
//! `ext4_mark_inode_used` and `ext4_free_inode`; a BLOCK_UNINIT or INODE_UNINIT group's bitmap
//! is first built as `ext4_init_block_bitmap` / `ext4_init_inode_bitmap` build it.

use super::store::{
    corrupt, FcError, Fr, Fs, BG_BLOCK_BITMAP, BG_FREE_BLOCKS_COUNT, BG_FREE_INODES_COUNT,
    BG_INODE_BITMAP, BG_INODE_TABLE, BG_ITABLE_UNUSED, BG_USED_DIRS_COUNT,
};
use crate::features::{incompat, ro_compat};
use crate::group_desc::{EXT4_BG_BLOCK_UNINIT, EXT4_BG_INODE_UNINIT};
use crate::layout::has_super;

fn test_bit(b: &[u8], i: usize) -> bool {
    b[i / 8] & (1 << (i % 8)) != 0
}

fn set_bit(b: &mut [u8], i: usize, on: bool) {
    if on {
        b[i / 8] |= 1 << (i % 8);
    } else {
        b[i / 8] &= !(1 << (i % 8));
    }
}

impl Fs<'_> {
    /// Group of block `b` and its offset in the group.
    pub(crate) fn block_group(&self, b: u64) -> (u32, usize) {
        let rel = b.saturating_sub(u64::from(self.sb.s_first_data_block));
        let bpg = u64::from(self.sb.s_blocks_per_group);
        ((rel / bpg) as u32, (rel % bpg) as usize)
    }

    /// First block of group `g`.
    pub(crate) fn group_first(&self, g: u32) -> u64 {
        self.sb.group_first_block(g)
    }

    /// The block bitmap of group `g`, built in memory first when BLOCK_UNINIT (kernel
    /// `ext4_read_block_bitmap`).
    pub(crate) fn block_bitmap(&mut self, g: u32) -> Fr<u64> {
        let b = self.desc_get(g, BG_BLOCK_BITMAP)?;
        if b == 0 || b >= self.sb.s_blocks_count {
            return corrupt(format!("group {g}: block bitmap at block {b}"));
        }
        let uninit =
            self.sb.has_group_desc_csum() && self.desc_flags(g)? & EXT4_BG_BLOCK_UNINIT != 0;
        if uninit && !self.cached(b) {
            let bytes = self.init_block_bitmap(g)?;
            self.block(b)?;
            *self.block_mut(b)? = bytes;
        }
        Ok(b)
    }

    /// Kernel `ext4_init_block_bitmap`: the group's superblock and descriptor copies, its own
    /// bitmaps and inode table when inside the group, and the bits past its last block.
    fn init_block_bitmap(&mut self, g: u32) -> Fr<Vec<u8>> {
        let mut bm = vec![0u8; self.bs];
        let bits = self.bs * 8;
        for i in 0..(self.base_meta_blocks(g) as usize).min(bits) {
            set_bit(&mut bm, i, true);
        }
        let start = self.group_first(g);
        let len = self.sb.group_block_count(g);
        let itb = u64::from(self.sb.inode_table_blocks);
        let mut own = vec![
            self.desc_get(g, BG_BLOCK_BITMAP)?,
            self.desc_get(g, BG_INODE_BITMAP)?,
        ];
        let it = self.desc_get(g, BG_INODE_TABLE)?;
        own.extend((0..itb).map(|k| it.saturating_add(k)));
        for b in own {
            if b >= start && b - start < len {
                set_bit(&mut bm, (b - start) as usize, true);
            }
        }
        for i in (len as usize).min(bits)..bits {
            set_bit(&mut bm, i, true);
        }
        Ok(bm)
    }

    /// Kernel `ext4_num_base_meta_clusters` (no bigalloc): superblock, descriptor and
    /// reserved descriptor blocks at the start of group `g`.
    fn base_meta_blocks(&self, g: u32) -> u64 {
        let sup = u64::from(has_super(&self.sb, g));
        let meta = self.sb.has_incompat(incompat::META_BG);
        let first_meta = u64::from(self.sb.s_first_meta_bg) * u64::from(self.sb.descs_per_block);
        if !meta || u64::from(g) < first_meta {
            if sup == 0 {
                return 0;
            }
            let gdb = if meta {
                u64::from(self.sb.s_first_meta_bg)
            } else {
                u64::from(self.sb.desc_blocks)
            };
            return 1 + gdb + u64::from(self.sb.s_reserved_gdt_blocks);
        }
        let dpb = self.sb.descs_per_block;
        let r = g % dpb;
        sup + u64::from(r == 0 || r == 1 || r == dpb - 1)
    }

    /// The inode bitmap of group `g`, built in memory first when INODE_UNINIT.
    pub(crate) fn inode_bitmap(&mut self, g: u32) -> Fr<u64> {
        let b = self.desc_get(g, BG_INODE_BITMAP)?;
        if b == 0 || b >= self.sb.s_blocks_count {
            return corrupt(format!("group {g}: inode bitmap at block {b}"));
        }
        let uninit =
            self.sb.has_group_desc_csum() && self.desc_flags(g)? & EXT4_BG_INODE_UNINIT != 0;
        if uninit && !self.cached(b) {
            let mut bm = vec![0u8; self.bs];
            for i in (self.sb.s_inodes_per_group as usize).min(self.bs * 8)..self.bs * 8 {
                set_bit(&mut bm, i, true);
            }
            self.block(b)?;
            *self.block_mut(b)? = bm;
        }
        Ok(b)
    }

    /// Kernel `ext4_mb_mark_context` (no journal, BITMAP_MARKED_CHECK): bits
    /// `[off, off + len)` of group `g`'s block bitmap set (`state`) or cleared; returns how
    /// many changed.
    pub(crate) fn mark_context(&mut self, g: u32, off: usize, len: usize, state: bool) -> Fr<u64> {
        let bm = self.block_bitmap(g)?;
        if self.sb.has_group_desc_csum() && self.desc_flags(g)? & EXT4_BG_BLOCK_UNINIT != 0 {
            self.desc_clear_flag(g, EXT4_BG_BLOCK_UNINIT)?;
            let free = self.free_after_init(g, bm)?;
            self.desc_set(g, BG_FREE_BLOCKS_COUNT, free)?;
        }
        let bits = self.bs * 8;
        let end = off.saturating_add(len).min(bits);
        let buf = self.block_mut(bm)?;
        let mut changed = 0u64;
        for i in off.min(end)..end {
            if test_bit(buf, i) != state {
                changed += 1;
                set_bit(buf, i, state);
            }
        }
        let free = self.desc_get(g, BG_FREE_BLOCKS_COUNT)?;
        let free = if state {
            free.wrapping_sub(changed)
        } else {
            free.wrapping_add(changed)
        };
        self.desc_set(g, BG_FREE_BLOCKS_COUNT, free as u32)?;
        self.bitmap_csum_set(g, bm, false)?;
        self.desc_csum_set(g)?;
        Ok(changed)
    }

    /// Free blocks of a freshly initialised bitmap (kernel `ext4_free_clusters_after_init`).
    fn free_after_init(&mut self, g: u32, bm: u64) -> Fr<u32> {
        let len = (self.sb.group_block_count(g) as usize).min(self.bs * 8);
        let b = self.block(bm)?;
        let used = (0..len).filter(|&i| test_bit(b, i)).count();
        Ok((len - used) as u32)
    }

    /// Kernel `ext4_mb_mark_bb`: blocks `[block, block + len)` marked used or free, group by
    /// group; a range touching block `s_first_data_block` or past the end is refused (the
    /// kernel's `ext4_sb_block_valid` before the system zone exists).
    pub(crate) fn mark_bb(&mut self, mut block: u64, mut len: u64, state: bool) -> Fr<()> {
        let bpg = u64::from(self.sb.s_blocks_per_group);
        while len > 0 {
            let (g, off) = self.block_group(block);
            let here = len.min(bpg - off as u64);
            let valid = block > u64::from(self.sb.s_first_data_block)
                && block
                    .checked_add(here)
                    .is_some_and(|e| e <= self.sb.s_blocks_count);
            if !valid {
                return Ok(());
            }
            match self.mark_context(g, off, here as usize, state) {
                Err(FcError::Fatal(m)) => return Err(FcError::Fatal(m)),
                Err(_) => return Ok(()),
                Ok(_) => {}
            }
            block += here;
            len -= here;
        }
        Ok(())
    }

    /// Kernel `ext4_free_blocks` during a replay (`ext4_free_blocks_simple`); the range is
    /// cut at group boundaries (the kernel's is not: module comment of `replay`).
    pub(crate) fn free_blocks(&mut self, mut block: u64, mut count: u64) -> Fr<()> {
        let bpg = u64::from(self.sb.s_blocks_per_group);
        while count > 0 && block < self.sb.s_blocks_count {
            let (g, off) = self.block_group(block);
            let here = count.min(bpg - off as u64);
            match self.mark_context(g, off, here as usize, false) {
                Err(FcError::Fatal(m)) => return Err(FcError::Fatal(m)),
                Err(_) => return Ok(()),
                Ok(_) => {}
            }
            block += here;
            count -= here;
        }
        Ok(())
    }

    /// True when block `b` lies in a region fast commits name (kernel
    /// `ext4_fc_replay_check_excluded`).
    fn excluded(&self, b: u64) -> bool {
        self.excluded
            .iter()
            .any(|r| r.ino != 0 && r.len != 0 && b >= r.pblk && b - r.pblk < r.len)
    }

    /// Kernel `ext4_mb_new_blocks_simple`: one block, the first free and not excluded from
    /// `goal` on (wrapping over the groups), marked used.
    pub(crate) fn new_block(&mut self, goal: u64) -> Fr<u64> {
        let first = u64::from(self.sb.s_first_data_block);
        let goal = if goal < first || goal >= self.sb.s_blocks_count {
            first
        } else {
            goal
        };
        let (mut g, mut off) = self.block_group(goal);
        let max = self.sb.s_clusters_per_group as usize;
        for _ in 0..self.sb.group_count {
            let bm = self.block_bitmap(g)?;
            let mut i = off;
            loop {
                let lim = max.min(self.bs * 8);
                let b = self.block(bm)?;
                i = (i..lim).find(|&k| !test_bit(b, k)).unwrap_or(max);
                if i >= max || !self.excluded(self.group_first(g) + i as u64) {
                    break;
                }
                i += 1;
            }
            if i < max {
                let block = self.group_first(g) + i as u64;
                self.mark_bb(block, 1, true)?;
                return Ok(block);
            }
            g = if g + 1 >= self.sb.group_count {
                0
            } else {
                g + 1
            };
            off = 0;
        }
        Err(FcError::Corrupt("no free block left for the replay".into()))
    }

    /// Group and bit of inode `ino`.
    pub(crate) fn inode_group(&self, ino: u32) -> (u32, usize) {
        let ipg = self.sb.s_inodes_per_group;
        ((ino - 1) / ipg, ((ino - 1) % ipg) as usize)
    }

    /// Kernel `ext4_mark_inode_used`.
    pub(crate) fn mark_inode_used(&mut self, ino: u32) -> Fr<()> {
        if ino < self.sb.s_first_ino || ino > self.sb.s_inodes_count {
            return corrupt(format!("inode {ino} cannot be marked in use"));
        }
        let (g, bit) = self.inode_group(ino);
        let ibm = self.inode_bitmap(g)?;
        if test_bit(self.block(ibm)?, bit) {
            return Ok(());
        }
        set_bit(self.block_mut(ibm)?, bit, true);
        let csum = self.sb.has_group_desc_csum();
        if csum && self.desc_flags(g)? & EXT4_BG_BLOCK_UNINIT != 0 {
            let bm = self.block_bitmap(g)?;
            self.block_mut(bm)?;
            self.desc_clear_flag(g, EXT4_BG_BLOCK_UNINIT)?;
            let free = self.free_after_init(g, bm)?;
            self.desc_set(g, BG_FREE_BLOCKS_COUNT, free)?;
            self.bitmap_csum_set(g, bm, false)?;
            self.desc_csum_set(g)?;
        }
        if csum {
            let ipg = self.sb.s_inodes_per_group;
            let unused = self.desc_get(g, BG_ITABLE_UNUSED)? as u32;
            let mut free = ipg.wrapping_sub(unused);
            if self.desc_flags(g)? & EXT4_BG_INODE_UNINIT != 0 {
                self.desc_clear_flag(g, EXT4_BG_INODE_UNINIT)?;
                free = 0;
            }
            if bit as u32 >= free {
                self.desc_set(g, BG_ITABLE_UNUSED, ipg - bit as u32 - 1)?;
            }
        }
        let fi = self.desc_get(g, BG_FREE_INODES_COUNT)? as u32;
        self.desc_set(g, BG_FREE_INODES_COUNT, fi.wrapping_sub(1))?;
        if csum {
            self.bitmap_csum_set(g, ibm, true)?;
            self.desc_csum_set(g)?;
        }
        Ok(())
    }

    /// Kernel `ext4_free_inode`: the inode's bit cleared, the group's counts updated.
    pub(crate) fn free_inode(&mut self, ino: u32, is_dir: bool) -> Fr<()> {
        if ino < self.sb.s_first_ino || ino > self.sb.s_inodes_count {
            return corrupt(format!("inode {ino} cannot be freed"));
        }
        let (g, bit) = self.inode_group(ino);
        let ibm = self.inode_bitmap(g)?;
        if !test_bit(self.block(ibm)?, bit) {
            return Ok(());
        }
        set_bit(self.block_mut(ibm)?, bit, false);
        let fi = self.desc_get(g, BG_FREE_INODES_COUNT)? as u32;
        self.desc_set(g, BG_FREE_INODES_COUNT, fi.wrapping_add(1))?;
        if is_dir {
            let d = self.desc_get(g, BG_USED_DIRS_COUNT)? as u32;
            self.desc_set(g, BG_USED_DIRS_COUNT, d.wrapping_sub(1))?;
        }
        self.bitmap_csum_set(g, ibm, true)?;
        self.desc_csum_set(g)
    }

    /// The superblock's free block and inode counts set to the sums of the groups' (what the
    /// kernel writes at its next superblock commit), checksum recomputed; `block` is the
    /// primary superblock's block, `at` its offset there.
    pub(crate) fn sum_counts_into_superblock(&mut self, block: u64, at: usize) -> Fr<()> {
        let (mut blocks, mut inodes) = (0u64, 0u64);
        for g in 0..self.sb.group_count {
            blocks += self.desc_get(g, BG_FREE_BLOCKS_COUNT)?;
            inodes += self.desc_get(g, BG_FREE_INODES_COUNT)?;
        }
        let blocks = blocks * u64::from(self.sb.cluster_ratio);
        let is64 = self.sb.has_incompat(incompat::BIT64);
        let csum = self.sb.has_ro_compat(ro_compat::METADATA_CSUM);
        let b = &mut self.block_mut(block)?[at..at + 1024];
        b[0x0C..0x10].copy_from_slice(&(blocks as u32).to_le_bytes());
        if is64 {
            b[0x158..0x15C].copy_from_slice(&((blocks >> 32) as u32).to_le_bytes());
        }
        b[0x10..0x14].copy_from_slice(&(inodes as u32).to_le_bytes());
        if csum {
            let c = crate::superblock::superblock_checksum(b);
            b[0x3FC..0x400].copy_from_slice(&c.to_le_bytes());
        }
        Ok(())
    }
}

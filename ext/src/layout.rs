//! Where the static metadata lives: superblock copies, group descriptor tables (classic and
//! meta_bg), reserved GDT blocks.
//!
//! These locations follow from the superblock alone (kernel `ext4_bg_has_super`,
//! `ext4_bg_num_gdb`, e2fsprogs `ext2fs_super_and_bgd_loc2` / `descriptor_block_loc2`).
//! Everything returned is a block number that may still lie past the end of a corrupt
//! filesystem; callers clamp.

use crate::features::{compat, incompat, ro_compat};
use crate::superblock::{Superblock, SUPERBLOCK_OFFSET};

/// True if `x` is a power of `base` (1 counts).
fn is_power_of(mut x: u32, base: u32) -> bool {
    while x > 1 && x.is_multiple_of(base) {
        x /= base;
    }
    x == 1
}

/// True if group `g` holds a superblock copy (and, without meta_bg, a GDT copy).
pub(crate) fn has_super(sb: &Superblock, g: u32) -> bool {
    if g == 0 {
        return true;
    }
    if sb.has_compat(compat::SPARSE_SUPER2) {
        return g == sb.s_backup_bgs[0] || g == sb.s_backup_bgs[1];
    }
    if g == 1 || !sb.has_ro_compat(ro_compat::SPARSE_SUPER) {
        return true;
    }
    g % 2 == 1 && (is_power_of(g, 3) || is_power_of(g, 5) || is_power_of(g, 7))
}

/// The block holding group `g`'s superblock copy: the group's first block, except that the
/// primary superblock is always at byte 1024 (block 1 with 1 KiB blocks, also on bigalloc
/// where `s_first_data_block` is 0).
pub(crate) fn group_base_block(sb: &Superblock, g: u32) -> u64 {
    if g == 0 {
        return SUPERBLOCK_OFFSET / u64::from(sb.block_size);
    }
    sb.group_first_block(g)
}

/// Number of descriptor blocks in the classic layout (`s_first_meta_bg` with meta_bg, clamped
/// to the table size).
pub(crate) fn classic_desc_blocks(sb: &Superblock) -> u32 {
    if sb.has_incompat(incompat::META_BG) {
        sb.s_first_meta_bg.min(sb.desc_blocks)
    } else {
        sb.desc_blocks
    }
}

/// Reserved GDT blocks that follow each classic GDT copy, bounded by what the resize inode
/// can address (one block of pointers).
pub(crate) fn reserved_gdt_blocks(sb: &Superblock) -> u32 {
    if sb.has_incompat(incompat::META_BG) {
        return 0;
    }
    u32::from(sb.s_reserved_gdt_blocks).min(sb.block_size / 4)
}

/// Block of descriptor block `i` of the group descriptor table found through the superblock
/// copy at block `sb_block` (the primary, or a backup chosen with `-b`).
pub(crate) fn desc_block_location(sb: &Superblock, sb_block: u64, i: u32) -> u64 {
    if i < classic_desc_blocks(sb) {
        return sb_block + 1 + u64::from(i);
    }
    let first = i.saturating_mul(sb.descs_per_block);
    let mut g = first;
    if sb_block != group_base_block(sb, 0) {
        // Opened through a backup: use the meta group's second copy when it exists.
        let second = first.saturating_add(1);
        if second < sb.group_count {
            g = second;
        }
    }
    group_base_block(sb, g) + u64::from(has_super(sb, g))
}

/// Groups holding a copy of meta_bg descriptor block `m`: the first, second and last group of
/// meta group `m` that exist.
pub(crate) fn meta_bg_groups(sb: &Superblock, m: u32) -> Vec<u32> {
    let dpb = sb.descs_per_block;
    let Some(first) = m.checked_mul(dpb) else {
        return Vec::new();
    };
    let mut v = Vec::with_capacity(3);
    for g in [
        Some(first),
        first.checked_add(1),
        first.checked_add(dpb - 1),
    ]
    .into_iter()
    .flatten()
    {
        if g < sb.group_count && !v.contains(&g) {
            v.push(g);
        }
    }
    v
}

/// One static metadata region: `[start, start + len)` and whether it is the primary copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Region {
    /// First block.
    pub(crate) start: u64,
    /// Blocks (0 when the region is empty, e.g. no reserved GDT blocks).
    pub(crate) len: u64,
    /// What the region holds.
    pub(crate) kind: RegionKind,
}

/// What a static region holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RegionKind {
    /// The primary superblock's block.
    PrimarySuperblock,
    /// A backup superblock's block.
    BackupSuperblock,
    /// Primary group descriptor blocks.
    PrimaryGdt,
    /// Backup group descriptor blocks.
    BackupGdt,
    /// Reserved GDT blocks after a classic GDT copy.
    ReservedGdt,
}

/// Every superblock, GDT and reserved-GDT region of the first `groups` groups (at most the
/// group count), primary and backups, for classic, meta_bg (including hybrid
/// `s_first_meta_bg` > 0), sparse_super and sparse_super2 layouts. The primary descriptor
/// table is always listed whole.
pub(crate) fn static_regions(sb: &Superblock, groups: u32) -> Vec<Region> {
    let groups = groups.min(sb.group_count);
    let mut out = Vec::new();
    let classic = u64::from(classic_desc_blocks(sb));
    let reserved = u64::from(reserved_gdt_blocks(sb));
    for g in 0..groups {
        if !has_super(sb, g) {
            continue;
        }
        let base = group_base_block(sb, g);
        let primary = g == 0;
        let (sk, gk) = if primary {
            (RegionKind::PrimarySuperblock, RegionKind::PrimaryGdt)
        } else {
            (RegionKind::BackupSuperblock, RegionKind::BackupGdt)
        };
        out.push(Region {
            start: base,
            len: 1,
            kind: sk,
        });
        out.push(Region {
            start: base + 1,
            len: classic,
            kind: gk,
        });
        out.push(Region {
            start: base + 1 + classic,
            len: reserved,
            kind: RegionKind::ReservedGdt,
        });
    }
    if sb.has_incompat(incompat::META_BG) {
        let meta_groups = groups.div_ceil(sb.descs_per_block).min(sb.desc_blocks);
        for m in classic_desc_blocks(sb)..meta_groups {
            for g in meta_bg_groups(sb, m).into_iter().filter(|&g| g < groups) {
                let kind = if g == m * sb.descs_per_block {
                    RegionKind::PrimaryGdt
                } else {
                    RegionKind::BackupGdt
                };
                let start = group_base_block(sb, g) + u64::from(has_super(sb, g));
                out.push(Region {
                    start,
                    len: 1,
                    kind,
                });
            }
        }
    }
    out.retain(|r| r.len > 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb_with(
        blocks: u64,
        log_bs: u32,
        bpg: u32,
        compat_: u32,
        incompat_: u32,
        ro: u32,
    ) -> Superblock {
        let mut b = vec![0u8; 1024];
        let put = |b: &mut [u8], o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_le_bytes());
        let bs = 1024u32 << log_bs;
        put(&mut b, 0x00, 128 * blocks.div_ceil(u64::from(bpg)) as u32);
        put(&mut b, 0x04, blocks as u32);
        put(&mut b, 0x14, u32::from(log_bs == 0));
        put(&mut b, 0x18, log_bs);
        put(&mut b, 0x1C, log_bs);
        put(&mut b, 0x20, bpg);
        put(&mut b, 0x24, bpg);
        put(&mut b, 0x28, 128);
        b[0x38..0x3A].copy_from_slice(&crate::superblock::EXT4_SUPER_MAGIC.to_le_bytes());
        put(&mut b, 0x4C, 1);
        put(&mut b, 0x54, 11);
        b[0x58..0x5A].copy_from_slice(&256u16.to_le_bytes());
        put(&mut b, 0x5C, compat_);
        put(&mut b, 0x60, incompat_);
        put(&mut b, 0x64, ro);
        let _ = bs;
        Superblock::parse(&b).unwrap()
    }

    #[test]
    fn sparse_super_groups() {
        let sb = sb_with(32768 * 60, 2, 32768, 0, 0, ro_compat::SPARSE_SUPER);
        let groups: Vec<u32> = (0..60).filter(|&g| has_super(&sb, g)).collect();
        assert_eq!(groups, vec![0, 1, 3, 5, 7, 9, 25, 27, 49]);
    }

    #[test]
    fn no_sparse_super_every_group() {
        let sb = sb_with(32768 * 4, 2, 32768, 0, 0, 0);
        assert!((0..4).all(|g| has_super(&sb, g)));
    }

    #[test]
    fn sparse_super2_uses_backup_bgs() {
        let mut sb = sb_with(
            32768 * 4,
            2,
            32768,
            compat::SPARSE_SUPER2,
            0,
            ro_compat::SPARSE_SUPER,
        );
        sb.s_backup_bgs = [1, 3];
        let groups: Vec<u32> = (0..4).filter(|&g| has_super(&sb, g)).collect();
        assert_eq!(groups, vec![0, 1, 3]);
        sb.s_backup_bgs = [0, 0];
        assert!(!has_super(&sb, 1));
    }

    #[test]
    fn one_k_blocks_primary_at_block_one() {
        let sb = sb_with(8192 * 3, 0, 8192, 0, 0, ro_compat::SPARSE_SUPER);
        let r = static_regions(&sb, sb.group_count);
        assert_eq!(
            r[0],
            Region {
                start: 1,
                len: 1,
                kind: RegionKind::PrimarySuperblock
            }
        );
        assert_eq!(
            r[1],
            Region {
                start: 2,
                len: 1,
                kind: RegionKind::PrimaryGdt
            }
        );
        assert_eq!(r[2].start, 8193);
    }

    #[test]
    fn meta_bg_descriptor_copies() {
        // 1 KiB blocks, 32-byte descriptors: 32 groups per descriptor block.
        let sb = sb_with(
            8192 * 70,
            0,
            8192,
            0,
            incompat::META_BG,
            ro_compat::SPARSE_SUPER,
        );
        assert_eq!(sb.desc_blocks, 3);
        assert_eq!(meta_bg_groups(&sb, 1), vec![32, 33, 63]);
        assert_eq!(meta_bg_groups(&sb, 2), vec![64, 65]);
        // group 32 has no backup superblock: descriptor at its first block.
        assert_eq!(desc_block_location(&sb, 1, 1), sb.group_first_block(32));
        // group 0: superblock at 1, descriptor block 0 at 2.
        assert_eq!(desc_block_location(&sb, 1, 0), 2);
        // through the backup in group 1, meta group 1 uses group 33 (no superblock).
        assert_eq!(desc_block_location(&sb, 8193, 1), sb.group_first_block(33));
    }
}

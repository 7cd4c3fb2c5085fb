//! Group descriptors (kernel `struct ext4_group_desc`), 32 or `s_desc_size` bytes each.
//!
//! Parsing never fails: any bit pattern is a descriptor. Whether its block pointers make sense
//! is checked where they are used, so that one bad group is skipped and the others exported.
//!
//! Its checksum (`bg_checksum`, [`desc_checksum`]) is verified when the table is read: the
//! lazy-init flags and `bg_itable_unused` of a descriptor that fails it are not trusted (as
//! e2fsprogs trusts BLOCK_UNINIT only with a valid checksum, and e2fsck clears the flags and
//! `bg_itable_unused` of such a descriptor), so its bitmaps and whole inode table are read and
//! copied. The bitmaps' checksums it holds are checked by [`bitmap_checksum`].

use crate::bytes::{crc16, crc32c_raw, join, le16, le32};
use crate::checksum::Check;
use crate::features::ro_compat;
use crate::superblock::Superblock;

/// Byte offset of `bg_checksum` (u16).
const BG_CHECKSUM_OFFSET: usize = 0x1E;

/// `bg_flags`: inode table and inode bitmap not initialized.
pub(crate) const EXT4_BG_INODE_UNINIT: u16 = 0x1;
/// `bg_flags`: block bitmap not initialized.
pub(crate) const EXT4_BG_BLOCK_UNINIT: u16 = 0x2;

/// One group descriptor, with `_lo`/`_hi` halves joined (the `_hi` halves only with 64-byte
/// descriptors).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct GroupDesc {
    /// `bg_block_bitmap`: block of the group's block bitmap.
    pub bg_block_bitmap: u64,
    /// `bg_inode_bitmap`: block of the group's inode bitmap.
    pub bg_inode_bitmap: u64,
    /// `bg_inode_table`: first block of the group's inode table.
    pub bg_inode_table: u64,
    /// `bg_free_blocks_count`: free blocks (clusters with bigalloc) in the group.
    pub bg_free_blocks_count: u32,
    /// `bg_free_inodes_count`: free inodes in the group.
    pub bg_free_inodes_count: u32,
    /// `bg_used_dirs_count`: directories in the group.
    pub bg_used_dirs_count: u32,
    /// `bg_flags`: `EXT4_BG_*` lazy-init flags.
    pub bg_flags: u16,
    /// Snapshots (`bg_exclude_bitmap_lo/hi`): block of the group's exclude bitmap.
    pub bg_exclude_bitmap: u64,
    /// `bg_itable_unused`: inodes at the end of the inode table never used.
    pub bg_itable_unused: u32,
    /// `bg_checksum`: the descriptor's checksum.
    pub bg_checksum: u16,
    /// `bg_block_bitmap_csum_lo | _hi << 16` (the high half only with 64-byte descriptors).
    pub bg_block_bitmap_csum: u32,
    /// `bg_inode_bitmap_csum_lo | _hi << 16` (likewise).
    pub bg_inode_bitmap_csum: u32,
    /// The descriptor's checksum as verified when the table was read ([`desc_checksum`]);
    /// `None` without gdt_csum and metadata_csum.
    pub checksum: Option<Check>,
}

impl GroupDesc {
    /// Parses one descriptor of `desc_size` bytes (32, or ≥ 64 with the `_hi` halves).
    /// `buf` must be at least `desc_size` bytes long; the caller guarantees it.
    ///
    /// # Panics
    /// If `buf` is shorter than 32 bytes.
    pub(crate) fn parse(buf: &[u8], desc_size: u32) -> GroupDesc {
        let wide = desc_size >= 64 && buf.len() >= 64;
        let hi32 = |off: usize| if wide { le32(buf, off) } else { 0 };
        let hi16 = |off: usize| if wide { u32::from(le16(buf, off)) } else { 0 };
        GroupDesc {
            bg_block_bitmap: join(le32(buf, 0x00), hi32(0x20)),
            bg_inode_bitmap: join(le32(buf, 0x04), hi32(0x24)),
            bg_inode_table: join(le32(buf, 0x08), hi32(0x28)),
            bg_free_blocks_count: u32::from(le16(buf, 0x0C)) | (hi16(0x2C) << 16),
            bg_free_inodes_count: u32::from(le16(buf, 0x0E)) | (hi16(0x2E) << 16),
            bg_used_dirs_count: u32::from(le16(buf, 0x10)) | (hi16(0x30) << 16),
            bg_flags: le16(buf, 0x12),
            bg_exclude_bitmap: join(le32(buf, 0x14), hi32(0x34)),
            bg_itable_unused: u32::from(le16(buf, 0x1C)) | (hi16(0x32) << 16),
            bg_checksum: le16(buf, BG_CHECKSUM_OFFSET),
            bg_block_bitmap_csum: u32::from(le16(buf, 0x18)) | (hi16(0x38) << 16),
            bg_inode_bitmap_csum: u32::from(le16(buf, 0x1A)) | (hi16(0x3A) << 16),
            checksum: None,
        }
    }

    /// Parses descriptor `g` (`sb.desc_size` bytes of `buf`) and verifies its checksum.
    pub(crate) fn parse_verified(buf: &[u8], sb: &Superblock, g: u32) -> GroupDesc {
        GroupDesc {
            checksum: desc_checksum(sb, g, buf),
            ..GroupDesc::parse(buf, sb.desc_size)
        }
    }

    /// True if the descriptor's lazy-init fields can be trusted: the filesystem has
    /// descriptor checksums and this one's matches.
    fn lazy_init_trusted(&self, sb: &Superblock) -> bool {
        sb.has_group_desc_csum() && self.checksum.is_none_or(Check::ok)
    }

    /// True if the flag (an `EXT4_BG_*` constant) is set and can be trusted: the filesystem
    /// has descriptor checksums (without them the lazy-init flags mean nothing and are
    /// ignored, as e2fsprogs does) and this descriptor's checksum matches (module comment).
    pub(crate) fn has_flag(&self, sb: &Superblock, flag: u16) -> bool {
        self.lazy_init_trusted(sb) && self.bg_flags & flag != 0
    }

    /// Number of inodes of this group that may be in use: `s_inodes_per_group` minus
    /// `bg_itable_unused` when descriptors are checksummed (the tail was never used and may
    /// hold garbage), 0 for an INODE_UNINIT group.
    pub(crate) fn used_inodes(&self, sb: &Superblock) -> u32 {
        if self.has_flag(sb, EXT4_BG_INODE_UNINIT) {
            return 0;
        }
        if self.lazy_init_trusted(sb) {
            return sb.s_inodes_per_group.saturating_sub(self.bg_itable_unused);
        }
        sb.s_inodes_per_group
    }

    /// Inode-table blocks that may hold used inodes: the whole table less the whole blocks of
    /// the unused tail (e2image's rule, which never copies less than the blocks holding the
    /// first [`used_inodes`](Self::used_inodes) inodes); 0 for an INODE_UNINIT group.
    pub(crate) fn used_inode_table_blocks(&self, sb: &Superblock) -> u32 {
        if self.has_flag(sb, EXT4_BG_INODE_UNINIT) {
            return 0;
        }
        if !self.lazy_init_trusted(sb) {
            return sb.inode_table_blocks;
        }
        let unused_blocks = self.bg_itable_unused.min(sb.s_inodes_per_group) / sb.inodes_per_block;
        sb.inode_table_blocks - unused_blocks
    }
}

/// The checksum descriptor `g` (the first `sb.desc_size` bytes of `raw`) should carry, and
/// the one it does, with metadata_csum (the low 16 bits of the crc32c of the group number and
/// the descriptor with `bg_checksum` zeroed, from the metadata_csum seed) or gdt_csum (crc16
/// from 0xFFFF of `s_uuid`, the group number and the descriptor without `bg_checksum`);
/// `None` with neither (ext4-on-disk §13).
pub(crate) fn desc_checksum(sb: &Superblock, g: u32, raw: &[u8]) -> Option<Check> {
    let ds = (sb.desc_size as usize).min(raw.len());
    let d = &raw[..ds];
    let group = g.to_le_bytes();
    let computed = if sb.has_metadata_csum() {
        let c = crc32c_raw(sb.metadata_csum_seed(), &group);
        let c = crc32c_raw(c, &d[..BG_CHECKSUM_OFFSET]);
        let c = crc32c_raw(c, &[0, 0]);
        crc32c_raw(c, &d[BG_CHECKSUM_OFFSET + 2..]) & 0xFFFF
    } else if sb.has_ro_compat(ro_compat::GDT_CSUM) {
        let c = crc16(crc16(0xFFFF, &sb.s_uuid), &group);
        let c = crc16(c, &d[..BG_CHECKSUM_OFFSET]);
        u32::from(crc16(c, &d[BG_CHECKSUM_OFFSET + 2..]))
    } else {
        return None;
    };
    Some(Check {
        stored: u32::from(le16(d, BG_CHECKSUM_OFFSET)),
        computed,
    })
}

/// The checksum of a bitmap block `bitmap` (metadata_csum only): the crc32c from the
/// metadata_csum seed of its first `bytes` bytes (`clusters_per_group / 8` for a block bitmap,
/// `inodes_per_group / 8` for an inode bitmap), against `stored`; only the low 16 bits with
/// 32-byte descriptors (ext4-on-disk §13).
pub(crate) fn bitmap_checksum(sb: &Superblock, bitmap: &[u8], bytes: u32, stored: u32) -> Check {
    let n = (bytes as usize).min(bitmap.len());
    let computed = crc32c_raw(sb.metadata_csum_seed(), &bitmap[..n]);
    if sb.desc_size >= 64 {
        Check { stored, computed }
    } else {
        Check {
            stored: stored & 0xFFFF,
            computed: computed & 0xFFFF,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_hi_halves_only_for_wide_descriptors() {
        let mut b = vec![0u8; 64];
        b[0x08..0x0C].copy_from_slice(&5u32.to_le_bytes());
        b[0x28..0x2C].copy_from_slice(&1u32.to_le_bytes());
        b[0x1C..0x1E].copy_from_slice(&7u16.to_le_bytes());
        assert_eq!(GroupDesc::parse(&b, 64).bg_inode_table, (1 << 32) | 5);
        assert_eq!(GroupDesc::parse(&b, 32).bg_inode_table, 5);
        assert_eq!(GroupDesc::parse(&b, 32).bg_itable_unused, 7);
    }
}

//! The checksums orphan processing rewrites (notes ext4-on-disk.md §13): inodes, extent tree
//! blocks, extended-attribute blocks, orphan file blocks, bitmaps (metadata_csum), and group
//! descriptors (metadata_csum's crc32c, or gdt_csum's crc16). Each is computed as the
//! kernel's `ext4_*_csum` functions compute it; nothing is written here, the callers store
//! the values.

use crate::bytes::{crc16, crc32c_raw, le16, le32};
use crate::features::{incompat, ro_compat};
use crate::superblock::{Superblock, EXT2_GOOD_OLD_INODE_SIZE};

/// Byte offset of `l_i_checksum_lo` (u16) in the inode record.
pub(super) const I_CHECKSUM_LO: usize = 0x7C;
/// Byte offset of `i_checksum_hi` (u16), inside the large inode's extra fields.
pub(super) const I_CHECKSUM_HI: usize = 0x82;
/// Byte offset of `i_generation` (u32) in the inode record.
pub(super) const I_GENERATION: usize = 0x64;
/// Byte offset of `bg_checksum` (u16) in a group descriptor.
const BG_CHECKSUM: usize = 0x1E;
/// Byte offset of `h_checksum` (u32) in an xattr block header.
pub(super) const H_CHECKSUM: usize = 0x10;
/// Bytes of the orphan file block tail (`struct ext4_orphan_block_tail`: magic, checksum).
pub(super) const ORPHAN_TAIL: usize = 8;

/// `s_creator_os` of Linux: the only one whose inodes carry checksums (kernel
/// `ext4_inode_csum_verify`).
const EXT4_OS_LINUX: u32 = 0;
/// Byte offset of `s_checksum_seed` in the superblock.
const S_CHECKSUM_SEED: usize = 0x270;
/// Byte offset of `s_uuid` in the superblock.
const S_UUID: usize = 0x68;

/// What the filesystem checksums, and the seeds.
#[derive(Clone, Debug)]
pub(crate) struct Csum {
    /// The metadata_csum seed (`s_checksum_seed` with CSUM_SEED, else crc32c of `s_uuid`);
    /// `None` without metadata_csum.
    seed: Option<u32>,
    /// Inode records carry checksums (metadata_csum and a Linux `s_creator_os`).
    inodes: bool,
    /// Group descriptors carry gdt_csum's crc16 (without metadata_csum).
    crc16: bool,
    uuid: [u8; 16],
    /// `s_inode_size`, in bytes.
    inode_size: usize,
    desc_size: usize,
    wide_desc: bool,
}

impl Csum {
    /// The checksum rules of the filesystem of `sb`.
    pub(crate) fn new(sb: &Superblock) -> Csum {
        let csum = sb.has_ro_compat(ro_compat::METADATA_CSUM);
        let seed = csum.then(|| {
            if sb.has_incompat(incompat::CSUM_SEED) {
                le32(&sb.raw, S_CHECKSUM_SEED)
            } else {
                crc32c_raw(!0, &sb.raw[S_UUID..S_UUID + 16])
            }
        });
        Csum {
            seed,
            inodes: csum && sb.s_creator_os == EXT4_OS_LINUX,
            crc16: !csum && sb.has_ro_compat(ro_compat::GDT_CSUM),
            uuid: sb.s_uuid,
            inode_size: usize::from(sb.s_inode_size),
            desc_size: sb.desc_size as usize,
            wide_desc: sb.has_incompat(incompat::BIT64),
        }
    }

    /// True with metadata_csum.
    pub(crate) fn metadata(&self) -> bool {
        self.seed.is_some()
    }

    /// The per-inode seed of inode `ino` of generation `gen` (extent blocks, orphan file
    /// blocks and the inode itself are checksummed from it).
    fn inode_seed(&self, ino: u32, gen: u32) -> Option<u32> {
        let s = self.seed?;
        Some(crc32c_raw(
            crc32c_raw(s, &ino.to_le_bytes()),
            &gen.to_le_bytes(),
        ))
    }

    /// True if the record has room for `i_checksum_hi`: a large inode whose
    /// `i_extra_isize` covers it.
    fn has_hi(&self, raw: &[u8]) -> bool {
        self.inode_size > EXT2_GOOD_OLD_INODE_SIZE
            && raw.len() >= I_CHECKSUM_HI + 2
            && usize::from(le16(raw, EXT2_GOOD_OLD_INODE_SIZE)) >= 4
    }

    /// The checksum of inode record `raw` (`s_inode_size` bytes) of inode `ino`, over the
    /// record with both checksum fields taken as zero.
    fn inode_value(&self, ino: u32, raw: &[u8]) -> Option<u32> {
        if !self.inodes {
            return None;
        }
        let seed = self.inode_seed(ino, le32(raw, I_GENERATION))?;
        let mut r = raw.to_vec();
        r[I_CHECKSUM_LO..I_CHECKSUM_LO + 2].fill(0);
        if self.has_hi(raw) {
            r[I_CHECKSUM_HI..I_CHECKSUM_HI + 2].fill(0);
        }
        Some(crc32c_raw(seed, &r))
    }

    /// True if inode record `raw` of inode `ino` carries its checksum (always without
    /// metadata_csum).
    pub(crate) fn inode_ok(&self, ino: u32, raw: &[u8]) -> bool {
        let Some(c) = self.inode_value(ino, raw) else {
            return true;
        };
        if le16(raw, I_CHECKSUM_LO) != c as u16 {
            return false;
        }
        !self.has_hi(raw) || le16(raw, I_CHECKSUM_HI) == (c >> 16) as u16
    }

    /// Stores the checksum of inode record `raw` of inode `ino` (metadata_csum).
    pub(crate) fn set_inode(&self, ino: u32, raw: &mut [u8]) {
        let Some(c) = self.inode_value(ino, raw) else {
            return;
        };
        raw[I_CHECKSUM_LO..I_CHECKSUM_LO + 2].copy_from_slice(&(c as u16).to_le_bytes());
        if self.has_hi(raw) {
            raw[I_CHECKSUM_HI..I_CHECKSUM_HI + 2]
                .copy_from_slice(&((c >> 16) as u16).to_le_bytes());
        }
    }

    /// The extent tail checksum of tree block `block` of inode `ino` (generation `gen`)
    /// whose tail is at byte `tail` (12 + 12 × `eh_max`); `None` without metadata_csum or
    /// when the tail does not fit the block.
    pub(super) fn extent_block(
        &self,
        ino: u32,
        gen: u32,
        block: &[u8],
        tail: usize,
    ) -> Option<u32> {
        let seed = self.inode_seed(ino, gen)?;
        (tail + 4 <= block.len()).then(|| crc32c_raw(seed, &block[..tail]))
    }

    /// The checksum of xattr block `block` at filesystem block `nr` (`h_checksum` taken as
    /// zero); `None` without metadata_csum.
    pub(super) fn xattr_block(&self, nr: u64, block: &[u8]) -> Option<u32> {
        let seed = self.seed?;
        let mut b = block.to_vec();
        b[H_CHECKSUM..H_CHECKSUM + 4].fill(0);
        Some(crc32c_raw(crc32c_raw(seed, &nr.to_le_bytes()), &b))
    }

    /// The checksum of orphan file block `block` at filesystem block `nr` of the orphan
    /// file `ino` (generation `gen`): over its entries, the tail excluded; `None` without
    /// metadata_csum.
    pub(super) fn orphan_block(&self, ino: u32, gen: u32, nr: u64, block: &[u8]) -> Option<u32> {
        let seed = self.inode_seed(ino, gen)?;
        let entries = &block[..block.len() - ORPHAN_TAIL];
        Some(crc32c_raw(crc32c_raw(seed, &nr.to_le_bytes()), entries))
    }

    /// The checksum of a bitmap's `bits` bytes (metadata_csum), for
    /// `bg_{block,inode}_bitmap_csum_{lo,hi}`.
    pub(super) fn bitmap(&self, bits: &[u8]) -> Option<u32> {
        Some(crc32c_raw(self.seed?, bits))
    }

    /// True if descriptors are `s_desc_size` bytes with the `_hi` halves (64 bytes or more).
    pub(super) fn wide_desc(&self) -> bool {
        self.desc_size >= 64
    }

    /// Stores `bg_checksum` of descriptor `desc` (`s_desc_size` bytes) of group `g`:
    /// metadata_csum's low 16 bits of crc32c, or gdt_csum's crc16; nothing without either.
    pub(super) fn set_group_desc(&self, g: u32, desc: &mut [u8]) {
        let v = if let Some(seed) = self.seed {
            let mut d = desc.to_vec();
            d[BG_CHECKSUM..BG_CHECKSUM + 2].fill(0);
            crc32c_raw(crc32c_raw(seed, &g.to_le_bytes()), &d) as u16
        } else if self.crc16 {
            let mut c = crc16(0xFFFF, &self.uuid);
            c = crc16(c, &g.to_le_bytes());
            c = crc16(c, &desc[..BG_CHECKSUM]);
            if self.wide_desc && desc.len() > BG_CHECKSUM + 2 {
                c = crc16(c, &desc[BG_CHECKSUM + 2..]);
            }
            c
        } else {
            return;
        };
        desc[BG_CHECKSUM..BG_CHECKSUM + 2].copy_from_slice(&v.to_le_bytes());
    }
}

//! The filesystem as the fast-commit replay edits it: blocks read through the block-level
//! replayed view and kept in memory once read (the kernel's buffer cache), those written
//! marked dirty; the primary group descriptors' fields and checksums (kernel
//! `ext4_group_desc_csum_set`); the checksums of bitmaps, inodes, extent blocks and directory
//! blocks (metadata_csum, crc32c seeded with `s_csum_seed`; gdt_csum, crc16).
//!
//! Every block touched is counted against [`MAX_BLOCKS`]: a hostile journal cannot make the
//! replay hold more than that in memory.

use super::scan::Region;
use crate::bytes::{crc16, crc32c_raw, le16, le32};
use crate::features::{incompat, ro_compat};
use crate::layout::{desc_block_location, group_base_block};
use crate::superblock::Superblock;
use crate::view::BlockView;
use std::collections::BTreeMap;

/// Most distinct blocks one replay holds (256 MiB at 4 KiB blocks).
pub(crate) const MAX_BLOCKS: usize = 65536;

/// Why a step of the replay stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FcError {
    /// A structure the kernel's replay rejects there (the tag's effect ends, as in the
    /// kernel).
    Corrupt(String),
    /// A case this replay does not do as the kernel does.
    Unsupported(String),
    /// A read error or a bound reached: the replay is abandoned.
    Fatal(String),
}

/// Results of the replay's steps.
pub(crate) type Fr<T> = Result<T, FcError>;

/// A [`FcError::Corrupt`] with `msg`.
pub(crate) fn corrupt<T>(msg: String) -> Fr<T> {
    Err(FcError::Corrupt(msg))
}

/// A timestamp as ext4 stores it: seconds (low 32 bits) and the `_extra` field (epoch bits,
/// nanoseconds << 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) secs: u32,
    pub(crate) extra: u32,
}

/// `bg_*` fields of a group descriptor: (offset of the low half, offset of the high half in
/// 64-byte descriptors, width of the low half in bytes).
#[derive(Clone, Copy)]
pub(crate) struct DescField(usize, usize, usize);

pub(crate) const BG_BLOCK_BITMAP: DescField = DescField(0x00, 0x20, 4);
pub(crate) const BG_INODE_BITMAP: DescField = DescField(0x04, 0x24, 4);
pub(crate) const BG_INODE_TABLE: DescField = DescField(0x08, 0x28, 4);
pub(crate) const BG_FREE_BLOCKS_COUNT: DescField = DescField(0x0C, 0x2C, 2);
pub(crate) const BG_FREE_INODES_COUNT: DescField = DescField(0x0E, 0x2E, 2);
pub(crate) const BG_USED_DIRS_COUNT: DescField = DescField(0x10, 0x30, 2);
pub(crate) const BG_ITABLE_UNUSED: DescField = DescField(0x1C, 0x32, 2);
const BG_FLAGS: usize = 0x12;
const BG_BLOCK_BITMAP_CSUM: (usize, usize) = (0x18, 0x38);
const BG_INODE_BITMAP_CSUM: (usize, usize) = (0x1A, 0x3A);
const BG_CHECKSUM: usize = 0x1E;
/// Descriptors at least this long have the `_hi` halves (`EXT4_MIN_DESC_SIZE_64BIT`).
const DESC_SIZE_64BIT: usize = 64;

/// The filesystem being replayed (module comment).
pub(crate) struct Fs<'v> {
    view: &'v dyn BlockView,
    pub(crate) sb: Superblock,
    /// Block size, in bytes.
    pub(crate) bs: usize,
    /// Block → (bytes, written).
    blocks: BTreeMap<u64, (Vec<u8>, bool)>,
    pub(crate) csum_seed: u32,
    /// Blocks the replay's allocator must not hand out (kernel `fc_regions`).
    pub(crate) excluded: Vec<Region>,
    /// The time the replay stamps, as the kernel stamps the time of its replay.
    pub(crate) now: Stamp,
}

impl<'v> Fs<'v> {
    /// The filesystem of superblock `sb` on `view`.
    pub(crate) fn new(view: &'v dyn BlockView, sb: Superblock, now: Stamp) -> Fs<'v> {
        let csum_seed = if sb.has_incompat(incompat::CSUM_SEED) {
            le32(&sb.raw, 0x270)
        } else {
            crc32c_raw(!0, &sb.s_uuid)
        };
        Fs {
            view,
            bs: sb.block_size as usize,
            sb,
            blocks: BTreeMap::new(),
            csum_seed,
            excluded: Vec::new(),
            now,
        }
    }

    pub(crate) fn metadata_csum(&self) -> bool {
        self.sb.has_ro_compat(ro_compat::METADATA_CSUM)
    }

    /// Loads block `b` into memory.
    fn load(&mut self, b: u64) -> Fr<()> {
        if self.blocks.contains_key(&b) {
            return Ok(());
        }
        if b >= self.sb.s_blocks_count {
            return corrupt(format!("block {b} is past the end of the filesystem"));
        }
        if self.blocks.len() >= MAX_BLOCKS {
            return Err(FcError::Fatal(format!(
                "the replay would hold more than {MAX_BLOCKS} blocks"
            )));
        }
        let mut buf = vec![0u8; self.bs];
        self.view
            .read_blocks(self.sb.block_size, b, &mut buf)
            .map_err(|e| FcError::Fatal(format!("block {b}: {e}")))?;
        self.blocks.insert(b, (buf, false));
        Ok(())
    }

    /// The bytes of block `b`.
    pub(crate) fn block(&mut self, b: u64) -> Fr<&[u8]> {
        self.load(b)?;
        Ok(&self.blocks[&b].0)
    }

    /// True when block `b` was read or written by the replay already.
    pub(crate) fn cached(&self, b: u64) -> bool {
        self.blocks.contains_key(&b)
    }

    /// The bytes of block `b`, to change (the block is marked written).
    pub(crate) fn block_mut(&mut self, b: u64) -> Fr<&mut Vec<u8>> {
        self.load(b)?;
        let e = self.blocks.get_mut(&b).expect("loaded");
        e.1 = true;
        Ok(&mut e.0)
    }

    /// Block `b` replaced by `bytes` (a block newly allocated and filled).
    pub(crate) fn put_block(&mut self, b: u64, bytes: Vec<u8>) -> Fr<()> {
        if b >= self.sb.s_blocks_count {
            return corrupt(format!("block {b} is past the end of the filesystem"));
        }
        if !self.blocks.contains_key(&b) && self.blocks.len() >= MAX_BLOCKS {
            return Err(FcError::Fatal(format!(
                "the replay would hold more than {MAX_BLOCKS} blocks"
            )));
        }
        self.blocks.insert(b, (bytes, true));
        Ok(())
    }

    /// The blocks written, in order.
    pub(crate) fn into_written(self) -> Vec<(u64, Vec<u8>)> {
        self.blocks
            .into_iter()
            .filter(|(_, (_, w))| *w)
            .map(|(b, (v, _))| (b, v))
            .collect()
    }

    /// Block and byte offset of group `g`'s primary descriptor.
    pub(crate) fn desc_at(&self, g: u32) -> Fr<(u64, usize)> {
        if g >= self.sb.group_count {
            return corrupt(format!("group {g} does not exist"));
        }
        let i = g / self.sb.descs_per_block;
        let b = desc_block_location(&self.sb, group_base_block(&self.sb, 0), i);
        let off = (g % self.sb.descs_per_block) as usize * self.sb.desc_size as usize;
        Ok((b, off))
    }

    /// A descriptor field of group `g` (the `_hi` half only in 64-byte descriptors).
    pub(crate) fn desc_get(&mut self, g: u32, f: DescField) -> Fr<u64> {
        let (b, off) = self.desc_at(g)?;
        let wide = self.sb.desc_size as usize >= DESC_SIZE_64BIT;
        let d = &self.block(b)?[off..];
        Ok(match f.2 {
            4 => {
                u64::from(le32(d, f.0))
                    | if wide {
                        u64::from(le32(d, f.1)) << 32
                    } else {
                        0
                    }
            }
            _ => {
                u64::from(le16(d, f.0))
                    | if wide {
                        u64::from(le16(d, f.1)) << 16
                    } else {
                        0
                    }
            }
        })
    }

    /// Sets a 16/16-bit count field of group `g` (checksum left to [`Fs::desc_csum_set`]).
    pub(crate) fn desc_set(&mut self, g: u32, f: DescField, v: u32) -> Fr<()> {
        let (b, off) = self.desc_at(g)?;
        let wide = self.sb.desc_size as usize >= DESC_SIZE_64BIT;
        let d = &mut self.block_mut(b)?[off..];
        d[f.0..f.0 + 2].copy_from_slice(&(v as u16).to_le_bytes());
        if wide {
            d[f.1..f.1 + 2].copy_from_slice(&((v >> 16) as u16).to_le_bytes());
        }
        Ok(())
    }

    pub(crate) fn desc_flags(&mut self, g: u32) -> Fr<u16> {
        let (b, off) = self.desc_at(g)?;
        Ok(le16(&self.block(b)?[off..], BG_FLAGS))
    }

    pub(crate) fn desc_clear_flag(&mut self, g: u32, flag: u16) -> Fr<()> {
        let (b, off) = self.desc_at(g)?;
        let d = &mut self.block_mut(b)?[off..];
        let v = le16(d, BG_FLAGS) & !flag;
        d[BG_FLAGS..BG_FLAGS + 2].copy_from_slice(&v.to_le_bytes());
        Ok(())
    }

    /// Kernel `ext4_group_desc_csum_set`.
    pub(crate) fn desc_csum_set(&mut self, g: u32) -> Fr<()> {
        if !self.sb.has_group_desc_csum() {
            return Ok(());
        }
        let (b, off) = self.desc_at(g)?;
        let ds = self.sb.desc_size as usize;
        let d = self.block(b)?[off..off + ds].to_vec();
        let le_group = g.to_le_bytes();
        let csum = if self.metadata_csum() {
            let mut c = crc32c_raw(self.csum_seed, &le_group);
            c = crc32c_raw(c, &d[..BG_CHECKSUM]);
            c = crc32c_raw(c, &[0, 0]);
            c = crc32c_raw(c, &d[BG_CHECKSUM + 2..]);
            (c & 0xFFFF) as u16
        } else {
            let mut c = crc16(!0, &self.sb.s_uuid);
            c = crc16(c, &le_group);
            c = crc16(c, &d[..BG_CHECKSUM]);
            if self.sb.has_incompat(incompat::BIT64) && BG_CHECKSUM + 2 < ds {
                c = crc16(c, &d[BG_CHECKSUM + 2..]);
            }
            c
        };
        let d = &mut self.block_mut(b)?[off..];
        d[BG_CHECKSUM..BG_CHECKSUM + 2].copy_from_slice(&csum.to_le_bytes());
        Ok(())
    }

    /// Kernel `ext4_block_bitmap_csum_set` / `ext4_inode_bitmap_csum_set` for group `g`
    /// whose bitmap is block `bitmap`.
    pub(crate) fn bitmap_csum_set(&mut self, g: u32, bitmap: u64, inodes: bool) -> Fr<()> {
        if !self.metadata_csum() {
            return Ok(());
        }
        let (bytes, (lo, hi)) = if inodes {
            (self.sb.s_inodes_per_group / 8, BG_INODE_BITMAP_CSUM)
        } else {
            (self.sb.s_clusters_per_group / 8, BG_BLOCK_BITMAP_CSUM)
        };
        let n = (bytes as usize).min(self.bs);
        let c = crc32c_raw(self.csum_seed, &self.block(bitmap)?[..n]);
        let (b, off) = self.desc_at(g)?;
        let wide = self.sb.desc_size as usize >= DESC_SIZE_64BIT;
        let d = &mut self.block_mut(b)?[off..];
        d[lo..lo + 2].copy_from_slice(&(c as u16).to_le_bytes());
        if wide {
            d[hi..hi + 2].copy_from_slice(&((c >> 16) as u16).to_le_bytes());
        }
        Ok(())
    }

    /// Kernel `ext4_xattr_block_csum_set` of extended attribute block `b`.
    pub(crate) fn xattr_block_csum_set(&mut self, b: u64) -> Fr<()> {
        if !self.metadata_csum() {
            return Ok(());
        }
        let seed = self.csum_seed;
        let blk = self.block_mut(b)?;
        let mut c = crc32c_raw(seed, &b.to_le_bytes());
        c = crc32c_raw(c, &blk[..0x10]);
        c = crc32c_raw(c, &[0; 4]);
        c = crc32c_raw(c, &blk[0x14..]);
        blk[0x10..0x14].copy_from_slice(&c.to_le_bytes());
        Ok(())
    }

    /// The checksum seed of inode `ino` of generation `gen` (kernel `ei->i_csum_seed`).
    pub(crate) fn inode_seed(&self, ino: u32, gen: u32) -> u32 {
        let c = crc32c_raw(self.csum_seed, &ino.to_le_bytes());
        crc32c_raw(c, &gen.to_le_bytes())
    }
}

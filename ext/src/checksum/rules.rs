//! The metadata_csum checksums of directory blocks (dirent and dx tails), xattr blocks, the
//! MMP block and orphan-file blocks (ext4-on-disk §9, §10, §11, §13), and the dirent
//! `rec_len` decoding both this and `dir` need. Decoding only, no I/O; the other checksums are
//! beside their structure (`group_desc`, `inode`, `extent_header`, `journal::superblock`).
//!
//! Each returns the [`Check`], or why the structure holding the checksum is not there (a
//! wrong magic number), which counts as a failed verification.

use super::report::Check;
use crate::bytes::{crc32c_raw, le16, le32};

/// `h_magic` of an xattr block (`EXT4_XATTR_MAGIC`).
const EXT4_XATTR_MAGIC: u32 = 0xEA02_0000;
/// Byte offset of `h_checksum` in an xattr block header.
const H_CHECKSUM_OFFSET: usize = 0x10;
/// `mmp_magic` (`EXT4_MMP_MAGIC`).
const EXT4_MMP_MAGIC: u32 = 0x004D_4D50;
/// Byte offset of `mmp_checksum`.
const MMP_CHECKSUM_OFFSET: usize = 0x3FC;
/// `ob_magic` of an orphan-file block tail (`EXT4_ORPHAN_BLOCK_MAGIC`).
const EXT4_ORPHAN_BLOCK_MAGIC: u32 = 0x0B10_CA04;
/// Size of the orphan-file block tail (`ob_magic`, `ob_checksum`), in bytes.
const ORPHAN_TAIL_SIZE: usize = 8;

fn magic_is(block: &[u8], at: usize, want: u32, field: &str) -> Result<(), String> {
    let got = le32(block, at);
    if got == want {
        Ok(())
    } else {
        Err(format!("{field} is {got:#010x}, not {want:#010x}"))
    }
}

/// The checksum of xattr block `block` at block number `nr`: the crc32c from the
/// metadata_csum seed of le64 `nr`, then the whole block with `h_checksum` taken as zero.
///
/// # Errors
/// The block's `h_magic` is not 0xEA020000.
pub(crate) fn xattr_block(seed: u32, nr: u64, block: &[u8]) -> Result<Check, String> {
    magic_is(block, 0, EXT4_XATTR_MAGIC, "h_magic")?;
    let c = crc32c_raw(
        crc32c_raw(seed, &nr.to_le_bytes()),
        &block[..H_CHECKSUM_OFFSET],
    );
    let c = crc32c_raw(c, &[0; 4]);
    Ok(Check {
        stored: le32(block, H_CHECKSUM_OFFSET),
        computed: crc32c_raw(c, &block[H_CHECKSUM_OFFSET + 4..]),
    })
}

/// The checksum of the MMP block: the crc32c from the metadata_csum seed of its first 0x3FC
/// bytes.
///
/// # Errors
/// Its `mmp_magic` is not 0x004D4D50.
pub(crate) fn mmp_block(seed: u32, block: &[u8]) -> Result<Check, String> {
    magic_is(block, 0, EXT4_MMP_MAGIC, "mmp_magic")?;
    Ok(Check {
        stored: le32(block, MMP_CHECKSUM_OFFSET),
        computed: crc32c_raw(seed, &block[..MMP_CHECKSUM_OFFSET]),
    })
}

/// The checksum of orphan-file block `block` at (physical) block number `nr`: the crc32c from
/// the orphan file's [`crate::inode::inode_csum_seed`] of le64 `nr`, then the block before
/// its 8-byte tail.
///
/// # Errors
/// Its tail's `ob_magic` is not 0x0B10CA04.
pub(crate) fn orphan_block(inode_seed: u32, nr: u64, block: &[u8]) -> Result<Check, String> {
    let tail = block.len() - ORPHAN_TAIL_SIZE;
    magic_is(block, tail, EXT4_ORPHAN_BLOCK_MAGIC, "ob_magic")?;
    let c = crc32c_raw(inode_seed, &nr.to_le_bytes());
    Ok(Check {
        stored: le32(block, tail + 4),
        computed: crc32c_raw(c, &block[..tail]),
    })
}

/// Decodes `rec_len` (64 KiB blocks store 65536 as 0 or 65535).
pub(crate) fn rec_len(raw: u16, block_size: usize) -> usize {
    if block_size >= 65536 && (raw == 0 || raw == 65535) {
        65536
    } else {
        usize::from(raw)
    }
}

/// Size of the metadata_csum dirent tail (`struct ext4_dir_entry_tail`) and of the dx tail
/// (`struct dx_tail`), in bytes.
pub(crate) const DIRENT_TAIL_SIZE: usize = 12;
pub(crate) const DX_TAIL_SIZE: usize = 8;
/// `det_reserved_ft` of a dirent tail.
const EXT4_FT_DIR_CSUM: u8 = 0xDE;
/// Size of a dx entry (hash, block), and of `struct dx_root_info`, in bytes.
const DX_ENTRY_SIZE: usize = 8;
const DX_ROOT_INFO_SIZE: u8 = 8;

/// What holds the checksum of a directory block (metadata_csum), with the checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DirChecksum {
    /// A leaf block: its dirent tail.
    Leaf(Check),
    /// An htree root or interior node: its dx tail.
    Htree(Check),
    /// Neither a dirent tail nor a dx node whose tail fits: no checksum to verify (e2fsck's
    /// "directory has no checksum").
    Missing,
}

/// The checksum of directory block `block` of the directory whose
/// [`crate::inode::inode_csum_seed`] is `inode_seed`, found as e2fsprogs finds it: a dirent
/// tail in the last 12 bytes (inode 0, rec_len 12, name_len 0, file_type 0xDE) where the
/// chain of entries ends makes it a leaf, whose crc32c covers the bytes before the tail; otherwise a dx node (an empty dirent
/// spanning the block, or the root's "." and ".." with an 8-byte `dx_root_info`) whose
/// `limit` leaves room for the dx tail, whose crc32c covers the header and `count` entries,
/// then the tail's reserved word and 4 zero bytes (ext4-on-disk §9, §13).
pub(crate) fn dir_block_checksum(inode_seed: u32, block: &[u8]) -> DirChecksum {
    let bs = block.len();
    if bs < 2 * DIRENT_TAIL_SIZE + 16 {
        return DirChecksum::Missing;
    }
    let t = bs - DIRENT_TAIL_SIZE;
    if chain_reaches(block, t)
        && le32(block, t) == 0
        && le16(block, t + 4) == DIRENT_TAIL_SIZE as u16
        && block[t + 6] == 0
        && block[t + 7] == EXT4_FT_DIR_CSUM
    {
        return DirChecksum::Leaf(Check {
            stored: le32(block, t + 8),
            computed: crc32c_raw(inode_seed, &block[..t]),
        });
    }
    let Some(count_offset) = dx_count_offset(block) else {
        return DirChecksum::Missing;
    };
    let limit = usize::from(le16(block, count_offset));
    let count = usize::from(le16(block, count_offset + 2));
    let sane = (bs - count_offset) / DX_ENTRY_SIZE;
    let tail = count_offset + limit * DX_ENTRY_SIZE;
    if limit > sane || count > sane || tail + DX_TAIL_SIZE > bs {
        return DirChecksum::Missing;
    }
    let c = crc32c_raw(inode_seed, &block[..count_offset + count * DX_ENTRY_SIZE]);
    let c = crc32c_raw(c, &block[tail..tail + 4]);
    DirChecksum::Htree(Check {
        stored: le32(block, tail + 4),
        computed: crc32c_raw(c, &[0; 4]),
    })
}

/// True if the dirent chain from the start of `block` (each `rec_len` at least 8 and a
/// multiple of 4) lands exactly on offset `t`: only then is what lies there a tail (a dx root
/// converted from a leaf keeps the old tail's bytes where its dx tail's reserved word is, so
/// the bytes alone do not tell, as e2fsprogs knows).
fn chain_reaches(block: &[u8], t: usize) -> bool {
    let mut off = 0;
    while off < t {
        let r = rec_len(le16(block, off + 4), block.len());
        if r < 8 || !r.is_multiple_of(4) {
            return false;
        }
        off += r;
    }
    off == t
}

/// Where the dx `count`/`limit` pair of an htree node is: 8 in an interior node (one empty
/// dirent spanning the block), 32 in a root ("." of 12 bytes, ".." spanning the rest, a
/// `dx_root_info` with `reserved_zero` 0 and `info_length` 8); `None` for another block.
pub(super) fn dx_count_offset(block: &[u8]) -> Option<usize> {
    let bs = block.len();
    let first = rec_len(le16(block, 4), bs);
    if first == bs && block[6] == 0 {
        return Some(8);
    }
    let root = first == 12
        && rec_len(le16(block, 12 + 4), bs) == bs - 12
        && le32(block, 24) == 0
        && block[29] == DX_ROOT_INFO_SIZE;
    root.then_some(32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1 KiB leaf: "." and ".." then the dirent tail, with its checksum.
    fn leaf(seed: u32) -> Vec<u8> {
        let mut b = vec![0u8; 1024];
        b[0] = 2;
        b[4..6].copy_from_slice(&12u16.to_le_bytes());
        b[12] = 2;
        b[16..18].copy_from_slice(&1000u16.to_le_bytes());
        b[1016..1018].copy_from_slice(&12u16.to_le_bytes());
        b[1019] = EXT4_FT_DIR_CSUM;
        let c = crc32c_raw(seed, &b[..1012]);
        b[1020..].copy_from_slice(&c.to_le_bytes());
        b
    }

    #[test]
    fn leaf_and_dx_root_tails() {
        let b = leaf(5);
        assert!(matches!(dir_block_checksum(5, &b), DirChecksum::Leaf(c) if c.ok()));
        // The same bytes as a dx root (".." spanning the rest, root info, limit 123, count
        // 1): the old tail's bytes are the dx tail's reserved word; a dx node it is.
        let mut r = b.clone();
        r[16..18].copy_from_slice(&1012u16.to_le_bytes());
        r[29] = 8;
        r[32..34].copy_from_slice(&123u16.to_le_bytes());
        r[34..36].copy_from_slice(&1u16.to_le_bytes());
        let c = crc32c_raw(crc32c_raw(crc32c_raw(5, &r[..40]), &r[1016..1020]), &[0; 4]);
        r[1020..].copy_from_slice(&c.to_le_bytes());
        assert!(matches!(dir_block_checksum(5, &r), DirChecksum::Htree(c) if c.ok()));
        let mut broken = b;
        broken[4] = 3;
        assert_eq!(dir_block_checksum(5, &broken), DirChecksum::Missing);
    }

    #[test]
    fn a_wrong_magic_is_named() {
        let b = vec![0u8; 1024];
        assert!(xattr_block(1, 5, &b)
            .unwrap_err()
            .contains("h_magic is 0x00000000"));
        assert!(mmp_block(1, &b).unwrap_err().contains("mmp_magic"));
        assert!(orphan_block(1, 5, &b).unwrap_err().contains("ob_magic"));
    }

    #[test]
    fn xattr_checksum_covers_the_block_number_and_skips_its_field() {
        let mut b = vec![0u8; 1024];
        b[..4].copy_from_slice(&EXT4_XATTR_MAGIC.to_le_bytes());
        b[100] = 7;
        let c = xattr_block(9, 33, &b).unwrap();
        b[H_CHECKSUM_OFFSET..H_CHECKSUM_OFFSET + 4].copy_from_slice(&c.computed.to_le_bytes());
        assert!(xattr_block(9, 33, &b).unwrap().ok());
        assert!(!xattr_block(9, 34, &b).unwrap().ok());
        b[100] = 8;
        assert!(!xattr_block(9, 33, &b).unwrap().ok());
    }
}

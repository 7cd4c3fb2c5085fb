//! The metadata_csum checksums of the structures without a module of their own: xattr
//! blocks, the MMP block, orphan-file blocks (ext4-on-disk §10, §11, §13). Decoding only, no
//! I/O; the others are beside their structure (`group_desc`, `inode`, `extent_header`,
//! `dir`, `journal::superblock`).
//!
//! Each returns the [`Check`], or why the structure holding the checksum is not there (a
//! wrong magic number), which counts as a failed verification.

use super::report::Check;
use crate::bytes::{crc32c_raw, le32};

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

#[cfg(test)]
mod tests {
    use super::*;

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

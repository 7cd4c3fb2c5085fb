//! The computing side of the directory block checksums (metadata_csum, ext4-on-disk §13):
//! after a block was rewritten in memory (the scrambled view), its dirent tail or dx tail is
//! stored again, found exactly as [`super::rules::dir_block_checksum`] finds it for
//! verification. Nothing is written to a device; the caller's buffer is edited.

use super::rules::{dir_block_checksum, dx_count_offset, DirChecksum, DIRENT_TAIL_SIZE};
use crate::bytes::le16;

/// Size of a dx entry (hash, block), in bytes.
const DX_ENTRY_SIZE: usize = 8;

/// Stores the checksum of directory block `block` (a whole block) of the directory whose
/// per-inode seed is `inode_seed`: in the dirent tail's `det_checksum` (the last 4 bytes) of
/// a leaf, in the `dt_checksum` of an htree node's dx tail. Returns false (nothing stored)
/// for a block with neither (no checksum to keep).
pub(crate) fn store_dir_block_checksum(inode_seed: u32, block: &mut [u8]) -> bool {
    let bs = block.len();
    match dir_block_checksum(inode_seed, block) {
        DirChecksum::Leaf(c) => {
            let at = bs - DIRENT_TAIL_SIZE + 8;
            block[at..at + 4].copy_from_slice(&c.computed.to_le_bytes());
            true
        }
        DirChecksum::Htree(c) => {
            let Some(count_offset) = dx_count_offset(block) else {
                return false;
            };
            let limit = usize::from(le16(block, count_offset));
            let at = count_offset + limit * DX_ENTRY_SIZE + 4;
            block[at..at + 4].copy_from_slice(&c.computed.to_le_bytes());
            true
        }
        DirChecksum::Missing => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_leaf_and_dx_checksums_verify() {
        let mut leaf = vec![0u8; 1024];
        leaf[4..6].copy_from_slice(&1012u16.to_le_bytes());
        leaf[1012 + 4..1012 + 6].copy_from_slice(&12u16.to_le_bytes());
        leaf[1012 + 7] = 0xDE;
        assert!(store_dir_block_checksum(7, &mut leaf));
        assert!(
            matches!(dir_block_checksum(7, &leaf), DirChecksum::Leaf(c) if c.stored == c.computed)
        );
        let mut node = vec![0u8; 1024];
        node[4..6].copy_from_slice(&1024u16.to_le_bytes());
        node[8..10].copy_from_slice(&126u16.to_le_bytes()); // limit: (1024 - 8 - 8) / 8
        node[10..12].copy_from_slice(&1u16.to_le_bytes());
        assert!(store_dir_block_checksum(9, &mut node));
        assert!(
            matches!(dir_block_checksum(9, &node), DirChecksum::Htree(c) if c.stored == c.computed)
        );
        assert!(!store_dir_block_checksum(9, &mut [0u8; 1024]));
    }
}

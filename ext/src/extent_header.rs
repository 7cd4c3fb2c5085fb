//! Extent tree nodes on disk (kernel `struct ext4_extent_header`, `struct ext4_extent_idx`,
//! `struct ext4_extent`): a 12-byte header, then 12-byte entries, in the 60 bytes of
//! `i_block` (the root) or in a whole tree block. Decoding only: the walk over a tree is the
//! `extent` module's, above the collector.

use crate::bytes::{crc32c_raw, join, le16, le32};
use crate::checksum::Check;

/// `eh_magic` (kernel `EXT4_EXT_MAGIC`).
pub(crate) const EXT4_EXT_MAGIC: u16 = 0xF30A;
/// Maximum tree depth the kernel accepts (EXT4_MAX_EXTENT_DEPTH). Deeper trees are reported
/// but still walked, up to [`MAX_WALK_DEPTH`], as e2fsprogs does.
pub(crate) const EXT4_MAX_EXTENT_DEPTH: u16 = 5;
/// Deepest tree walked at all: bounds the recursion on corrupt headers.
pub(crate) const MAX_WALK_DEPTH: u16 = 32;
/// Size of the header and of each entry, in bytes.
pub(crate) const ENTRY_SIZE: usize = 12;
/// An `ee_len` above this marks an unwritten extent of `ee_len - 32768` blocks (kernel
/// `EXT_INIT_MAX_LEN`).
pub(crate) const EXT_INIT_MAX_LEN: u16 = 32768;

/// A validated extent header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ExtentHeader {
    /// `eh_entries`: valid entries after the header.
    pub(crate) eh_entries: u16,
    /// `eh_max`: capacity of the node, in entries.
    pub(crate) eh_max: u16,
    /// `eh_depth`: 0 for a leaf (entries are extents), else index entries.
    pub(crate) eh_depth: u16,
}

/// Parses and validates the header at the start of `node` (60 bytes of `i_block`, or a tree
/// block).
///
/// # Errors
/// A description of the first rule broken: magic, `eh_max` above the node's capacity,
/// `eh_entries > eh_max`, or depth above [`MAX_WALK_DEPTH`].
pub(crate) fn parse_header(node: &[u8]) -> Result<ExtentHeader, String> {
    if node.len() < ENTRY_SIZE {
        return Err("node shorter than a header".into());
    }
    let magic = le16(node, 0);
    if magic != EXT4_EXT_MAGIC {
        return Err(format!("magic {magic:#06x} (want {EXT4_EXT_MAGIC:#06x})"));
    }
    let h = ExtentHeader {
        eh_entries: le16(node, 2),
        eh_max: le16(node, 4),
        eh_depth: le16(node, 6),
    };
    let capacity = (node.len() - ENTRY_SIZE) / ENTRY_SIZE;
    if usize::from(h.eh_max) > capacity {
        return Err(format!(
            "eh_max {} exceeds the node's capacity {capacity}",
            h.eh_max
        ));
    }
    if h.eh_entries > h.eh_max {
        return Err(format!("eh_entries {} > eh_max {}", h.eh_entries, h.eh_max));
    }
    if h.eh_depth > MAX_WALK_DEPTH {
        return Err(format!("eh_depth {} > {MAX_WALK_DEPTH}", h.eh_depth));
    }
    Ok(h)
}

/// The metadata_csum checksum of extent tree block `block` whose header says `eh_max`: the
/// crc32c from the owner's [`crate::inode::inode_csum_seed`] of the header and the `eh_max`
/// entries, against the `ext4_extent_tail` after them (ext4-on-disk §13). `None` when the
/// tail would not fit in the block (`eh_max` is validated against the capacity first, so
/// never for a parsed header).
pub(crate) fn extent_block_checksum(inode_seed: u32, block: &[u8], eh_max: u16) -> Option<Check> {
    let at = ENTRY_SIZE * (usize::from(eh_max) + 1);
    if at + 4 > block.len() {
        return None;
    }
    Some(Check {
        stored: le32(block, at),
        computed: crc32c_raw(inode_seed, &block[..at]),
    })
}

/// True if `i_block` starts with an extent header's magic (the fast-symlink test).
pub(crate) fn has_magic(i_block: &[u8]) -> bool {
    le16(i_block, 0) == EXT4_EXT_MAGIC
}

/// One leaf entry (`struct ext4_extent`), decoded but not validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Extent {
    /// `ee_block`: first file block mapped.
    pub(crate) ee_block: u32,
    /// Blocks mapped: `ee_len`, less [`EXT_INIT_MAX_LEN`] when unwritten.
    pub(crate) len: u16,
    /// `ee_len` above [`EXT_INIT_MAX_LEN`]: an uninitialized extent (reads as zeros).
    pub(crate) unwritten: bool,
    /// `ee_start_lo | ee_start_hi << 32`: first filesystem block.
    pub(crate) ee_start: u64,
}

/// Decodes the 12-byte leaf entry `e`.
pub(crate) fn leaf_entry(e: &[u8]) -> Extent {
    let raw_len = le16(e, 4);
    let unwritten = raw_len > EXT_INIT_MAX_LEN;
    Extent {
        ee_block: le32(e, 0),
        len: if unwritten {
            raw_len - EXT_INIT_MAX_LEN
        } else {
            raw_len
        },
        unwritten,
        ee_start: join(le32(e, 8), u32::from(le16(e, 6))),
    }
}

/// The child block of the 12-byte index entry `e` (`struct ext4_extent_idx`): `ei_leaf_lo |
/// ei_leaf_hi << 32`.
pub(crate) fn index_child(e: &[u8]) -> u64 {
    join(le32(e, 4), u32::from(le16(e, 8)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(entries: u16, max: u16, depth: u16, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[0..2].copy_from_slice(&EXT4_EXT_MAGIC.to_le_bytes());
        b[2..4].copy_from_slice(&entries.to_le_bytes());
        b[4..6].copy_from_slice(&max.to_le_bytes());
        b[6..8].copy_from_slice(&depth.to_le_bytes());
        b
    }

    #[test]
    fn valid_root_header() {
        assert_eq!(
            parse_header(&header(1, 4, 0, 60)),
            Ok(ExtentHeader {
                eh_entries: 1,
                eh_max: 4,
                eh_depth: 0
            })
        );
    }

    #[test]
    fn bad_magic() {
        let mut b = header(1, 4, 0, 60);
        b[0] = 0;
        assert!(parse_header(&b).unwrap_err().contains("magic"));
    }

    #[test]
    fn max_above_capacity() {
        assert!(parse_header(&header(1, 5, 0, 60))
            .unwrap_err()
            .contains("capacity"));
        assert!(parse_header(&header(1, 340, 0, 4096)).is_ok());
        assert!(parse_header(&header(1, 341, 0, 4096)).is_err());
    }

    #[test]
    fn entries_above_max() {
        assert!(parse_header(&header(5, 4, 0, 60))
            .unwrap_err()
            .contains("eh_entries"));
    }

    #[test]
    fn too_deep() {
        assert!(parse_header(&header(1, 4, 6, 60)).is_ok());
        assert!(parse_header(&header(1, 4, 33, 60))
            .unwrap_err()
            .contains("eh_depth"));
    }

    #[test]
    fn too_short() {
        assert!(parse_header(&[0u8; 8]).is_err());
    }
}

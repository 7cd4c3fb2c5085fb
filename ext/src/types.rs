//! The numbers every layer passes around: inode numbers and filesystem block numbers, as
//! distinct types so that one is never taken for the other across a module boundary; and the
//! reserved inode numbers.

use std::fmt;

/// An inode number, 1-based as in the kernel (inode 1 is `s_inodes_count`'s first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InodeNr(pub u32);

/// A filesystem block number, in units of the filesystem block size (`1024 <<
/// s_log_block_size` bytes); block 0 is the first block of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockNr(pub u64);

// The reserved inode numbers (kernel `EXT2_*_INO`, `EXT4_*_INO`), all below `s_first_ino`.

/// The bad-blocks inode: its indirect map lists the bad blocks (kernel `EXT2_BAD_INO`).
pub(crate) const EXT2_BAD_INO: InodeNr = InodeNr(1);
/// The root directory (kernel `EXT2_ROOT_INO`).
pub(crate) const EXT2_ROOT_INO: InodeNr = InodeNr(2);
/// The legacy user quota inode (kernel `EXT4_USR_QUOTA_INO`).
pub(crate) const EXT4_USR_QUOTA_INO: InodeNr = InodeNr(3);
/// The legacy group quota inode (kernel `EXT4_GRP_QUOTA_INO`).
pub(crate) const EXT4_GRP_QUOTA_INO: InodeNr = InodeNr(4);
/// The resize inode, owner of the reserved GDT blocks (kernel `EXT2_RESIZE_INO`).
pub(crate) const EXT2_RESIZE_INO: InodeNr = InodeNr(7);
/// next3 / ext4-snapshots: the inode owning the exclude bitmaps (`EXT4_EXCLUDE_INO`).
pub(crate) const EXT4_EXCLUDE_INO: InodeNr = InodeNr(9);

impl fmt::Display for InodeNr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for BlockNr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

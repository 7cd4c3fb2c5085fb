//! The numbers every layer passes around: inode numbers and filesystem block numbers, as
//! distinct types so that one is never taken for the other across a module boundary.

use std::fmt;

/// An inode number, 1-based as in the kernel (inode 1 is `s_inodes_count`'s first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InodeNr(pub u32);

/// A filesystem block number, in units of the filesystem block size (`1024 <<
/// s_log_block_size` bytes); block 0 is the first block of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockNr(pub u64);

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

//! Read-only access to ext2/3/4 filesystems for e2image-rs.
//!
//! The crate never writes. Everything is read through a [`BlockView`], a read-only view of one
//! state of a filesystem (a file or block device, later a reconstructed snapshot or a QCOW2
//! image). On top of it, [`Filesystem`] parses and validates the superblock and the group
//! descriptors, and [`walk`] computes the set of blocks to copy (the metadata, optionally the
//! data), classified by what they hold, plus a list of the corrupt parts it skipped.
//! [`file_runs`] lists which inode owns each block and at which file offset (for rollback
//! safety checks), and [`inode_paths`] names inodes by a breadth-first directory walk.
//!
//! One on-disk concept per module, named after the kernel structure: `superblock`,
//! `group_desc`, `inode`, `extent`, `indirect`, `layout` (where the static metadata lives).
//! Field names follow the kernel (`s_blocks_count_lo`, `bg_inode_table`, `ee_start`).

pub mod blockset;
mod bytes;
mod collector;
pub mod dir;
pub mod error;
pub mod extent;
pub mod fs;
pub mod group_desc;
pub mod indirect;
pub mod inode;
pub mod layout;
pub mod owners;
pub mod paths;
pub mod snapshot;
pub mod superblock;
pub mod view;
pub mod walk;
pub mod warning;

pub use blockset::{BlockClass, BlockSet, Extent};
pub use error::{Corrupt, Error};
pub use fs::{Filesystem, OpenOptions};
pub use owners::{file_runs, file_runs_and_inodes, inode_runs, FileRun, Owners, RunKind};
pub use paths::inode_paths;
pub use superblock::Superblock;
pub use view::{BlockView, FileView};
pub use walk::{walk, WalkOptions, WalkResult, WalkStats, Warning};

/// An inode number (1-based, as in the kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InodeNr(pub u32);

/// A filesystem block number, in units of the filesystem block size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockNr(pub u64);

impl std::fmt::Display for InodeNr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::fmt::Display for BlockNr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

//! Read-only access to ext2/3/4 filesystems for e2image-rs.
//!
//! The crate never writes. Everything is read through a [`BlockView`], a read-only view of one
//! state of a filesystem (a file or block device, a reconstructed snapshot, a QCOW2 image). On
//! top of it, [`Filesystem`] parses and validates the superblock and the group descriptors,
//! and [`walk()`] computes the set of blocks to copy (the metadata, optionally the data),
//! classified by what they hold, plus a list of the corrupt parts it skipped and a
//! [`ChecksumReport`] of the metadata checksums it met (those of the blocks a copy reads
//! anyway are left [`PendingChecks`], verified as the copy reads them and completed by
//! [`WalkResult::finish_checks`]). [`file_runs`]
//! lists which inode owns each block and at which file offset (for rollback safety checks),
//! [`inode_paths`] names inodes by a breadth-first directory walk, [`snapshot_list`] and
//! [`SnapshotView`] read next3 in-filesystem snapshots, and [`Journal`] finds and recovers the
//! jbd2 journal into a [`ReplayedView`] (journal + disk, built in memory), fast commits
//! included ([`ReplayedView::replay_fast_commits`]), whose orphan lists
//! [`release_orphans`] then processes as the kernel does at mount.
//! [`Superblock::is_special_inode`] tells the filesystem's own inodes from user files, and
//! [`SuperblockBytes`] reads and edits superblock fields in a caller's buffer (the replayed
//! view's superblock, the binary's "not clean" mark): editing memory, never writing a device.
//! [`ScrambledView`] shows a filesystem with its names and symlink targets scrambled
//! (`e2image -s`), still valid for `e2fsck`.
//!
//! Layers, bottom to top; a module uses only modules below it (or beside it in its own
//! layer, never in a circle), never one above:
//!
//! | layer | modules | holds |
//! |---|---|---|
//! | values | `types`, `bytes`, `view`, `blockset` | [`InodeNr`], [`BlockNr`], the reserved inode numbers; little-endian fields and crc32c; [`BlockView`]; the copy set [`BlockSet`] of [`Extent`]s |
//! | problems | `error`, `warning`, `checksum::report` | [`Error`], [`Corrupt`]; [`Warning`]s bounded per kind; the [`ChecksumReport`] |
//! | on-disk structures | `features`, `superblock/` (`edit`, `special`), `group_desc`, `layout`, `extent_header`, `inode`, `dx_hash` | decoding and validation of one kernel structure each, no I/O: [`Superblock`] (its special inodes and journal flags in `special`, the field setters of [`SuperblockBytes`] in `edit`), [`Inode`]; `layout` is where the static metadata lives |
//! | checksum rules | `checksum::{state, rules, compute, pending}` | a walk's checksum state; the checksums of directory, xattr, MMP and orphan-file blocks (the others beside their structure), and the directory ones stored again (`compute`); the [`PendingChecks`] left to a copy |
//! | collect | `collect` | the `Collector` every walk fills, [`WalkStats`], [`RunKind`], the tree classes |
//! | trees, open | `extent`, `indirect`, `fs` | walks of one inode's extent tree or indirect map; [`Filesystem::open`] |
//! | inode tables | `itable` | scans of the in-use inodes of a group or of the filesystem |
//! | block maps | `blockmap` | one inode's blocks as [`FileRun`]s (`inode_runs`) |
//! | journal | `journal/` (`superblock`, `log`; `locate`; `passes`, `fast_commit`; `recovery`; `view`; `fc_replay`) | the jbd2 journal: [`Journal::locate`], [`Journal::recover`], the [`ReplayedView`] and its fast-commit replay |
//! | orphans | `orphan/` (`csum`, `edits`; `extents`, `indirect`, `file`; `release`) | [`release_orphans`]: the orphan lists processed after a replay, as the kernel does at mount, into changed blocks ([`OrphanRelease`]) |
//! | directories | `dir` | `read_dir`, `DirEntry` (crate-internal) |
//! | copy set | `walk`, `checksum::verify` | [`walk()`]: the copy-set policy (what each inode's blocks are, whether copied); the checksums the walk verifies or leaves pending |
//! | owners, paths | `owners`, `paths` | [`file_runs`], [`file_runs_and_inodes`], [`inode_paths`] |
//! | snapshots | `snapshot/` (`list`, `map`, `view`, `names`) | next3 snapshots |
//! | scrambling | `scramble/` (`names`, `pool`, `block`; `inodes`, `dirs`; `view`) | the [`ScrambledView`] (`-s`): names and symlink targets replaced, htree ranges kept, checksums stored again |
//!
//! The journal sits above the block maps because finding it maps the journal inode; its
//! replayed view is a [`BlockView`] that every layer reads like a device.
//!
//! The modules are private; this root re-exports the public API, deliberately small: what
//! the binary and the crate's integration tests use, and every type those items' signatures
//! and fields expose (`unnameable_types` keeps it so). Raw field offsets are not part of it:
//! superblock fields are read through [`Superblock`] and edited through [`SuperblockBytes`].
//! One on-disk concept per module, named after the kernel structure; fields and constants keep
//! the kernel's names (`s_blocks_count_lo`, `bg_inode_table`, `ee_start`, `EXT2_BAD_INO`).
//! Block numbers and counts are in filesystem blocks, offsets in bytes, unless a name says
//! otherwise.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, unnameable_types)]

mod blockmap;
mod blockset;
mod bytes;
mod checksum;
mod collect;
mod dir;
mod dx_hash;
mod error;
mod extent;
mod extent_header;
mod features;
mod fs;
mod group_desc;
mod indirect;
mod inode;
mod itable;
mod journal;
mod layout;
mod orphan;
mod owners;
mod paths;
mod scramble;
mod snapshot;
mod superblock;
mod types;
mod view;
mod walk;
mod warning;

pub use blockmap::FileRun;
pub use blockset::{BlockClass, BlockSet, Extent};
pub use checksum::{
    BadChecksum, ChecksumCount, ChecksumKind, ChecksumReport, PendingChecks, PendingTally,
};
pub use collect::{RunKind, WalkStats};
pub use error::{Corrupt, Error};
pub use features::{compat, incompat, ro_compat};
pub use fs::{BackupUsed, Filesystem, OpenOptions};
pub use inode::{FileType, Inode, InodeTime};
pub use journal::{
    FastCommit, FastCommitReplay, Journal, JournalLocation, JournalLookup, JournalState, Located,
    OverlayBlock, Recovery, ReplayMode, ReplayedView,
};
pub use orphan::{release_orphans, OrphanRelease};
pub use owners::{file_runs, file_runs_and_inodes, Owners};
pub use paths::inode_paths;
pub use scramble::{ScrambleOptions, ScrambleReport, ScrambledView};
pub use snapshot::{
    snapshot_list, snapshot_names, BlockSource, SnapshotFile, SnapshotMap, SnapshotView,
};
pub use superblock::{
    Superblock, SuperblockBytes, EXT2_VALID_FS, EXT4_SUPER_MAGIC, LAST_MOUNTED_MAX,
    SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE,
};
pub use types::{BlockNr, InodeNr};
pub use view::{BlockView, FileView};
pub use walk::{walk, WalkOptions, WalkResult};
pub use warning::Warning;

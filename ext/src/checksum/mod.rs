//! Metadata checksums: the report a walk gives of them, the per-collector state, the rules of
//! the structures without a module of their own, and the walk's verification of each kind.
//!
//! A walk ([`crate::walk()`]) verifies every checksum it meets (ext4-on-disk §13): the
//! superblock (the one in use, and the primary's when opened through a backup), every group
//! descriptor (crc16 with gdt_csum, crc32c with metadata_csum) when the table is read, and
//! with metadata_csum the block and inode bitmaps (not those of BLOCK_UNINIT/INODE_UNINIT
//! groups, whose content is undefined, nor those of a group whose descriptor fails: the
//! bitmap checksums are in it), every in-use inode, extent tree blocks, directory blocks
//! (dirent tail or dx tail), xattr blocks (once each), the MMP block, the orphan file's blocks
//! and the internal journal's superblock. A journal recovery ([`crate::Journal::recover`])
//! counts the descriptor, commit and revoke blocks its scan verifies (CSUM_V2/V3). Backup
//! superblocks and descriptor tables are not verified (stale by design).
//!
//! Each failure is listed in the [`ChecksumReport`] and, unless another warning already names
//! the same block, reported as a [`crate::Warning`] of its kind ("inode checksum", ...): the
//! journal superblock's failure is the journal lookup's "unusable" warning, the log blocks'
//! are the recovery's, the primary superblock's is the fallback's.
//!
//! Inside the folder, bottom to top: `report` (problems layer), `state`, `rules` (on-disk
//! structures), `verify` (the walk's checks, copy-set layer).

mod pending;
mod report;
mod rules;
mod state;
pub(crate) mod verify;

pub(crate) use report::{matched, Check, Failure};
pub use pending::{PendingChecks, PendingTally};
pub use report::{BadChecksum, ChecksumCount, ChecksumKind, ChecksumReport};
pub(crate) use state::Checks;

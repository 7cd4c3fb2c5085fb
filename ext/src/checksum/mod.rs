//! Metadata checksums: the report a walk gives of them, the per-collector state, the rules of
//! the structures without a module of their own, and the walk's verification of each kind.
//!
//! A walk ([`crate::walk()`]) verifies every checksum it meets (ext4-on-disk §13): the
//! superblock (the one in use, and the primary's when opened through a backup), every group
//! descriptor (crc16 with gdt_csum, crc32c with metadata_csum) when the table is read, and
//! with metadata_csum the block and inode bitmaps (not those of groups flagged
//! BLOCK_UNINIT/INODE_UNINIT, whose content is undefined, as e2fsck's pass 5 skips them), the
//! non-zero inode records of the used inode tables, extent tree blocks, directory blocks
//! (dirent tail or dx tail), xattr blocks (once each), the MMP block, the orphan file's blocks
//! and the internal journal's superblock. A journal recovery ([`crate::Journal::recover`])
//! counts the descriptor, commit and revoke blocks its scan verifies (CSUM_V2/V3). Backup
//! superblocks and descriptor tables are not verified (stale by design).
//!
//! The blocks a copy reads anyway are verified as it reads them: the walk leaves their
//! checksums pending ([`PendingChecks`]: inode records, directory, orphan-file and xattr
//! blocks) and [`crate::WalkResult::finish_checks`] verifies what the copy did not read.
//!
//! Each failure is listed in the [`ChecksumReport`] and, unless another warning already names
//! the same block, reported as a [`crate::Warning`] of its kind ("inode checksum", ...): the
//! journal superblock's failure is the journal lookup's "unusable" warning, the log blocks'
//! are the recovery's, the primary superblock's is the fallback's.
//!
//! Inside the folder, bottom to top: `report` (problems layer), `state`, `rules` (on-disk
//! structures), `verify` (the walk's checks, copy-set layer).

mod compute;
mod pending;
mod report;
mod rules;
mod state;
pub(crate) mod verify;

pub(crate) use compute::store_dir_block_checksum;
pub use pending::{PendingChecks, PendingTally};
pub(crate) use report::{matched, Check, Failure};
pub use report::{BadChecksum, ChecksumCount, ChecksumKind, ChecksumReport};
pub(crate) use rules::rec_len;
pub(crate) use state::Checks;

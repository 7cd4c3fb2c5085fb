//! The checksum report: what was verified, per kind of structure, and which did not match.
//!
//! Counts are exact; the list of bad checksums keeps the first [`KEPT_PER_KIND`] of each kind
//! in the order found, as the warnings do, so a filesystem with millions of bad inodes still
//! gives a bounded report.

use crate::types::{BlockNr, InodeNr};
use crate::warning::{Warning, WarningLog, KEPT_PER_KIND};

/// One checksum: the value stored on disk and the one computed from the bytes, in the
/// structure's width (16 bits where only 16 are stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Check {
    /// The stored checksum.
    pub(crate) stored: u32,
    /// The checksum the bytes give.
    pub(crate) computed: u32,
}

impl Check {
    /// True if the stored checksum matches.
    pub(crate) fn ok(self) -> bool {
        self.stored == self.computed
    }
}

/// What a failed verification found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The checksum does not match.
    Mismatch(Check),
    /// The structure holding the checksum is not there (a magic number, a tail): why.
    Unrecognized(String),
}

impl Failure {
    fn text(&self, kind: ChecksumKind) -> String {
        match self {
            Failure::Mismatch(c) => format!(
                "{} checksum does not match (stored {:#x}, computed {:#x})",
                kind.what(),
                c.stored,
                c.computed
            ),
            Failure::Unrecognized(why) => {
                format!("{} checksum cannot be verified: {why}", kind.what())
            }
        }
    }
}

/// A kind of checksummed metadata (ext4-on-disk §13, jbd2-journal.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChecksumKind {
    /// The superblock (`s_checksum`, metadata_csum).
    Superblock,
    /// A group descriptor (`bg_checksum`: crc16 with gdt_csum, crc32c with metadata_csum).
    GroupDescriptor,
    /// A block bitmap (`bg_block_bitmap_csum`).
    BlockBitmap,
    /// An inode bitmap (`bg_inode_bitmap_csum`).
    InodeBitmap,
    /// An inode (`i_checksum_lo`/`i_checksum_hi`).
    Inode,
    /// An extent tree block (index or leaf; its `ext4_extent_tail`).
    ExtentBlock,
    /// A directory leaf block (its `ext4_dir_entry_tail`).
    DirLeaf,
    /// An htree (dx) root or interior node (its `dx_tail`).
    HtreeNode,
    /// An extended-attribute block (`h_checksum`).
    XattrBlock,
    /// The jbd2 superblock (`s_checksum`, CSUM_V2/V3).
    JournalSuperblock,
    /// A jbd2 descriptor block (its tail, CSUM_V2/V3).
    JournalDescriptor,
    /// A jbd2 commit block (`h_chksum[0]`, CSUM_V2/V3).
    JournalCommit,
    /// A jbd2 revoke block (its tail, CSUM_V2/V3).
    JournalRevoke,
    /// The MMP block (`mmp_checksum`).
    Mmp,
    /// A block of the orphan file (its `ext4_orphan_block_tail`).
    OrphanBlock,
}

impl ChecksumKind {
    /// Every kind, in report order.
    pub const ALL: [ChecksumKind; 15] = [
        ChecksumKind::Superblock,
        ChecksumKind::GroupDescriptor,
        ChecksumKind::BlockBitmap,
        ChecksumKind::InodeBitmap,
        ChecksumKind::Inode,
        ChecksumKind::ExtentBlock,
        ChecksumKind::DirLeaf,
        ChecksumKind::HtreeNode,
        ChecksumKind::XattrBlock,
        ChecksumKind::JournalSuperblock,
        ChecksumKind::JournalDescriptor,
        ChecksumKind::JournalCommit,
        ChecksumKind::JournalRevoke,
        ChecksumKind::Mmp,
        ChecksumKind::OrphanBlock,
    ];

    /// Stable snake_case name (the `kind` of the JSON report): `"inode"`, `"dir_leaf"`, ...
    pub fn name(self) -> &'static str {
        self.names().0
    }

    /// The words used in messages: `"inode"`, `"directory leaf block"`, ...
    fn what(self) -> &'static str {
        self.names().1
    }

    /// The warning kind its failures are counted under (`"inode checksum"`, ...).
    pub(crate) fn label(self) -> &'static str {
        self.names().2
    }

    fn names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            ChecksumKind::Superblock => ("superblock", "superblock", "superblock checksum"),
            ChecksumKind::GroupDescriptor => (
                "group_descriptor",
                "group descriptor",
                "group descriptor checksum",
            ),
            ChecksumKind::BlockBitmap => ("block_bitmap", "block bitmap", "block bitmap checksum"),
            ChecksumKind::InodeBitmap => ("inode_bitmap", "inode bitmap", "inode bitmap checksum"),
            ChecksumKind::Inode => ("inode", "inode", "inode checksum"),
            ChecksumKind::ExtentBlock => ("extent_block", "extent block", "extent block checksum"),
            ChecksumKind::DirLeaf => (
                "dir_leaf",
                "directory leaf block",
                "directory block checksum",
            ),
            ChecksumKind::HtreeNode => ("htree_node", "htree node", "htree node checksum"),
            ChecksumKind::XattrBlock => ("xattr_block", "xattr block", "xattr block checksum"),
            ChecksumKind::JournalSuperblock => (
                "journal_superblock",
                "journal superblock",
                "journal superblock checksum",
            ),
            ChecksumKind::JournalDescriptor => (
                "journal_descriptor",
                "journal descriptor block",
                "journal descriptor checksum",
            ),
            ChecksumKind::JournalCommit => (
                "journal_commit",
                "journal commit block",
                "journal commit checksum",
            ),
            ChecksumKind::JournalRevoke => (
                "journal_revoke",
                "journal revoke block",
                "journal revoke checksum",
            ),
            ChecksumKind::Mmp => ("mmp", "MMP block", "MMP checksum"),
            ChecksumKind::OrphanBlock => {
                ("orphan_block", "orphan file block", "orphan file checksum")
            }
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A checksum that did not match (or whose structure was not found where it should be).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadChecksum {
    /// What holds it.
    pub kind: ChecksumKind,
    /// The block holding it: the inode-table block for an inode, the descriptor block for a
    /// group descriptor, the block on the journal's device for journal blocks (the
    /// filesystem's, for an internal journal).
    pub block: Option<BlockNr>,
    /// The inode it belongs to: the inode itself, the owner of an extent, directory or
    /// orphan-file block, the first inode found referring to an xattr block, the journal
    /// inode for an internal journal's blocks.
    pub inode: Option<InodeNr>,
}

/// Verified and failed checksums of one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChecksumCount {
    /// Checksums compared (matching or not).
    pub verified: u64,
    /// Of those, the ones that did not match.
    pub failed: u64,
}

/// The checksums a walk (or a journal recovery) verified.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChecksumReport {
    counts: [ChecksumCount; ChecksumKind::ALL.len()],
    /// The failed checksums: the first 16 (`KEPT_PER_KIND`) of each kind, in the order found;
    /// [`ChecksumReport::count`] has the exact numbers.
    pub bad: Vec<BadChecksum>,
}

impl ChecksumReport {
    /// Checksums compared, over every kind.
    pub fn verified(&self) -> u64 {
        self.counts.iter().map(|c| c.verified).sum()
    }

    /// Checksums that did not match, over every kind (exact; `bad` may list fewer).
    pub fn failed(&self) -> u64 {
        self.counts.iter().map(|c| c.failed).sum()
    }

    /// The counts of `kind`.
    pub fn count(&self, kind: ChecksumKind) -> ChecksumCount {
        self.counts[kind.index()]
    }

    /// Every kind with at least one checksum verified, in [`ChecksumKind::ALL`] order.
    pub fn counts(&self) -> Vec<(ChecksumKind, ChecksumCount)> {
        ChecksumKind::ALL
            .iter()
            .map(|&k| (k, self.count(k)))
            .filter(|(_, c)| c.verified > 0)
            .collect()
    }

    /// Adds `later`'s counts and bad checksums, as if they had been recorded after ours.
    pub fn append(&mut self, later: &ChecksumReport) {
        for (mine, theirs) in self.counts.iter_mut().zip(&later.counts) {
            mine.verified = mine.verified.saturating_add(theirs.verified);
            mine.failed = mine.failed.saturating_add(theirs.failed);
        }
        for b in &later.bad {
            if self.listed(b.kind) < KEPT_PER_KIND {
                self.bad.push(*b);
            }
        }
    }

    /// Counts a checksum that matched.
    pub(crate) fn ok(&mut self, kind: ChecksumKind) {
        let c = &mut self.counts[kind.index()];
        c.verified = c.verified.saturating_add(1);
    }

    /// Counts a failed checksum and lists it while fewer than [`KEPT_PER_KIND`] of its kind
    /// are.
    pub(crate) fn bad(&mut self, b: BadChecksum) {
        let c = &mut self.counts[b.kind.index()];
        c.verified = c.verified.saturating_add(1);
        c.failed = c.failed.saturating_add(1);
        if self.listed(b.kind) < KEPT_PER_KIND {
            self.bad.push(b);
        }
    }

    /// Records one verification: counted, and when it failed listed and (with `warnings`)
    /// reported as a warning of the kind's label, at `offset` in the block if given.
    pub(crate) fn record(
        &mut self,
        b: BadChecksum,
        result: Result<(), Failure>,
        offset: Option<u32>,
        warnings: Option<&mut WarningLog>,
    ) {
        let Err(failure) = result else {
            return self.ok(b.kind);
        };
        self.bad(b);
        if let Some(log) = warnings {
            let w = Warning {
                inode: b.inode,
                block: b.block,
                offset,
                reason: failure.text(b.kind),
            };
            log.push(b.kind.label(), w);
        }
    }

    fn listed(&self, kind: ChecksumKind) -> usize {
        self.bad.iter().filter(|b| b.kind == kind).count()
    }
}

/// `Ok` for a matching check, the mismatch otherwise.
pub(crate) fn matched(c: Check) -> Result<(), Failure> {
    if c.ok() {
        Ok(())
    } else {
        Err(Failure::Mismatch(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(kind: ChecksumKind, block: u64) -> BadChecksum {
        BadChecksum {
            kind,
            block: Some(BlockNr(block)),
            inode: None,
        }
    }

    #[test]
    fn counts_are_exact_and_the_list_bounded_per_kind() {
        let mut r = ChecksumReport::default();
        let mut log = WarningLog::default();
        for b in 0..40 {
            let c = Check {
                stored: 1,
                computed: u32::from(b % 2 == 0),
            };
            r.record(
                bad(ChecksumKind::Inode, b),
                matched(c),
                None,
                Some(&mut log),
            );
        }
        r.record(
            bad(ChecksumKind::Mmp, 7),
            matched(Check {
                stored: 1,
                computed: 2,
            }),
            None,
            None,
        );
        assert_eq!((r.verified(), r.failed()), (41, 21));
        assert_eq!(r.count(ChecksumKind::Inode).failed, 20);
        assert_eq!(r.bad.len(), KEPT_PER_KIND + 1);
        let (kept, omitted) = log.into_parts();
        assert_eq!(kept.len(), KEPT_PER_KIND);
        assert!(
            kept[0].reason.contains("stored 0x1, computed 0x0"),
            "{}",
            kept[0].reason
        );
        assert_eq!(omitted, vec![("inode checksum".to_string(), 4)]);
        assert_eq!(
            r.counts().iter().map(|(k, _)| k.name()).collect::<Vec<_>>(),
            ["inode", "mmp"]
        );
    }

    #[test]
    fn append_keeps_the_bound_and_adds_the_counts() {
        let (mut a, mut b) = (ChecksumReport::default(), ChecksumReport::default());
        for n in 0..10 {
            a.bad(bad(ChecksumKind::DirLeaf, n));
            b.bad(bad(ChecksumKind::DirLeaf, 100 + n));
            b.ok(ChecksumKind::DirLeaf);
        }
        a.append(&b);
        assert_eq!(
            a.count(ChecksumKind::DirLeaf),
            ChecksumCount {
                verified: 30,
                failed: 20
            }
        );
        assert_eq!(a.bad.len(), KEPT_PER_KIND);
        assert_eq!(a.bad[10].block, Some(BlockNr(100)));
    }

    #[test]
    fn names_are_distinct() {
        let mut names: Vec<_> = ChecksumKind::ALL.iter().map(|k| k.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ChecksumKind::ALL.len());
        assert!(ChecksumKind::ALL
            .iter()
            .enumerate()
            .all(|(i, k)| k.index() == i));
    }
}

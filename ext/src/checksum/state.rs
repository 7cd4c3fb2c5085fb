//! What a walk's collector keeps while it verifies checksums: the seed, the report, the inode
//! whose tree is being walked (its seed checks extent blocks), the mapped runs captured for
//! the blocks checked after the tree (directory, orphan-file and journal blocks), and the
//! checksums left to the reader of the blocks (`pending`).

use super::pending::{Pending, PendingRun, MAX_PIECE};
use super::report::ChecksumReport;
use crate::inode::inode_csum_seed;
use crate::types::InodeNr;

/// A run of mapped blocks captured for checking: first file block, first filesystem block,
/// blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CapturedRun {
    /// First file block.
    pub(crate) logical: u64,
    /// First filesystem block.
    pub(crate) physical: u64,
    /// Blocks.
    pub(crate) len: u64,
}

/// The checksum state of one collector of a walk.
#[derive(Debug, Default)]
pub(crate) struct Checks {
    /// The filesystem has metadata_csum (else only descriptor checksums exist).
    pub(crate) metadata_csum: bool,
    /// The metadata_csum seed.
    pub(crate) seed: u32,
    /// What was verified.
    pub(crate) report: ChecksumReport,
    /// The inode whose tree is being walked and its `i_generation`.
    pub(crate) owner: Option<(InodeNr, u32)>,
    /// Written runs below file block `.0` are captured into `.1`, while set.
    capture: Option<(u64, Vec<CapturedRun>)>,
    /// Checksums left to the reader of the blocks (`pending`).
    pub(crate) pending: Vec<PendingRun>,
}

impl Checks {
    /// The state of a walk of a filesystem with (`metadata_csum`) or without metadata_csum,
    /// whose metadata_csum seed is `seed`.
    pub(crate) fn new(metadata_csum: bool, seed: u32) -> Checks {
        Checks {
            metadata_csum,
            seed,
            ..Checks::default()
        }
    }

    /// The inode whose tree is being walked and its checksum seed (computed when needed: most
    /// inodes have no checksummed block besides their record).
    pub(crate) fn owner_seed(&self) -> Option<(InodeNr, u32)> {
        let (ino, generation) = self.owner?;
        Some((ino, inode_csum_seed(self.seed, ino.0, generation)))
    }

    /// Starts capturing the written runs mapped below file block `below`.
    pub(crate) fn capture_below(&mut self, below: u64) {
        self.capture = Some((below, Vec::new()));
    }

    /// Stops capturing and returns the runs captured.
    pub(crate) fn take_captured(&mut self) -> Vec<CapturedRun> {
        self.capture
            .take()
            .map(|(_, runs)| runs)
            .unwrap_or_default()
    }

    /// Captures the part below the limit of a mapped run, when capturing; unwritten extents
    /// read as zeros and hold no checksum.
    pub(crate) fn mapped(&mut self, logical: u64, physical: u64, len: u64, unwritten: bool) {
        let Some((below, runs)) = self.capture.as_mut() else {
            return;
        };
        if unwritten || logical >= *below {
            return;
        }
        let len = len.min(*below - logical);
        if let Some(last) = runs.last_mut() {
            if last.physical.checked_add(last.len) == Some(physical)
                && last.logical.checked_add(last.len) == Some(logical)
            {
                last.len = last.len.saturating_add(len);
                return;
            }
        }
        runs.push(CapturedRun {
            logical,
            physical,
            len,
        });
    }

    /// Leaves the checksums of `len` blocks from `physical` to the reader, in pieces of at
    /// most [`MAX_PIECE`] blocks; `piece` describes the piece starting `k` blocks in.
    pub(crate) fn defer(&mut self, physical: u64, len: u64, piece: impl Fn(u64) -> Pending) {
        let mut k = 0;
        while k < len {
            let n = (len - k).min(MAX_PIECE);
            self.pending.push(PendingRun {
                physical: physical.saturating_add(k),
                len: n,
                what: piece(k),
            });
            k += n;
        }
    }

    /// Adds what `later` found after ours.
    pub(crate) fn append(&mut self, mut later: Checks) {
        self.report.append(&later.report);
        self.pending.append(&mut later.pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_written_runs_below_the_limit_merged() {
        let mut c = Checks::default();
        c.mapped(0, 10, 1, false);
        c.capture_below(5);
        c.mapped(0, 10, 2, false);
        c.mapped(2, 12, 2, false);
        c.mapped(4, 20, 3, false);
        c.mapped(7, 30, 1, false);
        c.mapped(1, 40, 1, true);
        let runs = c.take_captured();
        assert_eq!(
            runs,
            vec![
                CapturedRun {
                    logical: 0,
                    physical: 10,
                    len: 4
                },
                CapturedRun {
                    logical: 4,
                    physical: 20,
                    len: 1
                },
            ]
        );
        c.mapped(0, 10, 1, false);
        assert!(c.take_captured().is_empty());
    }
}

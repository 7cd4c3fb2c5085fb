//! The checksums a walk leaves to whoever reads the blocks next: the records of the used
//! inode tables, directory and orphan-file blocks, xattr blocks. A walk does not read these
//! blocks (or reads the inode tables in another order), and an export reads every one of them
//! to copy it: verifying them as they are copied ([`PendingChecks::verify`]) costs their
//! crc32c and nothing else. What the copy did not read is read and verified afterwards
//! ([`crate::WalkResult::finish_checks`]).
//!
//! Pending runs are kept sorted by block and cut into pieces of at most [`MAX_PIECE`]
//! blocks, so that the runs a read overlaps are found with one binary search.

use super::report::{matched, BadChecksum, Check, ChecksumKind, ChecksumReport, Failure};
use super::rules::{self, dir_block_checksum, DirChecksum};
use crate::inode::inode_checksum;
use crate::types::{BlockNr, InodeNr};
use crate::view::BlockView;
use crate::warning::WarningLog;

/// Which of an inode's mapped blocks carry a checksum the walk verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// A directory: every block below `i_size` (metadata_csum).
    Directory,
    /// The orphan file: every block below `i_size` (metadata_csum).
    OrphanFile,
    /// The internal journal: its block 0, the journal superblock (CSUM_V2/V3).
    Journal,
}

/// Longest pending run, in blocks.
pub(crate) const MAX_PIECE: u64 = 256;
/// Most blocks [`PendingChecks::verify_rest`] reads at once.
const READ_BLOCKS: u64 = 256;

/// What a pending run holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pending {
    /// Blocks inode `ino` maps (directory or orphan-file blocks), `seed` its checksum seed.
    Mapped {
        /// The owner.
        ino: InodeNr,
        /// The owner's checksum seed.
        seed: u32,
        /// What the blocks are to it.
        role: Role,
    },
    /// Inode-table blocks: `records` inode records from the first block on, the first being
    /// inode `first_ino`.
    Itable {
        /// Inode number of the first record.
        first_ino: u32,
        /// Records to verify.
        records: u64,
    },
    /// An xattr block, `ino` the first inode that refers to it.
    Xattr {
        /// The referring inode.
        ino: InodeNr,
    },
}

/// Blocks waiting for their checksums to be verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PendingRun {
    /// First block.
    pub(crate) physical: u64,
    /// Blocks (1..=[`MAX_PIECE`]).
    pub(crate) len: u64,
    /// What they hold.
    pub(crate) what: Pending,
}

/// The checksums a walk left to be verified when the blocks are read (module comment).
#[derive(Clone, Debug, Default)]
pub struct PendingChecks {
    runs: Vec<PendingRun>,
    block_size: u32,
    inode_size: usize,
    inodes_per_block: u64,
    seed: u32,
}

/// What verifying pending checksums found: counts, failures (also warnings) and the block
/// ranges verified. Tallies of successive reads are added with [`PendingTally::append`].
#[derive(Clone, Debug, Default)]
pub struct PendingTally {
    pub(crate) report: ChecksumReport,
    pub(crate) warnings: WarningLog,
    /// (first block, blocks) read and verified.
    pub(crate) covered: Vec<(u64, u64)>,
}

impl PendingTally {
    /// Adds what `later` found, as if verified after ours.
    pub fn append(&mut self, later: PendingTally) {
        self.report.append(&later.report);
        self.warnings.append(later.warnings);
        self.covered.extend(later.covered);
    }
}

impl PendingChecks {
    /// Pending checks of a filesystem with `block_size`-byte blocks and `inode_size`-byte
    /// inode records, whose metadata_csum seed is `seed`; `runs` in any order.
    pub(crate) fn new(
        mut runs: Vec<PendingRun>,
        block_size: u32,
        inode_size: u16,
        seed: u32,
    ) -> PendingChecks {
        let ino = |r: &PendingRun| match r.what {
            Pending::Xattr { ino } => ino.0,
            _ => 0,
        };
        runs.sort_unstable_by_key(|r| (r.physical, r.len, ino(r)));
        // An xattr block shared by many inodes is verified once, for the first of them.
        runs.dedup_by(|later, first| {
            matches!(
                (later.what, first.what),
                (Pending::Xattr { .. }, Pending::Xattr { .. })
            ) && later.physical == first.physical
        });
        PendingChecks {
            runs,
            block_size,
            inode_size: usize::from(inode_size),
            inodes_per_block: u64::from(block_size / u32::from(inode_size.max(1))),
            seed,
        }
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Verifies the pending checksums of the blocks in `data` (whole blocks of the
    /// filesystem, as read by a copy), the first being block `first`.
    pub fn verify(&self, first: BlockNr, data: &[u8]) -> PendingTally {
        let mut t = PendingTally::default();
        let bs = self.block_size as usize;
        if bs == 0 || !data.len().is_multiple_of(bs) || data.is_empty() {
            return t;
        }
        let first = first.0;
        let end = first.saturating_add((data.len() / bs) as u64);
        let lo = self
            .runs
            .partition_point(|r| r.physical.saturating_add(MAX_PIECE) <= first);
        for r in &self.runs[lo..] {
            if r.physical >= end {
                break;
            }
            let a = r.physical.max(first);
            let b = r.physical.saturating_add(r.len).min(end);
            for nr in a..b {
                let at = (nr - first) as usize * bs;
                self.check_block(&mut t, r, nr, &data[at..at + bs]);
            }
        }
        t.covered.push((first, end - first));
        t
    }

    /// Reads (from `view`) and verifies the pending blocks outside the ranges `done` covers;
    /// a block that cannot be read is left out (the copy reports it).
    pub(crate) fn verify_rest(&self, view: &dyn BlockView, done: &mut PendingTally) {
        let mut covered = std::mem::take(&mut done.covered);
        covered.sort_unstable();
        let bs = self.block_size as usize;
        let mut buf = Vec::new();
        for (start, len) in uncovered(&self.runs, &covered) {
            let mut s = start;
            while s < start + len {
                let n = (start + len - s).min(READ_BLOCKS);
                buf.resize(n as usize * bs, 0);
                if view.read_blocks(self.block_size, s, &mut buf).is_ok() {
                    done.append(self.verify(BlockNr(s), &buf));
                }
                s += n;
            }
        }
        done.covered.append(&mut covered);
    }

    fn check_block(&self, t: &mut PendingTally, r: &PendingRun, nr: u64, block: &[u8]) {
        let (kind, inode, result, offset) = match r.what {
            Pending::Itable { first_ino, records } => {
                return self.check_records(t, r.physical, first_ino, records, nr, block)
            }
            Pending::Xattr { ino } => {
                let result = rules::xattr_block(self.seed, nr, block);
                (ChecksumKind::XattrBlock, ino, unrecognized(result), None)
            }
            Pending::Mapped { ino, seed, role } => match role {
                Role::Directory => {
                    let (kind, result) = dir_result(dir_block_checksum(seed, block));
                    (kind, ino, result, None)
                }
                Role::OrphanFile => {
                    let result = rules::orphan_block(seed, nr, block);
                    (ChecksumKind::OrphanBlock, ino, unrecognized(result), None)
                }
                Role::Journal => return,
            },
        };
        let b = BadChecksum {
            kind,
            block: Some(BlockNr(nr)),
            inode: Some(inode),
        };
        t.report.record(b, result, offset, Some(&mut t.warnings));
    }

    /// The inode records in block `nr` of an inode-table run from `start` whose first record
    /// is inode `first_ino`, `records` of them in the run.
    fn check_records(
        &self,
        t: &mut PendingTally,
        start: u64,
        first_ino: u32,
        records: u64,
        nr: u64,
        block: &[u8],
    ) {
        let ipb = self.inodes_per_block;
        let from = (nr - start).saturating_mul(ipb);
        let to = from.saturating_add(ipb).min(records);
        let mut scratch = Vec::with_capacity(self.inode_size + 8);
        for idx in from..to {
            let at = ((idx - from) as usize) * self.inode_size;
            let raw = &block[at..at + self.inode_size];
            let Ok(ino) = u32::try_from(u64::from(first_ino) + idx) else {
                return;
            };
            let Some(check) = inode_checksum(self.seed, ino, raw, &mut scratch) else {
                continue;
            };
            let b = BadChecksum {
                kind: ChecksumKind::Inode,
                block: Some(BlockNr(nr)),
                inode: Some(InodeNr(ino)),
            };
            let offset = u32::try_from(at).ok();
            t.report
                .record(b, matched(check), offset, Some(&mut t.warnings));
        }
    }
}

fn unrecognized(r: Result<Check, String>) -> Result<(), Failure> {
    r.map_err(Failure::Unrecognized).and_then(matched)
}

fn dir_result(d: DirChecksum) -> (ChecksumKind, Result<(), Failure>) {
    match d {
        DirChecksum::Leaf(check) => (ChecksumKind::DirLeaf, matched(check)),
        DirChecksum::Htree(check) => (ChecksumKind::HtreeNode, matched(check)),
        DirChecksum::Missing => (
            ChecksumKind::DirLeaf,
            Err(Failure::Unrecognized(
                "no dirent tail, and not an htree node with room for a dx tail".into(),
            )),
        ),
    }
}

/// The blocks of `runs` (sorted by first block) outside `covered` (sorted, disjoint), as
/// (first block, blocks) ranges in order, adjacent ones merged.
fn uncovered(runs: &[PendingRun], covered: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut union: Vec<(u64, u64)> = Vec::new();
    for r in runs {
        let end = r.physical.saturating_add(r.len);
        match union.last_mut() {
            Some(last) if r.physical <= last.1 => last.1 = last.1.max(end),
            _ => union.push((r.physical, end)),
        }
    }
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut push = |s: u64, n: u64| match out.last_mut() {
        Some(last) if last.0 + last.1 == s => last.1 += n,
        _ => out.push((s, n)),
    };
    let mut c = 0;
    for (mut s, e) in union {
        while s < e {
            while c < covered.len() && covered[c].0.saturating_add(covered[c].1) <= s {
                c += 1;
            }
            match covered.get(c) {
                Some(&(cs, cl)) if cs < e => {
                    if cs > s {
                        push(s, cs - s);
                    }
                    s = s.max(cs.saturating_add(cl));
                }
                _ => {
                    push(s, e - s);
                    s = e;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(physical: u64, len: u64) -> PendingRun {
        PendingRun {
            physical,
            len,
            what: Pending::Xattr { ino: InodeNr(1) },
        }
    }

    #[test]
    fn uncovered_subtracts_the_copied_ranges() {
        let runs = [run(10, 5), run(12, 10), run(30, 2), run(40, 1)];
        assert_eq!(uncovered(&runs, &[]), vec![(10, 12), (30, 2), (40, 1)]);
        assert_eq!(
            uncovered(&runs, &[(0, 11), (14, 2), (31, 10)]),
            vec![(11, 3), (16, 6), (30, 1)]
        );
        assert!(uncovered(&runs, &[(0, 100)]).is_empty());
    }

    #[test]
    fn shared_xattr_blocks_are_pending_once() {
        let p = PendingChecks::new(vec![run(7, 1), run(3, 1), run(7, 1)], 1024, 256, 0);
        assert_eq!(p.runs.len(), 2);
    }
}

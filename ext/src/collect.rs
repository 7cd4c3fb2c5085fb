//! What every walk accumulates, shared by the tree walkers below and the policies above.
//!
//! A [`Collector`] gathers, for one part of a walk, either classified blocks (a [`BlockSet`],
//! for the copy set) or [`MappedRun`]s (for the block-owner scan), plus warnings bounded per
//! kind and [`WalkStats`]. Every block pointer goes through its bounds check, and its block
//! reads report an I/O error as a warning instead of failing. [`TreeClasses`] tells the tree
//! walkers how to classify what an inode's tree holds. A walk's collectors also verify
//! checksums (`Checks`, see `checksum`): the extent walker calls
//! [`Collector::check_extent_block`], which does nothing in the other scans, and every
//! mapped run is offered to the checks' capture.

use crate::blockset::{BlockClass, BlockSet};
use crate::checksum::{matched, BadChecksum, Checks, ChecksumKind, Failure};
use crate::error::{Corrupt, CorruptKind};
use crate::extent_header::extent_block_checksum;
use crate::superblock::Superblock;
use crate::types::{BlockNr, InodeNr};
use crate::view::BlockView;
use crate::warning::{Warning, WarningLog};
use std::io;

/// Counts gathered during the walk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalkStats {
    /// Inodes processed as in use.
    pub inodes_in_use: u64,
    /// In-use inodes with link count 0 (orphans).
    pub orphan_inodes: u64,
    /// EA inodes.
    pub ea_inodes: u64,
    /// Inodes followed because their link count is non-zero although the inode bitmap says
    /// they are free.
    pub linked_but_free: u64,
    /// Snapshot files seen.
    pub snapshot_files: u64,
}

impl WalkStats {
    /// Adds the counts of `o`.
    pub(crate) fn add(&mut self, o: &WalkStats) {
        self.inodes_in_use += o.inodes_in_use;
        self.orphan_inodes += o.orphan_inodes;
        self.ea_inodes += o.ea_inodes;
        self.linked_but_free += o.linked_but_free;
        self.snapshot_files += o.snapshot_files;
    }
}

/// What a run of blocks is to the inode that owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunKind {
    /// Blocks mapped at file blocks `logical..logical + len` (file, directory or slow symlink
    /// contents). `unwritten`: an uninitialized extent (`ee_len` > 32768), which reads as
    /// zeros.
    Data {
        /// The extent is unwritten (preallocated, reads as zeros).
        unwritten: bool,
    },
    /// Mapping metadata: extent index/leaf blocks, IND/DIND/TIND blocks. `logical` is
    /// meaningless (0).
    Tree,
    /// The extended-attribute block `i_file_acl` (or the Hurd translator block `osd1`).
    /// `logical` is meaningless (0); the block may be shared by many inodes.
    Xattr,
}

/// A run recorded by the tree walkers for the inode being processed (owner added later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MappedRun {
    /// First file block (data runs only).
    pub(crate) logical: u64,
    /// First filesystem block.
    pub(crate) physical: u64,
    /// Blocks.
    pub(crate) len: u64,
    /// What the blocks are.
    pub(crate) kind: RunKind,
}

impl MappedRun {
    /// True if `next` continues this run physically and, for data, logically.
    pub(crate) fn continued_by(&self, next: &MappedRun) -> bool {
        if self.kind != next.kind || self.physical.checked_add(self.len) != Some(next.physical) {
            return false;
        }
        match self.kind {
            RunKind::Data { .. } => self.logical.checked_add(self.len) == Some(next.logical),
            RunKind::Tree | RunKind::Xattr => true,
        }
    }
}

/// What to record for one inode's tree.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TreeClasses {
    /// Class of index and leaf blocks (and IND/DIND/TIND blocks for indirect maps).
    pub(crate) tree: BlockClass,
    /// Class of the mapped blocks, or `None` to skip them.
    pub(crate) data: Option<BlockClass>,
}

/// Accumulates blocks, warnings and counts for one part of the walk, with bounds checks and
/// block reads that report instead of failing.
pub(crate) struct Collector<'v> {
    pub(crate) view: &'v dyn BlockView,
    pub(crate) sb: &'v Superblock,
    pub(crate) set: BlockSet,
    /// The run sink: when present, the tree walkers record runs here instead of in `set`.
    runs: Option<Vec<MappedRun>>,
    pub(crate) warnings: WarningLog,
    pub(crate) stats: WalkStats,
    /// The checksum state, in a walk's collectors only.
    pub(crate) checks: Option<Box<Checks>>,
}

impl<'v> Collector<'v> {
    pub(crate) fn new(view: &'v dyn BlockView, sb: &'v Superblock) -> Collector<'v> {
        Collector {
            view,
            sb,
            set: BlockSet::new(),
            runs: None,
            warnings: WarningLog::default(),
            stats: WalkStats::default(),
            checks: None,
        }
    }

    /// A collector that also verifies checksums (the copy-set walk's).
    pub(crate) fn verifying(view: &'v dyn BlockView, sb: &'v Superblock) -> Collector<'v> {
        let checks = Checks::new(sb.has_metadata_csum(), sb.metadata_csum_seed());
        Collector {
            checks: Some(Box::new(checks)),
            ..Collector::new(view, sb)
        }
    }

    /// The checksum state when metadata_csum checksums are verified.
    pub(crate) fn csum_checks(&mut self) -> Option<&mut Checks> {
        self.checks.as_deref_mut().filter(|c| c.metadata_csum)
    }

    /// Records one verification of `b.kind` (see `ChecksumReport::record`); a failure is
    /// also a warning when `warn`.
    pub(crate) fn record_check(
        &mut self,
        b: BadChecksum,
        result: Result<(), Failure>,
        offset: Option<u32>,
        warn: bool,
    ) {
        if let Some(checks) = self.checks.as_deref_mut() {
            let log = warn.then_some(&mut self.warnings);
            checks.report.record(b, result, offset, log);
        }
    }

    /// Sets the inode whose tree is walked next (its checksum seed checks the extent
    /// blocks), when verifying metadata_csum checksums.
    pub(crate) fn begin_inode(&mut self, ino: InodeNr, generation: u32) {
        if let Some(c) = self.csum_checks() {
            c.owner = Some((ino, generation));
        }
    }

    /// Verifies extent tree block `block` (read into `buf`, header parsed with `eh_max`) of
    /// the inode set by [`begin_inode`](Self::begin_inode).
    pub(crate) fn check_extent_block(&mut self, block: u64, buf: &[u8], eh_max: u16) {
        let Some((ino, seed)) = self.csum_checks().and_then(|c| c.owner_seed()) else {
            return;
        };
        let result = match extent_block_checksum(seed, buf, eh_max) {
            Some(check) => matched(check),
            None => Err(Failure::Unrecognized("no room for the extent tail".into())),
        };
        let b = bad(ChecksumKind::ExtentBlock, block, Some(ino));
        self.record_check(b, result, None, true);
    }

    /// A collector whose tree walkers record [`MappedRun`]s (taken with
    /// [`take_runs`](Self::take_runs)) instead of building a block set.
    pub(crate) fn recording_runs(view: &'v dyn BlockView, sb: &'v Superblock) -> Collector<'v> {
        Collector {
            runs: Some(Vec::new()),
            ..Collector::new(view, sb)
        }
    }

    /// The runs recorded since the last call (empty unless recording runs).
    pub(crate) fn take_runs(&mut self) -> Vec<MappedRun> {
        self.runs.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// The warnings recorded since the last call (bounded per kind, with one summary warning
    /// per kind that had more).
    pub(crate) fn take_warnings(&mut self) -> Vec<Warning> {
        std::mem::take(&mut self.warnings).into_flat()
    }

    /// The superblock in use.
    pub(crate) fn sb(&self) -> &'v Superblock {
        self.sb
    }

    /// The blocks and warnings collected (warnings as in [`take_warnings`](Self::take_warnings)).
    pub(crate) fn into_parts(self) -> (BlockSet, Vec<Warning>) {
        (self.set, self.warnings.into_flat())
    }

    /// Checks that `[start, start + len)` is a valid, non-zero block range of the filesystem.
    ///
    /// # Errors
    /// The corruption kind to report.
    pub(crate) fn check_range(&self, start: u64, len: u64) -> Result<(), CorruptKind> {
        let limit = self.sb.s_blocks_count;
        match start.checked_add(len) {
            Some(end) if start != 0 && end <= limit => Ok(()),
            _ => Err(CorruptKind::OutOfRange {
                value: start,
                limit,
            }),
        }
    }

    /// Adds a bounds-checked run.
    pub(crate) fn add(&mut self, start: u64, len: u64, class: BlockClass) {
        self.set.add(start, len, class);
    }

    /// Adds `len` bounds-checked blocks from `start` that an inode maps at file block
    /// `logical` (`unwritten` for an uninitialized extent): as `class` to the set, or as a
    /// data run when recording runs.
    pub(crate) fn add_mapped(
        &mut self,
        logical: u64,
        start: u64,
        len: u64,
        unwritten: bool,
        class: BlockClass,
    ) {
        if let Some(c) = self.checks.as_deref_mut() {
            c.mapped(logical, start, len, unwritten);
        }
        match self.runs {
            Some(_) => self.push_run(MappedRun {
                logical,
                physical: start,
                len,
                kind: RunKind::Data { unwritten },
            }),
            None => self.add(start, len, class),
        }
    }

    /// Adds one bounds-checked tree block (extent index/leaf, IND/DIND/TIND): as `class` to
    /// the set, or as a tree run when recording runs.
    pub(crate) fn add_tree(&mut self, start: u64, class: BlockClass) {
        match self.runs {
            Some(_) => self.push_run(MappedRun {
                logical: 0,
                physical: start,
                len: 1,
                kind: RunKind::Tree,
            }),
            None => self.add(start, 1, class),
        }
    }

    /// Records a run when recording runs, merged into the previous one when it continues it
    /// both physically and (for data) logically.
    pub(crate) fn push_run(&mut self, run: MappedRun) {
        let Some(runs) = self.runs.as_mut() else {
            return;
        };
        if let Some(last) = runs.last_mut() {
            if last.continued_by(&run) {
                if let Some(len) = last.len.checked_add(run.len) {
                    last.len = len;
                    return;
                }
            }
        }
        runs.push(run);
    }

    /// Adds a run after checking its bounds; reports `what` as a `kind` (a [`CorruptKind`]
    /// constructor) when it is out of range.
    pub(crate) fn add_checked(
        &mut self,
        start: u64,
        len: u64,
        class: BlockClass,
        kind: fn(String) -> CorruptKind,
        what: impl FnOnce() -> String,
    ) {
        match self.check_range(start, len) {
            Ok(()) => self.add(start, len, class),
            Err(_) => self.warn(
                kind(format!(
                    "{} (block {start}, {len} blocks) is outside the filesystem",
                    what()
                )),
                None,
                None,
            ),
        }
    }

    /// Records a corruption.
    pub(crate) fn corrupt(&mut self, c: Corrupt) {
        self.warnings.push_corrupt(c);
    }

    /// Records a corruption of `kind` found in `inode` and/or `block`.
    pub(crate) fn warn(&mut self, kind: CorruptKind, inode: Option<InodeNr>, block: Option<u64>) {
        let mut c = Corrupt::new(kind);
        c.inode = inode;
        c.block = block.map(BlockNr);
        self.corrupt(c);
    }

    /// Reads one block of inode `ino`'s tree; an I/O error is recorded as a warning and gives
    /// `None`.
    pub(crate) fn read_block(&mut self, ino: InodeNr, block: u64) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; self.sb.block_size as usize];
        self.read_or_warn(block, &mut buf, Some(ino), |e| format!("unreadable: {e}"))
            .then_some(buf)
    }

    /// Fills `buf` (whole blocks) from `block` on; an I/O error is recorded as an unreadable
    /// block of `ino`, described by `what`, and gives false.
    pub(crate) fn read_or_warn(
        &mut self,
        block: u64,
        buf: &mut [u8],
        ino: Option<InodeNr>,
        what: impl FnOnce(&io::Error) -> String,
    ) -> bool {
        match self.view.read_blocks(self.sb.block_size, block, buf) {
            Ok(()) => true,
            Err(e) => {
                self.warn(CorruptKind::Unreadable(what(&e)), ino, Some(block));
                false
            }
        }
    }
}

/// A [`BadChecksum`] of `kind` at `block`, of `inode`.
pub(crate) fn bad(kind: ChecksumKind, block: u64, inode: Option<InodeNr>) -> BadChecksum {
    BadChecksum {
        kind,
        block: Some(BlockNr(block)),
        inode,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A mapped run (test shorthand).
    pub(crate) fn run(logical: u64, physical: u64, len: u64, kind: RunKind) -> MappedRun {
        MappedRun {
            logical,
            physical,
            len,
            kind,
        }
    }

    /// A written data run's kind.
    pub(crate) const DATA: RunKind = RunKind::Data { unwritten: false };

    #[test]
    fn data_runs_merge_only_when_logically_contiguous() {
        assert!(run(0, 100, 2, DATA).continued_by(&run(2, 102, 1, DATA)));
        assert!(!run(0, 100, 2, DATA).continued_by(&run(3, 102, 1, DATA)));
        assert!(!run(0, 100, 2, DATA).continued_by(&run(2, 103, 1, DATA)));
        let unwritten = RunKind::Data { unwritten: true };
        assert!(!run(0, 100, 2, DATA).continued_by(&run(2, 102, 1, unwritten)));
    }

    #[test]
    fn tree_runs_merge_physically() {
        assert!(run(0, 7, 1, RunKind::Tree).continued_by(&run(0, 8, 1, RunKind::Tree)));
        assert!(!run(0, 7, 1, RunKind::Tree).continued_by(&run(0, 8, 1, DATA)));
        assert!(!run(0, u64::MAX, 1, RunKind::Tree).continued_by(&run(0, 0, 1, RunKind::Tree)));
    }
}

//! The [`Collector`]: what one part of a walk accumulates (blocks or, for the owner scan,
//! runs; warnings bounded per kind; counts), with the bounds check every block pointer goes
//! through and block reads that report instead of failing.

use crate::blockset::{BlockClass, BlockSet};
use crate::error::{Corrupt, CorruptKind};
use crate::owners::{MappedRun, RunKind};
use crate::superblock::Superblock;
use crate::view::BlockView;
use crate::walk::{WalkStats, Warning};
use crate::warning::WarningLog;
use crate::{BlockNr, InodeNr};

/// Accumulates blocks, warnings and counts for one part of the walk, with bounds checks and
/// block reads that report instead of failing.
pub struct Collector<'v> {
    pub(crate) view: &'v dyn BlockView,
    pub(crate) sb: &'v Superblock,
    pub(crate) set: BlockSet,
    /// The run sink: when present, the tree walkers record runs here instead of in `set`.
    runs: Option<Vec<MappedRun>>,
    pub(crate) warnings: WarningLog,
    pub(crate) stats: WalkStats,
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
        }
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
    pub fn sb(&self) -> &'v Superblock {
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

    pub(crate) fn warn(&mut self, kind: CorruptKind, inode: Option<InodeNr>, block: Option<u64>) {
        let mut c = Corrupt::new(kind);
        c.inode = inode;
        c.block = block.map(BlockNr);
        self.corrupt(c);
    }

    /// Reads one block; an I/O error is recorded as a warning and gives `None`.
    pub(crate) fn read_block(&mut self, ino: InodeNr, block: u64) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; self.sb.block_size as usize];
        match self.view.read_blocks(self.sb.block_size, block, &mut buf) {
            Ok(()) => Some(buf),
            Err(e) => {
                let kind = CorruptKind::Unreadable(format!("unreadable: {e}"));
                self.warn(kind, Some(ino), Some(block));
                None
            }
        }
    }
}

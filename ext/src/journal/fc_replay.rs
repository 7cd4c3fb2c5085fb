//! The fast-commit replay on the block-level replayed view (the `fast_commit` module
//! describes it): [`ReplayedView::replay_fast_commits`] runs the replay engine of
//! `fast_commit` on the view and records the blocks it changes with
//! [`ReplayedView::set_block`]. Above `view` and `recovery` in the journal's layers.

use super::fast_commit::replay::{Replay, Stop};
use super::fast_commit::{store, FastCommit};
use super::recovery::Recovery;
use super::view::ReplayedView;
use crate::features::ro_compat;
use crate::superblock::{Superblock, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};
use crate::types::BlockNr;
use crate::view::BlockView;
use crate::warning::Warning;
use std::io;

/// What [`ReplayedView::replay_fast_commits`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FastCommitReplay {
    /// Tags replayed (0 when nothing was).
    pub tags: usize,
    /// Filesystem blocks the replay changed, in order.
    pub blocks: Vec<BlockNr>,
    /// Problems, each naming the journal block of its tag: the kernel would refuse to mount
    /// (then nothing was replayed), a corrupt structure a tag's effect stopped at, a case
    /// not replayed as the kernel replays it.
    pub warnings: Vec<Warning>,
    /// True when the replay did what the kernel's does (no warning says otherwise).
    pub exact: bool,
}

fn fc_warning(reason: String) -> Warning {
    Warning {
        inode: None,
        block: None,
        offset: None,
        reason: format!("fast commits: {reason}"),
    }
}

impl<B: BlockView> ReplayedView<'_, B> {
    /// Replays the fast commits `recovery` found to replay (module comment) on this view of
    /// the block-level replayed state ([`crate::ReplayMode::Replayed`]), recording every
    /// block it changes with [`ReplayedView::set_block`] (bitmaps, group descriptors, inode
    /// tables, extent tree and directory blocks, and the primary superblock's free counts,
    /// set to the sums of the groups' as the kernel's next superblock write does). `None`
    /// when there is nothing to replay and nothing to say.
    ///
    /// # Errors
    /// A read error of the superblock; other read errors are warnings (nothing replayed).
    pub fn replay_fast_commits(
        &mut self,
        recovery: &Recovery,
    ) -> io::Result<Option<FastCommitReplay>> {
        let Some(fc) = &recovery.fast_commit else {
            return Ok(None);
        };
        let mut out = FastCommitReplay {
            tags: 0,
            blocks: Vec::new(),
            warnings: Vec::new(),
            exact: true,
        };
        if let Some(e) = &fc.scan_error {
            out.exact = false;
            out.warnings.push(fc_warning(format!(
                "{e}: the kernel's recovery fails here (it refuses to mount); the fast commits are not replayed"
            )));
            return Ok(Some(out));
        }
        if !fc.pending || !recovery.replayed {
            return Ok(None);
        }
        let mut raw = vec![0u8; SUPERBLOCK_SIZE];
        self.read_at(SUPERBLOCK_OFFSET, &mut raw)?;
        let sb = match Superblock::parse(&raw) {
            Ok(sb) => sb,
            Err(e) => {
                out.exact = false;
                out.warnings.push(fc_warning(format!(
                    "the replayed superblock is unusable ({e}); the fast commits are not replayed"
                )));
                return Ok(Some(out));
            }
        };
        if sb.has_ro_compat(ro_compat::BIGALLOC) {
            out.exact = false;
            out.warnings.push(fc_warning(
                "bigalloc is not supported: the fast commits are not replayed".into(),
            ));
            return Ok(Some(out));
        }
        match run_replay(self, sb, fc) {
            Ok((blocks, notes, exact)) => {
                for (b, bytes) in blocks {
                    self.set_block(BlockNr(b), bytes)?;
                    out.blocks.push(BlockNr(b));
                }
                out.tags = fc.tags();
                out.exact = exact;
                out.warnings.extend(notes.into_iter().map(fc_warning));
            }
            Err(m) => {
                out.exact = false;
                out.warnings.push(fc_warning(m));
            }
        }
        Ok(Some(out))
    }
}

/// What a replay produced: the blocks written, the notes, and whether it was exact.
type Replayed = (Vec<(u64, Vec<u8>)>, Vec<String>, bool);

/// The replay on `view`, or why it stopped (nothing of it kept).
fn run_replay(view: &dyn BlockView, sb: Superblock, fc: &FastCommit) -> Result<Replayed, String> {
    let now = Replay::stamp(&fc.tags, sb.s_wtime);
    let bs = u64::from(sb.block_size);
    let desc_blocks = sb.desc_blocks as usize;
    let mut fs = store::Fs::new(view, sb, now);
    fs.excluded = fc.regions.clone();
    let mut r = Replay::new(fs);
    match r.run(&fc.tags) {
        Ok(()) => {}
        Err(Stop::KernelFails(m)) => {
            return Err(format!(
                "{m}: the kernel's recovery fails here (it refuses to mount); the fast commits are not replayed"
            ))
        }
        Err(Stop::Abandoned(m)) => {
            return Err(format!("{m}; the fast commits are not replayed"))
        }
    }
    let (notes, exact) = (r.notes, !r.inexact);
    let mut fs = r.fs;
    if desc_blocks <= store::MAX_BLOCKS / 4 {
        let block = SUPERBLOCK_OFFSET / bs;
        let at = (SUPERBLOCK_OFFSET % bs) as usize;
        if let Err(e) = fs.sum_counts_into_superblock(block, at) {
            return Err(format!("{e:?}; the fast commits are not replayed"));
        }
    }
    Ok((fs.into_written(), notes, exact))
}

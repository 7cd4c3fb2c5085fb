//! The fast-commit area (journal INCOMPAT_FAST_COMMIT, ext4 `-O fast_commit`): `s_num_fc_blks`
//! blocks (256 when 0) after the block log, `[j_last, s_maxlen)`. ext4 writes inode-level
//! records there (ext4 `struct ext4_fc_tl`: a little-endian u16 tag and u16 length, then the
//! value; a tag never crosses a block) for the running transaction, and replays them
//! *logically* after the block log, as `fs/ext4/fast_commit.c` does:
//!
//! * the scan (`scan`, at [`Journal::recover`]): HEAD, ADD_RANGE, DEL_RANGE, CREAT, LINK,
//!   UNLINK, INODE, PAD and TAIL tags validated, each fast commit closed by a TAIL of the
//!   block log's end tid whose crc32c covers its tags; those up to the last good TAIL are to
//!   replay ([`FastCommit::pending`]);
//! * the replay ([`ReplayedView::replay_fast_commits`], `replay`): inode records, extents
//!   added and removed in extent trees (`extents`, `extents_ins`, `extents_rm`), directory
//!   entries (`dir`), then the block and inode bitmaps, group counts and checksums
//!   (`groups`, `store`), on the block-level replayed view; its blocks are set in the view.
//!
//! The replay does what the kernel's does, quirks included (a directory a fast commit
//! creates keeps a link count of 1 and `i_blocks` 0, its parent's link count is not raised,
//! an unlinked directory keeps its inode). Where the kernel stamps the time of its replay
//! (the change and modification times of the directories whose entries change, the times of
//! the inodes it deletes), this replay stamps the newest change time of the replayed inode
//! records, so that the output is the same at every run. What it does not do as the kernel
//! does is said in a warning: an entry added to an htree directory, a full one-block
//! directory (the kernel makes it an htree), inline data, block maps without extents,
//! bigalloc, casefolded or encrypted directories.
//!
//! Also reported for a faithful copy: the area's journal blocks and the filesystem blocks
//! named by the ADD_RANGE tags of the fast commits to replay.
//!
//! Verified against Linux 6.18: `tests/integration/journal/fast_commits.rs`.

mod dir;
mod dx;
mod dx_hash;
mod extents;
mod extents_ins;
mod extents_rm;
mod groups;
mod inode;
mod replay;
mod scan;
mod store;

use super::locate::Journal;
use super::recovery::Recovery;
use super::view::ReplayedView;
use crate::features::ro_compat;
use crate::superblock::{Superblock, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};
use crate::types::BlockNr;
use crate::view::BlockView;
use crate::warning::Warning;
use scan::{Outcome, Scanner, Tag};
use std::io;

/// The fast-commit area of a journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FastCommit {
    /// The area's journal blocks: `[first, first + len)`, i.e. `[j_last, s_maxlen)`.
    pub journal_blocks: (u64, u64),
    /// Fast commits for the block log's end tid, with good tails, are to replay (module
    /// comment); only computed when the journal was replayed.
    pub pending: bool,
    /// Why the kernel's scan of the area fails, when it does: its recovery then fails and it
    /// refuses to mount; nothing of the area is replayed here.
    pub scan_error: Option<String>,
    /// Filesystem extents (first block, blocks) named by ADD_RANGE tags of the pending fast
    /// commits, inside the filesystem.
    pub referenced: Vec<(BlockNr, u64)>,
    /// The tags to replay, with their journal blocks.
    tags: Vec<(u64, Tag)>,
    /// The ADD_RANGE regions the replay's allocator avoids.
    regions: Vec<scan::Region>,
}

impl FastCommit {
    /// Tags to replay (HEAD to the last good TAIL).
    pub fn tags(&self) -> usize {
        self.tags.len()
    }
}

/// The fast-commit area of `j` (None without FAST_COMMIT); `end_tid` is the block log's end
/// tid when it was replayed; `inode_size` the filesystem's (it bounds INODE tags). Read
/// problems go to `warn(journal block, message)`.
pub(crate) fn scan_fast_commit(
    j: &Journal<'_>,
    end_tid: Option<u32>,
    inode_size: usize,
    warn: &mut dyn FnMut(u64, String),
) -> Option<FastCommit> {
    let n = u64::from(j.sb.fast_commit_blocks());
    if n == 0 {
        return None;
    }
    let first = j.total_len - n;
    let mut fc = FastCommit {
        journal_blocks: (first, n),
        pending: false,
        scan_error: None,
        referenced: Vec::new(),
        tags: Vec::new(),
        regions: Vec::new(),
    };
    let tid = end_tid?;
    let mut s = Scanner::new(tid, inode_size);
    // ext4 reads from j_fc_first = j_last + 1 to j_fc_last = s_maxlen, one past the journal.
    for at in first + 1..j.total_len {
        match j.read_block(at) {
            Ok(b) => s.block(at, &b),
            Err(e) => {
                warn(at, e.clone());
                s.end(&format!("journal block {at}: {e}"));
            }
        }
        if s.done() {
            break;
        }
    }
    s.end(&format!(
        "journal block {}: the fast-commit area ends while its tags go on",
        j.total_len
    ));
    let scan = s.finish();
    match scan.outcome {
        Outcome::None => {}
        Outcome::Error(e) => fc.scan_error = Some(e),
        Outcome::Replay => {
            fc.pending = true;
            fc.referenced = scan
                .regions
                .iter()
                .filter(|r| {
                    r.pblk != 0
                        && r.pblk
                            .checked_add(r.len)
                            .is_some_and(|e| e <= j.fs_blocks_count)
                })
                .map(|r| (BlockNr(r.pblk), r.len))
                .collect();
            fc.tags = scan.tags;
            fc.regions = scan.regions;
        }
    }
    Some(fc)
}

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
                out.tags = fc.tags.len();
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
    let now = replay::Replay::stamp(&fc.tags, sb.s_wtime);
    let bs = u64::from(sb.block_size);
    let desc_blocks = sb.desc_blocks as usize;
    let mut fs = store::Fs::new(view, sb, now);
    fs.excluded = fc.regions.clone();
    let mut r = replay::Replay::new(fs);
    match r.run(&fc.tags) {
        Ok(()) => {}
        Err(replay::Stop::KernelFails(m)) => {
            return Err(format!(
                "{m}: the kernel's recovery fails here (it refuses to mount); the fast commits are not replayed"
            ))
        }
        Err(replay::Stop::Abandoned(m)) => {
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

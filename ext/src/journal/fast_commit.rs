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
//! * the replay (`replay`, run by [`crate::ReplayedView::replay_fast_commits`] in the
//!   `fc_replay` module above the view): inode records, extents
//!   added and removed in extent trees (`extents`, `extents_ins`, `extents_rm`), directory
//!   entries (`dir`), then the block and inode bitmaps, group counts and checksums
//!   (`groups`, `store`), on the block-level replayed view; its blocks are set in the view.
//!
//! The replay does what the kernel's does, quirks included (a directory a fast commit
//! creates keeps a link count of 1 and `i_blocks` 0, its parent's link count is not raised,
//! an unlinked directory keeps its inode). Where the kernel stamps the time of its replay
//! (the change and modification times of the directories whose entries change, the times of
//! the inodes it deletes), this replay stamps the newest change time of the replayed inode
//! records, so that the output is the same at every run. Htree directories are changed as
//! the kernel changes them (leaf and index splits, a full one-block directory made an
//! htree). What it does not do as the kernel does is said in a warning: inline data, block
//! maps without extents, bigalloc, casefolded or encrypted directories. It assumes the
//! kernel's default delayed allocation (without it the kernel's allocation goal depends on
//! its process id).
//!
//! Also reported for a faithful copy: the area's journal blocks and the filesystem blocks
//! named by the ADD_RANGE tags of the fast commits to replay.
//!
//! Verified against Linux 6.18: `tests/integration/journal/fast_commits.rs`.

mod dir;
mod dx;
use crate::dx_hash;
mod dx_leaf;
mod extents;
mod extents_ins;
mod extents_rm;
mod groups;
mod inode;
pub(crate) mod replay;
mod scan;
pub(crate) mod store;

use super::locate::Journal;
use crate::types::BlockNr;
use scan::{Outcome, Scanner, Tag};

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
    pub(crate) tags: Vec<(u64, Tag)>,
    /// The ADD_RANGE regions the replay's allocator avoids.
    pub(crate) regions: Vec<scan::Region>,
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

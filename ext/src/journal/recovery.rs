//! Recovery of a located journal, without writing anything: the state of the journal, the
//! three passes (`passes`), the overlay they build, and the fast-commit area's report.
//!
//! Whether to replay follows the kernel: only when the filesystem has INCOMPAT_RECOVER
//! (`needs_recovery`). A log with RECOVER clear but `s_start` ≠ 0 is reported as
//! [`JournalState::LogWithoutRecoverFlag`] and left alone, as the kernel does;
//! [`Journal::recover_anyway`] replays it (e2fsck asks, and replays with `-y`).
//!
//! After a recovery jbd2 restarts the log: e2fsprogs writes the journal superblock with
//! `s_start` = 0 and, when the recovery succeeded, `s_sequence` = end tid + 1; after an error
//! (a fatal pass, a data block with a bad tag checksum, passes ending at different tids) it
//! keeps `s_sequence` and clears EXT2_VALID_FS in `s_state`; a commit block with a bad
//! checksum ([`Recovery::failed_commit`]) or a journal superblock with `s_errno` set marks the
//! filesystem with errors (EXT2_ERROR_FS) and clears `s_errno` [verified against e2fsprogs
//! 1.47 `debugfs jr` and `e2fsck -E journal_only`]. [`Recovery::new_sequence`],
//! [`Recovery::error`] and [`Recovery::failed_commit`] carry that.

use super::fast_commit::{scan_fast_commit, FastCommit};
use super::locate::Journal;
use super::passes::{OverlayBlock, Pass, Passes};
use crate::checksum::ChecksumReport;
use crate::warning::Warning;
use std::collections::BTreeMap;

/// The journal's state before any replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalState {
    /// `s_start` = 0 and RECOVER clear: nothing to replay.
    Clean,
    /// RECOVER (`needs_recovery`) set: the journal is replayed (possibly an empty log, when
    /// `s_start` = 0; the replayed state then only clears the flag and restarts the log).
    NeedsRecovery,
    /// RECOVER clear but `s_start` ≠ 0: a log the kernel would not replay; replayed only by
    /// [`Journal::recover_anyway`].
    LogWithoutRecoverFlag,
}

/// The result of [`Journal::recover`]: what replaying the journal would write, as an overlay.
#[derive(Clone, Debug)]
pub struct Recovery {
    /// The journal's state.
    pub state: JournalState,
    /// True if the passes ran (the overlay is the replay); false when nothing is replayed
    /// (clean journal, or a log without RECOVER by the kernel's rule).
    pub replayed: bool,
    /// `s_sequence`: the first tid of the log.
    pub start_tid: u32,
    /// The first tid not replayed (jbd2 `info.end_transaction`): the log's transactions are
    /// `start_tid..end_tid`, wrapping. Equals `start_tid` when nothing is replayed.
    pub end_tid: u32,
    /// Filesystem block → its newest journal copy, revoked and bad-checksum copies left out.
    pub overlay: BTreeMap<u64, OverlayBlock>,
    /// Logged copies skipped because a later revoke record cancels them.
    pub revoke_hits: u64,
    /// The error jbd2 would return from the recovery (first one), if any: a fatal pass
    /// (nothing replayed when it is SCAN or REVOKE), a data block with a bad tag checksum
    /// (that block skipped), an I/O error, passes ending at different tids.
    pub error: Option<String>,
    /// The transaction whose commit block failed its checksum and ended the log (jbd2
    /// `j_failed_commit`): e2fsprogs then marks the filesystem with errors.
    pub failed_commit: Option<u32>,
    /// Problems, each naming the journal block (journal blocks are logical: block n of the
    /// journal inode or device).
    pub warnings: Vec<Warning>,
    /// The fast-commit area, when the journal has INCOMPAT_FAST_COMMIT.
    pub fast_commit: Option<FastCommit>,
    /// The v2/v3 checksums of the descriptor, commit and revoke blocks the scan verified (0
    /// when nothing was scanned); each failure is one of `warnings` too.
    pub checksums: ChecksumReport,
}

impl Recovery {
    /// Committed transactions found (replayed, up to revokes and bad blocks).
    pub fn transactions(&self) -> u32 {
        self.end_tid.wrapping_sub(self.start_tid)
    }

    /// `s_sequence` of the journal superblock after the recovery: `end_tid + 1`, or the old
    /// `s_sequence` after an error (module comment).
    pub fn new_sequence(&self) -> u32 {
        if self.error.is_some() {
            self.start_tid
        } else {
            self.end_tid.wrapping_add(1)
        }
    }

    /// True when fast commits for the end tid are to replay: the block-level replay is then
    /// completed by [`crate::ReplayedView::replay_fast_commits`].
    pub fn fast_commit_pending(&self) -> bool {
        self.fast_commit.as_ref().is_some_and(|fc| fc.pending)
    }
}

impl Journal<'_> {
    /// The journal's state (see [`JournalState`]).
    pub fn state(&self) -> JournalState {
        if self.fs_recover {
            JournalState::NeedsRecovery
        } else if self.sb.s_start != 0 {
            JournalState::LogWithoutRecoverFlag
        } else {
            JournalState::Clean
        }
    }

    /// Recovers the journal as the kernel would: replayed only with RECOVER set.
    pub fn recover(&self) -> Recovery {
        self.run(self.state() == JournalState::NeedsRecovery)
    }

    /// Recovers the journal even when RECOVER is clear (e2fsck's "Run journal anyway?"
    /// answered yes); a clean journal (`s_start` = 0) still replays nothing.
    pub fn recover_anyway(&self) -> Recovery {
        self.run(self.state() != JournalState::Clean)
    }

    fn run(&self, replay: bool) -> Recovery {
        let start_tid = self.sb.s_sequence;
        let mut r = Recovery {
            state: self.state(),
            replayed: replay,
            start_tid,
            end_tid: start_tid,
            overlay: BTreeMap::new(),
            revoke_hits: 0,
            error: None,
            failed_commit: None,
            warnings: Vec::new(),
            fast_commit: None,
            checksums: ChecksumReport::default(),
        };
        let mut p = Passes::new(self);
        if replay && self.sb.s_start != 0 {
            let mut fatal = None;
            for pass in [Pass::Scan, Pass::Revoke, Pass::Replay] {
                if let Err(e) = p.run(pass) {
                    fatal = Some(e);
                    break;
                }
            }
            r.end_tid = p.end.unwrap_or(start_tid);
            r.error = fatal.or(p.error.take());
            r.revoke_hits = p.revoke_hits;
            r.failed_commit = p.failed_commit;
            r.overlay = std::mem::take(&mut p.overlay);
            r.checksums = std::mem::take(&mut p.checksums);
        }
        let end = (replay && self.sb.s_start != 0).then_some(r.end_tid);
        let isz = usize::from(self.fs_inode_size);
        r.fast_commit = scan_fast_commit(self, end, isz, &mut |at, msg| p.warn(Some(at), msg));
        r.warnings = std::mem::take(&mut p.warnings).into_flat();
        r
    }
}

//! The three recovery passes over the log (jbd2 `do_one_pass`): SCAN finds the end of the
//! committed log, REVOKE collects the revoke records, REPLAY maps every logged block not
//! revoked to its newest journal copy (the overlay) instead of writing it.
//!
//! Each pass starts at (`s_start`, `s_sequence`) and reads block after block, wrapping from
//! the end of the log (`j_last`) to `s_first`; the log ends at a block without the jbd2
//! magic, with another tid than expected, or of an unknown type. jbd2's rules kept here:
//!
//! * tids are u32 compared wrap-aware (`tid_gt`: `(a - b) as i32 > 0`);
//! * SCAN: a descriptor or revoke block with a bad v2/v3 checksum is remembered; at the next
//!   commit block, a commit time not older than the previous commit's is a fatal "invalid
//!   checksum" (nothing is replayed), an older one marks stale blocks of an earlier use of the
//!   journal: the log ends there. A commit block with a bad checksum (v2/v3 `h_chksum[0]`, or
//!   v1's crc32_be over the transaction) ends the log before its transaction, unless its time
//!   goes backwards (stale: the log ends too) — with ASYNC_COMMIT the scan goes on, the end
//!   staying at the failed tid;
//! * REVOKE: `r_count` past the block is fatal; a revoke in tid R cancels copies of the block
//!   in tids ≤ R;
//! * REPLAY: a bad descriptor checksum is fatal; a logged block whose tag checksum fails is
//!   skipped alone (and the recovery reports an error); REVOKE and REPLAY must end at SCAN's
//!   end tid.
//!
//! Deviations, all on corrupt logs: a pass reads at most one log's worth of blocks (jbd2 has
//! no bound); the skip over a corrupt descriptor's blocks wraps modulo the log (jbd2 wraps
//! once); "no end yet" is an `Option` (jbd2 uses tid 0, so a failed commit of tid 0 would be
//! missed there); logged blocks for targets past `s_blocks_count` are rejected and reported.
//! SCAN counts the v2/v3 checksums of the descriptor, commit and revoke blocks it verifies
//! (`Passes::checksums`), for the checksum report.
//! jbd2's v1 transaction checksum (COMPAT_CHECKSUM, crc32_be) is implemented from its
//! definition; no tool writes such journals offline, so it is untested against jbd2.

use super::locate::{Journal, JournalLocation};
use super::log::{self, tag_flags, Tag, TagFormat};
use super::superblock::{blocktype, jbd2_feature as f};
use crate::checksum::{BadChecksum, ChecksumKind, ChecksumReport};
use crate::types::{BlockNr, InodeNr};
use crate::warning::{Warning, WarningLog};
use std::collections::{BTreeMap, HashMap};

/// `a` after `b`, wrap-aware (jbd2 `tid_gt`).
pub(crate) fn tid_gt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// The newest journal copy of one filesystem block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverlayBlock {
    /// Journal block holding the copy.
    pub journal_block: u64,
    /// Transaction that logged it (`h_sequence`).
    pub tid: u32,
    /// The copy's first 4 bytes were zeroed for the log (ESCAPE): they read as the BE magic.
    pub escaped: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pass {
    Scan,
    Revoke,
    Replay,
}

/// What a log block tells the pass to do next.
enum Step {
    Next,
    /// End of the log (jbd2 `goto done`).
    Done,
    /// A fatal error (jbd2 `goto failed`).
    Fail(String),
}

/// The state the passes share (jbd2 `struct recovery_info` and the scan's locals).
pub(crate) struct Passes<'j, 'a> {
    j: &'j Journal<'a>,
    fmt: TagFormat,
    seed: u32,
    /// The log: `[first, last)`.
    first: u64,
    last: u64,
    block: u64,
    tid: u32,
    need_check_commit_time: bool,
    last_commit_time: u64,
    crc32_sum: u32,
    /// jbd2 `info.end_transaction`: the first tid not to replay.
    pub(crate) end: Option<u32>,
    /// The first non-fatal error (jbd2 `success`).
    pub(crate) error: Option<String>,
    /// The transaction whose commit block failed its checksum (jbd2 `j_failed_commit`).
    pub(crate) failed_commit: Option<u32>,
    revokes: HashMap<u64, u32>,
    pub(crate) revoke_hits: u64,
    pub(crate) overlay: BTreeMap<u64, OverlayBlock>,
    pub(crate) warnings: WarningLog,
    /// The v2/v3 checksums of the descriptor, commit and revoke blocks SCAN verified (their
    /// failures are warnings already).
    pub(crate) checksums: ChecksumReport,
}

impl<'j, 'a> Passes<'j, 'a> {
    pub(crate) fn new(j: &'j Journal<'a>) -> Passes<'j, 'a> {
        let total = j.total_len;
        Passes {
            j,
            fmt: TagFormat::of(&j.sb),
            seed: j.sb.checksum_seed(),
            first: u64::from(j.sb.s_first),
            last: total - u64::from(j.sb.fast_commit_blocks()),
            block: 0,
            tid: 0,
            need_check_commit_time: false,
            last_commit_time: 0,
            crc32_sum: !0,
            end: None,
            error: None,
            failed_commit: None,
            revokes: HashMap::new(),
            revoke_hits: 0,
            overlay: BTreeMap::new(),
            warnings: WarningLog::default(),
            checksums: ChecksumReport::default(),
        }
    }

    /// The journal inode, for an internal journal.
    fn inode(&self) -> Option<InodeNr> {
        match self.j.location {
            JournalLocation::Inode { ino, .. } => Some(ino),
            JournalLocation::External => None,
        }
    }

    /// Counts one v2/v3 checksum of journal block `at` verified by SCAN.
    fn counted(&mut self, kind: ChecksumKind, at: u64, ok: bool) {
        if !ok {
            let b = BadChecksum {
                kind,
                block: self.j.device_block(at).map(BlockNr),
                inode: self.inode(),
            };
            self.checksums.bad(b);
        } else {
            self.checksums.ok(kind);
        }
    }

    /// Records a problem at journal block `at`.
    pub(crate) fn warn(&mut self, at: Option<u64>, msg: String) {
        let reason = match at {
            Some(b) => format!("journal block {b}: {msg}"),
            None => msg,
        };
        self.warnings.push(
            "journal",
            Warning {
                inode: self.inode(),
                block: None,
                offset: None,
                reason,
            },
        );
    }

    fn fail_soft(&mut self, msg: &str) {
        self.error.get_or_insert_with(|| msg.to_string());
    }

    /// `block + n`, wrapped into the log.
    fn advance(&self, block: u64, n: u64) -> u64 {
        let len = self.last - self.first;
        let b = block.saturating_add(n);
        if b < self.last {
            b
        } else {
            self.first + (b - self.last) % len
        }
    }

    /// Runs one pass; `Err` is fatal (the recovery stops).
    pub(crate) fn run(&mut self, pass: Pass) -> Result<(), String> {
        self.block = u64::from(self.j.sb.s_start);
        self.tid = self.j.sb.s_sequence;
        let budget = self.last - self.first;
        let mut read = 0u64;
        loop {
            if pass != Pass::Scan && self.end.is_some_and(|e| !tid_gt(e, self.tid)) {
                break;
            }
            if read >= budget {
                self.warn(
                    None,
                    format!("the log is longer than the journal ({budget} blocks); pass stopped"),
                );
                break;
            }
            let at = self.block;
            let buf = match self.j.read_block(at) {
                Ok(buf) => buf,
                Err(e) => {
                    self.warn(None, e.clone());
                    return Err(e);
                }
            };
            read += 1;
            self.block = self.advance(at, 1);
            match self.step(pass, at, &buf) {
                Step::Next => {}
                Step::Done => break,
                Step::Fail(e) => {
                    self.warn(Some(at), e.clone());
                    return Err(format!("journal block {at}: {e}"));
                }
            }
        }
        self.done(pass);
        Ok(())
    }

    fn done(&mut self, pass: Pass) {
        if pass == Pass::Scan {
            self.end.get_or_insert(self.tid);
        } else if self.end != Some(self.tid) {
            let msg = format!(
                "recovery pass {pass:?} ended at transaction {}, expected {:?}",
                self.tid, self.end
            );
            self.warn(None, msg.clone());
            self.fail_soft(&msg);
        }
    }

    fn step(&mut self, pass: Pass, at: u64, buf: &[u8]) -> Step {
        let Some(h) = log::header(buf) else {
            return Step::Done;
        };
        if h.sequence != self.tid {
            return Step::Done;
        }
        match h.blocktype {
            blocktype::DESCRIPTOR => self.descriptor(pass, at, buf),
            blocktype::COMMIT => self.commit(pass, at, buf),
            blocktype::REVOKE => self.revoke(pass, at, buf),
            _ => Step::Done,
        }
    }

    fn csum(&self) -> bool {
        self.fmt.v2 || self.fmt.v3
    }

    fn descriptor(&mut self, pass: Pass, at: u64, buf: &[u8]) -> Step {
        let ok = !self.csum() || log::tail_checksum_ok(buf, self.seed);
        if pass == Pass::Scan && self.csum() {
            self.counted(ChecksumKind::JournalDescriptor, at, ok);
        }
        if !ok {
            if pass != Pass::Scan {
                return Step::Fail("invalid descriptor block checksum".into());
            }
            self.need_check_commit_time = true;
            self.warn(
                Some(at),
                format!(
                    "descriptor block of transaction {} fails its checksum",
                    self.tid
                ),
            );
        }
        let tags = log::tags(buf, self.fmt);
        match pass {
            Pass::Replay => self.replay_tags(&tags),
            Pass::Scan if self.v1_summing() => return self.sum_transaction(buf, tags.len()),
            _ => self.block = self.advance(self.block, tags.len() as u64),
        }
        Step::Next
    }

    /// v1 checksums are summed while no descriptor failed and no end is known yet.
    fn v1_summing(&self) -> bool {
        self.j.sb.has_compat(f::COMPAT_CHECKSUM)
            && !self.need_check_commit_time
            && self.end.is_none()
    }

    /// Folds descriptor `buf` and its `n` logged blocks into the v1 crc32_be sum (jbd2
    /// `calc_chksums`), moving past them.
    fn sum_transaction(&mut self, buf: &[u8], n: usize) -> Step {
        self.crc32_sum = log::crc32_be(self.crc32_sum, buf);
        for _ in 0..n {
            let at = self.block;
            self.block = self.advance(at, 1);
            match self.j.read_block(at) {
                Ok(data) => self.crc32_sum = log::crc32_be(self.crc32_sum, &data),
                Err(e) => return Step::Fail(e),
            }
        }
        Step::Next
    }

    fn replay_tags(&mut self, tags: &[Tag]) {
        for tag in tags {
            let at = self.block;
            self.block = self.advance(at, 1);
            let data = match self.j.read_block(at) {
                Ok(d) => d,
                Err(e) => {
                    self.warn(
                        Some(at),
                        format!("I/O error recovering block {}: {e}", tag.blocknr),
                    );
                    self.fail_soft(&e);
                    continue;
                }
            };
            self.replay_one(tag, at, &data);
        }
    }

    fn replay_one(&mut self, tag: &Tag, at: u64, data: &[u8]) {
        let b = tag.blocknr;
        if self.revokes.get(&b).is_some_and(|&r| !tid_gt(self.tid, r)) {
            self.revoke_hits += 1;
            return;
        }
        if !log::tag_checksum_ok(tag, data, self.tid, self.seed, self.fmt) {
            let msg = format!("invalid checksum recovering data block {b} (fs block); skipped");
            self.warn(Some(at), msg.clone());
            self.fail_soft(&msg);
            return;
        }
        if b >= self.j.fs_blocks_count {
            let msg = format!(
                "logged copy of fs block {b} is past the filesystem (s_blocks_count {}); not replayed",
                self.j.fs_blocks_count
            );
            self.warn(Some(at), msg);
            return;
        }
        let escaped = tag.flags & tag_flags::ESCAPE != 0;
        self.overlay.insert(
            b,
            OverlayBlock {
                journal_block: at,
                tid: self.tid,
                escaped,
            },
        );
    }

    fn commit(&mut self, pass: Pass, at: u64, buf: &[u8]) -> Step {
        if pass != Pass::Scan {
            self.tid = self.tid.wrapping_add(1);
            return Step::Next;
        }
        let c = log::commit(buf);
        let time = c.h_commit_sec;
        if self.need_check_commit_time {
            if time >= self.last_commit_time {
                return Step::Fail(format!(
                    "invalid checksum found in transaction {} (a descriptor or revoke block of it)",
                    self.tid
                ));
            }
            self.warn(
                Some(at),
                format!(
                    "transaction {} is stale (older commit time, bad checksum): the log ends here",
                    self.tid
                ),
            );
            return Step::Done;
        }
        if self.j.sb.has_compat(f::COMPAT_CHECKSUM) && self.end.is_some() {
            self.failed_commit = self.end;
            return Step::Done;
        }
        if !self.commit_ok(at, buf, &c) {
            if time < self.last_commit_time {
                self.warn(Some(at), format!("transaction {} is stale (older commit time, bad checksum): the log ends here", self.tid));
                return Step::Done;
            }
            self.warn(
                Some(at),
                format!(
                    "commit block of transaction {} fails its checksum: not replayed",
                    self.tid
                ),
            );
            self.end = Some(self.tid);
            if !self.j.sb.has_incompat(f::INCOMPAT_ASYNC_COMMIT) {
                self.failed_commit = Some(self.tid);
                return Step::Done;
            }
        }
        self.last_commit_time = time;
        self.tid = self.tid.wrapping_add(1);
        Step::Next
    }

    /// The commit block's checksum: v1's crc32_be sum (or none recorded), or v2/v3's crc32c.
    fn commit_ok(&mut self, at: u64, buf: &[u8], c: &log::Commit) -> bool {
        if self.j.sb.has_compat(f::COMPAT_CHECKSUM) {
            let ok = (c.h_chksum == self.crc32_sum && c.h_chksum_type == 1 && c.h_chksum_size == 4)
                || (c.h_chksum_type == 0 && c.h_chksum_size == 0 && c.h_chksum == 0);
            if ok {
                self.crc32_sum = !0;
            }
            return ok;
        }
        if !self.csum() {
            return true;
        }
        let ok = log::commit_checksum_ok(buf, self.seed);
        self.counted(ChecksumKind::JournalCommit, at, ok);
        ok
    }

    /// SCAN's check of revoke block `buf` at `at`: counted; a failure is remembered for the
    /// next commit block, as for a descriptor.
    fn scan_revoke_checksum(&mut self, at: u64, buf: &[u8]) {
        let ok = log::tail_checksum_ok(buf, self.seed);
        self.counted(ChecksumKind::JournalRevoke, at, ok);
        if !ok {
            self.need_check_commit_time = true;
            self.warn(
                Some(at),
                format!(
                    "revoke block of transaction {} fails its checksum",
                    self.tid
                ),
            );
        }
    }

    fn revoke(&mut self, pass: Pass, at: u64, buf: &[u8]) -> Step {
        if pass == Pass::Scan && self.csum() {
            self.scan_revoke_checksum(at, buf);
        }
        if pass != Pass::Revoke {
            return Step::Next;
        }
        let records = match log::revoke_records(buf, self.fmt) {
            Ok(r) => r,
            Err(e) => return Step::Fail(e),
        };
        for b in records {
            let e = self.revokes.entry(b).or_insert(self.tid);
            if tid_gt(self.tid, *e) {
                *e = self.tid;
            }
        }
        Step::Next
    }
}

#[cfg(test)]
mod tests {
    use super::tid_gt;

    #[test]
    fn tids_compare_across_the_wrap() {
        assert!(tid_gt(1, 0));
        assert!(tid_gt(0, u32::MAX));
        assert!(!tid_gt(u32::MAX, 0));
        assert!(!tid_gt(5, 5));
    }
}

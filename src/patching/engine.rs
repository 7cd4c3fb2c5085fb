//! Drives a target to the new (rollback) or old (undo) side of a verified patch.
//!
//! The same procedure serves the first run, `--resume` and `--undo`, so that an interrupted run
//! of any of them is finished by running it (or the other) again:
//!
//! 1. classify every patched block of the target: it must hold its old or new bytes (the
//!    superblock block may also hold its "not clean" variant); anything else is refused
//!    before writing;
//! 2. record "applying"/"undoing" in the patch (flushed);
//! 3. write the "not clean" superblock block, flush, so a half-written target is never taken
//!    for a consistent filesystem;
//! 4. write the other runs' goal bytes where the target does not hold them yet, flush; when
//!    the patch says so ([`FLAG_DISCARD_ZEROS`], apply's patches), blocks whose new bytes are
//!    all zero are discarded instead ([`Target::discard`]: BLKZEROOUT or a punched hole, which
//!    read back as zeros, so a block whose discard was cut short still holds, sector by sector,
//!    its old bytes or zeros, and is classified like a torn write);
//! 5. write the goal superblock block, flush;
//! 6. record "done"/"undone".
//!
//! Writes go out in pieces of at most [`WRITE_PIECE_BYTES`]. A power cut can tear a piece, so
//! while the patch says applying or undoing, a block holding neither side is accepted when each
//! of its 512-byte sectors (the unit a disk writes atomically) holds the old, the new or the
//! "not clean" bytes: it is one we were writing. Fault injection for the tests (compiled in
//! only with the cargo feature `fault-injection`): with `E2IMAGE_RS_FAULT_AFTER_WRITES=k` the
//! process stops right after its k-th write (to the target, a discard included, or the patch
//! state record), by returning an error, with `E2IMAGE_RS_FAULT_ABORT=1` by aborting, and with
//! `E2IMAGE_RS_FAULT_TORN=1` by writing (or discarding) only part of a target write (ending
//! inside a block, on a sector boundary) and aborting.

use super::patch::{sha256, Patch, PatchState, Run, FLAG_DISCARD_ZEROS};
use super::target::{Discard, Target};
use crate::sys::report::Progress;
use anyhow::{anyhow, bail, Result};
use rayon::prelude::*;

/// Largest single write to the target, in bytes.
const WRITE_PIECE_BYTES: usize = 1 << 20;
/// Most unmatched blocks named in a refusal.
const MAX_LISTED: usize = 10;
/// Bytes a disk writes atomically: a torn block is a mix of whole sectors.
const SECTOR_BYTES: usize = 512;

/// Which side of the patch to reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    /// The new bytes (the rollback).
    New,
    /// The old bytes (undo).
    Old,
}

/// What a drive did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Driven {
    /// Blocks that received their goal bytes by a write (each counted once; the superblock
    /// block's "not clean" mark written first is not counted).
    pub blocks_written: u64,
    /// Bytes of those blocks.
    pub bytes_written: u64,
    /// Blocks that received their goal bytes (zeros) by a discard.
    pub blocks_discarded: u64,
    /// Bytes of those blocks.
    pub bytes_discarded: u64,
    /// The target held the goal side already: nothing was written.
    pub already: bool,
}

/// An error after which the target may be part-way: `touched` tells whether anything was
/// written to it.
#[derive(Debug)]
pub struct DriveError {
    pub error: anyhow::Error,
    pub touched: bool,
}

/// What a target block holds, relative to the patch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holds {
    Old,
    New,
    /// Old and new bytes are equal.
    Both,
    /// The "not clean" superblock block.
    Dirty,
    /// A block torn by an interrupted write: each sector holds one of the above.
    Torn,
}

impl Holds {
    fn reached(self, goal: Goal) -> bool {
        matches!(
            (self, goal),
            (Holds::Both, _) | (Holds::Old, Goal::Old) | (Holds::New, Goal::New)
        )
    }
}

/// Stops the process after a chosen number of writes (tests only; see the module comment).
pub struct Faults {
    after: Option<u64>,
    abort: bool,
    torn: bool,
    count: u64,
}

impl Faults {
    /// Reads the fault-injection variables from the environment; without the
    /// `fault-injection` feature (release builds) nothing is read and no fault is injected.
    pub fn from_env() -> Faults {
        if !cfg!(feature = "fault-injection") {
            return Faults {
                after: None,
                abort: false,
                torn: false,
                count: 0,
            };
        }
        Faults {
            after: std::env::var("E2IMAGE_RS_FAULT_AFTER_WRITES")
                .ok()
                .and_then(|v| v.parse().ok()),
            abort: std::env::var_os("E2IMAGE_RS_FAULT_ABORT").is_some(),
            torn: std::env::var_os("E2IMAGE_RS_FAULT_TORN").is_some(),
            count: 0,
        }
    }

    /// How many bytes of the next target write of `len` bytes (whole `bs`-byte blocks) reach
    /// the target: all, unless it is the torn one, which ends on a sector boundary inside a
    /// block.
    fn written_part(&self, len: usize, bs: usize) -> usize {
        if !self.torn || self.after != Some(self.count + 1) {
            return len;
        }
        let mut n = len / 2 / SECTOR_BYTES * SECTOR_BYTES;
        if n.is_multiple_of(bs) {
            n += SECTOR_BYTES;
        }
        n.min(len - SECTOR_BYTES)
    }

    fn wrote(&mut self) -> Result<()> {
        self.count += 1;
        if self.after == Some(self.count) {
            if self.abort || self.torn {
                std::process::abort();
            }
            bail!("injected fault after write {}", self.count);
        }
        Ok(())
    }
}

struct Driver<'a> {
    patch: &'a mut Patch,
    target: &'a Target,
    faults: &'a mut Faults,
    goal: Goal,
    touched: bool,
    out: Driven,
    /// Counts the goal bytes written or discarded.
    progress: &'a Progress,
    /// SHA-256 of an all-zero block when goal blocks of zeros are discarded, else `None`.
    discard_digest: Option<[u8; 32]>,
}

/// Brings `target` to the `goal` side of `patch`; see the module comment for the order.
/// `progress` counts the goal bytes written or discarded.
///
/// # Errors
/// A [`DriveError`]: a block holding neither side (nothing written), or an I/O error or
/// injected fault (possibly part-way, then `touched`).
pub fn drive(
    patch: &mut Patch,
    target: &Target,
    goal: Goal,
    faults: &mut Faults,
    progress: &Progress,
) -> Result<Driven, DriveError> {
    let discards = goal == Goal::New && patch.header.has(FLAG_DISCARD_ZEROS);
    let discard_digest = discards.then(|| sha256(&vec![0u8; patch.header.block_size as usize]));
    let mut d = Driver {
        patch,
        target,
        faults,
        goal,
        touched: false,
        out: Driven::default(),
        progress,
        discard_digest,
    };
    // A signal now only stops the drive between two writes (see `Driver::write`).
    let _deferred = crate::sys::signals::Deferred::enter();
    match d.run() {
        Ok(()) => Ok(d.out),
        Err(error) => Err(DriveError {
            error,
            touched: d.touched,
        }),
    }
}

impl Driver<'_> {
    fn run(&mut self) -> Result<()> {
        let h = &self.patch.header;
        if self.target.size() < h.s_blocks_count * u64::from(h.block_size) {
            bail!(
                "{} is {}, the patch is for a filesystem of {}; nothing was written",
                self.target.path().display(),
                crate::text::size(self.target.size()),
                crate::text::size(h.s_blocks_count * u64::from(h.block_size))
            );
        }
        let holds = self.classify()?;
        let (working, finished) = match self.goal {
            Goal::New => (PatchState::Applying, PatchState::Done),
            Goal::Old => (PatchState::Undoing, PatchState::Undone),
        };
        if holds.iter().all(|h| h.reached(self.goal)) {
            if self.patch.state() != finished {
                self.patch.set_state(finished)?;
            }
            self.out.already = true;
            return Ok(());
        }
        self.patch.set_state(working)?;
        self.faults.wrote()?;
        let sb = self.sb_run()?;
        let sb_index = sb.digest_index as usize;
        if holds[sb_index] != Holds::Dirty {
            let dirty = self.patch.dirty_block()?;
            self.write(sb.first_block, &dirty, false)?;
            self.target.sync()?;
        }
        let runs = self.patch.runs.clone();
        for r in runs.iter().filter(|r| r.digest_index != sb.digest_index) {
            self.write_run(r, &holds)?;
        }
        self.target.sync()?;
        let mut block = vec![0u8; self.patch.header.block_size as usize];
        self.read_goal(&sb, 0, &mut block)?;
        self.write(sb.first_block, &block, true)?;
        self.target.sync()?;
        self.patch.set_state(finished)?;
        self.faults.wrote()
    }

    fn sb_run(&self) -> Result<Run> {
        let sb = self.patch.header.sb_block;
        self.patch
            .runs
            .iter()
            .find(|r| r.first_block == sb && r.nb_blocks == 1)
            .copied()
            .ok_or_else(|| anyhow!("the patch has no superblock run"))
    }

    /// What every patched block of the target holds, in digest order; refuses if any holds
    /// neither side.
    fn classify(&self) -> Result<Vec<Holds>> {
        let bs = self.patch.header.block_size as usize;
        let sb = self.patch.header.sb_block;
        let mut holds = Vec::with_capacity(self.patch.digests.len());
        let mut bad = Vec::new();
        let mut buf = Vec::new();
        for r in &self.patch.runs {
            let mut done = 0u64;
            while done < r.nb_blocks {
                let n = (r.nb_blocks - done).min((WRITE_PIECE_BYTES / bs) as u64);
                buf.resize(n as usize * bs, 0);
                self.target
                    .read_at((r.first_block + done) * bs as u64, &mut buf)?;
                let sums: Vec<[u8; 32]> = buf.par_chunks(bs).map(sha256).collect();
                for (i, &s) in sums.iter().enumerate() {
                    let d = self.patch.digests[(r.digest_index + done) as usize + i];
                    let h = if s == d.old && s == d.new {
                        Holds::Both
                    } else if s == d.new {
                        Holds::New
                    } else if s == d.old {
                        Holds::Old
                    } else if r.first_block == sb && s == self.patch.header.dirty_sha256 {
                        Holds::Dirty
                    } else if self.torn(r, done + i as u64, &buf[i * bs..(i + 1) * bs])? {
                        Holds::Torn
                    } else {
                        bad.push(r.first_block + done + i as u64);
                        Holds::Old
                    };
                    holds.push(h);
                }
                done += n;
            }
        }
        if !bad.is_empty() {
            let list: Vec<String> = bad.iter().take(MAX_LISTED).map(u64::to_string).collect();
            bail!(
                "{} block(s) of {} hold neither their old nor their new bytes (block {}{}): \
                 the target changed since the patch was made; nothing was written",
                bad.len(),
                self.target.path().display(),
                list.join(", "),
                if bad.len() > MAX_LISTED { ", …" } else { "" }
            );
        }
        Ok(holds)
    }

    /// True if block `i` of run `r`, holding `block`, was torn by our own interrupted write:
    /// the patch is applying or undoing, and every sector holds the old, the new or (for the
    /// superblock block) the "not clean" bytes.
    fn torn(&self, r: &Run, i: u64, block: &[u8]) -> Result<bool> {
        if !matches!(
            self.patch.state(),
            PatchState::Applying | PatchState::Undoing
        ) {
            return Ok(false);
        }
        let mut sides = vec![vec![0u8; block.len()], vec![0u8; block.len()]];
        self.patch.read_blocks(r, i, false, &mut sides[0])?;
        self.patch.read_blocks(r, i, true, &mut sides[1])?;
        if r.first_block == self.patch.header.sb_block {
            sides.push(self.patch.dirty_block()?);
        }
        Ok(block.chunks(SECTOR_BYTES).enumerate().all(|(k, sector)| {
            let at = k * SECTOR_BYTES..k * SECTOR_BYTES + sector.len();
            sides.iter().any(|side| side[at.clone()] == *sector)
        }))
    }

    /// Writes the goal bytes of the blocks of `r` that do not hold them yet, in pieces of
    /// blocks that are all discarded or all written.
    fn write_run(&mut self, r: &Run, holds: &[Holds]) -> Result<()> {
        let bs = self.patch.header.block_size as usize;
        let max = (WRITE_PIECE_BYTES / bs).max(1) as u64;
        let mut i = 0u64;
        let mut buf = Vec::new();
        while i < r.nb_blocks {
            let h = |k: u64| holds[(r.digest_index + k) as usize];
            if h(i).reached(self.goal) {
                i += 1;
                continue;
            }
            let zero = self.discarded(r, i);
            let mut n = 1;
            while i + n < r.nb_blocks
                && n < max
                && !h(i + n).reached(self.goal)
                && self.discarded(r, i + n) == zero
            {
                n += 1;
            }
            if zero {
                self.discard(r.first_block + i, n)?;
            } else {
                buf.resize(n as usize * bs, 0);
                self.read_goal(r, i, &mut buf)?;
                self.write(r.first_block + i, &buf, true)?;
            }
            i += n;
        }
        Ok(())
    }

    /// True if block `i` of run `r` is to be discarded: the patch discards zeros, the goal is
    /// the new side, and the block's new bytes are all zero.
    fn discarded(&self, r: &Run, i: u64) -> bool {
        self.discard_digest
            .is_some_and(|z| self.patch.digests[(r.digest_index + i) as usize].new == z)
    }

    /// Reads goal bytes of run `r` from block `i` (verified when the patch was opened).
    fn read_goal(&self, r: &Run, i: u64, buf: &mut [u8]) -> Result<()> {
        self.patch.read_blocks(r, i, self.goal == Goal::New, buf)
    }

    /// Writes `data` at `block`; `counted`: these are goal bytes (not the "not clean" mark).
    /// Stops before writing when the run was interrupted (a signal), between two writes.
    fn write(&mut self, block: u64, data: &[u8], counted: bool) -> Result<()> {
        self.before_write()?;
        let bs = u64::from(self.patch.header.block_size);
        self.touched = true;
        let part = self.faults.written_part(data.len(), bs as usize);
        self.target.write_at(block * bs, &data[..part])?;
        if counted {
            self.out.blocks_written += data.len() as u64 / bs;
            self.out.bytes_written += data.len() as u64;
            self.progress.inc(data.len() as u64);
        }
        self.faults.wrote()
    }

    /// Discards `n` blocks from `block` (their goal bytes are zeros); counted as a write by the
    /// fault injection, and cut short like one by a torn fault. Where the target cannot
    /// discard, zeros are written (and counted as written).
    fn discard(&mut self, block: u64, n: u64) -> Result<()> {
        self.before_write()?;
        let bs = u64::from(self.patch.header.block_size);
        let len = n * bs;
        self.touched = true;
        let part = self.faults.written_part(len as usize, bs as usize) as u64;
        match self.target.discard(block * bs, part)? {
            Discard::Discarded => {
                self.out.blocks_discarded += n;
                self.out.bytes_discarded += len;
            }
            Discard::ZerosWritten => {
                self.out.blocks_written += n;
                self.out.bytes_written += len;
            }
        }
        self.progress.inc(len);
        self.faults.wrote()
    }

    /// The test stall point, then a stop if a signal came: between two writes.
    fn before_write(&self) -> Result<()> {
        crate::sys::faults::stall();
        if let Some(sig) = crate::sys::signals::interrupted() {
            bail!("interrupted by {}", crate::sys::signals::name(sig));
        }
        Ok(())
    }
}

//! Orphan processing after a journal replay, as the kernel's `ext4_orphan_cleanup` does at
//! mount (and `e2fsck` after its replay): every inode on the orphan list is released (no
//! links) or truncated to its size (links), then the list is empty. [`release_orphans`]
//! computes the blocks this changes; it writes nothing (the caller puts them in its view,
//! e.g. [`ReplayedView::set_block`](crate::ReplayedView::set_block)).
//!
//! The lists, in the kernel's order: the classic one from `s_last_orphan`, chained through
//! `i_dtime`; then the orphan file's entries (COMPAT_ORPHAN_FILE, `file`), block by block.
//! Afterwards `s_last_orphan` is 0, the orphan file's slots are zero and
//! RO_COMPAT_ORPHAN_PRESENT is clear. What one orphan becomes: `release`; the map
//! truncations: `extents`, `indirect`; the bitmaps, counts and checksums: `edits`, `csum`.
//!
//! A corrupt list stops the processing, as e2fsck stops: an inode number out of
//! `s_first_ino..=s_inodes_count` or special, an inode met twice (a loop), one not in use,
//! with mode 0, a bad checksum or a bad `i_extra_isize`, or one whose release or truncation
//! meets something corrupt. The warning names the inode; the orphans before it stay
//! processed, nothing of the bad one is changed (each orphan is one transaction). The
//! classic head is cleared all the same (both tools do: it is not used again); the orphan
//! file keeps the entries not processed, and ORPHAN_PRESENT. Nothing is done on a
//! filesystem with errors (EXT2_ERROR_FS: both tools leave the list to a full check), with
//! bigalloc, opened through a backup superblock or larger than its source. Loops are
//! bounded by `s_inodes_count` (each inode is processed once) and the orphan file's size.

pub(crate) mod csum;
mod edits;
mod extents;
mod file;
mod indirect;
mod release;

use crate::bytes::le32;
use crate::features::ro_compat;
use crate::fs::Filesystem;
use crate::inode::InodeTime;
use crate::superblock::{EXT2_GOOD_OLD_INODE_SIZE, SUPERBLOCK_OFFSET};
use crate::types::{BlockNr, InodeNr};
use crate::view::BlockView;
use crate::warning::Warning;
use edits::Edits;
use file::OrphanFile;
use release::{Outcome, I_DTIME};
use std::collections::HashSet;

/// Why one orphan could not be processed: a warning naming the inode (and block).
type Stop = Warning;

fn stop(inode: Option<InodeNr>, block: Option<u64>, offset: Option<u32>, reason: String) -> Stop {
    Warning {
        inode,
        block: block.map(BlockNr),
        offset,
        reason,
    }
}

/// `s_state` bit: errors detected (kernel `EXT2_ERROR_FS`).
const EXT2_ERROR_FS: u16 = 0x2;

/// What orphan processing changed (module comment).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrphanRelease {
    /// The changed blocks with their new bytes (one block each), in block order; empty when
    /// there was nothing to do or nothing could be done.
    pub blocks: Vec<(BlockNr, Vec<u8>)>,
    /// Orphans freed (no links), in processing order.
    pub released: Vec<InodeNr>,
    /// Orphans truncated to their size (with links), in processing order.
    pub truncated: Vec<InodeNr>,
    /// Blocks freed (data, tree and xattr blocks), in filesystem blocks.
    pub freed_blocks: u64,
    /// Why processing stopped or did not run; each names the inode when there is one.
    pub warnings: Vec<Warning>,
    /// Both lists are empty afterwards.
    pub emptied: bool,
}

/// Processes the orphan lists of `fs` (module comment) with `now` as the deletion and
/// change time (`i_dtime`, and `i_ctime`/`i_mtime` of what is truncated), and returns the
/// blocks that changes. `fs` must be opened through its primary superblock, on the state
/// after the journal replay.
pub fn release_orphans<V: BlockView>(fs: &Filesystem<V>, now: InodeTime) -> OrphanRelease {
    let mut out = OrphanRelease::default();
    let ed = Edits::new(fs);
    let (orphan_file, bad_file) = match OrphanFile::open(&ed) {
        Ok(f) => (f, None),
        Err(w) => (None, Some(w)),
    };
    if bad_file.is_none() && !pending(&ed, orphan_file.as_ref()) {
        out.emptied = true;
        return out;
    }
    if let Some(why) = refused(fs) {
        out.warnings
            .push(note(format!("the orphan list was not processed: {why}")));
        return out;
    }
    if let Some(w) = bad_file {
        out.warnings.push(stopped(w, 0));
        return out;
    }
    if fs.sb.has_ro_compat(ro_compat::QUOTA) {
        let why = "orphan processing does not update quota usage (RO_COMPAT_QUOTA)";
        out.warnings.push(note(why.into()));
    }
    run(ed, orphan_file, now, &mut out);
    out
}

/// A warning about the whole filesystem.
fn note(reason: String) -> Warning {
    Warning {
        inode: None,
        block: None,
        offset: None,
        reason,
    }
}

/// True if a list holds something: `s_last_orphan`, a non-zero orphan file entry, or
/// ORPHAN_PRESENT.
fn pending<V: BlockView>(ed: &Edits<'_, V>, f: Option<&OrphanFile>) -> bool {
    let sb = &ed.fs.sb;
    if sb.s_last_orphan != 0 || sb.has_ro_compat(ro_compat::ORPHAN_PRESENT) {
        return true;
    }
    f.is_some_and(|f| {
        f.blocks()
            .any(|b| f.entries(ed, b).is_ok_and(|e| !e.is_empty()))
    })
}

/// Why the lists of `fs` are not processed at all (module comment).
fn refused<V: BlockView>(fs: &Filesystem<V>) -> Option<String> {
    let sb = &fs.sb;
    if sb.s_state & EXT2_ERROR_FS != 0 {
        return Some("the filesystem has errors (EXT2_ERROR_FS); the kernel and e2fsck leave it to a full check".into());
    }
    if sb.has_ro_compat(ro_compat::BIGALLOC) {
        return Some("bigalloc is not supported here".into());
    }
    if fs.sb_block.0 != SUPERBLOCK_OFFSET / u64::from(sb.block_size) {
        return Some("the filesystem was opened through a backup superblock".into());
    }
    if fs.groups_past_source() > 0 {
        return Some("the filesystem is larger than its source".into());
    }
    None
}

/// The warning `w` that stopped the processing, `done` orphans after the start.
fn stopped(w: Warning, done: usize) -> Warning {
    Warning {
        reason: format!(
            "orphan processing stopped: {} ({done} orphans before it were processed)",
            w.reason
        ),
        ..w
    }
}

/// Processes both lists into `out`.
fn run<V: BlockView>(
    mut ed: Edits<'_, V>,
    f: Option<OrphanFile>,
    now: InodeTime,
    out: &mut OrphanRelease,
) {
    let mut seen = HashSet::new();
    let head = ed.fs.sb.s_last_orphan;
    let mut ok = classic(&mut ed, &mut seen, now, out);
    if let (true, Some(f)) = (ok, &f) {
        ok = from_file(&mut ed, f, &mut seen, now, out);
    }
    let present = ed.fs.sb.has_ro_compat(ro_compat::ORPHAN_PRESENT);
    if ed.is_empty() && head == 0 && !(ok && present) {
        out.emptied = ok;
        return;
    }
    out.freed_blocks = ed.freed();
    match ed.finish(|sb| {
        sb.set_last_orphan(0);
        if ok {
            sb.clear_ro_compat(ro_compat::ORPHAN_PRESENT);
        }
    }) {
        Ok(blocks) => {
            out.blocks = blocks;
            out.emptied = ok;
        }
        Err(w) => {
            out.warnings
                .push(stopped(w, out.released.len() + out.truncated.len()));
            (out.released, out.truncated, out.freed_blocks) = (Vec::new(), Vec::new(), 0);
        }
    }
}

/// Processes the `s_last_orphan` list; false if it stopped.
fn classic<V: BlockView>(
    ed: &mut Edits<'_, V>,
    seen: &mut HashSet<u32>,
    now: InodeTime,
    out: &mut OrphanRelease,
) -> bool {
    let mut ino = ed.fs.sb.s_last_orphan;
    while ino != 0 {
        let done = out.released.len() + out.truncated.len();
        let next = match one(ed, seen, InodeNr(ino), true, now, out) {
            Ok(next) => next,
            Err(w) => {
                let mut w = stopped(w, done);
                w.reason += "; s_last_orphan is cleared, as e2fsck and the kernel do";
                out.warnings.push(w);
                return false;
            }
        };
        ino = next;
    }
    true
}

/// Processes the orphan file's entries; false if it stopped.
fn from_file<V: BlockView>(
    ed: &mut Edits<'_, V>,
    f: &OrphanFile,
    seen: &mut HashSet<u32>,
    now: InodeTime,
    out: &mut OrphanRelease,
) -> bool {
    for b in f.blocks() {
        let entries = match f.entries(ed, b) {
            Ok(e) => e,
            Err(w) => {
                out.warnings
                    .push(stopped(w, out.released.len() + out.truncated.len()));
                return false;
            }
        };
        for (slot, ino) in entries {
            let done = out.released.len() + out.truncated.len();
            let r = one(ed, seen, InodeNr(ino), false, now, out).and_then(|_| {
                f.clear(ed, b, slot)?;
                ed.commit();
                Ok(())
            });
            if let Err(w) = r {
                ed.rollback();
                let w = Warning {
                    reason: format!("{} (orphan file block {b}, slot {slot})", w.reason),
                    ..w
                };
                let mut w = stopped(w, done);
                w.reason += "; the entries not processed stay in the orphan file";
                out.warnings.push(w);
                return false;
            }
        }
    }
    true
}

/// Validates and processes orphan `ino` in one transaction (committed for the classic
/// list; the orphan file's caller commits after clearing the slot); returns the next
/// orphan of the classic list (its `i_dtime`).
fn one<V: BlockView>(
    ed: &mut Edits<'_, V>,
    seen: &mut HashSet<u32>,
    ino: InodeNr,
    classic: bool,
    now: InodeTime,
    out: &mut OrphanRelease,
) -> Result<u32, Stop> {
    let raw = check(ed, seen, ino)?;
    let next = le32(&raw, I_DTIME);
    let sb = &ed.fs.sb;
    if classic && next != 0 && (next < sb.s_first_ino || next > sb.s_inodes_count) {
        let why = format!(
            "its next orphan (i_dtime) {next} is out of range {}..={}",
            sb.s_first_ino, sb.s_inodes_count
        );
        return Err(stop(Some(ino), None, Some(I_DTIME as u32), why));
    }
    match release::process(ed, ino, raw, classic, now) {
        Ok(o) => {
            match o {
                Outcome::Released => out.released.push(ino),
                Outcome::Truncated => out.truncated.push(ino),
            }
            if classic {
                ed.commit();
            }
            Ok(next)
        }
        Err(w) => {
            ed.rollback();
            Err(w)
        }
    }
}

/// The record of orphan `ino` after the kernel's checks (`ext4_orphan_get`, `ext4_iget`):
/// a user inode in range, met once, in use, mode not 0, `i_extra_isize` fitting the record,
/// checksum right.
fn check<V: BlockView>(
    ed: &Edits<'_, V>,
    seen: &mut HashSet<u32>,
    ino: InodeNr,
) -> Result<Vec<u8>, Stop> {
    let sb = &ed.fs.sb;
    let bad = |why: String| stop(Some(ino), None, None, why);
    if ino.0 < sb.s_first_ino || ino.0 > sb.s_inodes_count {
        return Err(bad(format!(
            "orphan inode number out of range {}..={}",
            sb.s_first_ino, sb.s_inodes_count
        )));
    }
    if sb.is_special_inode(ino) {
        return Err(bad("a special inode is on the orphan list".into()));
    }
    if !seen.insert(ino.0) {
        return Err(bad("the inode is on the orphan list twice (a loop)".into()));
    }
    if !ed.inode_in_use(ino)? {
        return Err(bad("the orphan is not in use in the inode bitmap".into()));
    }
    let raw = ed.read_inode(ino)?;
    if u16::from_le_bytes([raw[0], raw[1]]) == 0 {
        return Err(bad("the orphan has mode 0 (a free inode)".into()));
    }
    if raw.len() > EXT2_GOOD_OLD_INODE_SIZE {
        let extra = usize::from(u16::from_le_bytes([raw[0x80], raw[0x81]]));
        if EXT2_GOOD_OLD_INODE_SIZE + extra > raw.len() || !extra.is_multiple_of(4) {
            return Err(bad(format!("bad i_extra_isize {extra}")));
        }
    }
    if !ed.csum.inode_ok(ino.0, &raw) {
        return Err(bad("the orphan's inode fails its checksum".into()));
    }
    Ok(raw)
}

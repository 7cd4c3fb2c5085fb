//! The safety check for images that do not hold file data: after the rollback, a restored file
//! reads its data blocks from the target as they are. Only the state's inodes that map
//! written data blocks the image does not hold ("unheld") are checked; everything else the
//! rollback writes comes from the image. Such an inode conflicts, and is refused without
//! `--force`, in two cases.
//!
//! Blocks: a data block P of file (ino, logical L) of the state conflicts when the target
//! maps P to another inode or another logical block, or uses P as metadata (an extent or
//! indirect block, an xattr block, any block of the target's metadata walk). A block free in
//! the target, or mapped by a snapshot file "moved in place" (next3 / ext4-snapshots keep
//! moved-on-write blocks where they are), does not conflict.
//!
//! Inode: the block rule takes a block the target maps to the same inode number at the same
//! offset for the file's own, unchanged since the state. It is not when that inode is
//! another file now (the state's file was deleted and a new one reused its number and its
//! blocks) or the same file changed since (rewritten in place): the block may hold another
//! file's bytes, or newer ones. So such a block conflicts when the target's inode is in use
//! and differs from the state's: another file when its file type, `i_generation`, or
//! `i_crtime` (where both inodes have it) differs; changed when its `i_mtime` or `i_ctime`
//! (with nanoseconds where both have them) differs, in either direction (a target older than
//! the state holds an earlier version). Where the target's inode is free (the file was
//! deleted since and its number not reused), or another file that maps none of the state
//! file's blocks at the same offsets, the block rule alone decides, as for any deleted file:
//! a snapshot file that kept the blocks "moved in place" holds the state's bytes. Only
//! written (not unwritten, which read as zeros) data counts.
//!
//! No single field is enough. The kernel gives each new inode a new `i_generation`, but
//! e2fsprogs (debugfs `write`, `mke2fs -d`) leaves it 0 and stamps the current second, so a
//! reuse by such a tool within the second the state's file was created goes unseen; 128-byte
//! ext2/3 inodes have no `i_crtime`; `i_mtime` can be set back by any program, but that sets
//! `i_ctime`, which only the clock sets. A changed `i_ctime` with the same `i_mtime` (a
//! rename, chmod or new link) may leave the data as it was, but nothing tells, so it
//! conflicts too (the message says so). Not seen: bytes written to the device behind the
//! filesystem's back, and blocks freed, reused by a file deleted since, and now free again.

use super::held::Held;
use crate::patching::Target;
use crate::qcow_view::QcowView;
use crate::ranges::{overlaps, push};
use crate::text::format_date;
use anyhow::Result;
use ext::{
    file_runs_and_inodes, BlockClass, BlockSet, FileRun, FileType, Filesystem, Inode, InodeNr,
    InodeTime, OpenOptions, RunKind, WalkOptions,
};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::ops::Range;

/// Blocks of one restored file that the target uses otherwise now.
#[derive(Debug, Clone)]
pub struct BlockUse {
    /// Blocks of the file that conflict.
    pub blocks: u64,
    /// The first of them, and the file block it is at.
    pub first_block: u64,
    pub logical: u64,
    /// What the target uses that block for now.
    pub now: String,
}

/// Blocks of one restored file that the target's inode of the same number maps at the same
/// offsets, while that inode is another file now or changed since the state.
#[derive(Debug, Clone)]
pub struct Reused {
    /// What the target's inode is now.
    pub kind: Change,
    /// How the target's inode differs from the state's (see the module comment), e.g. "the
    /// target's inode 14 is a different file now (generation 0→5)".
    pub why: String,
    /// Data blocks of the file it maps at the same offsets.
    pub blocks: u64,
}

/// How the target's inode of a restored file's number differs from the state's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Another file (file type, generation or creation time differ).
    Other,
    /// The same file, modified since the state (`i_mtime` newer).
    Modified,
    /// The same file, older than the state's (an earlier version).
    Older,
    /// Only `i_ctime` is newer: a chmod, rename or new link — or data changed with the
    /// modification time set back; nothing tells them apart.
    CtimeOnly,
}

/// One restored file whose data would be wrong.
#[derive(Debug, Clone, Default)]
pub struct Conflict {
    /// Its data blocks held by a different or changed file of the same inode number.
    pub inode: Option<Reused>,
    /// Its data blocks that the target uses for other inodes, offsets or metadata.
    pub blocks: Option<BlockUse>,
}

/// All conflicts, by inode, with the paths of the inodes in the restored state.
#[derive(Debug, Default)]
pub struct Conflicts {
    by_inode: BTreeMap<u32, Conflict>,
    paths: HashMap<u32, String>,
    /// Why the check could not be made (the target's filesystem does not open).
    unchecked: Option<String>,
}

impl Conflicts {
    /// True when nothing conflicts and the check was made.
    pub fn is_empty(&self) -> bool {
        self.by_inode.is_empty() && self.unchecked.is_none()
    }

    /// The first line of the refusal: how many restored files, and the causes that apply
    /// (the image holds no data for them).
    fn headline(&self) -> String {
        let count = |f: &dyn Fn(&Conflict) -> bool| self.by_inode.values().filter(|c| f(c)).count();
        let kind = |k: Change| count(&|c| c.inode.as_ref().is_some_and(|r| r.kind == k));
        let causes = [
            (
                count(&|c| c.blocks.is_some()),
                "would read data blocks that the target now uses for other inodes, offsets or metadata",
            ),
            (kind(Change::Other), "have their inode number taken by a different file now, which holds their data blocks"),
            (kind(Change::Modified), "were modified since the state (their data blocks may hold newer bytes)"),
            (kind(Change::Older), "are older on the target than in the state (their data blocks hold an earlier version)"),
            (
                kind(Change::CtimeOnly),
                "only had their inode changed since the state (ctime: a chmod, rename or new link, or data written with the modification time set back — nothing tells which)",
            ),
        ];
        let parts: Vec<String> = causes
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
        format!(
            "{} restored file(s) cannot be restored safely from this image, which holds no file data: {}:",
            self.by_inode.len(),
            parts.join("; ")
        )
    }

    /// The refusal message, listing at most `max` inodes.
    pub fn render(&self, max: usize) -> String {
        let mut s = String::new();
        if let Some(why) = &self.unchecked {
            let _ = write!(
                s,
                "the image does not hold the state's file data, and the target's filesystem cannot be read to check which data blocks it now uses ({why})"
            );
            return s;
        }
        let _ = writeln!(s, "{}", self.headline());
        for (ino, c) in self.by_inode.iter().take(max) {
            let path = self.paths.get(ino).map_or("(no path)", String::as_str);
            let mut what: Vec<String> = c
                .inode
                .iter()
                .map(|r| {
                    format!(
                        "{}, which holds {} of its data block(s) at the same offsets",
                        r.why, r.blocks
                    )
                })
                .collect();
            if let Some(b) = &c.blocks {
                what.push(format!(
                    "{} block(s), e.g. block {} (file block {}) is now {}",
                    b.blocks, b.first_block, b.logical, b.now
                ));
            }
            let _ = writeln!(s, "  inode {ino} {path}: {}", what.join("; "));
        }
        if self.by_inode.len() > max {
            let _ = writeln!(s, "  … and {} more", self.by_inode.len() - max);
        }
        s.trim_end().to_string()
    }
}

/// Checks every data block of `fs` (the state) that `held` does not cover, and the target's
/// inodes of the files owning them, against the target.
///
/// # Errors
/// I/O errors duplicating the target's descriptor.
pub fn check(
    fs: &Filesystem<QcowView<'_>>,
    walk: &BlockSet,
    held: &Held,
    t: &Target,
) -> Result<Conflicts> {
    let unheld = unheld_data(walk, held);
    if unheld.is_empty() {
        return Ok(Conflicts::default());
    }
    let want = |p: u64, len: u64| overlaps(&unheld, p..p.saturating_add(len));
    let written = |r: &FileRun| r.kind == RunKind::Data { unwritten: false };
    let state = file_runs_and_inodes(fs, &want, &|_, runs| runs.iter().any(written));
    let tfs = match Filesystem::open(t.view()?, &OpenOptions::default()) {
        Ok(f) => f,
        Err(e) => {
            return Ok(Conflicts {
                unchecked: Some(e.to_string()),
                ..Conflicts::default()
            })
        }
    };
    let restored: HashMap<u32, &Inode> = state.inodes.iter().map(|(i, n)| (i.0, n)).collect();
    let target = file_runs_and_inodes(&tfs, &want, &|ino, runs| {
        !runs.is_empty() && restored.contains_key(&ino.0)
    });
    let changed = changed_inodes(&restored, &target.inodes);
    let meta = ext::walk(&tfs, &WalkOptions::default()).blocks;
    let now = Now {
        runs: &target.runs,
        meta: &meta,
        block_size: tfs.sb.block_size,
        changed: &changed,
    };
    let mut out = Conflicts::default();
    for sr in state
        .runs
        .iter()
        .filter(|r| matches!(r.kind, RunKind::Data { .. }))
    {
        for piece in clip(&unheld, sr.physical..sr.end()) {
            check_piece(sr, piece, &now, &mut out);
        }
    }
    if !out.by_inode.is_empty() {
        let inos: Vec<InodeNr> = out.by_inode.keys().copied().map(InodeNr).collect();
        let paths = ext::inode_paths(fs, &inos).0;
        out.paths = paths.into_iter().map(|(i, p)| (i.0, p)).collect();
    }
    Ok(out)
}

/// The restored inodes whose target inode of the same number (`target`: in use) is another
/// or a changed file, with the reason.
fn changed_inodes(
    restored: &HashMap<u32, &Inode>,
    target: &[(InodeNr, Inode)],
) -> HashMap<u32, (Change, String)> {
    target
        .iter()
        .filter_map(|(ino, now)| {
            let was = restored.get(&ino.0)?;
            Some((ino.0, inode_change(ino.0, was, now)?))
        })
        .collect()
}

/// Why the target's in-use inode `now` of number `ino` is not the state's file `was` as it
/// was (see the module comment), or `None` when it is.
fn inode_change(ino: u32, was: &Inode, now: &Inode) -> Option<(Change, String)> {
    let other = identity_changes(was, now);
    if !other.is_empty() {
        return Some((
            Change::Other,
            format!(
                "the target's inode {ino} is a different file now ({})",
                other.join(", ")
            ),
        ));
    }
    let (field, a, b) = [
        ("mtime", was.mtime(), now.mtime()),
        ("ctime", was.ctime(), now.ctime()),
    ]
    .into_iter()
    .find(|(_, a, b)| a != b)?;
    let (kind, how) = if b < a {
        (
            Change::Older,
            "is older than the state's file (an earlier version)",
        )
    } else if field == "mtime" {
        (Change::Modified, "was modified since the state")
    } else {
        (
            Change::CtimeOnly,
            "was changed since the state (its data may be as it was: a rename, chmod or new link also changes ctime)",
        )
    };
    Some((
        kind,
        format!(
            "the target's inode {ino} {how} ({field} {})",
            time_change(a, b)
        ),
    ))
}

/// The fields telling that `now` is another file than `was`: file type, `i_generation`, and
/// `i_crtime` where both have it; each as "old→new".
fn identity_changes(was: &Inode, now: &Inode) -> Vec<String> {
    let mut out = Vec::new();
    if was.file_type() != now.file_type() {
        out.push(format!(
            "{}→{}",
            type_name(was.file_type()),
            type_name(now.file_type())
        ));
    }
    if was.i_generation != now.i_generation {
        out.push(format!(
            "generation {}→{}",
            was.i_generation, now.i_generation
        ));
    }
    if let (Some(a), Some(b)) = (was.crtime(), now.crtime()) {
        if a != b {
            out.push(format!("created {}", time_change(a, b)));
        }
    }
    out
}

/// "A→B" for two times, with nanoseconds when the seconds are the same.
fn time_change(a: InodeTime, b: InodeTime) -> String {
    let f = |t: InodeTime| {
        if a.secs == b.secs {
            format!("{}.{:09}", format_date(t.secs), t.nsecs)
        } else {
            format_date(t.secs)
        }
    };
    format!("{}→{}", f(a), f(b))
}

fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::Regular => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symlink",
        FileType::CharDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Fifo => "a fifo",
        FileType::Socket => "a socket",
        FileType::Unknown => "an inode of unknown type",
    }
}

/// File-data blocks of the state's walk that the state does not hold.
fn unheld_data(walk: &BlockSet, held: &Held) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    for e in walk
        .extents()
        .iter()
        .filter(|e| e.class == BlockClass::Data)
    {
        let mut b = e.start;
        let i = held.ranges.partition_point(|r| r.end <= b);
        for r in held.ranges[i..].iter().take_while(|r| r.start < e.end()) {
            if r.start > b {
                push(&mut out, b..r.start);
            }
            b = b.max(r.end);
        }
        if b < e.end() {
            push(&mut out, b..e.end());
        }
    }
    out
}

/// The parts of `r` inside the sorted disjoint `ranges`.
fn clip(ranges: &[Range<u64>], r: Range<u64>) -> Vec<Range<u64>> {
    let i = ranges.partition_point(|x| x.end <= r.start);
    ranges[i..]
        .iter()
        .take_while(|x| x.start < r.end)
        .map(|x| x.start.max(r.start)..x.end.min(r.end))
        .collect()
}

/// What the target is now, for [`check_piece`].
struct Now<'a> {
    /// The target's runs over the unheld blocks.
    runs: &'a [FileRun],
    /// The target's metadata walk.
    meta: &'a BlockSet,
    block_size: u32,
    /// Restored inodes whose target inode of the same number is another or a changed file,
    /// with the reason ([`inode_change`]).
    changed: &'a HashMap<u32, (Change, String)>,
}

/// Compares one unheld piece of state run `sr` with the target's owners of those blocks.
fn check_piece(sr: &FileRun, piece: Range<u64>, now: &Now<'_>, out: &mut Conflicts) {
    let mut covered = Vec::new();
    let i = now.runs.partition_point(|r| r.physical < piece.start);
    for tr in now.runs[i.saturating_sub(1)..]
        .iter()
        .take_while(|r| r.physical < piece.end)
    {
        let (x, y) = (tr.physical.max(piece.start), tr.end().min(piece.end));
        if x >= y {
            continue;
        }
        push(&mut covered, x..y);
        let same_place = matches!(tr.kind, RunKind::Data { .. })
            && tr.ino == sr.ino
            && tr.logical.wrapping_sub(tr.physical) == sr.logical.wrapping_sub(sr.physical);
        if same_place {
            let written = sr.kind == RunKind::Data { unwritten: false };
            if let Some((kind, why)) = now.changed.get(&sr.ino.0).filter(|_| written) {
                let c = out.by_inode.entry(sr.ino.0).or_default();
                let r = c.inode.get_or_insert_with(|| Reused {
                    kind: *kind,
                    why: why.clone(),
                    blocks: 0,
                });
                r.blocks += y - x;
            }
        } else if !tr.moved_into_snapshot(now.block_size) {
            let what = match tr.kind {
                RunKind::Data { .. } => format!(
                    "file block {} of inode {}",
                    tr.logical.saturating_add(x - tr.physical),
                    tr.ino
                ),
                RunKind::Tree => format!("a mapping block of inode {}", tr.ino),
                RunKind::Xattr => format!("an xattr block of inode {}", tr.ino),
            };
            record(out, sr, x, y - x, what);
        }
    }
    let mut b = piece.start;
    for c in covered
        .iter()
        .chain(std::iter::once(&(piece.end..piece.end)))
    {
        if b < c.start {
            meta_overlap(sr, b..c.start, now.meta, out);
        }
        b = b.max(c.end);
    }
}

/// Records the blocks of `r` (free of target file runs) that the target's metadata walk lists.
fn meta_overlap(sr: &FileRun, r: Range<u64>, target_meta: &BlockSet, out: &mut Conflicts) {
    let ext = target_meta.extents();
    let i = ext.partition_point(|e| e.end() <= r.start);
    for e in ext[i..].iter().take_while(|e| e.start < r.end) {
        let (x, y) = (e.start.max(r.start), e.end().min(r.end));
        record(
            out,
            sr,
            x,
            y - x,
            format!("filesystem metadata ({})", e.class.name()),
        );
    }
}

/// Adds `n` blocks from `block` of state run `sr` that the target uses as `now`.
fn record(out: &mut Conflicts, sr: &FileRun, block: u64, n: u64, now: String) {
    let c = out.by_inode.entry(sr.ino.0).or_default();
    let b = c.blocks.get_or_insert_with(|| BlockUse {
        blocks: 0,
        first_block: block,
        logical: sr.logical.saturating_add(block - sr.physical),
        now,
    });
    b.blocks += n;
}

#[cfg(test)]
#[path = "conflicts_tests.rs"]
mod tests;

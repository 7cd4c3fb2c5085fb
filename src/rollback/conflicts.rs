//! The safety check for images that do not hold file data: after the rollback, a restored file
//! reads its data blocks from the target as they are. That is only right where the target
//! does not use the block for something else now. A data block P of file (ino, logical L) of
//! the state conflicts when the target maps P to another inode or another logical block, or
//! uses P as metadata (an extent or indirect block, an xattr block, any block of the target's
//! metadata walk). A block free in the target, or mapped by a snapshot file "moved in place"
//! (next3 / ext4-snapshots keep moved-on-write blocks where they are), does not conflict.

use super::held::{overlaps, push, Held};
use super::target::Target;
use crate::qcow_view::QcowView;
use anyhow::Result;
use ext::owners::{file_runs, FileRun, RunKind};
use ext::{BlockClass, BlockSet, BlockView, FileView, Filesystem, OpenOptions, WalkOptions};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::ops::Range;

/// One restored file whose data would be wrong.
#[derive(Debug, Clone)]
pub struct Conflict {
    /// Blocks of the file that conflict.
    pub blocks: u64,
    /// The first of them, and the file block it is at.
    pub first_block: u64,
    pub logical: u64,
    /// What the target uses that block for now.
    pub now: String,
}

/// All conflicts, by inode, with the paths of the inodes in the restored state.
#[derive(Debug, Default)]
pub struct Conflicts {
    by_inode: BTreeMap<u32, Conflict>,
    paths: std::collections::HashMap<u32, String>,
    /// Why the check could not be made (the target's filesystem does not open).
    unchecked: Option<String>,
}

impl Conflicts {
    /// True when nothing conflicts and the check was made.
    pub fn is_empty(&self) -> bool {
        self.by_inode.is_empty() && self.unchecked.is_none()
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
        let _ = writeln!(
            s,
            "{} restored file(s) would read data blocks that the target now uses for other inodes or offsets (the image holds no data for them):",
            self.by_inode.len()
        );
        for (ino, c) in self.by_inode.iter().take(max) {
            let path = self.paths.get(ino).map_or("(no path)", String::as_str);
            let _ = writeln!(
                s,
                "  inode {ino} {path}: {} block(s), e.g. block {} (file block {}) is now {}",
                c.blocks, c.first_block, c.logical, c.now
            );
        }
        if self.by_inode.len() > max {
            let _ = writeln!(s, "  … and {} more", self.by_inode.len() - max);
        }
        s.trim_end().to_string()
    }
}

/// Checks every data block of `fs` (the state) that `held` does not cover against the target.
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
    let (state_runs, _) = file_runs(fs, &want);
    let tfs = match Filesystem::open(
        FileView::from_file(t.file().try_clone()?)?,
        &OpenOptions::default(),
    ) {
        Ok(f) => f,
        Err(e) => {
            return Ok(Conflicts {
                unchecked: Some(e.to_string()),
                ..Conflicts::default()
            })
        }
    };
    let (target_runs, _) = file_runs(&tfs, &want);
    let target_meta = ext::walk(&tfs, &WalkOptions::default()).blocks;
    let bs = tfs.sb.block_size;
    let mut out = Conflicts::default();
    for sr in state_runs
        .iter()
        .filter(|r| matches!(r.kind, RunKind::Data { .. }))
    {
        for piece in clip(&unheld, sr.physical..sr.end()) {
            check_piece(sr, piece, &target_runs, &target_meta, bs, &mut out);
        }
    }
    if !out.by_inode.is_empty() {
        let inos: Vec<u32> = out.by_inode.keys().copied().collect();
        out.paths = ext::paths::inode_paths(fs, &inos).0;
    }
    Ok(out)
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

/// Compares one unheld piece of state run `sr` with the target's owners of those blocks.
fn check_piece(
    sr: &FileRun,
    piece: Range<u64>,
    target_runs: &[FileRun],
    target_meta: &BlockSet,
    bs: u32,
    out: &mut Conflicts,
) {
    let mut covered = Vec::new();
    let i = target_runs.partition_point(|r| r.physical < piece.start);
    for tr in target_runs[i.saturating_sub(1)..]
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
        if !same_place && !tr.moved_into_snapshot(bs) {
            let what = match tr.kind {
                RunKind::Data { .. } => format!(
                    "file block {} of inode {}",
                    tr.logical + (x - tr.physical),
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
            meta_overlap(sr, b..c.start, target_meta, out);
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

fn record(out: &mut Conflicts, sr: &FileRun, block: u64, n: u64, now: String) {
    let c = out.by_inode.entry(sr.ino.0).or_insert_with(|| Conflict {
        blocks: 0,
        first_block: block,
        logical: sr.logical + (block - sr.physical),
        now,
    });
    c.blocks += n;
}

/// Inodes of `fs` owning any of the `written` blocks, with their paths ("(no path)" for
/// inodes without a directory entry, such as the journal).
pub fn owners_of<V: BlockView>(fs: &Filesystem<V>, written: &[Range<u64>]) -> Vec<(u32, String)> {
    let want = |p: u64, len: u64| overlaps(written, p..p.saturating_add(len));
    let (runs, _) = file_runs(fs, &want);
    let mut inos: Vec<u32> = runs.iter().map(|r| r.ino.0).collect();
    inos.sort_unstable();
    inos.dedup();
    let (paths, _) = ext::paths::inode_paths(fs, &inos);
    inos.into_iter()
        .map(|i| {
            let p = paths.get(&i).cloned().unwrap_or_else(|| "(no path)".into());
            (i, p)
        })
        .collect()
}

//! Truncating an indirect block map (kernel `ext4_ind_truncate`): every data block at or
//! past the first logical block to free is freed and its pointer zeroed; a subtree lying
//! wholly past it is freed whole (its root pointer zeroed, in `i_block` or in its parent).
//! On the path of the cut, an indirect block survives when it, or a block below it on the
//! path, still holds a non-zero pointer before the cut (kernel `ext4_find_shared`); its
//! pointers from the cut on are zeroed. One that does not survive is freed.
//!
//! Pointers are validated before use (in the filesystem, not its static metadata); an
//! indirect block met twice stops the truncation, as does a data block already free.

use super::edits::Edits;
use super::{stop, Stop};
use crate::bytes::le32;
use crate::indirect::standard_roots;
use crate::types::InodeNr;
use crate::view::BlockView;
use std::collections::HashSet;

/// A truncation of one inode's map.
struct Trim<'e, 'f, V> {
    ed: &'e mut Edits<'f, V>,
    ino: InodeNr,
    /// Pointers per block (`block_size / 4`).
    apb: u64,
    visited: HashSet<u64>,
    freed: u64,
}

/// Truncates the indirect map in `i_block` (60 bytes, edited in place) of inode `ino` so
/// that it maps no logical block from `keep` on. Returns the blocks freed.
///
/// # Errors
/// A bad pointer, a loop or a block already free (module comment); nothing is rolled back
/// here.
pub(super) fn truncate<V: BlockView>(
    ed: &mut Edits<'_, V>,
    ino: InodeNr,
    i_block: &mut [u8],
    keep: u64,
) -> Result<u64, Stop> {
    let bs = ed.fs.sb.block_size;
    let mut t = Trim {
        ed,
        ino,
        apb: u64::from(bs / 4),
        visited: HashSet::new(),
        freed: 0,
    };
    for root in standard_roots(bs) {
        let at = root.slot * 4;
        let p = u64::from(le32(i_block, at));
        let span = t.apb.saturating_pow(u32::from(root.level));
        if p == 0 || root.logical.saturating_add(span) <= keep {
            continue;
        }
        let kept = if keep <= root.logical {
            t.subtree(p, root.level)?;
            false
        } else {
            let kept = t.block(p, root.level, root.logical, keep)?;
            if !kept {
                t.free(p, 1)?;
            }
            kept
        };
        if !kept {
            i_block[at..at + 4].fill(0);
        }
    }
    Ok(t.freed)
}

impl<V: BlockView> Trim<'_, '_, V> {
    fn free(&mut self, start: u64, len: u64) -> Result<(), Stop> {
        self.ed.free_blocks(self.ino, start, len)?;
        self.freed += len;
        Ok(())
    }

    /// Reads indirect block `p` (validated, visited once).
    fn read(&mut self, p: u64) -> Result<Vec<u8>, Stop> {
        self.ed.check_owned(self.ino, p, 1)?;
        if !self.visited.insert(p) {
            let why = format!("indirect block {p} is met twice (loop or shared block)");
            return Err(stop(Some(self.ino), Some(p), None, why));
        }
        self.ed.read(Some(self.ino), p)
    }

    /// Frees the data blocks of the non-zero pointers `ptrs`, contiguous ones together.
    fn free_data(&mut self, ptrs: impl Iterator<Item = u64>) -> Result<(), Stop> {
        let mut run: Option<(u64, u64)> = None;
        for p in ptrs.filter(|&p| p != 0) {
            run = match run {
                Some((s, n)) if s + n == p => Some((s, n + 1)),
                Some((s, n)) => {
                    self.free(s, n)?;
                    Some((p, 1))
                }
                None => Some((p, 1)),
            };
        }
        match run {
            Some((s, n)) => self.free(s, n),
            None => Ok(()),
        }
    }

    /// Frees the whole subtree at pointer `p` of `level` (0: a data block), `p` included.
    fn subtree(&mut self, p: u64, level: u8) -> Result<(), Stop> {
        if level == 0 {
            return self.free(p, 1);
        }
        let buf = self.read(p)?;
        let ptrs = (0..buf.len()).step_by(4).map(|o| u64::from(le32(&buf, o)));
        if level == 1 {
            self.free_data(ptrs)?;
        } else {
            for q in ptrs.filter(|&q| q != 0) {
                self.subtree(q, level - 1)?;
            }
        }
        self.free(p, 1)
    }

    /// Trims indirect block `p` of `level` mapping logical blocks from `base`, cut at
    /// `keep` (inside its range); returns whether it survives (module comment). A
    /// surviving block that changed is stored; one that does not is left to the caller.
    fn block(&mut self, p: u64, level: u8, base: u64, keep: u64) -> Result<bool, Stop> {
        let mut buf = self.read(p)?;
        let child_span = self.apb.saturating_pow(u32::from(level) - 1);
        let c = usize::try_from((keep - base) / child_span)
            .unwrap_or(usize::MAX)
            .min(buf.len() / 4 - 1);
        let before = (0..c).any(|i| le32(&buf, 4 * i) != 0);
        let mut changed = false;
        let tail: Vec<u64> = (c + 1..buf.len() / 4)
            .map(|i| u64::from(le32(&buf, 4 * i)))
            .collect();
        if tail.iter().any(|&q| q != 0) {
            if level == 1 {
                self.free_data(tail.into_iter())?;
            } else {
                for q in tail.into_iter().filter(|&q| q != 0) {
                    self.subtree(q, level - 1)?;
                }
            }
            buf[4 * (c + 1)..].fill(0);
            changed = true;
        }
        let q = u64::from(le32(&buf, 4 * c));
        let mut child_kept = false;
        if q != 0 {
            let child_base = base + c as u64 * child_span;
            if level == 1 || keep <= child_base {
                self.subtree(q, level - 1)?;
            } else {
                child_kept = self.block(q, level - 1, child_base, keep)?;
                if !child_kept {
                    self.free(q, 1)?;
                }
            }
            if !child_kept {
                buf[4 * c..4 * c + 4].fill(0);
                changed = true;
            }
        }
        let kept = before || child_kept;
        if kept && changed {
            self.ed.put(p, buf);
        }
        Ok(kept)
    }
}

/// The physical block logical block `logical` of the indirect map in `i_block` maps, read
/// through `ed` (after the truncation); `None` for a hole or a bad pointer.
pub(super) fn map<V: BlockView>(
    ed: &Edits<'_, V>,
    ino: InodeNr,
    i_block: &[u8],
    logical: u64,
) -> Option<u64> {
    let apb = u64::from(ed.fs.sb.block_size / 4);
    let root = standard_roots(ed.fs.sb.block_size)
        .into_iter()
        .rev()
        .find(|r| r.logical <= logical)?;
    let mut p = u64::from(le32(i_block, root.slot * 4));
    let mut off = logical - root.logical;
    for level in (1..=u32::from(root.level)).rev() {
        if p == 0 || off >= apb.saturating_pow(level) {
            return None;
        }
        ed.check_owned(ino, p, 1).ok()?;
        let buf = ed.read(Some(ino), p).ok()?;
        let span = apb.saturating_pow(level - 1);
        let i = usize::try_from(off / span).ok()?;
        p = u64::from(le32(&buf, 4 * i));
        off %= span;
    }
    (p != 0).then_some(p)
}

//! The one pass over the blocks a delta replaces: read the target's bytes (FROM), feed them to
//! the FROM digest, lay the delta over them (TO), and hand the blocks that differ to the
//! report and the patch. Only the replaced blocks (plus the superblock block, always a run of
//! its own) are read; the pass goes in increasing block order, in pieces of at most
//! [`CHUNK_BYTES`].

use super::delta::{Delta, ToHashes};
use super::states::FromDigest;
use crate::patching::{emit_differing, RunSink, Target};
use crate::ranges::{contains, push, union};
use anyhow::Result;
use std::ops::Range;

/// Bytes compared per piece, at most (bounds the two buffers to 2 MiB).
const CHUNK_BYTES: u64 = 1 << 20;

/// What the pass compares and with what.
pub struct Pass<'a> {
    /// The delta.
    pub delta: &'a Delta,
    /// The target.
    pub target: &'a Target,
    /// Filesystem block size in bytes.
    pub block_size: u64,
    /// The primary superblock's block.
    pub sb_block: u64,
    /// The blocks the replaced clusters touch ([`Delta::blocks`]).
    pub replaced: &'a [Range<u64>],
    /// The blocks the delta may change (`None`: every block its clusters touch).
    pub mask: Option<&'a [Range<u64>]>,
}

/// Totals of the pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct PassStats {
    /// Blocks the replaced clusters touch.
    pub compared: u64,
    /// Blocks that differ from the target (the superblock block counted only when it does).
    pub differ: u64,
}

impl Pass<'_> {
    /// Runs the pass: feeds `digest` (if any) with the target's bytes and `to` (if any) with
    /// the delta's bytes of every replaced cluster that lies whole in a piece, and hands the
    /// differing runs to `sink`. Pieces are whole clusters, so every replaced cluster is
    /// hashed unless the delta's clusters are smaller than a block; the caller compares the
    /// count with [`Delta::replaced_clusters`].
    ///
    /// # Errors
    /// Read errors of the target or the delta; errors of the sink.
    pub fn run(
        &self,
        mut digest: Option<&mut FromDigest<'_>>,
        mut to: Option<&mut ToHashes>,
        sink: &mut dyn RunSink,
    ) -> Result<PassStats> {
        let bs = self.block_size;
        let mut stats = PassStats {
            compared: crate::ranges::total(self.replaced),
            differ: 0,
        };
        let sb = self.sb_block..self.sb_block + 1;
        let per_cluster = (self.delta.cluster / bs).max(1);
        let per = ((CHUNK_BYTES / bs).max(1) / per_cluster).max(1) * per_cluster;
        let (mut old, mut new) = (Vec::new(), Vec::new());
        for r in union(self.replaced, std::slice::from_ref(&sb)) {
            let mut b = r.start;
            while b < r.end {
                let n = (r.end - b).min(per);
                old.resize((n * bs) as usize, 0);
                self.target.read_at(b * bs, &mut old)?;
                if let Some(d) = digest.as_deref_mut() {
                    d.feed(b, &old, bs as usize, self.delta);
                }
                new.clear();
                new.extend_from_slice(&old);
                self.delta.overlay(b * bs, &mut new)?;
                if let Some(t) = to.as_deref_mut() {
                    t.feed(b * bs, &new, self.delta);
                }
                self.keep_unmasked(b, &old, &mut new);
                stats.differ += emit_differing(b, &old, &new, bs as usize, self.sb_block, sink)?;
                b += n;
            }
        }
        Ok(stats)
    }

    /// Puts the target's bytes back on the blocks outside the mask.
    fn keep_unmasked(&self, first: u64, old: &[u8], new: &mut [u8]) {
        let Some(mask) = self.mask else { return };
        let bs = self.block_size as usize;
        for (i, (o, n)) in old.chunks(bs).zip(new.chunks_mut(bs)).enumerate() {
            if !contains(mask, first + i as u64) {
                n.copy_from_slice(o);
            }
        }
    }
}

/// The block ranges a set of runs covers, for the reports.
#[derive(Debug, Default)]
pub struct Written {
    /// Blocks written with new bytes.
    pub written: Vec<Range<u64>>,
    /// Blocks whose new bytes are all zero (discarded, or zeros written with `--no-discard`).
    pub zeros: Vec<Range<u64>>,
    /// Runs handed over (the superblock block's included).
    pub runs: u64,
}

impl Written {
    /// Counts one run of `new` bytes at block `first`; the superblock block is always a write.
    pub fn add(&mut self, first: u64, new: &[u8], bs: usize, sb_block: u64) {
        self.runs += 1;
        for (i, block) in new.chunks(bs).enumerate() {
            let b = first + i as u64;
            if b != sb_block && block.iter().all(|&x| x == 0) {
                push(&mut self.zeros, b..b + 1);
            } else {
                push(&mut self.written, b..b + 1);
            }
        }
    }

    /// Every block that changes.
    pub fn all(&self) -> Vec<Range<u64>> {
        union(&self.written, &self.zeros)
    }
}

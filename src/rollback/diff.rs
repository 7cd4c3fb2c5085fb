//! Compares an image state with the target on every held block and streams the blocks that
//! differ, with their old (target) and new (image) bytes, to the patch and undo-file writers.
//!
//! The primary superblock block is always a run of its own, whether it differs or not: the
//! engine writes it last, after a "not clean" variant of it was written first.

use super::held::Held;
use crate::patching::{emit_differing, RunSink, Target};
use anyhow::{Context, Result};
use qcow::LayerReader;

/// Blocks compared per read, at most (bounds the two buffers to 2 MiB).
const CHUNK_BYTES: u64 = 1 << 20;

/// Totals of a comparison.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiffStats {
    /// Blocks compared (held by the state).
    pub compared: u64,
    /// Blocks that differ (the superblock block counted only when it does).
    pub differ: u64,
}

/// Compares every held block of `layer` with `target` (`block_size`-byte blocks) and hands the
/// differing runs, plus the superblock block `sb_block`, to `sink`.
///
/// # Errors
/// `sb_block` not held; read errors of either side; errors of the sink.
pub fn diff(
    layer: &LayerReader<'_>,
    target: &Target,
    held: &Held,
    block_size: u32,
    sb_block: u64,
    sink: &mut dyn RunSink,
) -> Result<DiffStats> {
    anyhow::ensure!(
        held.contains(sb_block),
        "the image state does not hold the primary superblock (block {sb_block})"
    );
    let bs = u64::from(block_size);
    let per = (CHUNK_BYTES / bs).max(1);
    let (mut new, mut old) = (Vec::new(), Vec::new());
    let mut stats = DiffStats::default();
    for r in &held.ranges {
        let mut b = r.start;
        while b < r.end {
            let n = (r.end - b).min(per);
            new.resize((n * bs) as usize, 0);
            old.resize((n * bs) as usize, 0);
            layer
                .read_at(b * bs, &mut new)
                .with_context(|| format!("cannot read block {b} of the image state"))?;
            target.read_at(b * bs, &mut old)?;
            stats.compared += n;
            stats.differ += emit_differing(b, &old, &new, bs as usize, sb_block, sink)?;
            b += n;
        }
    }
    Ok(stats)
}

//! The comparison of a delta: guest clusters of FROM and TO read batch by batch (unless an
//! oracle says they are equal without reading), the clusters that differ handed to the sink
//! with TO's bytes (zeros for the discards), the digests of the delta record fed on the way.

use crate::delta_record::ClusterDigest;
use crate::sink::Sink;
use anyhow::{Context, Result};
use ext::{BlockSet, BlockSource, BlockView, SnapshotView};
use qcow::LayerReader;
use sha2::{Digest, Sha256};
use std::ops::Range;

/// Guest clusters compared per batch (bounds the two buffers to about 2 MiB each).
const BATCH_BYTES: u64 = 2 << 20;

/// Cluster and block sizes (bytes) and the disk size.
pub(super) struct Geometry {
    pub(super) cluster: u64,
    pub(super) block: u64,
    pub(super) size: u64,
}

impl Geometry {
    /// The blocks of guest clusters `c` (partial blocks included).
    fn blocks(&self, c: Range<u64>) -> Range<u64> {
        c.start * self.cluster / self.block..(c.end * self.cluster).div_ceil(self.block)
    }
}

/// What the comparison found.
#[derive(Default)]
pub(super) struct Diff {
    pub(super) changed_clusters: u64,
    pub(super) discarded_clusters: u64,
    /// Bytes of TO's copy set inside changed clusters.
    pub(super) to_bytes_replaced: u64,
    /// SHA-256 of FROM's bytes on the replaced clusters (delta_record's definition).
    pub(super) digest: Sha256,
    /// The delta's bytes on the replaced clusters (the record's `to_digest`).
    pub(super) to_digest: ClusterDigest,
}

/// Runs of guest clusters touching either copy set, in order.
pub(super) fn cluster_runs(g: &Geometry, from: &BlockSet, to: &BlockSet) -> Vec<Range<u64>> {
    let mut runs: Vec<Range<u64>> = Vec::new();
    let mut exts: Vec<Range<u64>> = from
        .extents()
        .iter()
        .chain(to.extents())
        .map(|e| e.start * g.block / g.cluster..(e.end() * g.block).div_ceil(g.cluster))
        .collect();
    exts.sort_unstable_by_key(|r| r.start);
    let last = g.size.div_ceil(g.cluster);
    for r in exts {
        let r = r.start.min(last)..r.end.min(last);
        if !r.is_empty() {
            crate::ranges::push(&mut runs, r);
        }
    }
    runs
}

/// The copy set's blocks of `set` within `blocks`, as runs.
fn set_runs(set: &BlockSet, blocks: Range<u64>) -> Vec<Range<u64>> {
    let ext = set.extents();
    let i = ext.partition_point(|e| e.end() <= blocks.start);
    ext[i..]
        .iter()
        .take_while(|e| e.start < blocks.end)
        .map(|e| e.start.max(blocks.start)..e.end().min(blocks.end))
        .collect()
}

/// Reads the copy-set blocks of `set` within `blocks` from `view` into `buf` (zeros
/// elsewhere); returns them as runs.
fn read_state(
    view: &dyn BlockView,
    set: &BlockSet,
    blocks: Range<u64>,
    block: u64,
    buf: &mut [u8],
) -> Result<Vec<Range<u64>>> {
    buf.fill(0);
    let runs = set_runs(set, blocks.clone());
    for r in &runs {
        let at = ((r.start - blocks.start) * block) as usize;
        let len = ((r.end - r.start) * block) as usize;
        view.read_blocks(block as u32, r.start, &mut buf[at..at + len])
            .with_context(|| format!("cannot read blocks {}..{}", r.start, r.end))?;
    }
    Ok(runs)
}

/// Says, without reading, where two states hold the same bytes.
pub(super) enum Oracle<'a> {
    /// Nothing known: read both.
    None,
    /// Two layers of one QCOW2 image: a guest cluster mapped alike in both (the same host
    /// cluster, or zero, or unallocated) holds the same bytes. `cluster` is the image's.
    Qcow {
        from: &'a LayerReader<'a>,
        to: &'a LayerReader<'a>,
        cluster: u64,
    },
    /// Two states of one next3 device (`None`: the live state): a block read from the same
    /// source holds the same bytes.
    Next3 {
        from: Option<&'a SnapshotView<'a>>,
        to: Option<&'a SnapshotView<'a>>,
    },
}

impl Oracle<'_> {
    /// True if both states surely hold the same bytes on disk bytes `r`.
    fn same(&self, r: Range<u64>, block: u64) -> bool {
        match self {
            Oracle::None => false,
            Oracle::Qcow { from, to, cluster } => (r.start / cluster..r.end.div_ceil(*cluster))
                .all(|c| matches!((from.mapping(c), to.mapping(c)), (Ok(a), Ok(b)) if a == b)),
            Oracle::Next3 { from, to } => {
                let src = |v: &Option<&SnapshotView<'_>>, b: u64| match v {
                    Some(v) => v.source(b),
                    None => BlockSource::Device(b),
                };
                (r.start / block..r.end.div_ceil(block)).all(|b| src(from, b) == src(to, b))
            }
        }
    }
}

/// Compares one run of guest clusters, batch by batch, and hands TO's bytes of the clusters
/// that differ (zeros for the discards) to the sink. A batch whose clusters the oracle knows
/// to be equal (with the same copy-set blocks in both states) is not read.
pub(super) fn compare_run(
    g: &Geometry,
    run: Range<u64>,
    ((from, from_set), (to, to_set)): StatePair<'_>,
    oracle: &Oracle<'_>,
    sink: &mut dyn Sink,
    diff: &mut Diff,
) -> Result<()> {
    let per = (BATCH_BYTES / g.cluster).max(1);
    let (mut fb, mut tb) = (Vec::new(), Vec::new());
    let mut c = run.start;
    while c < run.end {
        let n = per.min(run.end - c);
        let todo: Vec<u64> = (c..c + n)
            .filter(|&k| {
                let cb = g.blocks(k..k + 1);
                set_runs(from_set, cb.clone()) != set_runs(to_set, cb)
                    || !oracle.same(k * g.cluster..(k + 1) * g.cluster, g.block)
            })
            .collect();
        if !todo.is_empty() {
            let blocks = g.blocks(c..c + n);
            let len = ((blocks.end - blocks.start) * g.block) as usize;
            fb.resize(len, 0);
            tb.resize(len, 0);
            let from_runs = read_state(from, from_set, blocks.clone(), g.block, &mut fb)?;
            let to_runs = read_state(to, to_set, blocks.clone(), g.block, &mut tb)?;
            let batch = Batch {
                first_block: blocks.start,
                from: (&fb, &from_runs, from_set),
                to: (&tb, &to_runs),
            };
            for k in todo {
                compare_cluster(g, k, &batch, sink, diff)?;
            }
        }
        c += n;
    }
    Ok(())
}

/// FROM's and TO's views with their copy sets.
pub(super) type StatePair<'a> = (
    (&'a dyn BlockView, &'a BlockSet),
    (&'a dyn BlockView, &'a BlockSet),
);

/// One batch read from both states: its first block, each state's bytes and copy-set runs.
struct Batch<'b> {
    first_block: u64,
    from: (&'b [u8], &'b [Range<u64>], &'b BlockSet),
    to: (&'b [u8], &'b [Range<u64>]),
}

/// Compares guest cluster `k` of a batch and writes it if it changed or is discarded.
fn compare_cluster(
    g: &Geometry,
    k: u64,
    b: &Batch<'_>,
    sink: &mut dyn Sink,
    diff: &mut Diff,
) -> Result<()> {
    let cb = g.blocks(k..k + 1);
    let at = ((cb.start - b.first_block) * g.block) as usize;
    let end = ((cb.end - b.first_block) * g.block) as usize;
    let (fb, from_runs, from_set) = b.from;
    let (tb, to_runs) = b.to;
    let has = |runs: &[Range<u64>]| runs.iter().any(|r| r.start < cb.end && cb.start < r.end);
    let (has_from, has_to) = (has(from_runs), has(to_runs));
    let changed = has_to && fb[at..end] != tb[at..end];
    let discard = !has_to && has_from;
    if !changed && !discard {
        return Ok(());
    }
    let offset = k * g.cluster;
    let keep = ((g.size - offset).min(g.cluster) as usize).min(end - at);
    let bytes: std::borrow::Cow<'_, [u8]> = if changed {
        diff.changed_clusters += 1;
        diff.to_bytes_replaced += covered(to_runs, cb.clone()) * g.block;
        (&tb[at..at + keep]).into()
    } else {
        diff.discarded_clusters += 1;
        vec![0u8; keep].into()
    };
    sink.write(offset, &bytes)?;
    diff.to_digest.add(k, &bytes);
    for blk in set_runs(from_set, cb).into_iter().flatten() {
        let i = ((blk - b.first_block) * g.block) as usize;
        diff.digest.update(blk.to_be_bytes());
        diff.digest.update(&fb[i..i + g.block as usize]);
    }
    Ok(())
}

/// The second pass of a delta written as a QCOW2 stream: TO's bytes of the guest byte ranges
/// `need` (whole clusters the first pass found changed) handed to `sink` again, cluster by
/// cluster as [`compare_run`] hands them (its copy set's blocks, zeros elsewhere, clipped to
/// the disk), read in batches of about 2 MiB.
///
/// # Errors
/// Read errors of TO; errors of the sink.
pub(super) fn write_again(
    g: &Geometry,
    need: &[Range<u64>],
    (to, to_set): (&dyn BlockView, &BlockSet),
    sink: &mut dyn Sink,
) -> Result<()> {
    sink.begin_state()?;
    let per = (BATCH_BYTES / g.cluster).max(1);
    let mut buf = Vec::new();
    for r in need {
        let (mut c, end) = (r.start / g.cluster, r.end.div_ceil(g.cluster));
        while c < end {
            let n = per.min(end - c);
            let blocks = g.blocks(c..c + n);
            buf.resize(((blocks.end - blocks.start) * g.block) as usize, 0);
            read_state(to, to_set, blocks.clone(), g.block, &mut buf)?;
            for k in c..c + n {
                let cb = g.blocks(k..k + 1);
                let at = ((cb.start - blocks.start) * g.block) as usize;
                let len = ((cb.end - cb.start) * g.block) as usize;
                let keep = ((g.size - k * g.cluster).min(g.cluster) as usize).min(len);
                sink.write(k * g.cluster, &buf[at..at + keep])?;
            }
            c += n;
        }
    }
    sink.end_state()
}

/// Blocks of `runs` inside `blocks`.
fn covered(runs: &[Range<u64>], blocks: Range<u64>) -> u64 {
    runs.iter()
        .map(|r| {
            r.end
                .min(blocks.end)
                .saturating_sub(r.start.max(blocks.start))
        })
        .sum()
}

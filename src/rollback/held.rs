//! Which filesystem blocks an image state holds.
//!
//! A QCOW2 cluster the state maps (data, compressed, or the v3 zero flag, which e2image-rs
//! writes for copied all-zero blocks) is held; an unallocated one is not. When a cluster is no
//! larger than a block, a block is held when any of its clusters is. When a cluster spans
//! several blocks (`-d` exports use 64 KiB clusters), the blocks in it that the exporter did
//! not copy read as zeros too, so the state's own metadata walk decides: a block is held when
//! its cluster is and the walk lists it — its file data blocks only if the state holds file
//! data, its snapshot-file blocks only if it holds snapshot files.
//!
//! Whether it holds them is what the image's export record says (`crate::export_record`).
//! Without a record it is inferred: some cluster holding nothing but blocks of that kind is
//! allocated. A record without zero clusters (a v2 export) also makes every block of the
//! walk held, as zeros where its cluster is unallocated: the exporter copied exactly those.

use crate::ranges::{contains, overlaps, push, union};
use crate::record::ExportRecord;
use anyhow::Result;
use ext::{BlockClass, BlockSet};
use qcow::{ClusterMapping, LayerReader};
use std::ops::Range;

/// Most clusters looked at to decide whether a state holds a kind of block.
const MAX_KIND_PROBES: usize = 1 << 20;

/// The blocks a state holds, as sorted disjoint ranges, and what kinds it holds.
#[derive(Debug, Default)]
pub struct Held {
    /// Held block ranges, sorted and disjoint, within the filesystem.
    pub ranges: Vec<Range<u64>>,
    /// Whether the state holds file data blocks (an `-d` export).
    pub has_data: bool,
    /// Whether copied all-zero blocks may be missing from `ranges` (a v2 image without an
    /// export record: it cannot tell them from blocks it does not hold).
    pub zeros_unknown: bool,
}

impl Held {
    /// True if block `b` is held.
    pub fn contains(&self, b: u64) -> bool {
        contains(&self.ranges, b)
    }

    /// Number of held blocks.
    pub fn blocks(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }
}

/// Shape of the image and the filesystem, for [`held_blocks`].
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    /// QCOW2 cluster size in bytes.
    pub cluster_size: u64,
    /// Filesystem block size in bytes.
    pub block_size: u64,
    /// Blocks in the filesystem.
    pub blocks_count: u64,
    /// The image stores zero clusters (QCOW2 v3).
    pub v3: bool,
}

/// Computes the held blocks of `layer`; `walk` is the state's metadata walk with file data
/// and snapshot files included, `record` the image's export record if it has one.
///
/// # Errors
/// Corrupt L1/L2 tables and I/O errors of the image.
pub fn held_blocks(
    layer: &LayerReader<'_>,
    geo: Geometry,
    walk: &BlockSet,
    record: Option<ExportRecord>,
) -> Result<Held> {
    let (mut held_clusters, mut data_clusters) = (Vec::new(), Vec::new());
    layer.for_each_allocated(|g, m| {
        push(&mut held_clusters, g..g + 1);
        if matches!(
            m,
            ClusterMapping::Normal { .. } | ClusterMapping::Compressed { .. }
        ) {
            push(&mut data_clusters, g..g + 1);
        }
        Ok(())
    })?;
    let kinds = match record {
        Some(r) => Kinds {
            data: r.file_data,
            snapshot_files: r.snapshot_files,
        },
        None => Kinds::infer(walk, &data_clusters, geo),
    };
    let mut ranges = if geo.cluster_size <= geo.block_size {
        whole_blocks(&held_clusters, geo)
    } else {
        walked_blocks_in(&held_clusters, walk, kinds, geo)
    };
    if record.is_some_and(|r| !r.zeros_recorded) {
        let all: Vec<Range<u64>> = walk
            .extents()
            .iter()
            .filter(|e| kinds.copied(e.class))
            .map(|e| e.start..e.end().min(geo.blocks_count))
            .filter(|r| r.start < r.end)
            .collect();
        ranges = union(&ranges, &all);
    }
    Ok(Held {
        ranges,
        has_data: kinds.data,
        zeros_unknown: record.is_none() && !geo.v3,
    })
}

/// Which optional kinds of block a state holds.
#[derive(Clone, Copy, Debug)]
struct Kinds {
    data: bool,
    snapshot_files: bool,
}

impl Kinds {
    /// Infers the kinds from the allocated clusters (no export record).
    fn infer(walk: &BlockSet, data_clusters: &[Range<u64>], geo: Geometry) -> Kinds {
        let ratio = (geo.cluster_size / geo.block_size).max(1);
        let block_ranges = if geo.cluster_size <= geo.block_size {
            whole_blocks(data_clusters, geo)
        } else {
            Vec::new()
        };
        let holds = |class: BlockClass| {
            if geo.cluster_size <= geo.block_size {
                walk.extents()
                    .iter()
                    .filter(|e| e.class == class)
                    .any(|e| overlaps(&block_ranges, e.start..e.end()))
            } else {
                holds_only(walk, data_clusters, ratio, class)
            }
        };
        Kinds {
            data: holds(BlockClass::Data),
            snapshot_files: holds(BlockClass::SnapshotFile),
        }
    }

    /// Whether blocks of `class` were copied.
    fn copied(self, class: BlockClass) -> bool {
        match class {
            BlockClass::Data => self.data,
            BlockClass::SnapshotFile => self.snapshot_files,
            _ => true,
        }
    }
}

/// The blocks covered by `clusters` when a cluster is no larger than a block.
fn whole_blocks(clusters: &[Range<u64>], geo: Geometry) -> Vec<Range<u64>> {
    let ratio = geo.block_size / geo.cluster_size;
    let mut ranges = Vec::new();
    for r in clusters {
        let end = r.end.div_ceil(ratio).min(geo.blocks_count);
        if r.start / ratio < end {
            push(&mut ranges, r.start / ratio..end);
        }
    }
    ranges
}

/// The walked blocks of copied kinds inside `clusters` when a cluster spans several blocks.
fn walked_blocks_in(
    clusters: &[Range<u64>],
    walk: &BlockSet,
    kinds: Kinds,
    geo: Geometry,
) -> Vec<Range<u64>> {
    let ratio = geo.cluster_size / geo.block_size;
    let mut ranges = Vec::new();
    for e in walk.extents().iter().filter(|e| kinds.copied(e.class)) {
        let (first, last) = (e.start / ratio, (e.end() - 1) / ratio);
        let i = clusters.partition_point(|r| r.end <= first);
        for r in clusters[i..].iter().take_while(|r| r.start <= last) {
            let start = (r.start * ratio).max(e.start);
            let end = (r.end * ratio).min(e.end()).min(geo.blocks_count);
            if start < end {
                push(&mut ranges, start..end);
            }
        }
    }
    ranges
}

/// Some allocated cluster holds blocks of `class` and no block of another class.
fn holds_only(
    walk: &BlockSet,
    data_clusters: &[Range<u64>],
    ratio: u64,
    class: BlockClass,
) -> bool {
    let mut other_clusters = Vec::new();
    for e in walk.extents().iter().filter(|e| e.class != class) {
        push(
            &mut other_clusters,
            e.start / ratio..(e.end() - 1) / ratio + 1,
        );
    }
    let mut probes = 0usize;
    for e in walk.extents().iter().filter(|e| e.class == class) {
        for c in e.start / ratio..=(e.end() - 1) / ratio {
            if contains(data_clusters, c) && !contains(&other_clusters, c) {
                return true;
            }
            probes += 1;
            if probes >= MAX_KIND_PROBES {
                return false;
            }
        }
    }
    false
}

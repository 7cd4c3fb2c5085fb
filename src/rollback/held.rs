//! Which filesystem blocks an image state holds.
//!
//! A QCOW2 cluster the state maps (data, compressed, or the v3 zero flag, which e2image-rs
//! writes for copied all-zero blocks) is held; an unallocated one is not. When a cluster is no
//! larger than a block, a block is held when any of its clusters is. When a cluster spans
//! several blocks (`-d` exports use 64 KiB clusters), the blocks in it that the exporter did
//! not copy read as zeros too, so the state's own metadata walk decides: a block is held when
//! its cluster is and the walk lists it — its file data blocks only if the state holds file
//! data at all, i.e. some cluster holding nothing but file data is allocated.

use anyhow::Result;
use ext::{BlockClass, BlockSet};
use qcow::reader::{ClusterMapping, LayerReader};
use std::ops::Range;

/// Most clusters looked at to decide whether a state holds file data.
const MAX_DATA_PROBES: usize = 1 << 20;

/// The blocks a state holds, as sorted disjoint ranges, and whether it holds file data.
#[derive(Debug, Default)]
pub struct Held {
    /// Held block ranges, sorted and disjoint, within the filesystem.
    pub ranges: Vec<Range<u64>>,
    /// Whether the state holds file data blocks (an `-d` export).
    pub has_data: bool,
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

/// True if `b` lies in one of the sorted disjoint `ranges`.
pub fn contains(ranges: &[Range<u64>], b: u64) -> bool {
    let i = ranges.partition_point(|r| r.end <= b);
    ranges.get(i).is_some_and(|r| r.start <= b)
}

/// Computes the held blocks of `layer` for a filesystem of `blocks_count` blocks of
/// `block_size` bytes, stored with `cluster_size`-byte clusters; `walk` is the state's
/// metadata walk with file data included.
///
/// # Errors
/// Corrupt L1/L2 tables and I/O errors of the image.
pub fn held_blocks(
    layer: &LayerReader<'_>,
    cluster_size: u64,
    block_size: u64,
    blocks_count: u64,
    walk: &BlockSet,
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
    if cluster_size <= block_size {
        let ratio = block_size / cluster_size;
        let mut ranges = Vec::new();
        for r in &held_clusters {
            let end = r.end.div_ceil(ratio).min(blocks_count);
            if r.start / ratio < end {
                push(&mut ranges, r.start / ratio..end);
            }
        }
        let has_data = walk
            .extents()
            .iter()
            .filter(|e| e.class == BlockClass::Data)
            .any(|e| overlaps(&ranges, e.start..e.end()));
        return Ok(Held { ranges, has_data });
    }
    let ratio = cluster_size / block_size;
    let has_data = holds_data(walk, &data_clusters, ratio);
    let mut ranges = Vec::new();
    for e in walk.extents() {
        if e.class == BlockClass::Data && !has_data {
            continue;
        }
        let (first, last) = (e.start / ratio, (e.end() - 1) / ratio);
        let i = held_clusters.partition_point(|r| r.end <= first);
        for r in held_clusters[i..].iter().take_while(|r| r.start <= last) {
            let start = (r.start * ratio).max(e.start);
            let end = (r.end * ratio).min(e.end()).min(blocks_count);
            if start < end {
                push(&mut ranges, start..end);
            }
        }
    }
    Ok(Held { ranges, has_data })
}

/// Some cluster holding only file data blocks (no metadata) is stored with data.
fn holds_data(walk: &BlockSet, data_clusters: &[Range<u64>], ratio: u64) -> bool {
    let mut meta_clusters = Vec::new();
    for e in walk
        .extents()
        .iter()
        .filter(|e| e.class != BlockClass::Data)
    {
        push(
            &mut meta_clusters,
            e.start / ratio..(e.end() - 1) / ratio + 1,
        );
    }
    let mut probes = 0usize;
    for e in walk
        .extents()
        .iter()
        .filter(|e| e.class == BlockClass::Data)
    {
        for c in e.start / ratio..=(e.end() - 1) / ratio {
            if contains(data_clusters, c) && !contains(&meta_clusters, c) {
                return true;
            }
            probes += 1;
            if probes >= MAX_DATA_PROBES {
                return false;
            }
        }
    }
    false
}

/// True if `r` overlaps one of the sorted disjoint `ranges`.
pub fn overlaps(ranges: &[Range<u64>], r: Range<u64>) -> bool {
    let i = ranges.partition_point(|x| x.end <= r.start);
    ranges.get(i).is_some_and(|x| x.start < r.end)
}

/// Appends `r` to sorted `ranges`, merging it with the last one when they touch.
pub fn push(ranges: &mut Vec<Range<u64>>, r: Range<u64>) {
    match ranges.last_mut() {
        Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
        _ => ranges.push(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_search() {
        let mut v = Vec::new();
        push(&mut v, 0..2);
        push(&mut v, 2..4);
        push(&mut v, 6..7);
        assert_eq!(v, vec![0..4, 6..7]);
        assert!(contains(&v, 3) && !contains(&v, 4) && contains(&v, 6) && !contains(&v, 7));
        assert!(overlaps(&v, 3..5) && !overlaps(&v, 4..6) && overlaps(&v, 5..9));
    }
}

//! Which guest clusters of a new state are known to equal the archive's newest state without
//! reading them: the file data of unchanged inodes (an append with `-d`).
//!
//! Rule (backup tools' quick check, made stricter): a regular file (not a snapshot file) is
//! unchanged when its parsed inode record is identical in both states (times with their
//! nanoseconds, size, generation, flags, link count, block map root, ...; not the access
//! time), and a data run of it is taken as unchanged when it is the same (same inode, file
//! block, filesystem block and length) in both. Its blocks then hold the same bytes: the
//! kernel updates `i_mtime`/`i_ctime` on every write through the filesystem. (Writes that
//! bypass it, to the device or with debugfs, are not seen; restic and rsync's quick check
//! make the same assumption.) A guest cluster is known equal when each of its blocks is such
//! unchanged data, or is copied in neither state (zeros in both). Any other cluster is read
//! and compared. Metadata (directories included: debugfs changes them without touching the
//! directory's times) is always read: it is small, and its bytes are what an archive is for.

use ext::{BlockSet, FileRun, FileType, Inode, InodeNr, RunKind};
use std::collections::HashMap;
use std::ops::Range;

/// Blocks (filesystem block ranges, sorted, disjoint) that hold unchanged file data: data runs
/// of inodes whose records are equal in `new` and `base`, present identically in both.
pub fn unchanged_data(
    new_runs: &[FileRun],
    new_inodes: &[(InodeNr, Inode)],
    base_runs: &[FileRun],
    base_inodes: &[(InodeNr, Inode)],
) -> Vec<Range<u64>> {
    let base: HashMap<InodeNr, &Inode> = base_inodes.iter().map(|(n, i)| (*n, i)).collect();
    let same: std::collections::HashSet<InodeNr> = new_inodes
        .iter()
        .filter(|(_, i)| i.file_type() == FileType::Regular)
        .filter(|(n, i)| base.get(n).is_some_and(|b| *b == i))
        .map(|(n, _)| *n)
        .collect();
    let file_data = |r: &&FileRun| {
        matches!(r.kind, RunKind::Data { .. }) && !r.snapfile && same.contains(&r.ino)
    };
    let key = |r: &FileRun| (r.physical, r.ino, r.logical, r.len);
    let mut base_data: Vec<(u64, InodeNr, u64, u64)> =
        base_runs.iter().filter(file_data).map(key).collect();
    base_data.sort_unstable();
    let mut out: Vec<Range<u64>> = Vec::new();
    for r in new_runs.iter().filter(file_data) {
        if base_data.binary_search(&key(r)).is_ok() {
            push(&mut out, r.physical..r.end());
        }
    }
    out.sort_unstable_by_key(|r| r.start);
    merge(out)
}

/// Guest clusters (ranges of cluster numbers, sorted) of `cluster` bytes each that are known
/// equal in both states: every `block`-byte block in them is in `same` (unchanged data) or in
/// neither copy set. Only clusters touching `same` can qualify.
pub fn equal_clusters(
    cluster: u64,
    block: u64,
    new: &BlockSet,
    base: &BlockSet,
    same: &[Range<u64>],
) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    let mut next = 0u64;
    for r in same {
        let first = (r.start * block / cluster).max(next);
        let last = (r.end * block).div_ceil(cluster);
        for c in first..last {
            let blocks = (c * cluster / block)..((c + 1) * cluster).div_ceil(block);
            if blocks
                .clone()
                .all(|b| in_ranges(same, b) || (!new.contains(b) && !base.contains(b)))
            {
                push(&mut out, c..c + 1);
            }
        }
        next = last;
    }
    out
}

fn in_ranges(ranges: &[Range<u64>], b: u64) -> bool {
    let i = ranges.partition_point(|r| r.end <= b);
    ranges.get(i).is_some_and(|r| r.start <= b)
}

/// Appends `r` to sorted `v`, merging with the last range when they touch.
fn push(v: &mut Vec<Range<u64>>, r: Range<u64>) {
    match v.last_mut() {
        Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
        _ => v.push(r),
    }
}

/// Merges sorted ranges that overlap or touch.
fn merge(v: Vec<Range<u64>>) -> Vec<Range<u64>> {
    let mut out = Vec::with_capacity(v.len());
    for r in v {
        push(&mut out, r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ext::BlockClass;

    fn set(ranges: &[(u64, u64, BlockClass)]) -> BlockSet {
        let mut s = BlockSet::new();
        for &(start, len, class) in ranges {
            s.add(start, len, class);
        }
        s.finish(1, 1 << 20);
        s
    }

    #[test]
    fn clusters_of_unchanged_data_only() {
        // 4 blocks per cluster. Blocks 8..16 unchanged data; block 17 metadata; 20..22 data
        // only in the new state.
        let new = set(&[
            (8, 8, BlockClass::Data),
            (17, 1, BlockClass::InodeTable),
            (20, 2, BlockClass::Data),
        ]);
        let base = set(&[(8, 8, BlockClass::Data), (17, 1, BlockClass::InodeTable)]);
        let same: &[Range<u64>] = &[Range { start: 8, end: 16 }];
        assert_eq!(equal_clusters(16384, 4096, &new, &base, same), vec![2..4]);
        // A cluster half unchanged data, half in neither set, qualifies too.
        let same: &[Range<u64>] = &[Range { start: 8, end: 10 }];
        let new = set(&[(8, 2, BlockClass::Data)]);
        let base = set(&[(8, 2, BlockClass::Data)]);
        assert_eq!(equal_clusters(16384, 4096, &new, &base, same), vec![2..3]);
        // Clusters smaller than a block.
        assert_eq!(equal_clusters(1024, 4096, &new, &base, same), vec![32..40]);
    }
}

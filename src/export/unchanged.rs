//! The append's quick check: which guest clusters of a new state are known to equal the
//! archive's newest state (the base) without reading them — the file data of unchanged user
//! files (an append with `-d`). The archive sink maps them to the base's clusters.
//!
//! Rule (backup tools' quick check, made stricter): a user file is a regular file that is no
//! special inode (below `s_first_ino`, or named by the superblock: journal, quota, orphan
//! file, snapshots: `ext::Superblock::is_special_inode`) and no snapshot file. It is unchanged when its
//! parsed inode record is identical in both states (times with their nanoseconds, size,
//! generation, flags, link count, block map root, ...; not the access time), and a data run of
//! it is unchanged when it is the same (same inode, file block, filesystem block and length)
//! in both. Its blocks then hold the same bytes: the kernel updates `i_mtime`/`i_ctime` on
//! every write through the filesystem. (Writes that bypass it, to the device or with
//! debugfs, are not seen; restic and rsync's quick check make the same assumption.) A guest
//! cluster is known equal when each of its blocks is such unchanged data, or is copied in
//! neither state (zeros in both). Any other cluster is read and compared.
//!
//! Metadata is always read: directories (debugfs changes them without touching their times),
//! and every special inode — the journal's record never changes while the kernel writes
//! transactions into it. The quick check is off altogether when the source's journal needs
//! recovery or is on an external device: the on-disk inodes then lag behind what the journal
//! commits, while (data=ordered) the new file data is already in place.

use crate::ranges;
use crate::sink::SharedCluster;
use ext::{BlockSet, BlockView, FileRun, FileType, Filesystem, Inode, InodeNr, RunKind};
use std::collections::{HashMap, HashSet};
use std::ops::Range;

/// The base state as the quick check needs it: its copy set, and its user files' data runs
/// and inode records.
pub(super) struct BaseFiles {
    blocks: BlockSet,
    runs: Vec<FileRun>,
    inodes: Vec<(InodeNr, Inode)>,
}

impl BaseFiles {
    /// Reads the base state's filesystem: its walk's copy set `blocks` and its user files.
    pub(super) fn read(fs: &Filesystem<&dyn BlockView>, blocks: BlockSet) -> BaseFiles {
        let (runs, inodes) = user_files(fs);
        BaseFiles {
            blocks,
            runs,
            inodes,
        }
    }

    /// The guest clusters (of `cluster` bytes) of the new state — filesystem `fs`, copy set
    /// `new` — known equal to the base's, sorted, each with whether it holds copied blocks.
    pub(super) fn shared_clusters(
        &self,
        fs: &Filesystem<&dyn BlockView>,
        new: &BlockSet,
        cluster: u64,
    ) -> Vec<SharedCluster> {
        let (runs, inodes) = user_files(fs);
        let same = unchanged_data(&runs, &inodes, &self.runs, &self.inodes);
        let bs = u64::from(fs.sb.block_size);
        let mut out = Vec::new();
        for r in equal_clusters(cluster, bs, new, &self.blocks, &same) {
            for c in r {
                let first = c * cluster / bs;
                let last = ((c + 1) * cluster).div_ceil(bs);
                let copied = (first..last).any(|b| new.contains(b));
                out.push(SharedCluster { guest: c, copied });
            }
        }
        out
    }
}

/// The data runs and inode records of the user files of `fs` (see the module comment).
fn user_files(fs: &Filesystem<&dyn BlockView>) -> (Vec<FileRun>, Vec<(InodeNr, Inode)>) {
    let all = |_: u64, _: u64| true;
    let keep = |_: InodeNr, _: &[FileRun]| true;
    let o = ext::file_runs_and_inodes(fs, &all, &keep);
    let user = |ino: InodeNr| !fs.sb.is_special_inode(ino);
    let runs = o
        .runs
        .into_iter()
        .filter(|r| matches!(r.kind, RunKind::Data { .. }) && !r.snapfile && user(r.ino))
        .collect();
    let inodes = o
        .inodes
        .into_iter()
        .filter(|(n, i)| i.file_type() == FileType::Regular && !i.is_snapshot_file() && user(*n))
        .collect();
    (runs, inodes)
}

/// Blocks (filesystem block ranges, sorted, disjoint) that hold unchanged file data: data runs
/// of user files whose records are equal in `new` and `base`, present identically in both.
fn unchanged_data(
    new_runs: &[FileRun],
    new_inodes: &[(InodeNr, Inode)],
    base_runs: &[FileRun],
    base_inodes: &[(InodeNr, Inode)],
) -> Vec<Range<u64>> {
    let base: HashMap<InodeNr, &Inode> = base_inodes.iter().map(|(n, i)| (*n, i)).collect();
    let same: HashSet<InodeNr> = new_inodes
        .iter()
        .filter(|(n, i)| base.get(n).is_some_and(|b| *b == i))
        .map(|(n, _)| *n)
        .collect();
    let key = |r: &FileRun| (r.physical, r.ino, r.logical, r.len);
    let mut base_data: Vec<(u64, InodeNr, u64, u64)> = base_runs
        .iter()
        .filter(|r| same.contains(&r.ino))
        .map(key)
        .collect();
    base_data.sort_unstable();
    let mut found: Vec<Range<u64>> = new_runs
        .iter()
        .filter(|r| same.contains(&r.ino) && base_data.binary_search(&key(r)).is_ok())
        .map(|r| r.physical..r.end())
        .collect();
    found.sort_unstable_by_key(|r| r.start);
    ranges::union(&found, &[])
}

/// Guest clusters (ranges of cluster numbers, sorted) of `cluster` bytes each that are known
/// equal in both states: every `block`-byte block in them is in `same` (unchanged data) or in
/// neither copy set. Only clusters touching `same` can qualify.
fn equal_clusters(
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
                .all(|b| ranges::contains(same, b) || (!new.contains(b) && !base.contains(b)))
            {
                ranges::push(&mut out, c..c + 1);
            }
        }
        next = last;
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

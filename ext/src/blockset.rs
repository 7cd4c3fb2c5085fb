//! The set of blocks to copy, as classified extents.
//!
//! The walker adds extents in any order and with overlaps (a shared xattr block is added once
//! per inode). [`BlockSet::finish`] sorts them, clips overlaps (the first extent in sort order
//! keeps the blocks), merges neighbours of the same class and, on bigalloc, widens every
//! extent to whole clusters, as e2image does. The result is a sorted list of disjoint extents.

use std::collections::BTreeMap;

/// What a block holds. The JSON summary counts blocks per class under these names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BlockClass {
    /// Block 0 on filesystems with 1 KiB blocks: the boot area before the superblock.
    Boot,
    /// The primary superblock's block.
    Superblock,
    /// The primary group descriptor table.
    GroupDescriptors,
    /// Backup superblocks.
    BackupSuperblock,
    /// Backup group descriptor tables (classic and meta_bg).
    BackupGroupDescriptors,
    /// Reserved GDT blocks, primary and backups (owned by the resize inode).
    ReservedGdt,
    /// Block bitmaps.
    BlockBitmap,
    /// Inode bitmaps.
    InodeBitmap,
    /// Used parts of inode tables.
    InodeTable,
    /// The multi-mount protection block.
    Mmp,
    /// Snapshot exclude bitmaps.
    ExcludeBitmap,
    /// Extent index and leaf blocks.
    ExtentTree,
    /// IND, DIND and TIND blocks.
    Indirect,
    /// Directory blocks (linear and htree).
    Directory,
    /// Extended attribute blocks.
    Xattr,
    /// Slow symlink target blocks.
    Symlink,
    /// The internal journal.
    Journal,
    /// Quota files.
    Quota,
    /// The orphan file.
    OrphanFile,
    /// Blocks of the resize inode other than the reserved GDT (its DIND block).
    ResizeInode,
    /// The bad-blocks inode's indirect blocks (never the bad blocks themselves).
    BadBlocksTree,
    /// Metadata blocks of orphan inodes (link count 0, still allocated).
    Orphan,
    /// EA-inode value blocks.
    EaInode,
    /// Blocks of snapshot files (next3 / ext4-snapshots).
    SnapshotFile,
    /// File data.
    Data,
}

impl BlockClass {
    /// Every class, in summary order.
    pub const ALL: [BlockClass; 25] = [
        BlockClass::Boot,
        BlockClass::Superblock,
        BlockClass::GroupDescriptors,
        BlockClass::BackupSuperblock,
        BlockClass::BackupGroupDescriptors,
        BlockClass::ReservedGdt,
        BlockClass::BlockBitmap,
        BlockClass::InodeBitmap,
        BlockClass::InodeTable,
        BlockClass::Mmp,
        BlockClass::ExcludeBitmap,
        BlockClass::ExtentTree,
        BlockClass::Indirect,
        BlockClass::Directory,
        BlockClass::Xattr,
        BlockClass::Symlink,
        BlockClass::Journal,
        BlockClass::Quota,
        BlockClass::OrphanFile,
        BlockClass::ResizeInode,
        BlockClass::BadBlocksTree,
        BlockClass::Orphan,
        BlockClass::EaInode,
        BlockClass::SnapshotFile,
        BlockClass::Data,
    ];

    /// The snake_case name used in summaries.
    pub fn name(self) -> &'static str {
        match self {
            BlockClass::Boot => "boot",
            BlockClass::Superblock => "superblock",
            BlockClass::GroupDescriptors => "group_descriptors",
            BlockClass::BackupSuperblock => "backup_superblocks",
            BlockClass::BackupGroupDescriptors => "backup_group_descriptors",
            BlockClass::ReservedGdt => "reserved_gdt",
            BlockClass::BlockBitmap => "block_bitmaps",
            BlockClass::InodeBitmap => "inode_bitmaps",
            BlockClass::InodeTable => "inode_tables",
            BlockClass::Mmp => "mmp",
            BlockClass::ExcludeBitmap => "exclude_bitmaps",
            BlockClass::ExtentTree => "extent_tree",
            BlockClass::Indirect => "indirect",
            BlockClass::Directory => "directories",
            BlockClass::Xattr => "xattr",
            BlockClass::Symlink => "symlinks",
            BlockClass::Journal => "journal",
            BlockClass::Quota => "quota",
            BlockClass::OrphanFile => "orphan_file",
            BlockClass::ResizeInode => "resize_inode",
            BlockClass::BadBlocksTree => "bad_blocks_tree",
            BlockClass::Orphan => "orphan_inodes",
            BlockClass::EaInode => "ea_inodes",
            BlockClass::SnapshotFile => "snapshot_files",
            BlockClass::Data => "data",
        }
    }
}

/// A run of blocks `[start, start + len)` of one class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// First block.
    pub start: u64,
    /// Number of blocks (> 0).
    pub len: u64,
    /// What the blocks hold.
    pub class: BlockClass,
}

impl Extent {
    /// One past the last block.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// A collection of extents under construction, or finished (sorted and disjoint).
#[derive(Clone, Debug, Default)]
pub struct BlockSet {
    extents: Vec<Extent>,
    finished: bool,
}

impl BlockSet {
    /// An empty set.
    pub fn new() -> BlockSet {
        BlockSet::default()
    }

    /// Adds `[start, start + len)`; empty runs are ignored. The caller has bounds-checked the
    /// run against the filesystem size.
    pub fn add(&mut self, start: u64, len: u64, class: BlockClass) {
        if len == 0 {
            return;
        }
        if let Some(last) = self.extents.last_mut() {
            if last.class == class && last.end() == start {
                last.len += len;
                return;
            }
        }
        self.extents.push(Extent { start, len, class });
        self.finished = false;
    }

    /// Moves every extent of `other` into this set.
    pub fn append(&mut self, other: &mut BlockSet) {
        self.extents.append(&mut other.extents);
        self.finished = false;
    }

    /// Sorts, removes overlaps, merges neighbours, widens to `cluster_ratio`-block clusters
    /// and clamps to `blocks_count`.
    pub fn finish(&mut self, cluster_ratio: u32, blocks_count: u64) {
        let ratio = u64::from(cluster_ratio.max(1));
        let mut v = std::mem::take(&mut self.extents);
        if ratio > 1 {
            for e in &mut v {
                let start = e.start - e.start % ratio;
                let end = e.end().div_ceil(ratio).saturating_mul(ratio);
                *e = Extent {
                    start,
                    len: end - start,
                    class: e.class,
                };
            }
        }
        v.sort_unstable_by_key(|e| (e.start, e.class));
        let mut out: Vec<Extent> = Vec::with_capacity(v.len());
        let mut covered = 0u64;
        for e in v {
            let start = e.start.max(covered);
            let end = e.end().min(blocks_count);
            if start >= end {
                continue;
            }
            covered = end;
            match out.last_mut() {
                Some(last) if last.class == e.class && last.end() == start => {
                    last.len += end - start
                }
                _ => out.push(Extent {
                    start,
                    len: end - start,
                    class: e.class,
                }),
            }
        }
        self.extents = out;
        self.finished = true;
    }

    /// The extents; sorted and disjoint once [`finish`](Self::finish) ran.
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// True once [`finish`](Self::finish) ran and nothing was added since.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Total blocks (meaningful once finished).
    pub fn block_count(&self) -> u64 {
        self.extents.iter().map(|e| e.len).sum()
    }

    /// Blocks per class (meaningful once finished).
    pub fn counts(&self) -> BTreeMap<BlockClass, u64> {
        let mut m = BTreeMap::new();
        for e in &self.extents {
            *m.entry(e.class).or_insert(0) += e.len;
        }
        m
    }

    /// True if block `b` is in the (finished) set.
    pub fn contains(&self, b: u64) -> bool {
        let i = self.extents.partition_point(|e| e.end() <= b);
        self.extents.get(i).is_some_and(|e| e.start <= b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_sorts_clips_and_merges() {
        let mut s = BlockSet::new();
        s.add(10, 5, BlockClass::Data);
        s.add(0, 3, BlockClass::Superblock);
        s.add(12, 10, BlockClass::Data);
        s.add(3, 2, BlockClass::Superblock);
        s.add(100, 5, BlockClass::Journal);
        s.finish(1, 102);
        assert_eq!(
            s.extents(),
            &[
                Extent {
                    start: 0,
                    len: 5,
                    class: BlockClass::Superblock
                },
                Extent {
                    start: 10,
                    len: 12,
                    class: BlockClass::Data
                },
                Extent {
                    start: 100,
                    len: 2,
                    class: BlockClass::Journal
                },
            ]
        );
        assert!(s.contains(21) && !s.contains(22) && s.contains(0) && !s.contains(5));
        assert_eq!(s.block_count(), 19);
    }

    #[test]
    fn finish_widens_to_clusters() {
        let mut s = BlockSet::new();
        s.add(5, 1, BlockClass::Directory);
        s.finish(4, 100);
        assert_eq!(
            s.extents(),
            &[Extent {
                start: 4,
                len: 4,
                class: BlockClass::Directory
            }]
        );
    }
}

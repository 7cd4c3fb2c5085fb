//! A snapshot file's block map, from image block to the block holding its content.
//!
//! A snapshot file maps image block P at logical block P + [`snapshot_block_offset`] (so
//! image block 0 is the first DIND-mapped block), with further TIND roots in `i_block[0..3]`
//! for filesystems over 2^20 + 2^30 blocks. The map is built once per snapshot by walking its
//! indirect tree, bounded like every walk: pointers are checked against the filesystem size
//! and a visited set reads each tree block once.

use super::list::SnapshotFile;
use crate::bytes::le32;
use crate::collect::Collector;
use crate::error::{Corrupt, CorruptKind};
use crate::fs::Filesystem;
use crate::indirect::{snapshot_block_offset, snapshot_extra_roots, standard_roots, Root};
use crate::inode::I_BLOCK_OFFSET;
use crate::types::{BlockNr, InodeNr};
use crate::view::BlockView;
use crate::warning::Warning;
use std::collections::HashSet;

/// A snapshot file's map from image block P to the block X holding P's content in the
/// snapshot (X == P for a moved block, X != P for a copy).
#[derive(Clone, Debug, Default)]
pub struct SnapshotMap {
    entries: Vec<(u64, u64)>,
}

impl SnapshotMap {
    /// Walks the snapshot file's indirect tree. Tree and mapped blocks are checked against the
    /// filesystem size; problems are returned as warnings and the bad subtree is skipped.
    pub fn build<V: BlockView>(
        fs: &Filesystem<V>,
        snap: &SnapshotFile,
    ) -> (SnapshotMap, Vec<Warning>) {
        let sb = &fs.sb;
        let view: &dyn BlockView = fs.view();
        let mut c = Collector::new(view, sb);
        let apb = u64::from(sb.block_size / 4);
        let mut entries = Vec::new();
        let mut visited = HashSet::new();
        for r in image_roots(sb.block_size) {
            let root = u64::from(snap.inode.block_ptr(r.slot));
            if root == 0 {
                continue;
            }
            let mut m = MapWalk {
                c: &mut c,
                ino: snap.ino,
                apb,
                visited: &mut visited,
                out: &mut entries,
            };
            let base = r.logical - snapshot_block_offset(sb.block_size);
            m.node(
                root,
                r.level,
                base,
                Some((I_BLOCK_OFFSET + 4 * r.slot) as u32),
            );
        }
        entries.sort_unstable();
        entries.dedup_by_key(|e| e.0);
        let (_, warnings) = c.into_parts();
        (SnapshotMap { entries }, warnings)
    }

    /// Where image block `p` is stored in this snapshot, if it is.
    pub fn get(&self, p: BlockNr) -> Option<BlockNr> {
        self.entries
            .binary_search_by_key(&p.0, |e| e.0)
            .ok()
            .map(|i| BlockNr(self.entries[i].1))
    }

    /// Number of mapped blocks.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of moved blocks (X == P).
    pub fn moved(&self) -> usize {
        self.entries.iter().filter(|e| e.0 == e.1).count()
    }
}

/// The roots of a snapshot file's map of image blocks: DIND (image block 0 on), TIND, and
/// the extra TIND roots of `i_block[0..3]` (always looked at: a zero pointer maps nothing).
fn image_roots(block_size: u32) -> impl Iterator<Item = Root> {
    standard_roots(block_size)
        .into_iter()
        .filter(|r| r.level >= 2)
        .chain(snapshot_extra_roots(block_size))
}

struct MapWalk<'a, 'c> {
    c: &'a mut Collector<'c>,
    ino: InodeNr,
    apb: u64,
    visited: &'a mut HashSet<u64>,
    out: &'a mut Vec<(u64, u64)>,
}

impl MapWalk<'_, '_> {
    /// Visits the block `b` of `level` (1 = IND) whose first entry maps image block `base`.
    /// `in_inode` is the byte offset of the pointer when it comes from `i_block`.
    fn node(&mut self, b: u64, level: u8, base: u64, in_inode: Option<u32>) {
        if let Err(kind) = self.c.check_range(b, 1) {
            let c = Corrupt::new(kind).at_inode(self.ino);
            self.c.corrupt(match in_inode {
                Some(o) => c.at_offset(o),
                None => c,
            });
            return;
        }
        if !self.visited.insert(b) {
            return;
        }
        let Some(buf) = self.c.read_block(self.ino, b) else {
            return;
        };
        let span = self.apb.pow(u32::from(level) - 1);
        for i in 0..self.apb as usize {
            let x = u64::from(le32(&buf, i * 4));
            if x == 0 {
                continue;
            }
            let p = base + i as u64 * span;
            if level > 1 {
                self.node(x, level - 1, p, None);
            } else if self.c.check_range(x, 1).is_ok() {
                self.out.push((p, x));
            } else {
                let kind = CorruptKind::IndirectPointer { value: x };
                self.c.corrupt(
                    Corrupt::new(kind)
                        .at_inode(self.ino)
                        .at_block(b, (i * 4) as u32),
                );
            }
        }
    }
}

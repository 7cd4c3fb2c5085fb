//! What a patch changes, in the filesystem's terms, for the reports of rollback and apply:
//! the written blocks per class of a walk, and the files owning them.

use crate::ranges::overlaps;
use ext::{BlockSet, BlockView, Filesystem, InodeNr};
use std::collections::BTreeMap;
use std::ops::Range;

/// Written blocks per class of the state's walk ("other" for blocks the walk does not list).
pub fn by_class(walk: &BlockSet, written: &[Range<u64>]) -> BTreeMap<&'static str, u64> {
    let mut m = BTreeMap::new();
    let ext = walk.extents();
    for r in written {
        let mut b = r.start;
        while b < r.end {
            let i = ext.partition_point(|e| e.end() <= b);
            match ext.get(i) {
                Some(e) if e.start <= b => {
                    let end = e.end().min(r.end);
                    *m.entry(e.class.name()).or_insert(0) += end - b;
                    b = end;
                }
                next => {
                    let end = next.map_or(r.end, |e| e.start.min(r.end));
                    *m.entry("other").or_insert(0) += end - b;
                    b = end;
                }
            }
        }
    }
    m
}

/// Inodes of `fs` owning any of the `written` blocks, with their paths ("(no path)" for
/// inodes without a directory entry, such as the journal).
pub fn owners_of<V: BlockView>(fs: &Filesystem<V>, written: &[Range<u64>]) -> Vec<(u32, String)> {
    let want = |p: u64, len: u64| overlaps(written, p..p.saturating_add(len));
    let (runs, _) = ext::file_runs(fs, &want);
    let mut inos: Vec<InodeNr> = runs.iter().map(|r| r.ino).collect();
    inos.sort_unstable();
    inos.dedup();
    let (paths, _) = ext::inode_paths(fs, &inos);
    inos.into_iter()
        .map(|i| {
            let p = paths.get(&i).cloned().unwrap_or_else(|| "(no path)".into());
            (i.0, p)
        })
        .collect()
}

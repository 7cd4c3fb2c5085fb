//! Block owners: which inode holds each block, and at which file offset, for the rollback
//! safety check (is a data block of an old state's file now used by another inode or at
//! another offset?).
//!
//! The scan visits every in-use inode exactly as the copy-set walk does (the shared
//! inode-table scan: bitmap bit or non-zero link count, INODE_UNINIT groups and
//! `bg_itable_unused` honoured) and records each inode's runs as its block map gives them.
//! Runs are filtered per inode through the caller's physical-range predicate, so memory is
//! bounded by the wanted runs plus one inode's runs. Corruption becomes a [`Warning`] and the
//! damaged part is skipped.

use crate::blockmap::{owned, record_inode, FileRun};
use crate::collect::Collector;
use crate::fs::Filesystem;
use crate::inode::Inode;
use crate::itable::scan_all;
use crate::types::InodeNr;
use crate::view::BlockView;
use crate::warning::Warning;

/// The runs of every in-use inode whose physical range `want(physical, len)` accepts
/// (`physical` and `len` in filesystem blocks): data, tree and xattr runs of regular files,
/// directories and slow symlinks (snapshot files and special inodes such as the journal
/// included), the bad-blocks inode's list, and the xattr blocks of all other inodes.
///
/// `want` is called once per run, as soon as the run's inode is walked; a run partly inside
/// the caller's range may be kept whole. Runs are sorted by `physical` (then inode, then
/// logical). Corrupt trees are reported as warnings and skipped.
pub fn file_runs<V: BlockView>(
    fs: &Filesystem<V>,
    want: &dyn Fn(u64, u64) -> bool,
) -> (Vec<FileRun>, Vec<Warning>) {
    let o = file_runs_and_inodes(fs, want, &|_, _| false);
    (o.runs, o.warnings)
}

/// What [`file_runs_and_inodes`] found.
#[derive(Debug, Default)]
pub struct Owners {
    /// The wanted runs, as [`file_runs`] returns them.
    pub runs: Vec<FileRun>,
    /// The kept in-use inodes, in inode order.
    pub inodes: Vec<(InodeNr, Inode)>,
    /// Corruption found on the way.
    pub warnings: Vec<Warning>,
}

/// [`file_runs`], and in the same scan the records of the in-use, non-blank inodes that
/// `keep(ino, runs)` accepts; `runs` are the inode's wanted runs (possibly none). An inode
/// not visited is free: neither in the inode bitmap nor linked.
pub fn file_runs_and_inodes<V: BlockView>(
    fs: &Filesystem<V>,
    want: &dyn Fn(u64, u64) -> bool,
    keep: &dyn Fn(InodeNr, &[FileRun]) -> bool,
) -> Owners {
    let view: &dyn BlockView = fs.view();
    let mut c = Collector::recording_runs(view, &fs.sb);
    let (mut runs, mut inodes) = (Vec::new(), Vec::new());
    scan_all(&mut c, &fs.groups, &mut |c, ino, inode| {
        let snapfile = record_inode(c, ino, inode);
        let first = runs.len();
        runs.extend(
            c.take_runs()
                .into_iter()
                .filter(|r| want(r.physical, r.len))
                .map(|r| owned(r, ino, snapfile)),
        );
        if !inode.is_blank() && keep(ino, &runs[first..]) {
            inodes.push((ino, inode.clone()));
        }
    });
    runs.sort_unstable_by_key(|r| (r.physical, r.ino, r.logical, r.len));
    Owners {
        runs,
        inodes,
        warnings: c.take_warnings(),
    }
}

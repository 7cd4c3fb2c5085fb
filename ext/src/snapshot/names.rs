//! Names of snapshot files, from their directory entries.

use crate::collect::Collector;
use crate::dir::{dir_entries, DirEntry};
use crate::fs::Filesystem;
use crate::inode::{inode_flags, FileType};
use crate::itable::scan_all;
use crate::types::{InodeNr, EXT2_ROOT_INO};
use crate::view::BlockView;
use std::collections::{HashMap, HashSet};

/// Names of the given inodes from directory entries: first in `/.snapshots`, then in every
/// directory flagged SNAPFILE or, failing that, every directory. Inodes without an entry are
/// absent from the result.
pub fn snapshot_names<V: BlockView>(
    fs: &Filesystem<V>,
    inos: &[InodeNr],
) -> HashMap<InodeNr, String> {
    let mut names = HashMap::new();
    let wanted: HashSet<InodeNr> = inos.iter().copied().collect();
    let root_entries = dir_entries(fs, EXT2_ROOT_INO);
    if let Some(snapdir) = root_entries.iter().find(|e| e.name == b".snapshots") {
        collect_names(&dir_entries(fs, snapdir.inode), &wanted, &mut names);
    }
    if names.len() < wanted.len() {
        collect_names(&root_entries, &wanted, &mut names);
    }
    if names.len() < wanted.len() {
        for ino in directory_inodes(fs) {
            collect_names(&dir_entries(fs, ino), &wanted, &mut names);
            if names.len() == wanted.len() {
                break;
            }
        }
    }
    names
}

fn collect_names(
    entries: &[DirEntry],
    wanted: &HashSet<InodeNr>,
    names: &mut HashMap<InodeNr, String>,
) {
    for e in entries {
        if wanted.contains(&e.inode) && e.name != b"." && e.name != b".." {
            names
                .entry(e.inode)
                .or_insert_with(|| String::from_utf8_lossy(&e.name).into_owned());
        }
    }
}

/// Directory inodes of the filesystem (in use, linked), SNAPFILE-flagged ones first.
fn directory_inodes<V: BlockView>(fs: &Filesystem<V>) -> Vec<InodeNr> {
    let view: &dyn BlockView = fs.view();
    let mut c = Collector::new(view, &fs.sb);
    let (mut flagged, mut plain) = (Vec::new(), Vec::new());
    scan_all(&mut c, &fs.groups, &mut |_, ino, inode| {
        if inode.file_type() == FileType::Directory && inode.i_links_count > 0 {
            if inode.has_flag(inode_flags::SNAPFILE) {
                flagged.push(ino)
            } else {
                plain.push(ino)
            }
        }
    });
    flagged.extend(plain);
    flagged
}

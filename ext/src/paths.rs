//! Absolute paths of given inodes, for naming the files a rollback would damage.
//!
//! A breadth-first walk of the directory tree from the root (inode 2) reads directories
//! through [`read_dir`] and stops as soon as every wanted inode is named, so a
//! hard-linked inode gets its shallowest (first found) path. A visited set reads each
//! directory at most once, whatever loops or duplicate entries a corrupt tree has, so the
//! walk never reads more than the directories of the filesystem. Instead of a path per
//! directory, each visited inode keeps its parent and name; paths are assembled at the end
//! (bounded by [`MAX_PATH_BYTES`]).

use crate::dir::{read_dir, DirEntry, EXT4_FT_DIR, EXT4_FT_UNKNOWN};
use crate::fs::Filesystem;
use crate::types::{InodeNr, EXT2_ROOT_INO};
use crate::view::BlockView;
use crate::warning::{Warning, WarningLog};
use std::collections::{HashMap, HashSet, VecDeque};

/// Warning kind of [`inode_paths`] (directories it could not read or follow).
const KIND: &str = "directory tree";
/// Longest path returned, in bytes; longer ones keep their last components after `.../`.
pub(crate) const MAX_PATH_BYTES: usize = 1 << 16;

/// Absolute paths ("/dir/file") of the inodes `inos`, found by a breadth-first walk of the
/// directory tree from the root. A hard-linked inode gets the first path found; inodes no
/// directory names (and numbers outside 1..=`s_inodes_count`) are absent. Names are decoded
/// as lossy UTF-8. Unreadable directories and corrupt trees are warnings.
pub fn inode_paths<V: BlockView>(
    fs: &Filesystem<V>,
    inos: &[InodeNr],
) -> (HashMap<InodeNr, String>, Vec<Warning>) {
    let wanted: HashSet<InodeNr> = inos
        .iter()
        .copied()
        .filter(|&i| i.0 >= 1 && i.0 <= fs.sb.s_inodes_count)
        .collect();
    let mut walk = TreeWalk {
        wanted,
        found: HashSet::new(),
        parents: HashMap::new(),
        queue: VecDeque::from([EXT2_ROOT_INO]),
        warnings: WarningLog::default(),
        max_ino: fs.sb.s_inodes_count,
    };
    walk.parents.insert(EXT2_ROOT_INO, (InodeNr(0), Vec::new()));
    if walk.wanted.contains(&EXT2_ROOT_INO) {
        walk.found.insert(EXT2_ROOT_INO);
    }
    while !walk.done() {
        let Some(dir) = walk.queue.pop_front() else {
            break;
        };
        let w = read_dir(fs, dir, &mut |entries| walk.entries(dir, entries));
        for w in w {
            walk.warnings.push(KIND, w);
        }
    }
    let found: Vec<InodeNr> = walk.found.iter().copied().collect();
    let mut paths = HashMap::with_capacity(found.len());
    for ino in found {
        let path = walk.path(ino);
        paths.insert(ino, path);
    }
    (paths, walk.warnings.into_flat())
}

struct TreeWalk {
    wanted: HashSet<InodeNr>,
    found: HashSet<InodeNr>,
    /// Every inode seen, with the directory it was first seen in and its name there.
    parents: HashMap<InodeNr, (InodeNr, Vec<u8>)>,
    /// Directories (or, without a file type, maybe-directories) still to read.
    queue: VecDeque<InodeNr>,
    /// Bounded per kind, so that a corrupt tree cannot make it grow without end.
    warnings: WarningLog,
    max_ino: u32,
}

impl TreeWalk {
    fn done(&self) -> bool {
        self.found.len() == self.wanted.len()
    }

    /// Takes the entries of one block of directory `dir`; false once every inode is named.
    fn entries(&mut self, dir: InodeNr, entries: &[DirEntry]) -> bool {
        for e in entries {
            if e.name == b"." || e.name == b".." || e.inode.0 == 0 || e.inode.0 > self.max_ino {
                continue;
            }
            if self.parents.contains_key(&e.inode) {
                continue; // a hard link, or a directory seen twice (loop): first one wins
            }
            let maybe_dir = matches!(e.file_type, EXT4_FT_DIR | EXT4_FT_UNKNOWN);
            let wanted = self.wanted.contains(&e.inode);
            if !maybe_dir && !wanted {
                continue;
            }
            self.parents.insert(e.inode, (dir, e.name.clone()));
            if wanted {
                self.found.insert(e.inode);
            }
            if maybe_dir {
                self.queue.push_back(e.inode);
            }
        }
        !self.done()
    }

    /// The path of a found inode, from its chain of parents (which ends at the root: each
    /// parent was visited before its children). Over-long paths keep their tail.
    fn path(&mut self, ino: InodeNr) -> String {
        if ino == EXT2_ROOT_INO {
            return "/".into();
        }
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut bytes = 0usize;
        let mut cur = ino;
        let mut truncated = false;
        while cur != EXT2_ROOT_INO {
            let Some((parent, name)) = self.parents.get(&cur) else {
                break;
            };
            bytes = bytes.saturating_add(name.len() + 1);
            if bytes > MAX_PATH_BYTES || parts.len() > self.parents.len() {
                truncated = true;
                break;
            }
            parts.push(name);
            cur = *parent;
        }
        let mut out = String::from(if truncated { "..." } else { "" });
        for name in parts.iter().rev() {
            out.push('/');
            out.push_str(&String::from_utf8_lossy(name));
        }
        if truncated {
            self.warnings.push(
                KIND,
                Warning {
                    inode: Some(ino),
                    block: None,
                    offset: None,
                    reason: format!(
                        "path longer than {MAX_PATH_BYTES} bytes; only its end is kept"
                    ),
                },
            );
        }
        out
    }
}

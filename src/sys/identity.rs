//! Which file or device a path names, so that an output never resolves to an input.
//!
//! Two paths name the same thing when they reach the same inode (the same path, a symlink, a
//! hard link, `dir/../x`), the same block device (two device nodes with one device number), a
//! loop device and its backing file, or a partition and the disk that holds it. Paths that do
//! not exist name nothing and overlap with nothing.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What a path resolves to, following symlinks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Device and inode of the file (or of the device node).
    node: (u64, u64),
    /// For a block device: its device number.
    rdev: Option<u64>,
    /// For a partition: the device number of the whole disk.
    disk: Option<u64>,
    /// For a loop device: the device and inode of its backing file.
    backing: Option<(u64, u64)>,
}

impl Identity {
    /// The identity of an existing path, `None` when it does not exist (or cannot be examined).
    pub fn of(path: &Path) -> Option<Identity> {
        Self::from_meta(&std::fs::metadata(path).ok()?)
    }

    /// The identity of an open file's metadata.
    pub fn from_meta(meta: &std::fs::Metadata) -> Option<Identity> {
        let node = (meta.dev(), meta.ino());
        if !meta.file_type().is_block_device() {
            return Some(Identity {
                node,
                rdev: None,
                disk: None,
                backing: None,
            });
        }
        let rdev = meta.rdev();
        let sys = sys_block_dir(rdev);
        Some(Identity {
            node,
            rdev: Some(rdev),
            disk: partition_disk(&sys),
            backing: loop_backing(&sys),
        })
    }

    /// True if writing one could change the bytes the other reads.
    pub fn overlaps(&self, other: &Identity) -> bool {
        if self.node == other.node {
            return true;
        }
        let file_of = |a: &Identity, b: &Identity| a.backing.is_some_and(|f| f == b.node);
        if file_of(self, other) || file_of(other, self) {
            return true;
        }
        match (self.rdev, other.rdev) {
            (Some(a), Some(b)) => {
                a == b || self.disk == Some(b) || other.disk == Some(a) || {
                    // Two partitions of one disk are distinct; a loop device's partitions
                    // share its backing file.
                    self.backing.is_some() && self.backing == other.backing
                }
            }
            _ => false,
        }
    }
}

/// `/sys/dev/block/MAJOR:MINOR` of a device number.
fn sys_block_dir(rdev: u64) -> PathBuf {
    PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        rustix::fs::major(rdev),
        rustix::fs::minor(rdev)
    ))
}

/// The disk holding a partition: the `dev` file of the sysfs directory above it.
fn partition_disk(sys: &Path) -> Option<u64> {
    if !sys.join("partition").exists() {
        return None;
    }
    let dev = std::fs::read_to_string(sys.join("../dev")).ok()?;
    let (a, b) = dev.trim().split_once(':')?;
    Some(rustix::fs::makedev(a.parse().ok()?, b.parse().ok()?))
}

/// The backing file of a loop device (or of the loop device a partition is on).
fn loop_backing(sys: &Path) -> Option<(u64, u64)> {
    let read = |d: &Path| std::fs::read_to_string(d.join("loop/backing_file")).ok();
    let path = read(sys).or_else(|| read(&sys.join("..")))?;
    let meta = std::fs::metadata(path.trim()).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// True if `a` and `b` both exist and overlap (see [`Identity::overlaps`]).
pub fn same_target(a: &Path, b: &Path) -> bool {
    match (Identity::of(a), Identity::of(b)) {
        (Some(x), Some(y)) => x.overlaps(&y),
        _ => false,
    }
}

/// True if `a` and `b` name the same thing: [`same_target`], or, for paths that do not exist
/// yet, the same name in the same directory (`x` and `./d/../x`).
pub fn same_name_or_target(a: &Path, b: &Path) -> bool {
    if same_target(a, b) {
        return true;
    }
    let place = |p: &Path| {
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        Some((dir.canonicalize().ok()?, p.file_name()?.to_os_string()))
    };
    matches!((place(a), place(b)), (Some(x), Some(y)) if x == y)
}

/// What kind of node a path is, for the refusal of outputs that are not files.
pub fn node_kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_dotdot_are_the_same_file() {
        let d = std::env::temp_dir().join(format!("e2i-ident-{}", std::process::id()));
        std::fs::create_dir_all(d.join("sub")).unwrap();
        let f = d.join("img");
        std::fs::write(&f, b"x").unwrap();
        std::os::unix::fs::symlink(&f, d.join("sym")).unwrap();
        std::fs::hard_link(&f, d.join("hard")).unwrap();
        std::fs::write(d.join("other"), b"x").unwrap();
        for alias in ["img", "sym", "hard", "sub/../img"] {
            assert!(same_target(&f, &d.join(alias)), "{alias}");
        }
        assert!(!same_target(&f, &d.join("other")));
        assert!(!same_target(&f, &d.join("missing")));
        std::fs::remove_dir_all(&d).unwrap();
    }
}

//! The kernel as the writer of real states and the truth for file trees (as root, with loop
//! devices): filesystems made with mke2fs and changed through a loop mount, dirty copies taken
//! while mounted, and the tree the kernel shows when it mounts an image (on a copy: a mount
//! of a filesystem whose journal needs recovery replays it onto the device).

use super::loopdev::Loop;
use super::{code, sh, sparse_copy};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A filesystem image mounted through a loop device; unmounted and detached on drop.
pub struct Mounted {
    /// The mount point.
    pub dir: PathBuf,
    _dev: Loop,
}

impl Mounted {
    /// Mounts `img` at `dir` (created) with `-o opts`; `None` when loop devices or mounting
    /// are not available here (not root).
    pub fn new(img: &Path, dir: &Path, opts: &str) -> Option<Mounted> {
        let mut dev = Loop::attach(img)?;
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-o", opts, &dev.dev])
            .arg(dir)
            .status()
            .ok()?
            .success();
        if !ok {
            return None;
        }
        dev.mnt = Some(dir.to_path_buf());
        Some(Mounted {
            dir: dir.to_path_buf(),
            _dev: dev,
        })
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

/// True if this process can make loop devices and mount them (root).
pub fn can_mount() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        && Path::new("/dev/loop-control").exists()
}

/// A new ext4 image of `mib` MiB at `img` (`mke2fs -t ext4` with `extra` options, lazy
/// initialisation off so the kernel changes no block behind the test's back).
pub fn mkfs(img: &Path, mib: u64, extra: &[&str]) {
    let _ = std::fs::remove_file(img);
    let f = std::fs::File::create(img).unwrap();
    f.set_len(mib << 20).unwrap();
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"-q",
        &"-F",
        &"-t",
        &"ext4",
        &"-E",
        &"lazy_itable_init=0,lazy_journal_init=0",
    ];
    for e in extra {
        args.push(e);
    }
    args.push(&img);
    let o = sh("mke2fs", &args);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
}

/// Writes `data` to `path` and fsyncs it (and its directory).
pub fn write_synced(path: &Path, data: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
    if let Some(d) = path.parent() {
        std::fs::File::open(d).unwrap().sync_all().unwrap();
    }
}

/// Appends `data` to `path` and fsyncs it.
pub fn append_synced(path: &Path, data: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

/// One entry of a tree as the kernel shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// `d`, `f`, `l` or `o` (other), with the permission bits.
    pub kind: (char, u32),
    /// Owner and group.
    pub owner: (u32, u32),
    /// Size in bytes (files and symlinks), link count, inode number.
    pub size_nlink_ino: (u64, u64, u64),
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// SHA-256 of a file's content, or a symlink's target.
    pub content: Vec<u8>,
}

/// The tree the kernel shows for the filesystem in `img`: a copy of it is loop-mounted
/// (read-write when `replay_rw`, which fast commits need; else read-only: the kernel still
/// replays the journal into the copy), walked and unmounted. `None` when mounting is not
/// possible here.
pub fn tree(img: &Path, scratch: &Path, replay_rw: bool) -> Option<BTreeMap<String, Entry>> {
    let copy = scratch.join(format!(
        "tree-{}.img",
        img.file_name().unwrap().to_string_lossy()
    ));
    sparse_copy(img, &copy);
    let dir = scratch.join(format!(
        "tree-mnt-{}",
        img.file_name().unwrap().to_string_lossy()
    ));
    let m = Mounted::new(&copy, &dir, if replay_rw { "rw" } else { "ro" })?;
    let mut out = BTreeMap::new();
    walk(&m.dir, &m.dir, &mut out);
    drop(m);
    let _ = std::fs::remove_file(&copy);
    Some(out)
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let t = meta.file_type();
        let kind = if t.is_dir() {
            'd'
        } else if t.is_file() {
            'f'
        } else if t.is_symlink() {
            'l'
        } else {
            'o'
        };
        let content = match kind {
            'f' => Sha256::digest(std::fs::read(&p).unwrap()).to_vec(),
            'l' => std::fs::read_link(&p)
                .unwrap()
                .to_string_lossy()
                .into_owned()
                .into_bytes(),
            _ => Vec::new(),
        };
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        out.insert(
            rel,
            Entry {
                kind: (kind, meta.permissions().mode() & 0o7777),
                owner: (meta.uid(), meta.gid()),
                size_nlink_ino: (
                    if kind == 'd' { 0 } else { meta.len() },
                    meta.nlink(),
                    meta.ino(),
                ),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                content,
            },
        );
        if kind == 'd' {
            walk(root, &p, out);
        }
    }
}

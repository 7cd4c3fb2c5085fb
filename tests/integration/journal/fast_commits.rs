//! Fast-commit replay against the kernel (as root, loop devices): filesystems made with
//! `mke2fs -O fast_commit`, changed through a loop mount with a long `commit=600` so that
//! every fsync after the last full commit writes fast-commit blocks, copied while mounted
//! (a dirty image). The kernel's replay is a read-write mount of a copy (a read-only mount
//! of such a copy fails), unmounted.
//!
//! `-Q --replay` (read back with `-r`) must equal an `-r` export of the kernel's replay on
//! every block, except the primary superblock and the journal superblock (their counters,
//! times and state differ by design) and the times the kernel stamps with the time of its
//! replay: the change and modification times of directories and the times of the inodes it
//! deletes (with those inodes' checksums). The trees of `-d --replay` and of the kernel's
//! replay, mounted read-only, must be equal (directory times aside), and `e2fsck -fn` must
//! say the same of both (clean, where the kernel's replay is). No warning, exit 0, and the
//! source never changes. What the writeback put on disk varies from run to run: properties
//! are asserted, not block counts.

use crate::common::kernel::{can_mount, mkfs, tree, Entry, Mounted};
use crate::common::{
    code, expect, require, scratch, sh, sha256, skip, skipped, sparse_copy, stderr,
};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Writes (or appends) `data` to `p` and fsyncs the file only (an fsync of a directory
/// makes a full commit).
fn put(p: &Path, data: &[u8], append: bool) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(p)
        .unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

/// fsync of `p`.
fn sync_file(p: &Path) {
    std::fs::File::open(p).unwrap().sync_all().unwrap();
}

/// Deterministic bytes.
fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// Files: created, appended, overwritten, unlinked, hard-linked, renamed, truncated,
/// fragmented into more extents than the inode holds (a deeper tree), deleted with a deep
/// tree, written into a preallocated range (unwritten extents converted), rewritten.
fn prepare_files(m: &Path) {
    std::fs::create_dir(m.join("d0")).unwrap();
    for i in 1..=3 {
        std::fs::write(m.join(format!("d0/b{i}")), format!("base {i}\n")).unwrap();
    }
    std::fs::write(m.join("big"), bytes(20000, 3)).unwrap();
    for i in 0..6 {
        put(&m.join("oldfrag"), &bytes(1024, i), true);
        put(&m.join(format!("spacer{i}")), &bytes(1024, 40 + i), false);
    }
    let f = std::fs::File::create(m.join("pre")).unwrap();
    f.set_len(0).unwrap();
    let o = sh("fallocate", &[&"-l", &"40960", &m.join("pre")]);
    assert!(o.status.success(), "{}", stderr(&o));
}

fn change_files(m: &Path) {
    put(&m.join("new1"), &b"hello fc\n".repeat(100), false);
    put(&m.join("d0/b1"), &b"appended\n".repeat(50), true);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(m.join("big"))
        .unwrap();
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(4096)).unwrap();
    f.write_all(&[b'X'; 5000]).unwrap();
    f.sync_all().unwrap();
    std::fs::remove_file(m.join("d0/b2")).unwrap();
    sync_file(&m.join("new1"));
    std::fs::hard_link(m.join("new1"), m.join("d0/new1-link")).unwrap();
    sync_file(&m.join("new1"));
    std::fs::rename(m.join("d0/b3"), m.join("d0/b3-renamed")).unwrap();
    sync_file(&m.join("d0/b3-renamed"));
    f.set_len(6000).unwrap();
    f.sync_all().unwrap();
    for i in 0..6 {
        put(&m.join("frag1"), &bytes(1024, 80 + i), true);
        put(&m.join("frag2"), &bytes(1024, 90 + i), true);
    }
    std::fs::remove_file(m.join("oldfrag")).unwrap();
    sync_file(&m.join("new1"));
    let mut p = std::fs::OpenOptions::new()
        .write(true)
        .open(m.join("pre"))
        .unwrap();
    p.seek(SeekFrom::Start(10240)).unwrap();
    p.write_all(&bytes(3072, 7)).unwrap();
    p.sync_all().unwrap();
    let s = std::fs::OpenOptions::new()
        .write(true)
        .open(m.join("spacer2"))
        .unwrap();
    s.set_len(0).unwrap();
    put(&m.join("spacer2"), &bytes(3000, 9), false);
    std::fs::hard_link(m.join("spacer4"), m.join("hl")).unwrap();
    std::fs::remove_file(m.join("spacer4")).unwrap();
    sync_file(&m.join("hl"));
}

/// Directories: a new directory and a file in it, a one-block directory that fills (the
/// kernel makes it an htree), entries added to an htree (its leaves split) and removed,
/// a directory removed.
fn prepare_dirs(m: &Path) {
    std::fs::create_dir(m.join("small")).unwrap();
    std::fs::write(m.join("small/a"), "a").unwrap();
    std::fs::create_dir(m.join("hdir")).unwrap();
    for i in 0..300 {
        std::fs::write(m.join(format!("hdir/existing-entry-name-{i:03}")), "e").unwrap();
    }
    std::fs::create_dir(m.join("gone")).unwrap();
}

fn change_dirs(m: &Path) {
    std::fs::create_dir(m.join("d1")).unwrap();
    put(&m.join("d1/inner"), &[b'i'; 100], false);
    for i in 0..40 {
        put(
            &m.join(format!("small/entry-long-name-number-{i:03}")),
            b"q",
            false,
        );
    }
    for i in 0..40 {
        put(
            &m.join(format!("hdir/new-entry-with-a-long-name-{i:03}")),
            b"n",
            false,
        );
    }
    std::fs::remove_file(m.join("hdir/existing-entry-name-007")).unwrap();
    std::fs::remove_dir(m.join("gone")).unwrap();
    sync_file(&m.join("small/a"));
}

/// Filesystem geometry read from an image's superblock and primary descriptors.
struct Geometry {
    bs: usize,
    ipg: usize,
    isz: usize,
    tables: Vec<u64>,
}

fn le16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([b[at], b[at + 1]]))
}
fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()))
}

fn geometry(img: &[u8]) -> Geometry {
    let sb = &img[1024..2048];
    let bs = 1024usize << le32(sb, 0x18);
    let ds = if le32(sb, 0x60) & 0x80 != 0 {
        le16(sb, 0xFE)
    } else {
        32
    };
    let first = le32(sb, 0x14);
    let (blocks, bpg) = (le32(sb, 0x04), le32(sb, 0x20));
    let groups = (blocks - first).div_ceil(bpg) as usize;
    let gdt = (first as usize + 1) * bs;
    Geometry {
        bs,
        ipg: le32(sb, 0x28) as usize,
        isz: le16(sb, 0x58),
        tables: (0..groups).map(|g| le32(img, gdt + g * ds + 8)).collect(),
    }
}

/// Zeroes, in both images, the fields the kernel stamps with its replay's time: the change
/// and modification times (and checksum) of directories, and of deleted inodes their
/// deletion time too.
fn mask_stamps(a: &mut [u8], b: &mut [u8], g: &Geometry) {
    for &t in &g.tables {
        for k in 0..g.ipg {
            let o = t as usize * g.bs + k * g.isz;
            if o + g.isz > a.len().min(b.len()) {
                continue;
            }
            let stamped = [&*a, &*b].iter().any(|img| {
                let (mode, links) = (le16(img, o), le16(img, o + 0x1A));
                mode & 0xF000 == 0x4000 || (mode != 0 && links == 0 && le32(img, o + 0x14) != 0)
            });
            if !stamped {
                continue;
            }
            let deleted = le16(a, o + 0x1A) == 0 || le16(b, o + 0x1A) == 0;
            for (f, n) in [
                (0x0C, 4),
                (0x10, 4),
                (0x7C, 2),
                (0x82, 2),
                (0x84, 4),
                (0x88, 4),
            ] {
                a[o + f..o + f + n].fill(0);
                b[o + f..o + f + n].fill(0);
            }
            if deleted {
                a[o + 0x14..o + 0x18].fill(0);
                b[o + 0x14..o + 0x18].fill(0);
            }
        }
    }
}

/// Blocks on which the raw images `ours` and `theirs` differ, `skip` and the stamps aside.
fn differing(ours: &Path, theirs: &Path, skip: &[u64]) -> Vec<u64> {
    let (mut a, mut b) = (std::fs::read(ours).unwrap(), std::fs::read(theirs).unwrap());
    let n = a.len().max(b.len());
    a.resize(n, 0);
    b.resize(n, 0);
    let g = geometry(&b);
    mask_stamps(&mut a, &mut b, &g);
    (0..(n / g.bs) as u64)
        .filter(|i| !skip.contains(i))
        .filter(|&i| {
            let r = i as usize * g.bs..(i as usize + 1) * g.bs;
            a[r.clone()] != b[r]
        })
        .collect()
}

/// The journal superblock's block (`debugfs bmap <8> 0`).
fn journal_superblock(img: &Path) -> u64 {
    let o = sh("debugfs", &[&"-R", &"bmap <8> 0", &img]);
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

/// What `e2fsck -fn` says about an image, its name left out.
fn fsck_says(img: &Path) -> (i32, String) {
    let o = sh("e2fsck", &[&"-fn", &img]);
    let name = img.display().to_string();
    let text = String::from_utf8_lossy(&o.stdout).replace(&name, "IMG");
    (code(&o), text)
}

/// A tree with the directories' modification times left out.
fn unstamped(t: BTreeMap<String, Entry>) -> BTreeMap<String, Entry> {
    t.into_iter()
        .map(|(k, mut e)| {
            if e.kind.0 == 'd' {
                e.mtime = (0, 0);
            }
            (k, e)
        })
        .collect()
}

/// One case: mke2fs (`mkfs`), `prepare` then a sync, `change` with fast commits, the dirty
/// copy replayed by the kernel and by `--replay`, compared (module comment); `clean`: the
/// kernel's replay is e2fsck-clean.
fn case(name: &str, mkfs_args: &[&str], prepare: fn(&Path), change: fn(&Path), clean: bool) {
    let dir = scratch(&format!("fast-commits-{name}"));
    let img = dir.join("fs.img");
    mkfs(&img, 32, mkfs_args);
    let Some(m) = Mounted::new(&img, &dir.join("mnt"), "commit=600") else {
        return skipped("mounting a loop device failed");
    };
    prepare(&m.dir);
    assert!(sh("sync", &[&"-f", &m.dir]).status.success());
    change(&m.dir);
    let dirty = sparse_copy(&img, &dir.join("dirty.img"));
    drop(m);
    let h = String::from_utf8_lossy(&sh("dumpe2fs", &[&"-h", &dirty]).stdout).into_owned();
    assert!(h.contains("needs_recovery"), "the copy needs recovery");
    let kernel = sparse_copy(&dirty, &dir.join("kernel.img"));
    drop(Mounted::new(&kernel, &dir.join("mnt-k"), "rw").expect("the kernel replays a copy"));
    let sha = sha256(&dirty);

    let q = dir.join("ours.qcow2");
    let o = expect(&[&"-Q", &"--replay", &dirty, &q], 0);
    assert!(
        stderr(&o).contains("fast-commit tags were replayed"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("warning:"), "{}", stderr(&o));
    let ours = dir.join("ours.raw");
    expect(&[&"-r", &q, &ours], 0);
    let theirs = dir.join("kernel.raw");
    expect(&[&"-r", &kernel, &theirs], 0);
    let bs = geometry(&std::fs::read(&theirs).unwrap()).bs as u64;
    let skip = [1024 / bs, journal_superblock(&kernel)];
    let bad = differing(&ours, &theirs, &skip);
    assert!(
        bad.is_empty(),
        "{name}: blocks {bad:?} differ from the kernel's replay"
    );

    let full = dir.join("full.raw");
    expect(&[&"-r", &"-d", &"--replay", &dirty, &full], 0);
    let ours_tree = tree(&full, &dir, false).expect("our replay mounts");
    let kernel_tree = tree(&kernel, &dir, false).expect("the kernel's replay mounts");
    assert_eq!(
        unstamped(ours_tree),
        unstamped(kernel_tree),
        "{name}: the trees differ"
    );
    let want = fsck_says(&kernel);
    assert_eq!(
        want.0 == 0,
        clean,
        "{name}: e2fsck on the kernel's replay: {}",
        want.1
    );
    for img in [&ours, &full] {
        assert_eq!(fsck_says(img), want, "{name}: e2fsck on {}", img.display());
    }
    assert_eq!(sha256(&dirty), sha, "the source changed");
}

fn available() -> bool {
    if skip() || !require(&["dumpe2fs", "fallocate", "sync"]) {
        return false;
    }
    if !can_mount() {
        skipped("needs root and loop devices to let the kernel write fast commits");
        return false;
    }
    true
}

#[test]
fn file_changes_replay_as_the_kernel_replays_them() {
    if !available() {
        return;
    }
    let mk = ["-O", "fast_commit", "-J", "size=4,fast_commit_size=256"];
    case("files", &mk, prepare_files, change_files, true);
}

#[test]
fn directory_changes_replay_as_the_kernel_replays_them() {
    if !available() {
        return;
    }
    let mk = [
        "-O",
        "fast_commit,^metadata_csum,uninit_bg",
        "-J",
        "size=4,fast_commit_size=256",
    ];
    case("dirs", &mk, prepare_dirs, change_dirs, false);
}

//! Orphan processing after the replay (`--replay`), against the kernel (as root, loop
//! devices): filesystems the kernel wrote, copied while mounted with files unlinked (and a
//! directory removed) while still open, so that the copy's journal needs recovery and its
//! orphan list (classic, or the orphan file) is not empty; and clean filesystems whose
//! classic list was forged with debugfs (files with links, sizes shortened: the kernel
//! truncates them at mount). The truth is a copy the kernel mounted and unmounted (it
//! replays the journal, then runs its orphan cleanup).
//!
//! Compared block by block on the kernel copy's metadata (the blocks `e2image-rs -r` of it
//! holds), except the primary superblock (times, counters) and the journal's blocks (the
//! kernel's cleanup logs its transactions there). The export runs with the test clock at the
//! kernel's deletion time; the kernel stamps each inode with its own fine-grained time, so
//! an orphan's times (`i_ctime`, `i_mtime`, `i_dtime`, their extra fields) and checksum are
//! masked when they differ from that clock; the clock's own inode must match byte for byte
//! (with the test clock built in). `e2fsck -fn` must pass on every output.

use super::{pattern, to_raw};
use crate::common::kernel::{can_mount, Mounted};
use crate::common::{
    bin, block_at, code, for_each_nonzero_block, fsck, require, scratch, sh, skipped, sparse_copy,
    stderr,
};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The tools these tests run.
const TOOLS: [&str; 4] = ["mke2fs", "debugfs", "e2fsck", "qemu-img"];

/// True when the tests can run; otherwise a visible skip.
fn unavailable() -> bool {
    if !require(&TOOLS) {
        return true;
    }
    if !can_mount() {
        skipped("needs root and loop devices to let the kernel write and mount the states");
        return true;
    }
    false
}

/// A 32 MiB filesystem at `img`: `mke2fs MKFS`, lazy initialisation off.
fn new_fs(img: &Path, mkfs: &[&str]) {
    let _ = std::fs::remove_file(img);
    std::fs::File::create(img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let o = Command::new("mke2fs")
        .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .args(mkfs)
        .arg(img)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

fn write(p: &Path, data: &[u8]) {
    let mut f = std::fs::File::create(p).unwrap();
    f.write_all(data).unwrap();
}

fn sync_dir(p: &Path) {
    std::fs::File::open(p).unwrap().sync_all().unwrap();
}

fn setxattr(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::setxattr(p, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

/// Files in the mount `m` with `bs`-byte blocks: a directory of small files, a 3 MB file, a
/// sparse file of 40 one-block extents (a depth-1 extent tree, or a DIND map on 1 KiB
/// blocks), three files with a 600-byte xattr (x1 and x2 share their xattr block), an empty
/// directory.
fn populate(m: &Mounted, bs: usize) {
    std::fs::create_dir(m.path("d")).unwrap();
    std::fs::create_dir(m.path("gone")).unwrap();
    for i in 1..=5u32 {
        write(&m.path(&format!("d/f{i}")), &pattern(i as usize * 5000, i));
    }
    write(&m.path("big"), &pattern(3_000_000, 9));
    let f = std::fs::File::create(m.path("sparse")).unwrap();
    for k in 0..40u64 {
        f.write_all_at(&pattern(bs, k as u32), 2 * k * bs as u64)
            .unwrap();
    }
    for (n, name) in [("x1", "user.big"), ("x2", "user.big"), ("x3", "user.other")] {
        write(&m.path(n), &pattern(20_000, 3));
        setxattr(&m.path(n), name, &[b'q'; 600]);
    }
    assert!(sh("sync", &[]).status.success());
}

/// A dirty copy of a filesystem the kernel wrote (`mkfs`, `bs`-byte blocks), taken while
/// mounted after unlinking open files and removing an open directory: (the copy, the
/// orphans' inode numbers, the 3 MB file's among them first).
fn dirty(dir: &Path, name: &str, mkfs: &[&str], bs: usize) -> Option<(PathBuf, Vec<u64>)> {
    let img = dir.join(format!("{name}.img"));
    new_fs(&img, mkfs);
    let m = Mounted::new(&img, &dir.join(format!("{name}-mnt")), "commit=600")?;
    populate(&m, bs);
    write(&m.path("d/new"), &pattern(7000, 11));
    let gone = ["big", "sparse", "x1", "x3", "d/f2", "gone"];
    let held: Vec<std::fs::File> = gone
        .iter()
        .map(|p| std::fs::File::open(m.path(p)).unwrap())
        .collect();
    let inos: Vec<u64> = held.iter().map(|f| f.metadata().unwrap().ino()).collect();
    for p in &gone[..5] {
        std::fs::remove_file(m.path(p)).unwrap();
    }
    std::fs::remove_dir(m.path("gone")).unwrap();
    sync_dir(&m.path("d"));
    sync_dir(&m.dir);
    let copy = sparse_copy(&img, &dir.join(format!("{name}.dirty")));
    drop(held);
    drop(m);
    Some((copy, inos))
}

/// The kernel's replay of `img`: a copy mounted read-only (the kernel replays the journal and
/// runs its orphan cleanup all the same) and unmounted.
fn kernel_copy(img: &Path) -> Option<PathBuf> {
    let copy = sparse_copy(img, &img.with_extension("kernel"));
    let m = Mounted::new(&copy, &img.with_extension("kernel-mnt"), "ro")?;
    drop(m);
    Some(copy)
}

/// `debugfs -R CMD IMG`'s output.
fn debugfs(img: &Path, cmd: &str) -> String {
    String::from_utf8_lossy(&sh("debugfs", &[&"-R", &cmd, &img]).stdout).into_owned()
}

/// Inode `ino`'s change time in `img` (seconds, nanoseconds), from `debugfs stat`.
fn ctime(img: &Path, ino: u64) -> (u32, u32) {
    let s = debugfs(img, &format!("stat <{ino}>"));
    let t = s
        .lines()
        .find_map(|l| l.trim().strip_prefix("ctime: 0x"))
        .unwrap_or_else(|| panic!("no ctime of inode {ino} in {s}"));
    let (secs, extra) = t.split_once(":").expect("secs:extra");
    let secs = u32::from_str_radix(secs, 16).unwrap();
    let extra = u32::from_str_radix(&extra[..8], 16).unwrap();
    (secs, extra >> 2)
}

/// Where inode `ino`'s record lies in `img` (`debugfs imap`): block, byte offset.
fn inode_at(img: &Path, ino: u64) -> (u64, usize) {
    let s = debugfs(img, &format!("imap <{ino}>"));
    let b = s.split("located at block ").nth(1).expect("imap block");
    let (block, rest) = b.split_once(',').unwrap();
    let off = rest.trim().strip_prefix("offset 0x").unwrap().trim();
    (
        block.parse().unwrap(),
        usize::from_str_radix(off, 16).unwrap(),
    )
}

/// `e2image-rs ARGS` with the test clock at `now`; must exit 0.
fn export(args: &[&dyn AsRef<std::ffi::OsStr>], now: (u32, u32)) -> String {
    let mut c = Command::new(bin());
    c.env("E2IMAGE_RS_TEST_NOW", format!("{}.{:09}", now.0, now.1));
    for a in args {
        c.arg(a);
    }
    let o = c.output().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    stderr(&o)
}

/// Inode record fields a kernel stamps with its own clock: `i_ctime`, `i_mtime`, `i_dtime`,
/// the checksum's two halves, `i_ctime_extra`, `i_mtime_extra` (offset, bytes).
const STAMPED: [(usize, usize); 7] = [
    (0x0C, 4),
    (0x10, 4),
    (0x14, 4),
    (0x7C, 2),
    (0x82, 2),
    (0x84, 4),
    (0x88, 4),
];

/// The blocks of the kernel copy's metadata on which `ours` (raw) differs from it, but the
/// primary superblock and the journal (module comment); orphan records (`orphans`) that
/// differ are compared with [`STAMPED`] masked, except the clock's own (`exact`).
fn differing(ours: &Path, kernel: &Path, bs: usize, orphans: &[u64], exact: u64) -> Vec<String> {
    let meta = kernel.with_extension("meta");
    let _ = std::fs::remove_file(&meta);
    let o = Command::new(bin())
        .arg("-r")
        .arg(kernel)
        .arg(&meta)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let journal: Vec<u64> = debugfs(kernel, "blocks <8>")
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let records: Vec<(u64, u64, usize)> = orphans
        .iter()
        .map(|&i| {
            let (b, at) = inode_at(kernel, i);
            (i, b, at)
        })
        .collect();
    let isize: usize = debugfs(kernel, "stats")
        .lines()
        .find_map(|l| l.strip_prefix("Inode size:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("the inode size");
    let mut bad = Vec::new();
    for_each_nonzero_block(&meta, bs, |b, _| {
        if b == 1024 / bs as u64 || journal.contains(&b) {
            return;
        }
        let (mut x, mut y) = (block_at(ours, b, bs), block_at(kernel, b, bs));
        for &(ino, _, at) in records.iter().filter(|r| r.1 == b) {
            let end = (at + isize).min(bs);
            if x[at..end] != y[at..end] && ino != exact {
                for (o, n) in STAMPED.iter().filter(|(o, n)| at + o + n <= end) {
                    x[at + o..at + o + n].fill(0);
                    y[at + o..at + o + n].fill(0);
                }
            }
        }
        if x != y {
            let n = x.iter().zip(&y).filter(|(a, b)| a != b).count();
            let first = x.iter().zip(&y).position(|(a, b)| a != b).unwrap_or(0);
            bad.push(format!("block {b}: {n} bytes differ, the first at {first}"));
        }
    });
    bad
}

/// The exact inode for [`differing`]: `ino`, when the test clock is built in.
fn exact(ino: u64) -> u64 {
    if cfg!(feature = "fault-injection") {
        ino
    } else {
        0
    }
}

/// Each variant: name, mke2fs options, block size.
const DIRTY: [(&str, &[&str], usize); 4] = [
    ("ext4", &["-t", "ext4", "-b", "4096"], 4096),
    (
        "gdt-csum-1k",
        &["-t", "ext4", "-b", "1024", "-O", "^metadata_csum,uninit_bg"],
        1024,
    ),
    (
        "orphan-file",
        &["-t", "ext4", "-b", "4096", "-O", "orphan_file"],
        4096,
    ),
    ("ext3-1k", &["-t", "ext3", "-b", "1024"], 1024),
];

#[test]
fn replayed_orphans_are_released_as_the_kernel_does() {
    if unavailable() {
        return;
    }
    let dir = scratch("journal-orphans");
    for (name, mkfs, bs) in DIRTY {
        let Some((img, inos)) = dirty(&dir, name, mkfs, bs) else {
            return skipped("the kernel did not mount the filesystem");
        };
        let h = debugfs(&img, "stats");
        assert!(
            h.contains("needs_recovery"),
            "{name}: the copy needs recovery"
        );
        let kernel = kernel_copy(&img).expect("the kernel mounts the copy");
        let now = ctime(&kernel, inos[0]);
        let q = dir.join(format!("{name}.qcow2"));
        let _ = std::fs::remove_file(&q);
        let err = export(&[&"-Q", &"--replay", &img, &q], now);
        assert!(
            err.contains("6 orphan inodes released") && err.contains("the orphan lists are empty"),
            "{name}: {err}"
        );
        let raw = to_raw(&q);
        assert_eq!(fsck(&raw), 0, "{name}: e2fsck -fn of the replayed state");
        let bad = differing(&raw, &kernel, bs, &inos, exact(inos[0]));
        assert!(
            bad.is_empty(),
            "{name}: differs from the kernel's replay: {bad:?}"
        );
        let after = debugfs(&raw, "stats");
        assert!(
            !after.contains("orphan_present"),
            "{name}: ORPHAN_PRESENT is cleared"
        );
        assert!(
            !after.contains("First orphan inode"),
            "{name}: s_last_orphan is 0"
        );
    }
}

/// Sizes forged for the files `populate` wrote (path, new size in blocks plus bytes), each
/// made an orphan with links: the kernel truncates them to the size.
fn forged(bs: u64) -> [(&'static str, u64); 4] {
    [
        ("x1", 5000),
        ("sparse", 21 * bs + 7),
        ("big", 270 * bs),
        ("d/f5", 3 * bs),
    ]
}

#[test]
fn a_forged_list_on_a_clean_journal_is_truncated_as_the_kernel_does() {
    if unavailable() {
        return;
    }
    let dir = scratch("journal-orphans-forged");
    for (name, mkfs, bs) in [DIRTY[0], DIRTY[3]] {
        let img = dir.join(format!("{name}.img"));
        new_fs(&img, mkfs);
        let Some(m) = Mounted::new(&img, &dir.join(format!("{name}-mnt")), "rw") else {
            return skipped("the kernel did not mount the filesystem");
        };
        populate(&m, bs);
        let files = forged(bs as u64);
        let inos: Vec<u64> = files
            .iter()
            .map(|(p, _)| std::fs::metadata(m.path(p)).unwrap().ino())
            .collect();
        drop(m);
        let mut cmds = Vec::new();
        for (k, (_, size)) in files.iter().enumerate() {
            let next = inos.get(k + 1).copied().unwrap_or(0);
            cmds.push(format!("sif <{}> size {size}", inos[k]));
            cmds.push(format!("sif <{}> dtime {next}", inos[k]));
        }
        cmds.push(format!("ssv last_orphan {}", inos[0]));
        crate::common::debugfs_w(&img, &cmds.iter().map(String::as_str).collect::<Vec<_>>());
        let kernel = kernel_copy(&img).expect("the kernel mounts the copy");
        let now = ctime(&kernel, inos[0]);
        let raw = dir.join(format!("{name}.raw"));
        let _ = std::fs::remove_file(&raw);
        let err = export(&[&"-r", &"-a", &"--replay", &img, &raw], now);
        assert!(
            err.contains("0 orphan inodes released, 4 truncated"),
            "{name}: {err}"
        );
        assert_eq!(fsck(&raw), 0, "{name}: e2fsck -fn of the processed state");
        let bad = differing(&raw, &kernel, bs, &inos, exact(inos[0]));
        assert!(
            bad.is_empty(),
            "{name}: differs from the kernel's cleanup: {bad:?}"
        );
        // The tail of x1's last block past its size is zeroed, as the kernel does.
        let last: u64 = debugfs(&kernel, &format!("bmap <{}> {}", inos[0], 5000 / bs))
            .trim()
            .parse()
            .unwrap();
        let tail = 5000 % bs;
        let k = block_at(&kernel, last, bs);
        assert!(
            k[tail..].iter().all(|&b| b == 0),
            "{name}: the kernel zeroed the tail"
        );
        assert_eq!(block_at(&raw, last, bs), k, "{name}: x1's last block");
    }
}

/// A dirty journal (debugfs) over a classic orphan list that loops (a → b → a): the export
/// completes with a warning naming the inode met twice (exit 3); the journal's replay and
/// the orphans before the loop stand. No mount needed.
#[test]
fn a_looping_orphan_list_is_a_warning_and_the_replay_stands() {
    if super::unavailable() {
        return;
    }
    let dir = scratch("journal-orphans-loop");
    let img = dir.join("loop.img");
    new_fs(&img, &["-t", "ext4", "-b", "4096"]);
    let src = dir.join("src.bin");
    std::fs::write(&src, pattern(30_000, 5)).unwrap();
    let s = src.display();
    crate::common::debugfs_w(
        &img,
        &[
            &format!("write {s} /old.bin"),
            &format!("write {s} /a"),
            &format!("write {s} /b"),
        ],
    );
    let ino = |p: &str| -> u64 {
        let out = debugfs(&img, &format!("stat {p}"));
        out.split_whitespace()
            .nth(1)
            .and_then(|w| w.parse().ok())
            .unwrap()
    };
    let (a, b) = (ino("/a"), ino("/b"));
    let forge = [
        "unlink /a".to_string(),
        "unlink /b".to_string(),
        format!("sif <{a}> links_count 0"),
        format!("sif <{b}> links_count 0"),
        format!("sif <{a}> dtime {b}"),
        format!("sif <{b}> dtime {a}"),
        format!("ssv last_orphan {a}"),
    ];
    crate::common::debugfs_w(&img, &forge.iter().map(String::as_str).collect::<Vec<_>>());
    let d = super::make_dirty(&img, "-c", "/newdir", "/old.bin", None);
    let out = dir.join("out.raw");
    let o = crate::common::run(&[&"-r", &"-a", &"--replay", &d.img, &out]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("inode {a}")) && err.contains("loop"),
        "{err}"
    );
    assert!(err.contains("2 orphan inodes released"), "{err}");
    assert_eq!(
        super::cat(&out, &d.new_path),
        d.new_file,
        "the replayed file"
    );
    assert!(
        !debugfs(&out, "stats").contains("First orphan inode"),
        "the head is cleared"
    );
    d.assert_unchanged();
}

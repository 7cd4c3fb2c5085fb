//! `--replay` against the kernel's own replay, on dirty images the kernel wrote (as root):
//! copies of a loop-mounted filesystem's backing file taken after fsyncs under a long commit
//! interval, for a plain block journal, `data=journal`, revoke records, a journal that
//! wrapped, 1 KiB blocks, no metadata_csum, inline data and bigalloc. For each:
//! - `-r --replay` equals, on every metadata block, an export of a copy the kernel replayed
//!   (mounted and unmounted) — but the blocks of the primary superblock and the journal
//!   superblock, whose times, counters and free counts the kernel rewrites by design;
//! - `-r -d --replay` shows the kernel's tree when the kernel mounts it;
//! - `e2fsck -fn` is clean on every replayed output.

use crate::common::kernel::{append_synced, can_mount, mkfs, tree, write_synced, Mounted};
use crate::common::*;
use std::path::{Path, PathBuf};

/// One dirty-image recipe: mke2fs options, mount options, what the kernel writes.
struct Case {
    name: &'static str,
    mkfs: &'static [&'static str],
    mount: &'static str,
    work: fn(&Mounted),
}

/// Files written and fsynced, one appended, one removed after its data reached the journal.
fn files(m: &Mounted) {
    std::fs::create_dir(m.path("d")).unwrap();
    for i in 0..40 {
        write_synced(
            &m.path(&format!("d/f{i}")),
            &vec![(i % 250) as u8 + 1; 900 * i],
        );
    }
    append_synced(&m.path("d/f3"), &[b'x'; 70_000]);
    std::fs::remove_file(m.path("d/f5")).unwrap();
    std::fs::File::open(m.path("d"))
        .unwrap()
        .sync_all()
        .unwrap();
}

/// Metadata blocks freed and reused in later transactions: revoke records.
fn revokes(m: &Mounted) {
    for round in 0..6 {
        let d = m.path(&format!("r{round}"));
        std::fs::create_dir(&d).unwrap();
        for i in 0..30 {
            write_synced(&d.join(format!("x{i}")), &vec![round as u8 + 1; 2000]);
        }
        std::fs::File::open(&m.dir).unwrap().sync_all().unwrap();
        if round % 2 == 0 {
            std::fs::remove_dir_all(&d).unwrap();
            std::fs::File::open(&m.dir).unwrap().sync_all().unwrap();
        }
    }
}

/// Enough fsynced transactions to wrap a 1 MiB journal more than once.
fn wraps(m: &Mounted) {
    for i in 0..600 {
        write_synced(
            &m.path(&format!("w{}", i % 150)),
            &vec![(i % 200) as u8 + 1; 3000],
        );
    }
}

/// Small files (inline data) and a few larger ones.
fn small_files(m: &Mounted) {
    for i in 0..60 {
        write_synced(
            &m.path(&format!("s{i}")),
            format!("small file {i}\n").as_bytes(),
        );
    }
    files(m);
}

const CASES: &[Case] = &[
    Case {
        name: "plain",
        mkfs: &["-b", "4096"],
        mount: "rw,commit=600",
        work: files,
    },
    Case {
        name: "data-journal",
        mkfs: &["-b", "4096"],
        mount: "rw,commit=600,data=journal",
        work: files,
    },
    Case {
        name: "revoke",
        mkfs: &["-b", "4096"],
        mount: "rw,commit=600",
        work: revokes,
    },
    Case {
        name: "wrapped",
        mkfs: &["-b", "1024", "-J", "size=1"],
        mount: "rw,commit=600",
        work: wraps,
    },
    Case {
        name: "1k-no-csum",
        mkfs: &["-b", "1024", "-O", "^metadata_csum"],
        mount: "rw,commit=600",
        work: files,
    },
    Case {
        name: "inline",
        mkfs: &["-b", "4096", "-O", "inline_data"],
        mount: "rw,commit=600",
        work: small_files,
    },
    Case {
        name: "bigalloc",
        mkfs: &["-b", "4096", "-O", "bigalloc", "-C", "16384"],
        mount: "rw,commit=600",
        work: files,
    },
];

/// The dirty copy of one case: made by the kernel, copied while mounted.
fn dirty(case: &Case, dir: &Path) -> Option<PathBuf> {
    let img = dir.join(format!("{}.img", case.name));
    mkfs(&img, 64, case.mkfs);
    let m = Mounted::new(&img, &dir.join(format!("m-{}", case.name)), case.mount)?;
    (case.work)(&m);
    let copy = sparse_copy(&img, &dir.join(format!("{}.dirty", case.name)));
    drop(m);
    Some(copy)
}

/// The blocks (of `bs` bytes) a replay rewrites by design: the primary superblock's and the
/// journal superblock's (the journal inode's first block).
fn by_design(img: &Path, bs: u64) -> Vec<u64> {
    let sb_block = 1024 / bs;
    let o = sh("debugfs", &[&"-R", &"bmap <8> 0", &img]);
    let jsb: u64 = String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or(u64::MAX);
    vec![sb_block, jsb]
}

/// Block size of the filesystem in `img`, from `dumpe2fs -h`.
fn block_size(img: &Path) -> u64 {
    let o = sh("dumpe2fs", &[&"-h", &img]);
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Block size:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[test]
fn replay_equals_the_kernels_on_every_metadata_block() {
    if skip() {
        return;
    }
    if !can_mount() {
        return skipped("needs root and loop devices to let the kernel write the states");
    }
    let dir = scratch("replay-kernel");
    for case in CASES {
        let Some(d) = dirty(case, &dir) else {
            skipped(&format!("{}: the kernel does not mount it here", case.name));
            continue;
        };
        let needs = String::from_utf8_lossy(&sh("dumpe2fs", &[&"-h", &d]).stdout)
            .contains("needs_recovery");
        assert!(needs, "{}: the copy does not need recovery", case.name);
        let ours = dir.join(format!("{}.ours.raw", case.name));
        let o = expect(&[&"-r", &"--replay", &d, &ours], 0);
        assert!(
            !stderr(&o).contains("warning"),
            "{}: {}",
            case.name,
            stderr(&o)
        );
        // The kernel's replay: a copy mounted (read-only still replays) and unmounted.
        let k = sparse_copy(&d, &dir.join(format!("{}.kernel.img", case.name)));
        drop(Mounted::new(&k, &dir.join(format!("k-{}", case.name)), "ro").unwrap());
        let kernel = dir.join(format!("{}.kernel.raw", case.name));
        expect(&[&"-r", &k, &kernel], 0);
        let bs = block_size(&d);
        let skip_blocks = by_design(&k, bs);
        let bs = bs as usize;
        let a: Vec<u64> = blocks_not_in(&kernel, &ours, bs)
            .into_iter()
            .chain(blocks_not_in(&ours, &kernel, bs))
            .filter(|b| !skip_blocks.contains(b))
            .collect();
        assert!(
            a.is_empty(),
            "{}: {} metadata blocks differ from the kernel's replay: {:?}",
            case.name,
            a.len(),
            &a[..a.len().min(20)]
        );
        assert_eq!(
            fsck(&ours),
            0,
            "{}: e2fsck -fn of the replayed export",
            case.name
        );
        // With file data: the kernel shows the same tree on our replayed state.
        let ours_d = dir.join(format!("{}.ours-d.raw", case.name));
        expect(&[&"-r", &"-d", &"--replay", &d, &ours_d], 0);
        assert_eq!(fsck(&ours_d), 0, "{}", case.name);
        let want = tree(&d, &dir, false).unwrap();
        assert_eq!(
            tree(&ours_d, &dir, false).unwrap(),
            want,
            "{}: tree",
            case.name
        );
        for p in [&ours, &kernel, &ours_d, &k] {
            let _ = std::fs::remove_file(p);
        }
    }
}

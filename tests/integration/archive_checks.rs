//! What an archive refuses and how its states are ranked:
//! - retention ranks states of the same second by nanoseconds, then id, then table position
//!   (`prune --keep-last`, `--append --keep-last`), as restic ranks snapshots by time;
//! - a header whose virtual size is 0 or smaller than the filesystem is refused by every
//!   reader of a state (`-r --from-snapshot`, `-r`, `-Q`, `--append`), with nothing written;
//! - `--name current` is refused (`current` names the active layer in `-x`);
//! - an archive made through the backup superblock (a zeroed primary) takes appends.

use crate::common::*;
use std::path::Path;
use std::process::Command;

/// 2026-01-05 12:00:00 UTC, a Monday.
const MONDAY: u64 = 1_767_614_400;

/// Runs e2image-rs at the test clock `now` (`SECONDS.NANOSECONDS`), expecting `want`.
fn at(now: &str, args: &[&dyn AsRef<std::ffi::OsStr>], want: i32) -> std::process::Output {
    let mut c = Command::new(bin());
    c.env("E2IMAGE_RS_TEST_NOW", now);
    for a in args {
        c.arg(a);
    }
    let o = c.output().unwrap();
    assert_eq!(code(&o), want, "{}", stderr(&o));
    o
}

/// Names of the archive's states, sorted.
fn names(q: &Path) -> Vec<String> {
    let mut v: Vec<String> = snapshot_list(q)["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// An archive of six states appended within one second: s1..s6 at `MONDAY.nanos[k]`.
fn same_second(dir: &Path, nanos: [u32; 6]) -> std::path::PathBuf {
    let img = small_image(dir);
    let q = dir.join("arch.qcow2");
    let _ = std::fs::remove_file(&q);
    for (k, n) in nanos.iter().enumerate() {
        let now = format!("{MONDAY}.{n:09}");
        let name = format!("s{}", k + 1);
        match k {
            0 => at(&now, &[&"-Q", &"--name", &name, &img, &q], 0),
            _ => at(&now, &[&"-Q", &"--append", &"--name", &name, &img, &q], 0),
        };
    }
    q
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the test clock E2IMAGE_RS_TEST_NOW (`--features fault-injection`)"
)]
fn states_of_one_second_rank_by_nanoseconds_then_id() {
    if skip() {
        return;
    }
    let dir = scratch("archive-same-second");
    // Six appends within a second, nanoseconds growing: the two newest are s5 and s6.
    let q = same_second(&dir, [100, 200, 300, 400, 500, 600]);
    let o = expect_sub("prune", &[&q, &"--keep-last", &"2", &"--json"], 0);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["removed"], 4, "{doc}");
    assert_eq!(names(&q), ["s5", "s6"]);
    assert_qemu_check(&q);
    // The same instant for all: QEMU's growing ids decide.
    let q = same_second(&dir, [0; 6]);
    expect_sub("prune", &[&q, &"--keep-last", &"2"], 0);
    assert_eq!(names(&q), ["s5", "s6"]);
    // An append with --keep-last counts the new state: the newest two remain.
    let q = same_second(&dir, [7; 6]);
    let img = dir.join("ext4-small.img");
    let now = format!("{MONDAY}.000000007");
    at(
        &now,
        &[
            &"-Q",
            &"--append",
            &"--name",
            &"s7",
            &"--keep-last",
            &"2",
            &img,
            &q,
        ],
        0,
    );
    assert_eq!(names(&q), ["s6", "s7"]);
    assert_qemu_check(&q);
    // Hourly: the newest state of the one hour that holds them all is the one with the most
    // nanoseconds (s1); the state the active layer shows (s6) is always kept besides.
    let q = same_second(&dir, [900, 100, 800, 200, 700, 300]);
    expect_sub("prune", &[&q, &"--keep-hourly", &"1"], 0);
    assert_eq!(names(&q), ["s1", "s6"]);
}

/// Sets the virtual size (header bytes 24..32, big-endian) of QCOW2 image `q`.
fn set_virtual_size(q: &Path, size: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(q).unwrap();
    f.write_all_at(&size.to_be_bytes(), 24).unwrap();
}

#[test]
fn a_virtual_size_smaller_than_the_filesystem_is_refused() {
    if skip() {
        return;
    }
    let dir = scratch("archive-virtual-size");
    let img = small_image(&dir);
    let fs_size = std::fs::metadata(&img).unwrap().len();
    for size in [0, 1536, fs_size / 2, fs_size - 512] {
        let q = dir.join("arch.qcow2");
        let _ = std::fs::remove_file(&q);
        expect(&[&"-Q", &"--name", &"s1", &img, &q], 0);
        expect(&[&"-Q", &"--append", &"--name", &"s2", &img, &q], 0);
        set_virtual_size(&q, size);
        let before = sha256(&q);
        let out = dir.join("out.raw");
        for args in [
            vec!["-r", "--from-snapshot", "s1"],
            vec!["-r"],
            vec!["-Q", "--from-snapshot", "s2"],
        ] {
            let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = args
                .iter()
                .map(|s| s as &dyn AsRef<std::ffi::OsStr>)
                .collect();
            a.push(&q);
            a.push(&out);
            let o = expect(&a, 1);
            let e = stderr(&o);
            assert!(
                e.contains("virtual size") || e.contains("smaller than the filesystem"),
                "size {size}, {args:?}: {e}"
            );
            assert!(!out.exists(), "size {size}, {args:?}: OUT was written");
        }
        expect(&[&"-Q", &"--append", &"--name", &"s3", &img, &q], 1);
        assert_eq!(sha256(&q), before, "size {size}: the archive was changed");
    }
}

#[test]
fn current_is_a_reserved_name() {
    let dir = scratch("archive-current");
    let img = dir.join("none.img");
    let q = dir.join("arch.qcow2");
    let o = expect(&[&"-Q", &"--name", &"current", &img, &q], 2);
    assert!(stderr(&o).contains("reserved"), "{}", stderr(&o));
    let o = expect(&[&"-Q", &"--append", &"--name", &"current", &img, &q], 2);
    assert!(stderr(&o).contains("reserved"), "{}", stderr(&o));
    assert!(!q.exists());
}

#[test]
fn an_archive_made_through_the_backup_superblock_takes_appends() {
    if skip() {
        return;
    }
    let dir = scratch("archive-backup-sb");
    // 64 MiB of 1 KiB blocks: backup superblocks at 8193, 24577, ...
    let img = dir.join("fs.img");
    crate::common::kernel::mkfs(&img, 64, &["-b", "1024"]);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&[0u8; 1024], 1024).unwrap();
    }
    let q = dir.join("arch.qcow2");
    // The primary superblock is unusable: exported through a backup, with a warning.
    let o = expect(&[&"-Q", &"--name", &"s1", &img, &q], 3);
    assert!(stderr(&o).contains("backup superblock"), "{}", stderr(&o));
    let o = expect(&[&"-Q", &"--append", &"--name", &"s2", &img, &q], 3);
    assert!(stderr(&o).contains("backup superblock"), "{}", stderr(&o));
    assert_qemu_check(&q);
    assert_eq!(names(&q), ["s1", "s2"]);
    let (a, b) = (dir.join("s1.raw"), dir.join("s2.raw"));
    extract_state(&q, "s1", &a);
    extract_state(&q, "s2", &b);
    assert_eq!(sha256(&a), sha256(&b));
}

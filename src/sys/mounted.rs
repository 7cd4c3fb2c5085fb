//! Is a source or rollback target mounted (read-write)? Checked from `/proc/self/mountinfo`: a block device is
//! matched by device number; an image file by the loop devices whose backing file it is. For a
//! target that is written ([`mounted_anywhere`]), a whole disk (or loop device) is also matched
//! by the partitions the kernel made of it: a rollback at `-o` onto a disk whose partition is
//! mounted is refused.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Where a source is mounted read-write, if it is.
pub fn mounted_rw(source: &Path) -> Option<PathBuf> {
    mount_point(source, true)
}

/// Where a path, or a partition of it, is mounted at all (read-only mounts included), if it
/// is.
pub fn mounted_anywhere(path: &Path) -> Option<PathBuf> {
    mount_point(path, false)
}

fn mount_point(source: &Path, rw_only: bool) -> Option<PathBuf> {
    let meta = std::fs::metadata(source).ok()?;
    let devs: Vec<(u32, u32)> = if meta.file_type().is_block_device() {
        vec![split_dev(meta.rdev())]
    } else {
        loop_devices_backed_by(source)
    };
    let devs = match rw_only {
        true => devs,
        false => with_partitions(devs),
    };
    if devs.is_empty() {
        return None;
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| mount_of(line, &devs, rw_only))
}

fn split_dev(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as u32, minor as u32)
}

/// A mountinfo line: `id parent major:minor root mountpoint options ... - fstype source superopts`.
fn mount_of(line: &str, devs: &[(u32, u32)], rw_only: bool) -> Option<PathBuf> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let (maj, min) = f.get(2)?.split_once(':')?;
    let dev = (maj.parse().ok()?, min.parse().ok()?);
    let rw = f.get(5)?.split(',').any(|o| o == "rw");
    (devs.contains(&dev) && (rw || !rw_only))
        .then(|| PathBuf::from(f.get(4).copied().unwrap_or("?")))
}

/// `devs` and the partitions of each (`/sys/dev/block/MAJ:MIN/*/partition`).
fn with_partitions(devs: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    let mut all = devs.clone();
    for (maj, min) in devs {
        let Ok(entries) = std::fs::read_dir(format!("/sys/dev/block/{maj}:{min}")) else {
            continue;
        };
        all.extend(entries.flatten().filter_map(|e| {
            e.path().join("partition").exists().then_some(())?;
            let dev = std::fs::read_to_string(e.path().join("dev")).ok()?;
            let (a, b) = dev.trim().split_once(':')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        }));
    }
    all
}

fn loop_devices_backed_by(source: &Path) -> Vec<(u32, u32)> {
    let Ok(canon) = source.canonicalize() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter_map(|e| {
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            if Path::new(backing.trim()) != canon {
                return None;
            }
            let dev = std::fs::read_to_string(e.path().join("dev")).ok()?;
            let (a, b) = dev.trim().split_once(':')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines() {
        let line = "36 35 98:0 / /mnt1 rw,noatime master:1 - ext3 /dev/root rw,errors=continue";
        assert_eq!(
            mount_of(line, &[(98, 0)], true),
            Some(PathBuf::from("/mnt1"))
        );
        let ro = "36 35 98:0 / /mnt1 ro,noatime master:1 - ext3 /dev/root ro";
        assert_eq!(mount_of(ro, &[(98, 0)], true), None);
        assert_eq!(
            mount_of(ro, &[(98, 0)], false),
            Some(PathBuf::from("/mnt1"))
        );
        assert_eq!(mount_of(line, &[(8, 1)], false), None);
    }

    #[test]
    fn plain_file_is_not_mounted() {
        let f = std::env::temp_dir().join(format!("e2i-mnt-{}", std::process::id()));
        std::fs::write(&f, b"x").unwrap();
        assert_eq!(mounted_rw(&f), None);
        std::fs::remove_file(&f).unwrap();
    }
}

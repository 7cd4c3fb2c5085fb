//! Which filesystem states an export writes: the current one, and older ones from the
//! filesystem's own snapshots (next3 / ext4-snapshots) or from older point-in-time images of
//! the same filesystem (`--snapshot`).
//!
//! A state is a block view plus its name and date. States are listed newest first; the first
//! is always the current filesystem, named `current`. Names are made unique and never equal
//! to a snapshot id (QEMU looks `-l X` up as an id first).

use anyhow::{bail, Context, Result};
use ext::{
    snapshot_list, snapshot_names, BlockView, FileView, Filesystem, InodeNr, OpenOptions,
    SnapshotFile, SnapshotMap, SnapshotView, Warning,
};
use std::path::{Path, PathBuf};

/// The name of the current state's snapshot entry.
pub const CURRENT: &str = "current";

/// Names and dates of the states, newest first, with where each older state comes from.
pub struct StatePlan {
    /// Display name of each state (unique).
    pub names: Vec<String>,
    /// Date of each state: seconds and nanoseconds since the epoch.
    pub dates: Vec<(u32, u32)>,
    /// Where the older states (index 1..) come from.
    pub older: Older,
}

/// Sources of the older states.
pub enum Older {
    /// None: only the current state.
    None,
    /// In-filesystem snapshots: indexes into `Next3::list`, newest first.
    Next3(Next3),
    /// Point-in-time images, newest first.
    Images(Vec<(PathBuf, FileView)>),
}

/// The filesystem's snapshot list with every snapshot's map.
pub struct Next3 {
    pub list: Vec<SnapshotFile>,
    pub maps: Vec<SnapshotMap>,
    /// Indexes into `list` of the snapshots exported as states (deleted ones are only links).
    pub exported: Vec<usize>,
    /// Problems found reading the list and the maps.
    pub warnings: Vec<Warning>,
}

impl Next3 {
    /// Reads the snapshot list and builds every map.
    pub fn read<V: BlockView>(fs: &Filesystem<V>) -> Next3 {
        let (list, mut warnings) = snapshot_list(fs);
        let maps = list
            .iter()
            .map(|s| {
                let (m, mut w) = SnapshotMap::build(fs, s);
                warnings.append(&mut w);
                m
            })
            .collect();
        let exported = (0..list.len()).filter(|&i| !list[i].deleted).collect();
        Next3 {
            list,
            maps,
            exported,
            warnings,
        }
    }

    /// The view of snapshot `list[index]`.
    pub fn view<'a, V: BlockView>(
        &'a self,
        fs: &'a Filesystem<V>,
        index: usize,
    ) -> SnapshotView<'a> {
        SnapshotView::new(fs, &self.list, &self.maps, index)
    }

    /// Finds a snapshot by name (directory entry) or id; deleted snapshots are not states.
    pub fn find<V: BlockView>(&self, fs: &Filesystem<V>, wanted: &str) -> Option<usize> {
        let names = snapshot_names(fs, &self.list.iter().map(|s| s.ino).collect::<Vec<_>>());
        self.exported.iter().copied().find(|&i| {
            let s = &self.list[i];
            names.get(&s.ino).is_some_and(|n| n == wanted) || s.id.to_string() == wanted
        })
    }
}

/// Date of a filesystem state: its superblock's last write time.
fn sb_date(sb: &ext::Superblock) -> (u32, u32) {
    (sb.s_wtime, 0)
}

/// Plans the states of an export of `fs` (the current state) with the older states asked for.
pub fn plan<V: BlockView>(
    fs: &Filesystem<V>,
    fs_snapshots: bool,
    images: &[PathBuf],
    force: bool,
) -> Result<StatePlan> {
    let mut names = vec![CURRENT.to_string()];
    let mut dates = vec![sb_date(&fs.sb)];
    let older = if fs_snapshots {
        let next3 = Next3::read(fs);
        let inos: Vec<InodeNr> = next3.list.iter().map(|s| s.ino).collect();
        let found = snapshot_names(fs, &inos);
        for &i in &next3.exported {
            let s = &next3.list[i];
            names.push(
                found
                    .get(&s.ino)
                    .cloned()
                    .unwrap_or_else(|| format!("snapshot-{}", s.id)),
            );
            dates.push((u32::try_from(s.ctime).unwrap_or(u32::MAX), s.ctime_nsec));
        }
        Older::Next3(next3)
    } else if !images.is_empty() {
        let mut opened = Vec::new();
        for path in images.iter().rev() {
            let (view, date) = open_image(fs, path, force)?;
            names.push(path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ));
            dates.push(date);
            opened.push((path.clone(), view));
        }
        Older::Images(opened)
    } else {
        Older::None
    };
    Ok(StatePlan {
        names: unique_names(names),
        dates,
        older,
    })
}

/// Opens a `--snapshot` image and checks that it is the same filesystem: same UUID and block
/// size. Returns its view and date (superblock write time, else the file's mtime).
fn open_image<V: BlockView>(
    fs: &Filesystem<V>,
    path: &Path,
    force: bool,
) -> Result<(FileView, (u32, u32))> {
    if let Some(mnt) = crate::sys::mounted::mounted_rw(path).filter(|_| !force) {
        bail!(
            "--snapshot {} is mounted read-write on {}; the image could be inconsistent. Use -f to image it anyway",
            path.display(),
            mnt.display()
        );
    }
    let view = FileView::open(path)
        .with_context(|| format!("cannot open --snapshot {} read-only", path.display()))?;
    let other = Filesystem::open(&view, &OpenOptions::default())
        .with_context(|| format!("--snapshot {}: cannot open the filesystem", path.display()))?;
    if other.sb.s_uuid != fs.sb.s_uuid {
        bail!(
            "--snapshot {}: filesystem UUID {} differs from the source's {}; it is not an older state of the same filesystem",
            path.display(),
            crate::text::uuid(&other.sb.s_uuid),
            crate::text::uuid(&fs.sb.s_uuid)
        );
    }
    if other.sb.block_size != fs.sb.block_size {
        bail!(
            "--snapshot {}: block size {} differs from the source's {}",
            path.display(),
            other.sb.block_size,
            fs.sb.block_size
        );
    }
    let mut date = sb_date(&other.sb);
    if date.0 == 0 {
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let since = mtime
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .unwrap_or_default();
        date = (
            u32::try_from(since.as_secs()).unwrap_or(u32::MAX),
            since.subsec_nanos(),
        );
    }
    drop(other);
    Ok((view, date))
}

/// Makes names unique, never empty and never equal to a snapshot id ("1" … "n"): a clash gets
/// a suffix `-2`, `-3`, …; `current` is reserved for the first state.
pub fn unique_names(names: Vec<String>) -> Vec<String> {
    let n = names.len();
    let is_id = |s: &str| (1..=n).any(|id| id.to_string() == s);
    let mut out: Vec<String> = Vec::with_capacity(n);
    for (i, name) in names.into_iter().enumerate() {
        let mut base = if name.is_empty() {
            format!("state-{}", i + 1)
        } else {
            name
        };
        if i > 0 && base == CURRENT {
            base = format!("{CURRENT}-{i}");
        }
        let mut candidate = base.clone();
        let mut k = 2;
        while is_id(&candidate) || out.contains(&candidate) || (i > 0 && candidate == CURRENT) {
            candidate = format!("{base}-{k}");
            k += 1;
        }
        out.push(candidate);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_never_ids() {
        let v = unique_names(vec![
            "current".into(),
            "a".into(),
            "a".into(),
            "2".into(),
            "current".into(),
            "".into(),
        ]);
        assert_eq!(
            v,
            vec!["current", "a", "a-2", "2-2", "current-4", "state-6"]
        );
        assert_eq!(
            unique_names(vec!["current".into(), "7".into()]),
            vec!["current", "7"]
        );
        assert_eq!(
            unique_names(vec!["current".into(), "01".into()]),
            vec!["current", "01"]
        );
    }
}

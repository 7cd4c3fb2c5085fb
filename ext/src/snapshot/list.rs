//! The snapshot list: from `s_snapshot_list` through `i_next_snapshot` (osd1), newest first.

use crate::features::ro_compat;
use crate::fs::Filesystem;
use crate::indirect::snapshot_block_offset;
use crate::inode::{inode_flags, Inode};
use crate::types::InodeNr;
use crate::view::BlockView;
use crate::warning::Warning;
use std::collections::HashSet;

/// One snapshot file on the list.
#[derive(Clone, Debug)]
pub struct SnapshotFile {
    /// Its inode.
    pub ino: InodeNr,
    /// Snapshot id (`i_generation`).
    pub id: u32,
    /// Creation time: the inode's ctime, seconds since the epoch.
    pub ctime: u64,
    /// Nanoseconds of the ctime (0 without extra inode fields).
    pub ctime_nsec: u32,
    /// SNAPFILE_DELETED: kept only as a read-through link for older snapshots.
    pub deleted: bool,
    /// Filesystem size at the take, in blocks (`i_size / block_size - 12 - block_size/4`).
    pub blocks: u64,
    /// The inode itself.
    pub inode: Inode,
}

/// Largest snapshot image, in blocks: the format addresses 2^32 blocks (16 TiB at 4 KiB).
pub(super) const MAX_SNAPSHOT_BLOCKS: u64 = 1 << 32;

/// Reads the snapshot list (newest first). Problems (a loop, a non-snapshot inode on the
/// list, an unreadable inode) end the list early and are reported.
pub fn snapshot_list<V: BlockView>(fs: &Filesystem<V>) -> (Vec<SnapshotFile>, Vec<Warning>) {
    let sb = &fs.sb;
    let mut list = Vec::new();
    let mut warnings = Vec::new();
    if !sb.has_ro_compat(ro_compat::HAS_SNAPSHOT) {
        return (list, warnings);
    }
    let mut seen = HashSet::new();
    let mut ino = InodeNr(sb.s_snapshot_list);
    while ino.0 != 0 {
        let warn = |reason: String| Warning {
            inode: Some(ino),
            block: None,
            offset: None,
            reason,
        };
        if !seen.insert(ino) {
            warnings.push(warn(
                "snapshot list loops back to this inode; list cut here".into(),
            ));
            break;
        }
        let snap = match read_snapshot(fs, ino) {
            Ok((snap, warning)) => {
                warnings.extend(warning.map(warn));
                snap
            }
            Err(reason) => {
                warnings.push(warn(reason));
                break;
            }
        };
        ino = InodeNr(snap.inode.osd1);
        list.push(snap);
    }
    (list, warnings)
}

/// The snapshot file `ino` of the list, with the reason for a warning on its size.
///
/// # Errors
/// Why the list is cut here: the inode is unreadable or not a snapshot file.
fn read_snapshot<V: BlockView>(
    fs: &Filesystem<V>,
    ino: InodeNr,
) -> Result<(SnapshotFile, Option<String>), String> {
    let sb = &fs.sb;
    let inode = match fs.read_inode_raw(ino) {
        Ok(raw) => Inode::parse(&raw, sb),
        Err(e) => return Err(format!("snapshot list: {e}; list cut here")),
    };
    if !inode.is_snapshot_file() {
        return Err(
            "snapshot list entry is not a snapshot file (no SNAPFILE flag); list cut here".into(),
        );
    }
    let offset = snapshot_block_offset(sb.block_size);
    let mut blocks = (inode.i_size / u64::from(sb.block_size)).saturating_sub(offset);
    let mut warning = None;
    if blocks == 0 || blocks > MAX_SNAPSHOT_BLOCKS {
        warning = Some(format!(
            "snapshot size {} bytes gives {blocks} blocks; using the filesystem size",
            inode.i_size
        ));
        blocks = sb.s_blocks_count;
    }
    let t = inode.ctime();
    let (ctime, ctime_nsec) = (t.secs.max(0) as u64, t.nsecs.min(999_999_999));
    let snap = SnapshotFile {
        ino,
        id: inode.i_generation,
        ctime,
        ctime_nsec,
        deleted: inode.has_flag(inode_flags::SNAPFILE_DELETED),
        blocks,
        inode,
    };
    Ok((snap, warning))
}

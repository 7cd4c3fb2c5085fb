//! Finding the journal of a filesystem and mapping its blocks to the device holding it.
//!
//! * Internal journal (`s_journal_uuid` all zero, as e2fsck decides): the inode
//!   `s_journal_inum` (whatever its number), read from the **on-disk, pre-replay** inode table,
//!   mapped by the crate's block-map walk ([`inode_runs`], extents or indirect). The inode is
//!   unusable when it is not an in-use regular file, is smaller than 1024 blocks (jbd2
//!   `JBD2_MIN_JOURNAL_BLOCKS`), its map is corrupt, or it maps less than its `i_size`; then,
//!   with `s_jnl_backup_type` = `EXT3_JNL_BACKUP_BLOCKS`, the superblock's copy of its
//!   `i_block` and `i_size` (`s_jnl_blocks`) is used instead and a warning says so.
//! * External journal: a caller-given view of the journal device. Its ext2 superblock must
//!   carry INCOMPAT_JOURNAL_DEV and the UUID `s_journal_uuid` names; the journal superblock is
//!   its block `s_first_data_block + 1`; journal block n is device block n.
//!
//! Then the journal superblock is parsed and its geometry checked against the mapped size:
//! `s_maxlen` at most the mapped blocks (jbd2: "journal file too short"), `s_first` and a
//! non-zero `s_start` inside the log, the fast-commit area inside `s_maxlen`.

use super::superblock::JournalSuperblock;
use crate::blockmap::inode_runs;
use crate::bytes::{le16, le32};
use crate::collect::RunKind;
use crate::error::Error;
use crate::features::{compat, incompat};
use crate::fs::Filesystem;
use crate::inode::{FileType, Inode, I_BLOCK_OFFSET, I_BLOCK_SIZE};
use crate::superblock::{Superblock, SuperblockBytes, EXT4_SUPER_MAGIC, SUPERBLOCK_OFFSET};
use crate::types::{BlockNr, InodeNr};
use crate::view::BlockView;
use crate::warning::Warning;

/// Smallest journal jbd2 accepts, in blocks (`JBD2_MIN_JOURNAL_BLOCKS`).
const JBD2_MIN_JOURNAL_BLOCKS: u64 = 1024;
/// Byte offsets in the ext4 superblock: `s_jnl_backup_type` (u8), `s_jnl_blocks[17]`.
const S_JNL_BACKUP_TYPE: usize = 0xFD;
const S_JNL_BLOCKS: usize = 0x10C;
/// `s_jnl_backup_type` when `s_jnl_blocks` holds the journal inode's `i_block` and size.
pub(crate) const EXT3_JNL_BACKUP_BLOCKS: u8 = 1;

/// Where the journal lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalLocation {
    /// An inode of the filesystem (`s_journal_inum`); `from_backup` when its map was taken
    /// from the superblock's `s_jnl_blocks` because the inode itself is unusable.
    Inode {
        /// The journal inode.
        ino: InodeNr,
        /// Mapped through `s_jnl_blocks`.
        from_backup: bool,
    },
    /// An external journal device (`s_journal_uuid`), read through the caller's view.
    External,
}

/// A run of journal blocks `[journal_block, journal_block + len)` stored at device blocks
/// `[device_block, device_block + len)` (filesystem blocks of the device holding the journal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct JournalRun {
    /// First journal (logical) block.
    pub journal_block: u64,
    /// First device block.
    pub device_block: BlockNr,
    /// Blocks.
    pub len: u64,
}

/// A located journal with a valid journal superblock, ready for [`Journal::recover`].
pub struct Journal<'a> {
    pub(crate) device: &'a dyn BlockView,
    /// Where it is.
    pub location: JournalLocation,
    /// The journal superblock (`journal_superblock_t`), as on disk.
    pub(crate) sb: JournalSuperblock,
    /// Journal block holding the journal superblock: 0 for an internal journal, 1 or 2 (the
    /// device's `s_first_data_block + 1`) for an external one.
    pub sb_block: u64,
    /// Journal blocks in use (jbd2 `j_total_len`): `s_maxlen`, validated against the map.
    pub total_len: u64,
    pub(crate) runs: Vec<JournalRun>,
    /// Mapping blocks of the journal inode (extent tree, IND/DIND/TIND), as device extents.
    pub(crate) map_blocks: Vec<(BlockNr, u64)>,
    pub(crate) block_size: u32,
    pub(crate) fs_blocks_count: u64,
    /// `s_inode_size` of the filesystem (it bounds the fast-commit INODE tags).
    pub(crate) fs_inode_size: u16,
    pub(crate) fs_recover: bool,
}

/// What [`Journal::locate`] found.
pub enum JournalLookup<'a> {
    /// The journal, usable.
    Found(Journal<'a>),
    /// The filesystem has no journal (COMPAT_HAS_JOURNAL clear).
    None,
    /// The journal is on an external device (`s_journal_uuid`) and no view of it was given.
    ExternalNotGiven {
        /// `s_journal_uuid`.
        uuid: [u8; 16],
    },
    /// A journal exists but cannot be read (bad journal superblock, unusable inode without a
    /// usable backup, wrong external device, impossible geometry).
    Unusable {
        /// Why.
        reason: String,
    },
}

/// The outcome of [`Journal::locate`], with the problems worked around.
pub struct Located<'a> {
    /// The journal or why there is none.
    pub lookup: JournalLookup<'a>,
    /// Fallbacks taken and non-fatal problems (e.g. the journal inode's map replaced by
    /// `s_jnl_blocks`).
    pub warnings: Vec<Warning>,
}

impl<'a> Journal<'a> {
    /// Finds the journal of `fs` (opened on the device, before any replay): the inode
    /// `s_journal_inum` (falling back to `s_jnl_blocks`), or the external journal device
    /// `external` when `s_journal_uuid` is set. See the module comment.
    ///
    /// # Errors
    /// [`Error::Io`] when the journal inode cannot be read; every problem of the journal
    /// itself is a [`JournalLookup`] or a warning.
    pub fn locate<V: BlockView>(
        fs: &'a Filesystem<V>,
        external: Option<&'a dyn BlockView>,
    ) -> Result<Located<'a>, Error> {
        let sb = &fs.sb;
        let mut warnings = Vec::new();
        if !sb.has_compat(compat::HAS_JOURNAL) {
            if sb.has_incompat(incompat::RECOVER) {
                warnings.push(note(
                    "needs_recovery is set but has_journal is clear: no journal to replay".into(),
                ));
            }
            return Ok(Located {
                lookup: JournalLookup::None,
                warnings,
            });
        }
        let lookup = if sb.has_external_journal() {
            let uuid = sb.s_journal_uuid;
            match external {
                None => JournalLookup::ExternalNotGiven { uuid },
                Some(dev) => external_journal(sb, dev, uuid, &mut warnings),
            }
        } else {
            internal_journal(fs, &mut warnings)?
        };
        Ok(Located { lookup, warnings })
    }

    /// The device blocks holding the journal, for copying: the journal blocks
    /// `[0, total_len)` and the journal inode's mapping blocks, as (first block, blocks)
    /// extents of the journal's device (the filesystem for an internal journal).
    pub fn blocks(&self) -> Vec<(BlockNr, u64)> {
        let mut v: Vec<(BlockNr, u64)> = self
            .runs
            .iter()
            .filter(|r| r.journal_block < self.total_len)
            .map(|r| {
                let len = r.len.min(self.total_len - r.journal_block);
                (r.device_block, len)
            })
            .collect();
        v.extend(self.map_blocks.iter().copied());
        v
    }

    /// The device block of journal block `jblock`, if mapped.
    pub fn device_block(&self, jblock: u64) -> Option<u64> {
        device_block_in(&self.runs, jblock)
    }

    /// Reads journal block `jblock`.
    ///
    /// # Errors
    /// A description naming the journal block (unmapped, or the read error).
    pub(crate) fn read_block(&self, jblock: u64) -> Result<Vec<u8>, String> {
        read_mapped(self.device, &self.runs, self.block_size, jblock)
    }

    /// The journal's device view.
    pub(crate) fn device(&self) -> &'a dyn BlockView {
        self.device
    }
}

fn note(reason: String) -> Warning {
    Warning {
        inode: None,
        block: None,
        offset: None,
        reason,
    }
}

/// The internal journal: the inode, or its backup in `s_jnl_blocks`.
fn internal_journal<'a, V: BlockView>(
    fs: &'a Filesystem<V>,
    warnings: &mut Vec<Warning>,
) -> Result<JournalLookup<'a>, Error> {
    let sb = &fs.sb;
    let ino = InodeNr(sb.s_journal_inum);
    let raw = match fs.read_inode_raw(ino) {
        Ok(raw) => raw,
        Err(Error::Corrupt(c)) => {
            let reason = format!("journal inode {ino}: {c}");
            return Ok(from_backup(fs, ino, reason, warnings));
        }
        Err(e) => return Err(e),
    };
    let inode = Inode::parse(&raw, sb);
    match mapped(fs, ino, &inode) {
        Ok((runs, map_blocks, len)) => Ok(finish(
            fs.view(),
            sb,
            JournalLocation::Inode {
                ino,
                from_backup: false,
            },
            (runs, map_blocks, len),
        )),
        Err(reason) => Ok(from_backup(fs, ino, reason, warnings)),
    }
}

/// The journal through `s_jnl_blocks`, after the inode was found unusable for `reason`.
fn from_backup<'a, V: BlockView>(
    fs: &'a Filesystem<V>,
    ino: InodeNr,
    reason: String,
    warnings: &mut Vec<Warning>,
) -> JournalLookup<'a> {
    let sb = &fs.sb;
    if sb.raw[S_JNL_BACKUP_TYPE] != EXT3_JNL_BACKUP_BLOCKS {
        return JournalLookup::Unusable {
            reason: format!("{reason}; no s_jnl_blocks backup (s_jnl_backup_type is not 1)"),
        };
    }
    let inode = backup_inode(sb);
    match mapped(fs, ino, &inode) {
        Ok(map) => {
            let mut w = note(format!(
                "{reason}; the journal is read through the superblock's backup s_jnl_blocks"
            ));
            w.inode = Some(ino);
            warnings.push(w);
            let location = JournalLocation::Inode {
                ino,
                from_backup: true,
            };
            finish(fs.view(), sb, location, map)
        }
        Err(backup) => JournalLookup::Unusable {
            reason: format!("{reason}; the s_jnl_blocks backup is unusable too: {backup}"),
        },
    }
}

/// The journal inode as e2fsck rebuilds it from `s_jnl_blocks`: a regular file with one
/// link, `i_block` = `s_jnl_blocks[0..15]`, `i_size` from `[15]` (high) and `[16]` (low),
/// EXTENTS_FL when `i_block` starts with an extent header.
fn backup_inode(sb: &Superblock) -> Inode {
    let mut raw = vec![0u8; 256];
    let words = &sb.raw[S_JNL_BLOCKS..S_JNL_BLOCKS + 17 * 4];
    raw[0..2].copy_from_slice(&0x8180u16.to_le_bytes());
    raw[0x1A..0x1C].copy_from_slice(&1u16.to_le_bytes());
    raw[I_BLOCK_OFFSET..I_BLOCK_OFFSET + I_BLOCK_SIZE].copy_from_slice(&words[..I_BLOCK_SIZE]);
    raw[0x6C..0x70].copy_from_slice(&words[60..64]);
    raw[0x04..0x08].copy_from_slice(&words[64..68]);
    if le16(words, 0) == crate::extent_header::EXT4_EXT_MAGIC {
        let flags = crate::inode::inode_flags::EXTENTS;
        raw[0x20..0x24].copy_from_slice(&flags.to_le_bytes());
    }
    Inode::parse(&raw, sb)
}

type Map = (Vec<JournalRun>, Vec<(BlockNr, u64)>, u64);

/// The journal map of `inode`: its data runs, mapping blocks and size in blocks; or why the
/// inode is unusable as a journal (module comment).
fn mapped<V: BlockView>(fs: &Filesystem<V>, ino: InodeNr, inode: &Inode) -> Result<Map, String> {
    let bs = u64::from(fs.sb.block_size);
    if inode.i_links_count == 0 || inode.file_type() != FileType::Regular {
        return Err(format!("journal inode {ino} is not an in-use regular file"));
    }
    let len = inode.i_size / bs;
    if len < JBD2_MIN_JOURNAL_BLOCKS {
        return Err(format!(
            "journal inode {ino}: i_size {} is below {JBD2_MIN_JOURNAL_BLOCKS} blocks",
            inode.i_size
        ));
    }
    let (file_runs, warnings) = inode_runs(fs, ino, inode);
    if let Some(w) = warnings.first() {
        return Err(format!("journal inode {ino}: {w}"));
    }
    let mut runs = Vec::new();
    let mut map_blocks = Vec::new();
    for r in file_runs {
        match r.kind {
            RunKind::Data { .. } => runs.push(JournalRun {
                journal_block: r.logical,
                device_block: BlockNr(r.physical),
                len: r.len,
            }),
            RunKind::Tree => map_blocks.push((BlockNr(r.physical), r.len)),
            RunKind::Xattr => {}
        }
    }
    runs.sort_by_key(|r| r.journal_block);
    let end = runs
        .last()
        .map_or(0, |r| r.journal_block.saturating_add(r.len));
    if end < len {
        return Err(format!(
            "journal inode {ino} maps {end} blocks, less than its i_size ({len} blocks)"
        ));
    }
    Ok((runs, map_blocks, len))
}

/// Reads and checks the journal superblock of a journal mapped by `map` (`mapped_len`
/// blocks): at journal block 0 for an inode, at the first mapped block of a device.
fn finish<'a>(
    device: &'a dyn BlockView,
    fs: &Superblock,
    location: JournalLocation,
    (runs, map_blocks, mapped_len): Map,
) -> JournalLookup<'a> {
    let sb_block = match location {
        JournalLocation::Inode { .. } => 0,
        JournalLocation::External => runs.first().map_or(0, |r| r.journal_block),
    };
    let unusable = |reason: String| JournalLookup::Unusable { reason };
    let raw = match read_mapped(device, &runs, fs.block_size, sb_block) {
        Ok(raw) => raw,
        Err(e) => return unusable(e),
    };
    let jsb = match JournalSuperblock::parse(&raw, fs.block_size) {
        Ok(jsb) => jsb,
        Err(e) => return unusable(format!("journal block {sb_block}: {e}")),
    };
    match check_geometry(&jsb, mapped_len) {
        Ok(total_len) => JournalLookup::Found(Journal {
            device,
            location,
            sb: jsb,
            sb_block,
            total_len,
            runs,
            map_blocks,
            block_size: fs.block_size,
            fs_blocks_count: fs.s_blocks_count,
            fs_inode_size: fs.s_inode_size,
            fs_recover: fs.has_incompat(incompat::RECOVER),
        }),
        Err(e) => unusable(format!("journal block {sb_block}: {e}")),
    }
}

/// The device block of journal block `jblock` in `runs` (sorted by journal block).
fn device_block_in(runs: &[JournalRun], jblock: u64) -> Option<u64> {
    let i = runs.partition_point(|r| r.journal_block <= jblock);
    let r = runs.get(i.checked_sub(1)?)?;
    (jblock - r.journal_block < r.len).then(|| r.device_block.0 + (jblock - r.journal_block))
}

/// Reads journal block `jblock` of the journal mapped by `runs` on `device`.
fn read_mapped(
    device: &dyn BlockView,
    runs: &[JournalRun],
    block_size: u32,
    jblock: u64,
) -> Result<Vec<u8>, String> {
    let dev = device_block_in(runs, jblock)
        .ok_or_else(|| format!("journal block {jblock} is not mapped"))?;
    let mut buf = vec![0u8; block_size as usize];
    device
        .read_blocks(block_size, dev, &mut buf)
        .map_err(|e| format!("journal block {jblock} (device block {dev}): {e}"))?;
    Ok(buf)
}

/// `j_total_len`: `s_maxlen`, after checking it against the `mapped` blocks, and `s_first`,
/// `s_start` and the fast-commit area against it.
fn check_geometry(jsb: &JournalSuperblock, mapped: u64) -> Result<u64, String> {
    let total = u64::from(jsb.s_maxlen);
    if total > mapped {
        return Err(format!(
            "s_maxlen {total} is more than the {mapped} blocks mapped (journal too short)"
        ));
    }
    let first = u64::from(jsb.s_first);
    if first == 0 || first >= total {
        return Err(format!(
            "s_first {first} is outside the journal (s_maxlen {total})"
        ));
    }
    let fc = u64::from(jsb.fast_commit_blocks());
    let last = total
        .checked_sub(fc)
        .filter(|&l| l > first)
        .ok_or_else(|| {
            format!(
                "{fc} fast-commit blocks leave no log between s_first {first} and s_maxlen {total}"
            )
        })?;
    let start = u64::from(jsb.s_start);
    if start != 0 && (start < first || start >= last) {
        return Err(format!(
            "s_start {start} is outside the log [{first}, {last})"
        ));
    }
    Ok(total)
}

/// The external journal on `dev`: its ext2 superblock names it a journal device with
/// `uuid`; the journal superblock follows it; journal block n is device block n.
fn external_journal<'a>(
    sb: &Superblock,
    dev: &'a dyn BlockView,
    uuid: [u8; 16],
    warnings: &mut Vec<Warning>,
) -> JournalLookup<'a> {
    let unusable = |reason: String| JournalLookup::Unusable { reason };
    let mut raw = vec![0u8; 1024];
    if let Err(e) = dev.read_at(SUPERBLOCK_OFFSET, &mut raw) {
        return unusable(format!("journal device superblock: {e}"));
    }
    let Ok(bytes) = SuperblockBytes::new(&raw[..]) else {
        return unusable("the journal device superblock is not 1024 bytes".into());
    };
    if bytes.s_magic() != EXT4_SUPER_MAGIC
        || bytes.s_feature_incompat() & incompat::JOURNAL_DEV == 0
    {
        return unusable("the given journal device has no journal_dev ext2 superblock".into());
    }
    if raw[0x68..0x78] != uuid {
        return unusable("the given journal device's UUID is not s_journal_uuid".into());
    }
    let log_bs = le32(&raw, 0x18);
    if log_bs > 6 || 1024u32 << log_bs != sb.block_size {
        return unusable(format!(
            "the journal device's block size (s_log_block_size {log_bs}) differs from the filesystem's"
        ));
    }
    let sb_block = u64::from(le32(&raw, 0x14)) + 1;
    let dev_blocks = dev.size() / u64::from(sb.block_size);
    let runs = vec![JournalRun {
        journal_block: sb_block,
        device_block: BlockNr(sb_block),
        len: dev_blocks.saturating_sub(sb_block),
    }];
    let lookup = finish(
        dev,
        sb,
        JournalLocation::External,
        (runs, Vec::new(), dev_blocks),
    );
    if let JournalLookup::Found(j) = &lookup {
        check_users(j, sb, warnings);
    }
    lookup
}

/// An external journal lists the filesystems using it in `s_users` (`s_nr_users` of them);
/// e2fsck refuses more than one. A journal device no filesystem was attached to yet (no
/// users: `mke2fs -O journal_dev`, then `s_journal_uuid` set by hand) is accepted by the
/// tools, and here.
fn check_users(j: &Journal<'_>, sb: &Superblock, warnings: &mut Vec<Warning>) {
    let n = j.sb.s_nr_users.min(48) as usize;
    let users = &j.sb.raw[0x100..0x100 + 16 * n];
    if j.sb.s_nr_users > 1 {
        warnings.push(note(format!(
            "the external journal has {} users (e2fsck refuses more than one)",
            j.sb.s_nr_users
        )));
    }
    if n > 0 && !users.chunks(16).any(|u| u == &sb.raw[0x68..0x78]) {
        warnings.push(note(
            "the filesystem's UUID is not among the external journal's s_users".into(),
        ));
    }
}

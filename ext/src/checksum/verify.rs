//! The walk's checks of what it reads only for its checksum: the superblocks, a group's
//! descriptor and bitmaps, the journal superblock, the MMP block; and the checksums it leaves
//! to the reader of the blocks (`pending`): the used inode records, the blocks a directory or
//! the orphan file maps (captured while its tree is walked), xattr blocks. Extent blocks are
//! checked by the collector as the walk reads them.
//!
//! A block that cannot be read here is not counted: the copy reports it.

use super::pending::Pending;
use super::pending::Role;
use super::report::{matched, ChecksumKind, Failure};
use super::rules;
use super::state::CapturedRun;
use crate::bytes::{le16, le32};
use crate::collect::{bad, Collector};
use crate::features::{compat, incompat, ro_compat};
use crate::group_desc::{bitmap_checksum, GroupDesc, EXT4_BG_BLOCK_UNINIT, EXT4_BG_INODE_UNINIT};
use crate::inode::{FileType, Inode};
use crate::journal::superblock_checksum_check;
use crate::layout::{desc_block_location, group_base_block};
use crate::superblock::{
    superblock_checksum, EXT2_OS_HURD, EXT4_SUPER_MAGIC, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE,
};
use crate::types::InodeNr;

/// Byte offsets in the raw superblock (`s_magic`, `s_feature_ro_compat`, `s_checksum`).
const S_MAGIC_AT: usize = 0x38;
const S_RO_COMPAT_AT: usize = 0x64;
const S_CHECKSUM_AT: usize = 0x3FC;

/// Reads `buf.len()` bytes of whole blocks from `block`; false (nothing counted) on an error.
fn read(c: &Collector<'_>, block: u64, buf: &mut [u8]) -> bool {
    c.view.read_blocks(c.sb.block_size, block, buf).is_ok()
}

/// The superblock in use (validated when it was parsed, at block `sb_block`) and, when that is
/// a backup, the primary's checksum if it still says metadata_csum: listed without a warning
/// (opening through a backup already says why the primary was refused).
pub(crate) fn superblocks(c: &mut Collector<'_>, sb_block: u64) {
    if !c.sb.has_metadata_csum() {
        return;
    }
    c.record_check(
        bad(ChecksumKind::Superblock, sb_block, None),
        Ok(()),
        None,
        false,
    );
    let primary = group_base_block(c.sb, 0);
    if sb_block == primary {
        return;
    }
    let mut raw = vec![0u8; SUPERBLOCK_SIZE];
    if c.view.read_at(SUPERBLOCK_OFFSET, &mut raw).is_err()
        || le16(&raw, S_MAGIC_AT) != EXT4_SUPER_MAGIC
        || le32(&raw, S_RO_COMPAT_AT) & ro_compat::METADATA_CSUM == 0
    {
        return;
    }
    let check = super::Check {
        stored: le32(&raw, S_CHECKSUM_AT),
        computed: superblock_checksum(&raw),
    };
    let b = bad(ChecksumKind::Superblock, primary, None);
    c.record_check(b, matched(check), None, false);
}

/// Group `g`'s descriptor (verified when the table was read from the superblock at
/// `sb_block`) and, with metadata_csum, the bitmaps it does not flag uninitialized (against
/// the checksums it holds, even when it fails its own, as e2fsck does).
pub(crate) fn group(c: &mut Collector<'_>, g: u32, gd: &GroupDesc, sb_block: u64) {
    let sb = c.sb;
    if let Some(check) = gd.checksum {
        let block = desc_block_location(sb, sb_block, g / sb.descs_per_block);
        let offset = (g % sb.descs_per_block) * sb.desc_size;
        let b = bad(ChecksumKind::GroupDescriptor, block, None);
        c.record_check(b, matched(check), Some(offset), true);
    }
    if !sb.has_metadata_csum() {
        return;
    }
    let bitmaps = [
        (
            ChecksumKind::BlockBitmap,
            EXT4_BG_BLOCK_UNINIT,
            gd.bg_block_bitmap,
            sb.s_clusters_per_group / 8,
            gd.bg_block_bitmap_csum,
        ),
        (
            ChecksumKind::InodeBitmap,
            EXT4_BG_INODE_UNINIT,
            gd.bg_inode_bitmap,
            sb.s_inodes_per_group / 8,
            gd.bg_inode_bitmap_csum,
        ),
    ];
    let mut buf = vec![0u8; sb.block_size as usize];
    for (kind, uninit, block, bytes, stored) in bitmaps {
        // The flag as stored, trusted or not (e2fsck's pass 5 skips those groups too): the
        // bitmap of a group flagged uninitialized has no checksum to compare.
        let flagged = sb.has_group_desc_csum() && gd.bg_flags & uninit != 0;
        if flagged || c.check_range(block, 1).is_err() || !read(c, block, &mut buf) {
            continue;
        }
        let check = bitmap_checksum(sb, &buf, bytes, stored);
        c.record_check(bad(kind, block, None), matched(check), None, true);
    }
}

/// The role of in-use inode `ino` for the checksum walk and the file blocks to capture
/// (those below it), if its mapped blocks carry checksums.
pub(crate) fn role(c: &Collector<'_>, ino: InodeNr, inode: &Inode) -> Option<(Role, u64)> {
    let sb = c.sb;
    c.checks.as_ref()?;
    let below_size = inode.i_size.div_ceil(u64::from(sb.block_size));
    if ino.0 == sb.s_journal_inum && sb.has_compat(compat::HAS_JOURNAL) {
        return (!sb.has_external_journal()).then_some((Role::Journal, 1));
    }
    if !sb.has_metadata_csum() {
        return None;
    }
    if ino.0 == sb.s_orphan_file_inum && sb.has_compat(compat::ORPHAN_FILE) {
        return Some((Role::OrphanFile, below_size));
    }
    (inode.file_type() == FileType::Directory).then_some((Role::Directory, below_size))
}

/// Leaves the blocks captured for directory or orphan file `ino` while its tree was walked to
/// their reader (pending checks); reads and verifies the journal superblock at once (one
/// block, which the journal lookup reads too).
pub(crate) fn captured(c: &mut Collector<'_>, ino: InodeNr, role: Role, runs: &[CapturedRun]) {
    if role == Role::Journal {
        let mut buf = vec![0u8; c.sb.block_size as usize];
        if let Some(r) = runs.first().filter(|r| r.logical == 0) {
            if read(c, r.physical, &mut buf) {
                journal_superblock(c, ino, r.physical, &buf);
            }
        }
        return;
    }
    let Some(checks) = c.checks.as_deref_mut() else {
        return;
    };
    let seed = checks
        .owner_seed()
        .filter(|o| o.0 == ino)
        .map_or(0, |(_, s)| s);
    for r in runs {
        checks.defer(r.physical, r.len, |_| Pending::Mapped { ino, seed, role });
    }
}

/// Leaves the checksums of group `g`'s used inode records (`used` of them, from the first)
/// to the reader of its inode table (metadata_csum, not Hurd: the Hurd's osd2 has no
/// checksum fields).
pub(crate) fn defer_inode_table(c: &mut Collector<'_>, g: u32, gd: &GroupDesc, used: u32) {
    let sb = c.sb;
    let hurd = sb.s_creator_os == EXT2_OS_HURD;
    let blocks = u64::from(used.div_ceil(sb.inodes_per_block));
    if used == 0 || hurd || c.check_range(gd.bg_inode_table, blocks).is_err() {
        return;
    }
    let Some(checks) = c.csum_checks() else {
        return;
    };
    let ipb = u64::from(sb.inodes_per_block);
    // Below s_inodes_count (the caller bounds `used`), so this cannot overflow.
    let first_ino = g * sb.s_inodes_per_group + 1;
    checks.defer(gd.bg_inode_table, blocks, |k| Pending::Itable {
        first_ino: first_ino + (k * ipb) as u32,
        records: u64::from(used) - k * ipb,
    });
}

/// Leaves the checksum of xattr block `nr` of inode `ino` to the block's reader
/// (metadata_csum); shared blocks are verified once.
pub(crate) fn defer_xattr_block(c: &mut Collector<'_>, nr: u64, ino: InodeNr) {
    if let Some(checks) = c.csum_checks() {
        checks.defer(nr, 1, |_| Pending::Xattr { ino });
    }
}

/// The journal superblock at block `nr` of journal inode `ino`: listed without a warning (the
/// journal lookup reports the journal unusable).
fn journal_superblock(c: &mut Collector<'_>, ino: InodeNr, nr: u64, block: &[u8]) {
    if let Some(check) = superblock_checksum_check(block) {
        let b = bad(ChecksumKind::JournalSuperblock, nr, Some(ino));
        c.record_check(b, matched(check), None, false);
    }
}

/// The MMP block (metadata_csum with INCOMPAT_MMP).
pub(crate) fn mmp(c: &mut Collector<'_>) {
    let sb = c.sb;
    let nr = sb.s_mmp_block;
    if !sb.has_metadata_csum() || !sb.has_incompat(incompat::MMP) || c.check_range(nr, 1).is_err() {
        return;
    }
    let mut buf = vec![0u8; sb.block_size as usize];
    if !read(c, nr, &mut buf) {
        return;
    }
    let result = rules::mmp_block(sb.metadata_csum_seed(), &buf)
        .map_err(Failure::Unrecognized)
        .and_then(matched);
    c.record_check(bad(ChecksumKind::Mmp, nr, None), result, None, true);
}

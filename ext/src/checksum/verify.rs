//! The walk's checks of what it reads only for its checksum: the superblocks, a group's
//! descriptor and bitmaps, the blocks an inode maps that carry one (directory, orphan-file
//! and journal superblock blocks, captured while its tree is walked), xattr blocks and the MMP
//! block. Inodes and extent blocks are checked by the collector as the walk reads them.
//!
//! A block that cannot be read here is not counted: the copy reports it.

use super::report::{matched, ChecksumKind, Failure};
use super::rules;
use super::state::{CapturedRun, PendingRun, Role};
use crate::bytes::{le16, le32};
use crate::collect::{bad, Collector};
use crate::dir::{dir_block_checksum, DirChecksum};
use crate::features::{compat, incompat, ro_compat};
use crate::group_desc::{bitmap_checksum, GroupDesc, EXT4_BG_BLOCK_UNINIT, EXT4_BG_INODE_UNINIT};
use crate::inode::{FileType, Inode};
use crate::journal::superblock_checksum_check;
use crate::layout::{desc_block_location, group_base_block};
use crate::superblock::{
    superblock_checksum, EXT4_SUPER_MAGIC, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE,
};
use crate::types::InodeNr;

/// Most blocks read at once when verifying queued blocks.
const READ_BLOCKS: u64 = 256;
/// Queued runs at most this many blocks apart are read together (the blocks between read for
/// nothing: cheaper than another read).
const READ_GAP: u64 = 0;
/// Queued runs that make the collector read and verify them.
const PENDING_RUNS: usize = 4096;

/// Byte offsets in the raw superblock (`s_magic`, `s_feature_ro_compat`, `s_checksum`).
const S_MAGIC_AT: usize = 0x38;
const S_RO_COMPAT_AT: usize = 0x64;
const S_CHECKSUM_AT: usize = 0x3FC;

static NOD: std::sync::OnceLock<bool> = std::sync::OnceLock::new(); // TEMP
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
    c.record_check(bad(ChecksumKind::Superblock, sb_block, None), Ok(()), None, false);
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
/// `sb_block`) and, with metadata_csum, its initialized bitmaps, unless the descriptor (which
/// holds their checksums) fails.
pub(crate) fn group(c: &mut Collector<'_>, g: u32, gd: &GroupDesc, sb_block: u64) {
    let sb = c.sb;
    if let Some(check) = gd.checksum {
        let block = desc_block_location(sb, sb_block, g / sb.descs_per_block);
        let offset = (g % sb.descs_per_block) * sb.desc_size;
        let b = bad(ChecksumKind::GroupDescriptor, block, None);
        c.record_check(b, matched(check), Some(offset), true);
        if !check.ok() {
            return;
        }
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
        if gd.has_flag(sb, uninit) || c.check_range(block, 1).is_err() || !read(c, block, &mut buf)
        {
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
    if *NOD.get_or_init(|| std::env::var_os("CSUM_NO_DIR").is_some()) { return None; } // TEMP
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

/// Queues the blocks captured for inode `ino` in `role` while its tree was walked; they are
/// read and verified by [`flush`], when enough are queued or the collector is done.
pub(crate) fn captured(c: &mut Collector<'_>, ino: InodeNr, role: Role, runs: &[CapturedRun]) {
    let Some(checks) = c.checks.as_deref_mut() else {
        return;
    };
    let seed = checks.owner.filter(|o| o.0 == ino).map_or(0, |(_, s)| s);
    checks.pending.extend(runs.iter().map(|r| PendingRun {
        physical: r.physical,
        len: r.len,
        ino,
        seed,
        role,
    }));
    if checks.pending.len() >= PENDING_RUNS {
        flush(c);
    }
}

/// Reads and verifies the queued blocks, in block order, with one read for runs less than
/// [`READ_GAP`] blocks apart (up to [`READ_BLOCKS`] blocks a read).
pub(crate) fn flush(c: &mut Collector<'_>) {
    let Some(mut pending) = c.checks.as_deref_mut().map(|k| std::mem::take(&mut k.pending)) else {
        return;
    };
    pending.sort_unstable_by_key(|r| r.physical);
    let bs = c.sb.block_size as usize;
    let mut buf = Vec::new();
    let mut i = 0;
    while i < pending.len() {
        if pending[i].len > READ_BLOCKS {
            // One run longer than a read: read it alone, piece by piece.
            check_long(c, &pending[i], &mut buf);
            i += 1;
            continue;
        }
        let start = pending[i].physical;
        let limit = start.saturating_add(READ_BLOCKS);
        let mut end = start.saturating_add(pending[i].len);
        let mut j = i + 1;
        while j < pending.len()
            && pending[j].physical <= end.saturating_add(READ_GAP)
            && pending[j].physical.saturating_add(pending[j].len) <= limit
        {
            end = end.max(pending[j].physical + pending[j].len);
            j += 1;
        }
        buf.resize((end - start) as usize * bs, 0);
        if read(c, start, &mut buf) {
            for r in &pending[i..j] {
                let at = (r.physical - start) as usize * bs;
                check_blocks(c, r, r.physical, &buf[at..at + r.len as usize * bs]);
            }
        }
        i = j;
    }
}

/// Verifies run `r`, longer than a read, [`READ_BLOCKS`] blocks at a time.
fn check_long(c: &mut Collector<'_>, r: &PendingRun, buf: &mut Vec<u8>) {
    let bs = c.sb.block_size as usize;
    let mut done = 0;
    while done < r.len {
        let n = (r.len - done).min(READ_BLOCKS);
        let first = r.physical + done;
        done += n;
        buf.resize(n as usize * bs, 0);
        if read(c, first, buf) {
            check_blocks(c, r, first, buf);
        }
    }
}

/// Verifies the blocks of `r` in `data`, the first being block `first`.
fn check_blocks(c: &mut Collector<'_>, r: &PendingRun, first: u64, data: &[u8]) {
    for (k, block) in data.chunks_exact(c.sb.block_size as usize).enumerate() {
        let nr = first + k as u64;
        match r.role {
            Role::Directory => dir_block(c, r.ino, r.seed, nr, block),
            Role::OrphanFile => {
                let result = rules::orphan_block(r.seed, nr, block)
                    .map_err(Failure::Unrecognized)
                    .and_then(matched);
                let b = bad(ChecksumKind::OrphanBlock, nr, Some(r.ino));
                c.record_check(b, result, None, true);
            }
            Role::Journal => journal_superblock(c, r.ino, nr, block),
        }
    }
}

fn dir_block(c: &mut Collector<'_>, ino: InodeNr, seed: u32, nr: u64, block: &[u8]) {
    let (kind, result) = match dir_block_checksum(seed, block) {
        DirChecksum::Leaf(check) => (ChecksumKind::DirLeaf, matched(check)),
        DirChecksum::Htree(check) => (ChecksumKind::HtreeNode, matched(check)),
        DirChecksum::Missing => (
            ChecksumKind::DirLeaf,
            Err(Failure::Unrecognized(
                "no dirent tail, and not an htree node with room for a dx tail".into(),
            )),
        ),
    };
    c.record_check(bad(kind, nr, Some(ino)), result, None, true);
}

/// The journal superblock at block `nr` of journal inode `ino`: listed without a warning (the
/// journal lookup reports the journal unusable).
fn journal_superblock(c: &mut Collector<'_>, ino: InodeNr, nr: u64, block: &[u8]) {
    if let Some(check) = superblock_checksum_check(block) {
        let b = bad(ChecksumKind::JournalSuperblock, nr, Some(ino));
        c.record_check(b, matched(check), None, false);
    }
}

/// xattr block `nr`, first referred to by inode `ino` (metadata_csum).
pub(crate) fn xattr_block(c: &mut Collector<'_>, nr: u64, ino: InodeNr) {
    let mut buf = vec![0u8; c.sb.block_size as usize];
    if !read(c, nr, &mut buf) {
        return;
    }
    let seed = c.sb.metadata_csum_seed();
    let result = rules::xattr_block(seed, nr, &buf)
        .map_err(Failure::Unrecognized)
        .and_then(matched);
    c.record_check(bad(ChecksumKind::XattrBlock, nr, Some(ino)), result, None, true);
}

/// The MMP block (metadata_csum with INCOMPAT_MMP).
pub(crate) fn mmp(c: &mut Collector<'_>) {
    let sb = c.sb;
    let nr = sb.s_mmp_block;
    if !sb.has_metadata_csum() || !sb.has_incompat(incompat::MMP) || c.check_range(nr, 1).is_err()
    {
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

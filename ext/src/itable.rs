//! Inode-table scans: every in-use inode of a group, or of the filesystem, in inode order.
//!
//! An inode is in use when its bit is set in the inode bitmap, or when its link count is
//! non-zero (e2image's rule, kept so that the copy set is a superset of e2image's on corrupt
//! filesystems). INODE_UNINIT groups have none, and only the first `used_inodes`
//! (`s_inodes_per_group - bg_itable_unused`) of a group are read. The table is read in chunks
//! of at most [`ITABLE_CHUNK_BYTES`], so memory does not grow with the group size. One scan
//! serves the copy-set walk, the block-owner scan and the snapshot directory search.

use crate::collect::Collector;
use crate::error::CorruptKind;
use crate::group_desc::{GroupDesc, EXT4_BG_INODE_UNINIT};
use crate::inode::Inode;
use crate::superblock::Superblock;
use crate::types::InodeNr;

/// Bytes of inode table read at once while scanning (bounds memory per thread).
const ITABLE_CHUNK_BYTES: usize = 4 << 20;

/// Calls `f` for every in-use inode of group `g` (see the module comment for "in use"):
/// nothing for an INODE_UNINIT group, only the first `used_inodes` (`bg_itable_unused`)
/// inodes otherwise. An inode table outside the filesystem or unreadable is reported.
pub(crate) fn scan_group<'v>(
    c: &mut Collector<'v>,
    g: u32,
    gd: &GroupDesc,
    f: &mut dyn FnMut(&mut Collector<'v>, InodeNr, &Inode),
) {
    let sb = c.sb;
    let inode_uninit = gd.has_flag(sb, EXT4_BG_INODE_UNINIT);
    let bitmap_ok = !inode_uninit && c.check_range(gd.bg_inode_bitmap, 1).is_ok();
    if gd.used_inode_table_blocks(sb) == 0 {
        return;
    }
    if c.check_range(gd.bg_inode_table, u64::from(sb.inode_table_blocks))
        .is_err()
    {
        let kind = CorruptKind::GroupMetadata(format!(
            "group {g}: bg_inode_table {} is outside the filesystem; the group's {} inodes are skipped",
            gd.bg_inode_table, sb.s_inodes_per_group
        ));
        c.warn(kind, None, None);
        return;
    }
    let bitmap = if bitmap_ok {
        read_inode_bitmap(c, g, gd)
    } else {
        None
    };
    scan_inodes(c, g, gd, bitmap.as_deref(), f);
}

/// Calls `f` for every in-use inode of the filesystem, group by group, in inode order.
pub(crate) fn scan_all<'v>(
    c: &mut Collector<'v>,
    groups: &[GroupDesc],
    f: &mut dyn FnMut(&mut Collector<'v>, InodeNr, &Inode),
) {
    for (g, gd) in (0..c.sb.group_count).zip(groups) {
        scan_group(c, g, gd, f);
    }
}

fn read_inode_bitmap(c: &mut Collector<'_>, g: u32, gd: &GroupDesc) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; c.sb.block_size as usize];
    c.read_or_warn(gd.bg_inode_bitmap, &mut buf, None, |e| {
        format!("group {g}: inode bitmap unreadable: {e}")
    })
    .then_some(buf)
}

/// Reads the used part of the inode table in chunks and calls `f` for every in-use inode.
fn scan_inodes<'v>(
    c: &mut Collector<'v>,
    g: u32,
    gd: &GroupDesc,
    bitmap: Option<&[u8]>,
    f: &mut dyn FnMut(&mut Collector<'v>, InodeNr, &Inode),
) {
    let sb = c.sb;
    let bs = sb.block_size as usize;
    let used = gd.used_inodes(sb).min(inodes_left(sb, g));
    let chunk_blocks = (ITABLE_CHUNK_BYTES / bs).max(1) as u32;
    let mut index = 0u32;
    while index < used {
        let first_block = index / sb.inodes_per_block;
        let nblocks = chunk_blocks.min((used - index).div_ceil(sb.inodes_per_block));
        let mut buf = vec![0u8; nblocks as usize * bs];
        let table_block = gd.bg_inode_table + u64::from(first_block);
        let read = c.read_or_warn(table_block, &mut buf, None, |e| {
            format!("group {g}: inode table unreadable: {e}")
        });
        if !read {
            index += nblocks * sb.inodes_per_block;
            continue;
        }
        let count = (nblocks * sb.inodes_per_block).min(used - index);
        scan_chunk(c, g, index, &buf, count, bitmap, f);
        index += count;
    }
}

/// Calls `f` for the in-use inodes among the `count` records of `buf`, the first being the
/// group's inode at `index`.
fn scan_chunk<'v>(
    c: &mut Collector<'v>,
    g: u32,
    index: u32,
    buf: &[u8],
    count: u32,
    bitmap: Option<&[u8]>,
    f: &mut dyn FnMut(&mut Collector<'v>, InodeNr, &Inode),
) {
    let sb = c.sb;
    let isz = usize::from(sb.s_inode_size);
    for k in 0..count {
        let i = index + k;
        let raw = &buf[k as usize * isz..(k as usize + 1) * isz];
        // Below s_inodes_count (see `inodes_left`), so this cannot overflow.
        let ino = g * sb.s_inodes_per_group + i + 1;
        let in_bitmap = bitmap.is_some_and(|b| b[(i / 8) as usize] & (1 << (i % 8)) != 0);
        let inode = Inode::parse(raw, sb);
        if !in_bitmap && inode.i_links_count == 0 {
            continue;
        }
        if !in_bitmap && bitmap.is_some() && !inode.is_blank() {
            c.stats.linked_but_free += 1;
        }
        f(c, InodeNr(ino), &inode);
    }
}

/// Inodes of `s_inodes_count` numbered from group `g`'s first inode on (0 past the end).
pub(crate) fn inodes_left(sb: &Superblock, g: u32) -> u32 {
    let first = u64::from(g) * u64::from(sb.s_inodes_per_group);
    u32::try_from(u64::from(sb.s_inodes_count).saturating_sub(first)).unwrap_or(u32::MAX)
}

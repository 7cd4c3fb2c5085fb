//! One orphan, as the kernel's orphan cleanup leaves it (checked against kernel 6.18):
//!
//! * **No links** (`ext4_evict_inode`): a fast symlink's `i_block` is zeroed; an inode that
//!   owns blocks (`i_blocks` ≠ 0) and can be truncated (a regular file, directory or slow
//!   symlink) has its map emptied, every block it mapped freed, `i_size` 0, `i_ctime` and
//!   `i_mtime` now; its xattr block is released (freed, or `h_refcount` lowered when
//!   shared) and `i_file_acl` zeroed; `i_blocks` lowered by what was released; `i_dtime`
//!   now; then the inode is freed in the bitmap. `i_mode`, `i_flags` and the links (0) stay.
//! * **Links** (`ext4_truncate` to `i_size`): the map loses every block from
//!   ⌈`i_size` / block size⌉ on, the tail of the last block past `i_size` is zeroed,
//!   `i_ctime` and `i_mtime` are now, `i_blocks` is lowered; on the classic list `i_dtime`
//!   (the next orphan) becomes 0.
//!
//! Not done here (the orphan processing stops at such an inode): inline data with blocks
//! besides the inode, extended attributes stored in EA inodes.

use super::edits::Edits;
use super::{extents, indirect, stop, Stop};
use crate::bytes::{le16, le32};
use crate::features::{incompat, ro_compat};
use crate::inode::{
    inode_flags, BlockMap, FileType, Inode, I_BLOCK_OFFSET, I_BLOCK_SIZE, I_FILE_ACL_OFFSET,
};
use crate::superblock::{EXT2_GOOD_OLD_INODE_SIZE, EXT2_OS_HURD};
use crate::types::InodeNr;
use crate::view::BlockView;
use crate::InodeTime;

const I_SIZE_LO: usize = 0x04;
const I_CTIME: usize = 0x0C;
const I_MTIME: usize = 0x10;
pub(super) const I_DTIME: usize = 0x14;
const I_BLOCKS_LO: usize = 0x1C;
const I_FLAGS: usize = 0x20;
const I_SIZE_HIGH: usize = 0x6C;
const L_I_BLOCKS_HI: usize = 0x74;
const L_I_FILE_ACL_HIGH: usize = 0x76;
const I_CTIME_EXTRA: usize = 0x84;
const I_MTIME_EXTRA: usize = 0x88;
/// `EXT4_ENCRYPT_FL`: the data is encrypted (its tail cannot be zeroed here).
const ENCRYPT_FL: u32 = 0x800;
/// `h_magic` of an xattr block and of the in-inode xattr area.
const XATTR_MAGIC: u32 = 0xEA02_0000;

/// What became of an orphan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Freed (it had no links).
    Released,
    /// Truncated to its size (it has links).
    Truncated,
}

/// Processes orphan `ino` whose record is `raw` (validated by the caller); `classic` when it
/// came from the `s_last_orphan` list. Changes go into `ed`'s transaction.
///
/// # Errors
/// Something on its way is corrupt or not handled here (module comment).
pub(super) fn process<V: BlockView>(
    ed: &mut Edits<'_, V>,
    ino: InodeNr,
    mut raw: Vec<u8>,
    classic: bool,
    now: InodeTime,
) -> Result<Outcome, Stop> {
    let inode = Inode::parse(&raw, &ed.fs.sb);
    if inode.i_links_count == 0 {
        release(ed, ino, &inode, &mut raw, now)?;
        ed.write_inode(ino, raw)?;
        ed.free_inode(ino, inode.file_type() == FileType::Directory)?;
        return Ok(Outcome::Released);
    }
    if can_truncate(&inode, &ed.fs.sb) {
        if inode.has_flag(inode_flags::INLINE_DATA) {
            return Err(stop(
                Some(ino),
                None,
                None,
                "inline data: not truncated here".into(),
            ));
        }
        let keep = inode.i_size.div_ceil(u64::from(ed.fs.sb.block_size));
        let freed = truncate_map(ed, ino, &inode, &mut raw, keep)?;
        zero_tail(ed, ino, &inode, &raw)?;
        sub_blocks(&mut raw, ed, freed);
        set_time(&mut raw, I_CTIME, I_CTIME_EXTRA, now);
        set_time(&mut raw, I_MTIME, I_MTIME_EXTRA, now);
    }
    if classic {
        put32(&mut raw, I_DTIME, 0);
    }
    ed.write_inode(ino, raw)?;
    Ok(Outcome::Truncated)
}

/// The inode's record as a release leaves it, its blocks freed (module comment).
fn release<V: BlockView>(
    ed: &mut Edits<'_, V>,
    ino: InodeNr,
    inode: &Inode,
    raw: &mut [u8],
    now: InodeTime,
) -> Result<(), Stop> {
    let sb = &ed.fs.sb;
    let inline = inode.has_flag(inode_flags::INLINE_DATA);
    let has_blocks = sectors(raw, ed) != 0;
    if inline && has_blocks {
        let why = "inline data with an xattr block: not released here".into();
        return Err(stop(Some(ino), None, None, why));
    }
    if sb.has_incompat(incompat::EA_INODE) && has_ea_inode_refs(&raw[in_inode_xattrs(raw)..]) {
        let why = "extended attributes in EA inodes: not released here".into();
        return Err(stop(Some(ino), None, None, why));
    }
    if inode.file_type() == FileType::Symlink && !inline && inode.block_map(sb) == BlockMap::None {
        raw[I_BLOCK_OFFSET..I_BLOCK_OFFSET + I_BLOCK_SIZE].fill(0);
    }
    let mut freed = 0;
    if has_blocks && can_truncate(inode, sb) {
        freed += truncate_map(ed, ino, inode, raw, 0)?;
        put32(raw, I_SIZE_LO, 0);
        put32(raw, I_SIZE_HIGH, 0);
        set_time(raw, I_CTIME, I_CTIME_EXTRA, now);
        set_time(raw, I_MTIME, I_MTIME_EXTRA, now);
    }
    if inode.i_file_acl != 0 {
        release_xattr_block(ed, ino, inode.i_file_acl)?;
        freed += 1;
        put32(raw, I_FILE_ACL_OFFSET, 0);
        if ed.fs.sb.s_creator_os != EXT2_OS_HURD {
            raw[L_I_FILE_ACL_HIGH..L_I_FILE_ACL_HIGH + 2].fill(0);
        }
    }
    sub_blocks(raw, ed, freed);
    put32(raw, I_DTIME, now.secs as u32);
    Ok(())
}

/// Kernel `ext4_can_truncate`: regular files, directories and slow symlinks.
fn can_truncate(inode: &Inode, sb: &crate::Superblock) -> bool {
    match inode.file_type() {
        FileType::Regular | FileType::Directory => true,
        FileType::Symlink => inode.block_map(sb) != BlockMap::None,
        _ => false,
    }
}

/// Truncates the inode's map in `raw` so that it maps nothing from logical block `keep` on;
/// returns the blocks freed.
fn truncate_map<V: BlockView>(
    ed: &mut Edits<'_, V>,
    ino: InodeNr,
    inode: &Inode,
    raw: &mut [u8],
    keep: u64,
) -> Result<u64, Stop> {
    let i_block = &mut raw[I_BLOCK_OFFSET..I_BLOCK_OFFSET + I_BLOCK_SIZE];
    match inode.block_map(&ed.fs.sb) {
        BlockMap::None => Ok(0),
        BlockMap::Extents => extents::truncate(ed, ino, inode.i_generation, i_block, keep),
        BlockMap::Indirect => indirect::truncate(ed, ino, i_block, keep),
    }
}

/// Zeroes the bytes past `i_size` of the last block, when that block is mapped and written
/// (kernel `ext4_block_truncate_page`); not for encrypted files.
fn zero_tail<V: BlockView>(
    ed: &mut Edits<'_, V>,
    ino: InodeNr,
    inode: &Inode,
    raw: &[u8],
) -> Result<(), Stop> {
    let bs = u64::from(ed.fs.sb.block_size);
    let from = (inode.i_size % bs) as usize;
    if from == 0 || inode.has_flag(ENCRYPT_FL) {
        return Ok(());
    }
    let i_block = &raw[I_BLOCK_OFFSET..I_BLOCK_OFFSET + I_BLOCK_SIZE];
    let last = inode.i_size / bs;
    let mapped = match inode.block_map(&ed.fs.sb) {
        BlockMap::Extents => extents::map(ed, ino, i_block, last)
            .filter(|m| !m.1)
            .map(|m| m.0),
        BlockMap::Indirect => indirect::map(ed, ino, i_block, last),
        BlockMap::None => None,
    };
    let Some(p) = mapped.filter(|&p| ed.check_owned(ino, p, 1).is_ok()) else {
        return Ok(());
    };
    let mut block = ed.read(Some(ino), p)?;
    if block[from..].iter().any(|&b| b != 0) {
        block[from..].fill(0);
        ed.put(p, block);
    }
    Ok(())
}

/// Releases xattr block `b` of inode `ino` (kernel `ext4_xattr_release_block`): freed when
/// the inode is its only user, else its `h_refcount` lowered (checksum recomputed).
fn release_xattr_block<V: BlockView>(
    ed: &mut Edits<'_, V>,
    ino: InodeNr,
    b: u64,
) -> Result<(), Stop> {
    ed.check_owned(ino, b, 1)?;
    let mut block = ed.read(Some(ino), b)?;
    let bad = |why: String| stop(Some(ino), Some(b), None, format!("bad xattr block: {why}"));
    if le32(&block, 0) != XATTR_MAGIC || le32(&block, 8) != 1 {
        return Err(bad("magic or h_blocks".into()));
    }
    let refcount = le32(&block, 4);
    if refcount == 0 {
        return Err(bad("h_refcount 0".into()));
    }
    let stored = le32(&block, super::csum::H_CHECKSUM);
    if ed.csum.xattr_block(b, &block).is_some_and(|c| c != stored) {
        return Err(bad("it fails its checksum".into()));
    }
    if ed.fs.sb.has_incompat(incompat::EA_INODE) && has_ea_inode_refs(&block[32..]) {
        return Err(bad("it names EA inodes (not released here)".into()));
    }
    if refcount == 1 {
        return ed.free_blocks(ino, b, 1);
    }
    put32(&mut block, 4, refcount - 1);
    if let Some(c) = ed.csum.xattr_block(b, &block) {
        put32(&mut block, super::csum::H_CHECKSUM, c);
    }
    ed.put(b, block);
    Ok(())
}

/// Byte offset of the in-inode xattr entries (past `i_extra_isize` and the magic), or the
/// record's end when it has none.
fn in_inode_xattrs(raw: &[u8]) -> usize {
    if raw.len() <= EXT2_GOOD_OLD_INODE_SIZE + 2 {
        return raw.len();
    }
    let at = EXT2_GOOD_OLD_INODE_SIZE + usize::from(le16(raw, EXT2_GOOD_OLD_INODE_SIZE));
    if at + 4 <= raw.len() && le32(raw, at) == XATTR_MAGIC {
        at + 4
    } else {
        raw.len()
    }
}

/// True if an xattr entry of `entries` (up to 4 zero bytes) stores its value in an EA
/// inode (`e_value_inum` ≠ 0).
fn has_ea_inode_refs(entries: &[u8]) -> bool {
    let mut at = 0;
    while at + 16 <= entries.len() && le32(entries, at) != 0 {
        if le32(entries, at + 4) != 0 {
            return true;
        }
        at += (16 + usize::from(entries[at]) + 3) & !3;
    }
    false
}

/// `i_blocks` in 512-byte units (kernel `ext4_inode_blocks`).
fn sectors<V: BlockView>(raw: &[u8], ed: &Edits<'_, V>) -> u64 {
    let sb = &ed.fs.sb;
    if !sb.has_ro_compat(ro_compat::HUGE_FILE) || sb.s_creator_os == EXT2_OS_HURD {
        return u64::from(le32(raw, I_BLOCKS_LO));
    }
    let v = u64::from(le32(raw, I_BLOCKS_LO)) | u64::from(le16(raw, L_I_BLOCKS_HI)) << 32;
    if le32(raw, I_FLAGS) & inode_flags::HUGE_FILE != 0 {
        return v << (sb.s_log_block_size + 1);
    }
    v
}

/// Lowers `i_blocks` by `freed` filesystem blocks and stores it as the kernel does
/// (`ext4_inode_blocks_set`).
fn sub_blocks<V: BlockView>(raw: &mut [u8], ed: &Edits<'_, V>, freed: u64) {
    let sb = &ed.fs.sb;
    let per_block = u64::from(sb.block_size / 512);
    let v = sectors(raw, ed).saturating_sub(freed.saturating_mul(per_block));
    let hurd = sb.s_creator_os == EXT2_OS_HURD;
    let mut flags = le32(raw, I_FLAGS) & !inode_flags::HUGE_FILE;
    let (lo, hi) = if v <= 0xFFFF_FFFF_FFFF {
        (v as u32, (v >> 32) as u16)
    } else {
        flags |= inode_flags::HUGE_FILE;
        let b = v >> (sb.s_log_block_size + 1);
        (b as u32, (b >> 32) as u16)
    };
    put32(raw, I_BLOCKS_LO, lo);
    if !hurd {
        raw[L_I_BLOCKS_HI..L_I_BLOCKS_HI + 2].copy_from_slice(&hi.to_le_bytes());
    }
    put32(raw, I_FLAGS, flags);
}

/// Sets a timestamp: the seconds field at `at` and, when `i_extra_isize` covers it, the
/// extra field at `extra` (epoch bits and nanoseconds).
fn set_time(raw: &mut [u8], at: usize, extra: usize, now: InodeTime) {
    put32(raw, at, now.secs as u32);
    let room = if raw.len() > EXT2_GOOD_OLD_INODE_SIZE + 2 {
        EXT2_GOOD_OLD_INODE_SIZE + usize::from(le16(raw, EXT2_GOOD_OLD_INODE_SIZE))
    } else {
        EXT2_GOOD_OLD_INODE_SIZE
    };
    if extra + 4 <= room.min(raw.len()) {
        let epoch = (now.secs.wrapping_sub(i64::from(now.secs as i32)) >> 32) as u32 & 3;
        put32(raw, extra, epoch | now.nsecs << 2);
    }
}

fn put32(raw: &mut [u8], at: usize, v: u32) {
    raw[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_carry_epoch_bits_and_nanoseconds_where_the_record_has_room() {
        let mut raw = vec![0u8; 256];
        raw[0x80..0x82].copy_from_slice(&32u16.to_le_bytes());
        for t in [
            InodeTime {
                secs: (1 << 32) + 5,
                nsecs: 7,
            },
            InodeTime {
                secs: -1,
                nsecs: 999_999_999,
            },
        ] {
            set_time(&mut raw, I_CTIME, I_CTIME_EXTRA, t);
            let got = InodeTime::decode(le32(&raw, I_CTIME), le32(&raw, I_CTIME_EXTRA));
            assert_eq!(got, t);
        }
        // i_extra_isize 8 covers i_ctime_extra, not i_mtime_extra.
        raw[0x80] = 8;
        let t = InodeTime { secs: 9, nsecs: 3 };
        set_time(&mut raw, I_MTIME, I_MTIME_EXTRA, t);
        assert_eq!((le32(&raw, I_MTIME), le32(&raw, I_MTIME_EXTRA)), (9, 0));
        let mut small = vec![0u8; 128];
        set_time(&mut small, I_CTIME, I_CTIME_EXTRA, t);
        assert_eq!(le32(&small, I_CTIME), 9);
    }

    #[test]
    fn ea_inode_references_are_found_among_the_entries() {
        let entry = |name_len: u8, inum: u32| {
            let mut e = vec![name_len, 1, 0, 0];
            e.extend(inum.to_le_bytes());
            e.extend([4, 0, 0, 0, 0, 0, 0, 0]);
            e.extend(vec![b'n'; usize::from(name_len)]);
            e.resize((16 + usize::from(name_len) + 3) & !3, 0);
            e
        };
        let mut area = entry(5, 0);
        area.extend(entry(3, 0));
        area.extend([0; 4]);
        assert!(!has_ea_inode_refs(&area));
        let mut area = entry(5, 0);
        area.extend(entry(3, 77));
        assert!(has_ea_inode_refs(&area));
        assert!(!has_ea_inode_refs(&[0xFF; 10]), "shorter than an entry");
    }
}

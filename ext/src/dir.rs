//! Directory entries (kernel `struct ext4_dir_entry_2`), for finding the names of given
//! inodes (snapshot files are named by their directory entry, `paths` names any).
//!
//! Every block of a directory is a sequence of entries chained by `rec_len`; htree interior
//! nodes look like one empty entry spanning the block, so a plain scan of all blocks sees
//! every name without htree parsing. Parsing stops at the first entry whose `rec_len` or
//! `name_len` is impossible; the rest of that block is skipped. Directory blocks are found
//! through the inode's block map (`blockmap::inode_runs`) and only those below
//! `i_size` are read. Inline-data directories are read from `i_block` (after the 4-byte
//! parent) and the in-inode `system.data` extended attribute.

use crate::blockmap::inode_runs;
use crate::bytes::{le16, le32};
use crate::checksum::rec_len;
use crate::collect::RunKind;
use crate::features::incompat;
use crate::fs::Filesystem;
use crate::inode::{inode_flags, FileType, Inode, I_BLOCK_OFFSET, I_BLOCK_SIZE};
use crate::superblock::EXT2_GOOD_OLD_INODE_SIZE;
use crate::types::{BlockNr, InodeNr};
use crate::view::BlockView;
use crate::warning::{Warning, WarningLog};

/// Warning kind of [`read_dir`] for the directory's block map.
const TREE_KIND: &str = "directory block map";
/// Warning kind of [`read_dir`] for its unreadable blocks.
const UNREADABLE_KIND: &str = "unreadable directory block";

/// Size of the fixed part of an entry, in bytes.
pub(crate) const DIRENT_HEADER: usize = 8;
/// `file_type` of a directory entry naming a directory (kernel `EXT4_FT_DIR`).
pub(crate) const EXT4_FT_DIR: u8 = 2;
/// `file_type` when unknown (kernel `EXT4_FT_UNKNOWN`; always so without INCOMPAT_FILETYPE).
pub(crate) const EXT4_FT_UNKNOWN: u8 = 0;
/// `e_name_index` of the `system.` xattr namespace (`EXT4_XATTR_INDEX_SYSTEM`).
pub(crate) const EXT4_XATTR_INDEX_SYSTEM: u8 = 7;
/// `h_magic` of the in-inode xattr area (`EXT4_XATTR_MAGIC`).
const EXT4_XATTR_MAGIC: u32 = 0xEA02_0000;
/// Size of the fixed part of an xattr entry (`struct ext4_xattr_entry`), in bytes.
const XATTR_ENTRY_HEADER: usize = 16;

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DirEntry {
    /// `inode`: the inode the entry names (never 0: unused entries are left out).
    pub inode: InodeNr,
    /// The name bytes.
    pub name: Vec<u8>,
    /// `file_type` ([`EXT4_FT_DIR`], ...), [`EXT4_FT_UNKNOWN`] without INCOMPAT_FILETYPE.
    pub file_type: u8,
}

/// Parses the used entries of one directory block (or of inline data). `filetype` is true when the filesystem has
/// INCOMPAT_FILETYPE (then `name_len` is one byte, followed by the file type).
pub(crate) fn parse_block(block: &[u8], filetype: bool) -> Vec<DirEntry> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + DIRENT_HEADER <= block.len() {
        let inode = le32(block, off);
        let len = rec_len(le16(block, off + 4), block.len());
        let (name_len, file_type) = if filetype {
            (usize::from(block[off + 6]), block[off + 7])
        } else {
            (usize::from(le16(block, off + 6)), EXT4_FT_UNKNOWN)
        };
        if len < DIRENT_HEADER
            || !len.is_multiple_of(4)
            || off + len > block.len()
            || DIRENT_HEADER + name_len > len
        {
            break;
        }
        if inode != 0 && name_len > 0 {
            out.push(DirEntry {
                inode: InodeNr(inode),
                name: block[off + DIRENT_HEADER..off + DIRENT_HEADER + name_len].to_vec(),
                file_type,
            });
        }
        off += len;
    }
    out
}

/// Reads directory `ino` and calls `f` with the entries of each of its blocks (and of its
/// inline data), in file order, until `f` returns false. Nothing is read when `ino` is not a
/// directory. Unreadable blocks and corrupt trees are returned as warnings and skipped.
pub(crate) fn read_dir<V: BlockView>(
    fs: &Filesystem<V>,
    ino: InodeNr,
    f: &mut dyn FnMut(&[DirEntry]) -> bool,
) -> Vec<Warning> {
    let sb = &fs.sb;
    let raw = match fs.read_inode_raw(ino) {
        Ok(raw) => raw,
        Err(e) => {
            return vec![warning(
                ino,
                None,
                format!("directory inode unreadable: {e}"),
            )]
        }
    };
    let inode = Inode::parse(&raw, sb);
    if inode.file_type() != FileType::Directory {
        return Vec::new();
    }
    let filetype = sb.has_incompat(incompat::FILETYPE);
    if inode.has_flag(inode_flags::INLINE_DATA) {
        read_inline_dir(&raw, filetype, f);
        return Vec::new();
    }
    let (runs, tree_warnings) = inode_runs(fs, ino, &inode);
    let mut warnings = WarningLog::default();
    for w in tree_warnings {
        warnings.push(TREE_KIND, w);
    }
    let bs = u64::from(sb.block_size);
    let size_blocks = inode.i_size.div_ceil(bs);
    let mut buf = vec![0u8; sb.block_size as usize];
    for r in runs
        .iter()
        .filter(|r| r.kind == RunKind::Data { unwritten: false })
    {
        let n = size_blocks.saturating_sub(r.logical).min(r.len);
        for b in r.physical..r.physical.saturating_add(n) {
            if let Err(e) = fs.read_blocks(BlockNr(b), &mut buf) {
                let reason = format!("directory block unreadable: {e}");
                warnings.push(UNREADABLE_KIND, warning(ino, Some(b), reason));
                continue;
            }
            if !f(&parse_block(&buf, filetype)) {
                return warnings.into_flat();
            }
        }
    }
    warnings.into_flat()
}

/// All entries of directory `ino` (empty when it is not a directory or cannot be read).
pub(crate) fn dir_entries<V: BlockView>(fs: &Filesystem<V>, ino: InodeNr) -> Vec<DirEntry> {
    let mut out = Vec::new();
    read_dir(fs, ino, &mut |entries| {
        out.extend_from_slice(entries);
        true
    });
    out
}

fn warning(ino: InodeNr, block: Option<u64>, reason: String) -> Warning {
    Warning {
        inode: Some(ino),
        block: block.map(BlockNr),
        offset: None,
        reason,
    }
}

/// Entries of an inline-data directory: `i_block` after the 4-byte parent inode number,
/// then the value of the in-inode `system.data` xattr.
fn read_inline_dir(raw: &[u8], filetype: bool, f: &mut dyn FnMut(&[DirEntry]) -> bool) {
    // `raw` is a whole inode record (at least 128 bytes), so `i_block` is in bounds.
    if !f(&parse_block(
        &raw[I_BLOCK_OFFSET + 4..I_BLOCK_OFFSET + I_BLOCK_SIZE],
        filetype,
    )) {
        return;
    }
    if let Some(value) = ibody_xattr(raw, EXT4_XATTR_INDEX_SYSTEM, b"data") {
        f(&parse_block(value, filetype));
    }
}

/// The value of the in-inode extended attribute `index`.`name`, if present and in bounds.
fn ibody_xattr<'r>(raw: &'r [u8], index: u8, name: &[u8]) -> Option<&'r [u8]> {
    let (_, start, end) = ibody_xattr_span(raw, index, name)?;
    raw.get(start..end)
}

/// Where the in-inode extended attribute `index`.`name` is in inode record `raw`, if present
/// and in bounds: the byte offsets of its entry, of its value and of the value's end. The
/// area starts after `i_extra_isize` with `h_magic`; values are at `e_value_offs` from the
/// first entry. `None` for a value in an EA inode.
pub(crate) fn ibody_xattr_span(
    raw: &[u8],
    index: u8,
    name: &[u8],
) -> Option<(usize, usize, usize)> {
    let extra = usize::from(le16(
        raw.get(..EXT2_GOOD_OLD_INODE_SIZE + 2)?,
        EXT2_GOOD_OLD_INODE_SIZE,
    ));
    let magic_at = EXT2_GOOD_OLD_INODE_SIZE.checked_add(extra)?;
    if raw.len() < magic_at.checked_add(4)? || le32(raw, magic_at) != EXT4_XATTR_MAGIC {
        return None;
    }
    let first = magic_at + 4;
    let area = &raw[first..];
    let mut off = 0;
    while off + XATTR_ENTRY_HEADER <= area.len() && le32(area, off) != 0 {
        let name_len = usize::from(area[off]);
        let name_end = off + XATTR_ENTRY_HEADER + name_len;
        if name_end > area.len() {
            return None;
        }
        if area[off + 1] == index && &area[off + XATTR_ENTRY_HEADER..name_end] == name {
            if le32(area, off + 4) != 0 {
                return None; // e_value_inum: the value lives in an EA inode
            }
            let value_offs = usize::from(le16(area, off + 2));
            let end = value_offs.checked_add(usize::try_from(le32(area, off + 8)).ok()?)?;
            area.get(value_offs..end)?;
            return Some((first + off, first + value_offs, first + end));
        }
        off = (name_end + 3) & !3;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(buf: &mut Vec<u8>, inode: u32, name: &str, rec: u16) {
        let start = buf.len();
        buf.extend_from_slice(&inode.to_le_bytes());
        buf.extend_from_slice(&rec.to_le_bytes());
        buf.push(name.len() as u8);
        buf.push(1);
        buf.extend_from_slice(name.as_bytes());
        buf.resize(start + rec as usize, 0);
    }

    #[test]
    fn parses_entries_and_skips_unused() {
        let mut b = Vec::new();
        entry(&mut b, 2, ".", 12);
        entry(&mut b, 0, "gone", 16);
        entry(&mut b, 16, "snap1", 1024 - 28);
        let v = parse_block(&b, true);
        assert_eq!(
            v,
            vec![
                DirEntry {
                    inode: InodeNr(2),
                    name: b".".to_vec(),
                    file_type: 1,
                },
                DirEntry {
                    inode: InodeNr(16),
                    name: b"snap1".to_vec(),
                    file_type: 1,
                },
            ]
        );
    }

    #[test]
    fn stops_at_a_bad_rec_len() {
        let mut b = Vec::new();
        entry(&mut b, 2, ".", 12);
        entry(&mut b, 12, "x", 12);
        b[16..18].copy_from_slice(&3u16.to_le_bytes()); // second entry: rec_len 3
        b.resize(1024, 0);
        assert_eq!(parse_block(&b, true).len(), 1);
    }

    #[test]
    fn name_longer_than_record_is_rejected() {
        let mut b = Vec::new();
        entry(&mut b, 2, "abc", 12);
        b[6] = 200;
        b.resize(1024, 0);
        assert!(parse_block(&b, true).is_empty());
    }

    fn inode_with_xattr(value_offs: u16, size: u32) -> Vec<u8> {
        let mut raw = vec![0u8; 256];
        raw[0x80..0x82].copy_from_slice(&32u16.to_le_bytes());
        raw[160..164].copy_from_slice(&EXT4_XATTR_MAGIC.to_le_bytes());
        let e = 164;
        raw[e] = 4;
        raw[e + 1] = EXT4_XATTR_INDEX_SYSTEM;
        raw[e + 2..e + 4].copy_from_slice(&value_offs.to_le_bytes());
        raw[e + 8..e + 12].copy_from_slice(&size.to_le_bytes());
        raw[e + 16..e + 20].copy_from_slice(b"data");
        raw
    }

    #[test]
    fn inline_dir_reads_i_block_and_system_data() {
        let mut raw = inode_with_xattr(24, 16);
        let mut tail = Vec::new();
        entry(&mut tail, 31, "inxattr", 16);
        raw[188..204].copy_from_slice(&tail);
        let mut head = vec![2, 0, 0, 0];
        entry(&mut head, 30, "inblock", 56);
        raw[I_BLOCK_OFFSET..I_BLOCK_OFFSET + I_BLOCK_SIZE].copy_from_slice(&head);
        let mut names = Vec::new();
        read_inline_dir(&raw, true, &mut |es| {
            names.extend(es.iter().map(|e| (e.inode.0, e.name.clone())));
            true
        });
        assert_eq!(
            names,
            vec![(30, b"inblock".to_vec()), (31, b"inxattr".to_vec())]
        );
    }

    #[test]
    fn ibody_xattr_bounds() {
        assert_eq!(
            ibody_xattr(&inode_with_xattr(24, 16), 7, b"data").map(<[u8]>::len),
            Some(16)
        );
        assert_eq!(ibody_xattr(&inode_with_xattr(24, 16), 7, b"dat"), None);
        assert_eq!(ibody_xattr(&inode_with_xattr(80, 16), 7, b"data"), None);
        assert_eq!(
            ibody_xattr(&inode_with_xattr(24, u32::MAX), 7, b"data"),
            None
        );
        let mut raw = inode_with_xattr(24, 16);
        raw[0x80..0x82].copy_from_slice(&500u16.to_le_bytes());
        assert_eq!(ibody_xattr(&raw, 7, b"data"), None);
        assert_eq!(ibody_xattr(&raw[..100], 7, b"data"), None);
    }

    #[test]
    fn large_block_rec_len_encoding() {
        let mut b = vec![0u8; 65536];
        b[0..4].copy_from_slice(&7u32.to_le_bytes());
        b[4..6].copy_from_slice(&0u16.to_le_bytes());
        b[6] = 1;
        b[8] = b'a';
        assert_eq!(
            parse_block(&b, true),
            vec![DirEntry {
                inode: InodeNr(7),
                name: b"a".to_vec(),
                file_type: 0,
            }]
        );
    }
}

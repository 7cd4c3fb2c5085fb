//! Directory entries (kernel `struct ext4_dir_entry_2`), for finding the names of given
//! inodes (snapshot files are named by their directory entry).
//!
//! Every block of a directory is a sequence of entries chained by `rec_len`; htree interior
//! nodes look like one empty entry spanning the block, so a plain scan of all blocks sees
//! every name without htree parsing. Parsing stops at the first entry whose `rec_len` or
//! `name_len` is impossible; the rest of that block is skipped.

use crate::bytes::{le16, le32};

/// Size of the fixed part of an entry, in bytes.
pub const DIRENT_HEADER: usize = 8;

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode number (0 for an unused entry).
    pub inode: u32,
    /// The name bytes.
    pub name: Vec<u8>,
}

/// Decodes `rec_len` (64 KiB blocks store 65536 as 0 or 65535).
fn rec_len(raw: u16, block_size: usize) -> usize {
    if block_size >= 65536 && (raw == 0 || raw == 65535) {
        65536
    } else {
        usize::from(raw)
    }
}

/// Parses the used entries of one directory block. `filetype` is true when the filesystem has
/// INCOMPAT_FILETYPE (then `name_len` is one byte, followed by the file type).
pub fn parse_block(block: &[u8], filetype: bool) -> Vec<DirEntry> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + DIRENT_HEADER <= block.len() {
        let inode = le32(block, off);
        let len = rec_len(le16(block, off + 4), block.len());
        let name_len = if filetype {
            usize::from(block[off + 6])
        } else {
            usize::from(le16(block, off + 6))
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
                inode,
                name: block[off + DIRENT_HEADER..off + DIRENT_HEADER + name_len].to_vec(),
            });
        }
        off += len;
    }
    out
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
                    inode: 2,
                    name: b".".to_vec()
                },
                DirEntry {
                    inode: 16,
                    name: b"snap1".to_vec()
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
                inode: 7,
                name: b"a".to_vec()
            }]
        );
    }
}

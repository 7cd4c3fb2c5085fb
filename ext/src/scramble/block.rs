//! Scrambling one chain of directory entries (a leaf block, or inline data), scrubbing an
//! htree node, scrambling a symlink target. Buffers are edited in memory only.
//!
//! In a chain, every used entry's name is replaced (`.`, `..` and the root's `lost+found`
//! kept), every deleted entry loses its name (`name_len`, `file_type` and the name bytes
//! zeroed, `inode` and `rec_len` kept), and every byte after a name up to the entry's
//! `rec_len` is zeroed. A chain that breaks (an impossible `rec_len` or `name_len`) is zeroed
//! from the broken entry on, with a warning. In an htree node, the index entries past `count`
//! (old index entries or, in a root made from a leaf, the old leaf's names) are zeroed.

use super::names::Picker;
use super::pool::Pool;
use super::range::{HashRange, Rng};
use crate::bytes::{le16, le32};
use crate::checksum::rec_len;
use crate::dir::DIRENT_HEADER;
use std::collections::HashSet;

/// Size of a dx entry, in bytes.
const DX_ENTRY_SIZE: usize = 8;
/// Size of the dx tail (metadata_csum), in bytes.
const DX_TAIL_SIZE: usize = 8;

/// How one directory's entries are scrambled.
pub(crate) struct Chain<'a> {
    /// INCOMPAT_FILETYPE: `name_len` is one byte, then the file type.
    pub(crate) filetype: bool,
    /// The directory is the root (its `lost+found` is kept).
    pub(crate) root: bool,
    /// Decodes `rec_len` for this block size (64 KiB blocks store 65536 as 0 or 65535).
    pub(crate) block_size: usize,
    /// The directory is casefolded.
    pub(crate) casefold: bool,
    /// Every name the directory held.
    pub(crate) originals: &'a HashSet<Vec<u8>>,
    /// The names given so far in the directory, and those kept.
    pub(crate) used: HashSet<Vec<u8>>,
    /// Names of the directory that found no name in range so far: after
    /// [`MAX_MISSES`], the rest of the directory is not searched (a corrupt index).
    pub(crate) misses: u32,
    /// Candidates shared by the directory's htree leaves.
    pub(crate) pool: Pool,
}

/// Names without a name in range after which a directory's ranges are no longer searched.
const MAX_MISSES: u32 = 4;

/// What scrambling a chain did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ChainResult {
    /// Names replaced.
    pub(crate) scrambled: u64,
    /// Entries whose name could not be put in its hash range: their byte offsets.
    pub(crate) out_of_range: Vec<usize>,
    /// Byte offset of the entry where the chain broke.
    pub(crate) broken_at: Option<usize>,
}

impl Chain<'_> {
    /// Scrambles the entries of `region` (see the module comment); names go in `range`
    /// when given; the new and the kept names join `used`.
    pub(crate) fn scramble(
        &mut self,
        region: &mut [u8],
        rng: &mut Rng,
        range: Option<&HashRange>,
    ) -> ChainResult {
        let mut out = ChainResult::default();
        let mut off = 0;
        while off + DIRENT_HEADER <= region.len() {
            let len = rec_len(le16(region, off + 4), self.block_size);
            let name_len = self.name_len(region, off);
            if len < DIRENT_HEADER
                || !len.is_multiple_of(4)
                || off + len > region.len()
                || DIRENT_HEADER + name_len > len
            {
                region[off..].fill(0);
                out.broken_at = Some(off);
                return out;
            }
            let rec = &mut region[off..off + len];
            if le32(rec, 0) == 0 {
                rec[6..].fill(0);
            } else {
                self.entry(rec, name_len, rng, range, off, &mut out);
            }
            off += len;
        }
        region[off..].fill(0);
        out
    }

    fn name_len(&self, region: &[u8], off: usize) -> usize {
        if self.filetype {
            usize::from(region[off + 6])
        } else {
            usize::from(le16(region, off + 6))
        }
    }

    /// One used entry `rec` (its whole record) with a name of `name_len` bytes.
    fn entry(
        &mut self,
        rec: &mut [u8],
        name_len: usize,
        rng: &mut Rng,
        range: Option<&HashRange>,
        off: usize,
        out: &mut ChainResult,
    ) {
        let name = &rec[DIRENT_HEADER..DIRENT_HEADER + name_len];
        let kept = name == b"." || name == b".." || (self.root && name == b"lost+found");
        let mut new_len = name_len;
        if !kept && name_len > 0 {
            let max = rec.len() - DIRENT_HEADER;
            let max = if self.filetype { max.min(255) } else { max };
            let picker = Picker {
                used: &self.used,
                originals: self.originals,
                casefold: self.casefold,
            };
            let give_up = range.is_some() && self.misses >= MAX_MISSES;
            let picked = match give_up {
                true => None,
                false => picker.pick(rng, name_len, max, range, Some(&mut self.pool)),
            };
            let new = match picked {
                Some(n) => n,
                None => {
                    // Nothing in range: any new unique name (the warning names the entry).
                    self.misses += 1;
                    out.out_of_range.push(off);
                    picker
                        .pick(rng, name_len, max, None, None)
                        .unwrap_or_else(|| (0..name_len).map(|_| rng.safe_byte()).collect())
                }
            };
            new_len = new.len();
            rec[DIRENT_HEADER..DIRENT_HEADER + new_len].copy_from_slice(&new);
            self.set_name_len(rec, new_len);
            out.scrambled += 1;
            self.used.insert(new);
        } else if kept {
            self.used.insert(name.to_vec());
        }
        rec[DIRENT_HEADER + new_len..].fill(0);
    }

    fn set_name_len(&self, rec: &mut [u8], len: usize) {
        if self.filetype {
            rec[6] = len as u8;
        } else {
            rec[6..8].copy_from_slice(&(len as u16).to_le_bytes());
        }
    }
}

/// Zeroes what follows the `count` index entries of htree node `block` whose count/limit
/// pair is at `count_offset` (8 in an interior node, 32 in the root), keeping the dx tail
/// when `csum`. Returns false (nothing changed) when `count` or `limit` is impossible.
pub(crate) fn scrub_dx_node(block: &mut [u8], count_offset: usize, csum: bool) -> bool {
    let bs = block.len();
    let limit = usize::from(le16(block, count_offset));
    let count = usize::from(le16(block, count_offset + 2));
    let end = count_offset + limit * DX_ENTRY_SIZE;
    if count == 0 || count > limit || end > bs {
        return false;
    }
    block[count_offset + count * DX_ENTRY_SIZE..end].fill(0);
    let rest = if csum && end + DX_TAIL_SIZE <= bs {
        end + DX_TAIL_SIZE
    } else {
        end
    };
    block[rest..].fill(0);
    true
}

/// Scrambles symlink target `target` in place: every byte of every path component becomes a
/// random lowercase letter or digit, `/` separators and `.`/`..` components stay (the
/// target keeps its length and shape, and no NUL appears).
pub(crate) fn scramble_target(target: &mut [u8], rng: &mut Rng) {
    for comp in target.split_mut(|&b| b == b'/') {
        if comp == b"." || comp == b".." {
            continue;
        }
        for b in comp.iter_mut() {
            *b = rng.safe_byte();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dir::parse_block;

    fn entry(buf: &mut Vec<u8>, inode: u32, name: &[u8], rec: usize) {
        let start = buf.len();
        buf.extend_from_slice(&inode.to_le_bytes());
        buf.extend_from_slice(&(rec as u16).to_le_bytes());
        buf.push(name.len() as u8);
        buf.push(1);
        buf.extend_from_slice(name);
        buf.resize(start + rec, 0xAA);
    }

    #[test]
    fn scrambles_a_leaf_and_zeroes_what_is_left() {
        let mut b = Vec::new();
        entry(&mut b, 2, b".", 12);
        entry(&mut b, 2, b"..", 12);
        entry(&mut b, 0, b"deleted-secret", 24);
        entry(&mut b, 12, b"lost+found", 20);
        entry(&mut b, 13, b"secret-name", 1024 - 68);
        let originals: HashSet<Vec<u8>> =
            parse_block(&b, true).into_iter().map(|e| e.name).collect();
        let mut chain = Chain {
            filetype: true,
            root: true,
            block_size: 1024,
            casefold: false,
            originals: &originals,
            used: HashSet::new(),
            misses: 0,
            pool: Pool::default(),
        };
        let r = chain.scramble(&mut b, &mut Rng::new(5, 2), None);
        assert_eq!(r.scrambled, 1);
        assert_eq!(r.broken_at, None);
        let names: Vec<Vec<u8>> = parse_block(&b, true).into_iter().map(|e| e.name).collect();
        assert_eq!(
            &names[..3],
            &[b".".to_vec(), b"..".to_vec(), b"lost+found".to_vec()]
        );
        assert_eq!(names[3].len(), 11);
        assert_ne!(names[3], b"secret-name");
        assert!(!b.windows(6).any(|w| w == b"secret"));
        assert!(!b.contains(&0xAA), "slack and deleted entries are zeroed");
        assert_eq!(le16(&b, 28), 24, "a deleted entry keeps its rec_len");
    }

    #[test]
    fn a_broken_chain_is_zeroed_from_the_break() {
        let mut b = Vec::new();
        entry(&mut b, 2, b".", 12);
        entry(&mut b, 9, b"secret", 1012);
        b[16..18].copy_from_slice(&3u16.to_le_bytes());
        let originals = HashSet::new();
        let mut chain = Chain {
            filetype: true,
            root: false,
            block_size: 1024,
            casefold: false,
            originals: &originals,
            used: HashSet::new(),
            misses: 0,
            pool: Pool::default(),
        };
        let r = chain.scramble(&mut b, &mut Rng::new(5, 2), None);
        assert_eq!(r.broken_at, Some(12));
        assert!(b[12..].iter().all(|&x| x == 0));
    }

    #[test]
    fn dx_node_scrub_keeps_count_entries_and_tail() {
        let mut b = vec![0x55u8; 1024];
        b[8..10].copy_from_slice(&126u16.to_le_bytes());
        b[10..12].copy_from_slice(&2u16.to_le_bytes());
        assert!(scrub_dx_node(&mut b, 8, true));
        assert!(b[8 + 16..8 + 126 * 8].iter().all(|&x| x == 0));
        assert!(b[1016..].iter().all(|&x| x == 0x55));
        assert!(b[12..24].iter().all(|&x| x == 0x55));
    }

    #[test]
    fn symlink_targets_keep_their_shape() {
        let mut t = b"../secret/dir/./file.txt".to_vec();
        scramble_target(&mut t, &mut Rng::new(1, 9));
        assert_eq!(t.len(), 24);
        assert!(t.starts_with(b"../") && t[9] == b'/' && &t[13..16] == b"/./");
        assert!(!t.windows(6).any(|w| w == b"secret"));
        assert!(!t.contains(&0));
    }
}

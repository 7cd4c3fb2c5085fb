//! Scrambled inode records: fast symlinks (the target in `i_block`), inline-data symlinks
//! and directories (`i_block` and the in-inode `system.data` value), and the records of
//! inodes not in use (`i_block` and the in-inode xattr area zeroed: they may hold an old
//! fast-symlink target or inline names). The `e_hash` of a changed in-inode entry (when
//! set) and the inode checksum (when it verified) are stored again.

use super::block::{scramble_target, Chain};
use super::range::Rng;
use crate::bytes::{le16, le32};
use crate::dir::{ibody_xattr_span, parse_block, EXT4_XATTR_INDEX_SYSTEM};
use crate::features::incompat;
use crate::inode::{I_BLOCK_OFFSET, I_BLOCK_SIZE};
use crate::orphan::csum::Csum;
use crate::superblock::{Superblock, EXT2_GOOD_OLD_INODE_SIZE};
use crate::types::EXT2_ROOT_INO;
use std::collections::HashSet;

/// Byte offset of `e_hash` in an xattr entry.
const E_HASH: usize = 12;
/// Size of the fixed part of an xattr entry, in bytes.
const XATTR_ENTRY_HEADER: usize = 16;
/// Shifts of the xattr entry hash (kernel `NAME_HASH_SHIFT`, `VALUE_HASH_SHIFT`).
const NAME_HASH_SHIFT: u32 = 5;
const VALUE_HASH_SHIFT: u32 = 16;

/// The `system.data` span of `raw`: (entry, value start, value end).
fn system_data(raw: &[u8]) -> Option<(usize, usize, usize)> {
    ibody_xattr_span(raw, EXT4_XATTR_INDEX_SYSTEM, b"data")
}

/// Scrambles the names of inline-data directory record `raw` of inode `ino`; returns the
/// number of names replaced.
pub(crate) fn inline_dir(sb: &Superblock, ino: u32, raw: &mut [u8], seed: u64) -> u64 {
    let filetype = sb.has_incompat(incompat::FILETYPE);
    let head = I_BLOCK_OFFSET + 4..I_BLOCK_OFFSET + I_BLOCK_SIZE;
    let span = system_data(raw);
    let mut originals: HashSet<Vec<u8>> = parse_block(&raw[head.clone()], filetype)
        .into_iter()
        .map(|e| e.name)
        .collect();
    if let Some((_, s, e)) = span {
        originals.extend(
            parse_block(&raw[s..e], filetype)
                .into_iter()
                .map(|e| e.name),
        );
    }
    let mut chain = Chain {
        filetype,
        root: ino == EXT2_ROOT_INO.0,
        block_size: I_BLOCK_SIZE,
        casefold: le32(raw, 0x20) & super::dirs::EXT4_CASEFOLD_FL != 0,
        originals: &originals,
        used: HashSet::new(),
        misses: 0,
        pool: super::pool::Pool::default(),
    };
    let mut rng = Rng::new(seed, u64::from(ino));
    let mut n = chain.scramble(&mut raw[head], &mut rng, None).scrambled;
    if let Some((entry, s, e)) = span {
        n += chain.scramble(&mut raw[s..e], &mut rng, None).scrambled;
        rehash_entry(raw, entry, s, e);
    }
    n
}

/// Scrambles the target of symlink record `raw` of inode `ino` (`i_size` bytes): in
/// `i_block` (a fast symlink), or `i_block` then `system.data` (inline data). Bytes of
/// `i_block` past the target are zeroed.
pub(crate) fn symlink(raw: &mut [u8], ino: u32, size: usize, inline: bool, seed: u64) {
    let mut rng = Rng::new(seed, u64::from(ino));
    let in_block = size.min(I_BLOCK_SIZE);
    let ib = &mut raw[I_BLOCK_OFFSET..I_BLOCK_OFFSET + I_BLOCK_SIZE];
    scramble_target(&mut ib[..in_block], &mut rng);
    ib[in_block..].fill(0);
    if !inline {
        return;
    }
    if let Some((entry, s, e)) = system_data(raw) {
        scramble_target(&mut raw[s..e], &mut rng);
        rehash_entry(raw, entry, s, e);
    }
}

/// Zeroes `i_block` and the in-inode xattr area of the record `raw` of an inode not in use;
/// true if anything changed.
pub(crate) fn clear_unused(raw: &mut [u8]) -> bool {
    let mut changed = zero(&mut raw[I_BLOCK_OFFSET..I_BLOCK_OFFSET + I_BLOCK_SIZE]);
    if raw.len() > EXT2_GOOD_OLD_INODE_SIZE + 2 {
        let extra = usize::from(le16(raw, EXT2_GOOD_OLD_INODE_SIZE));
        let from = EXT2_GOOD_OLD_INODE_SIZE.saturating_add(extra);
        if extra % 4 == 0 && from < raw.len() {
            changed |= zero(&mut raw[from..]);
        }
    }
    changed
}

fn zero(b: &mut [u8]) -> bool {
    let any = b.iter().any(|&x| x != 0);
    b.fill(0);
    any
}

/// Stores the inode checksum of `raw` (inode `ino`) when `before` (its checksum verified
/// before the change; a bad one stays bad).
pub(crate) fn store_csum(csum: &Csum, ino: u32, raw: &mut [u8], before: bool) {
    if before {
        csum.set_inode(ino, raw);
    }
}

/// Stores again the `e_hash` of the in-inode xattr entry at `entry` whose value is
/// `raw[start..end]`, unless it is 0 (not set, as for many in-inode entries).
fn rehash_entry(raw: &mut [u8], entry: usize, start: usize, end: usize) {
    if le32(raw, entry + E_HASH) == 0 {
        return;
    }
    let name_len = usize::from(raw[entry]);
    let name = &raw[entry + XATTR_ENTRY_HEADER..entry + XATTR_ENTRY_HEADER + name_len];
    let words_end = (start + (end - start).div_ceil(4) * 4).min(raw.len());
    let h = entry_hash(name, &raw[start..words_end]);
    raw[entry + E_HASH..entry + E_HASH + 4].copy_from_slice(&h.to_le_bytes());
}

/// The xattr entry hash (kernel `ext4_xattr_hash_entry`): the name's bytes then the
/// value's little-endian words, each folded in with a rotate.
pub(crate) fn entry_hash(name: &[u8], value: &[u8]) -> u32 {
    let mut h = 0u32;
    for &c in name {
        h = (h << NAME_HASH_SHIFT) ^ (h >> (32 - NAME_HASH_SHIFT)) ^ u32::from(c);
    }
    for w in value.chunks(4) {
        let mut word = [0u8; 4];
        word[..w.len()].copy_from_slice(w);
        h = (h << VALUE_HASH_SHIFT) ^ (h >> (32 - VALUE_HASH_SHIFT)) ^ u32::from_le_bytes(word);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unused_records_lose_i_block_and_xattrs() {
        let mut raw = vec![0u8; 256];
        raw[128..130].copy_from_slice(&32u16.to_le_bytes());
        raw[I_BLOCK_OFFSET..I_BLOCK_OFFSET + 6].copy_from_slice(b"secret");
        raw[200..206].copy_from_slice(b"secret");
        raw[0x64] = 9; // i_generation survives
        assert!(clear_unused(&mut raw));
        assert!(!raw.windows(6).any(|w| w == b"secret"));
        assert_eq!(raw[0x64], 9);
        assert!(!clear_unused(&mut raw));
    }

    #[test]
    fn fast_symlink_target_is_scrambled_to_its_length() {
        let mut raw = vec![0u8; 256];
        raw[I_BLOCK_OFFSET..I_BLOCK_OFFSET + 17].copy_from_slice(b"../xattr/small.tx");
        symlink(&mut raw, 20, 17, false, 3);
        let t = &raw[I_BLOCK_OFFSET..I_BLOCK_OFFSET + 17];
        assert!(t.starts_with(b"../") && t[8] == b'/' && !t.contains(&0));
        assert!(!t.windows(5).any(|w| w == b"small"));
        assert_eq!(raw[I_BLOCK_OFFSET + 17], 0);
    }

    #[test]
    fn entry_hash_of_a_name_alone() {
        // "data": ((('d' << 5 ^ 'a') << 5 ^ 't') << 5 ^ 'a') without rotation carries.
        let want = ((((u32::from(b'd') << 5) ^ u32::from(b'a')) << 5 ^ u32::from(b't')) << 5)
            ^ u32::from(b'a');
        assert_eq!(entry_hash(b"data", &[]), want);
    }
}

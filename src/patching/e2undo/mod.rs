//! Writer of e2fsprogs undo files (format `E2UNDO02`).
//!
//! **Purpose.** When a command overwrites blocks of an ext2/3/4 target (block device or image
//! file), it can also record the *old* content of those blocks in an undo file. e2fsprogs' own
//! `e2undo FILE TARGET` replays that file and gives the target its old bytes back. The writer
//! mirrors what e2fsprogs' `undo_io` channel produces, so the stock `e2undo` (1.43 and later)
//! accepts the files.
//!
//! **Layout.** All integers are little-endian; the file is made of undo blocks of B bytes (here
//! B = F = the fs block size, F being the unit of key addresses). Undo block 0 holds the 512-byte
//! header (rest zero); block 1 the 1024-byte superblock record (rest zero); block 2 the first key
//! block, followed by the data of its keys in key order (each key's data takes `size / B` whole
//! blocks); once a key block holds `B/16 − 1` keys, the next key block comes right after the data
//! of the previous one, then its data, and so on. A key block is magic `0xCADECADE`, its CRC, 8
//! reserved bytes and 16-byte keys `{fsblk u64, blk_crc u32, size u32}`; a key covers a run of
//! contiguous fs blocks of fewer than 512·B bytes (at most 511 blocks). The superblock record is
//! the target's superblock as it will be *after* the modification, with `s_magic` bitwise
//! inverted (so blkid does not take the undo file for a filesystem).
//!
//! **CRC convention.** Every CRC in the file is e2fsprogs' `ext2fs_crc32c_le(~0, data)`: the
//! reflected Castagnoli CRC with initial value `0xFFFFFFFF` and *no* final inversion, i.e.
//! `!crc32c::crc32c(data)` ([`e2fs_crc32c`]). Header CRC covers header bytes 0..508; key-block CRC
//! covers the whole B-byte block with its CRC field zeroed; `blk_crc` covers a key's data bytes;
//! `sb_crc` covers the 1024 superblock bytes with the real (un-inverted) magic.
//!
//! **Streaming.** The data can be GiBs, so nothing but the current key block's keys is held in
//! memory: [`UndoFileWriter::create`] reserves undo block 2 for the first key block,
//! [`UndoFileWriter::add`] writes the old bytes straight to their final place in the file (after
//! the slot of the current key block) and writes a key block into its reserved slot when it is
//! full (reserving the next slot behind the data written so far); [`UndoFileWriter::finish`]
//! writes the last key block, the superblock record and, last of all, the header. Until `finish`
//! has written the header the file starts with zeros, which `e2undo` rejects ("not an undo
//! file"), so an interrupted or failed run never leaves a file that looks valid.
//!
//! **Caveat.** `e2undo` refuses to replay unless the target's superblock (1024 bytes at byte
//! 1024) equals the recorded one byte for byte. The file is therefore valid only right after the
//! modification finished, before anything else (a mount, fsck, tune2fs …) touches the
//! superblock.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::bytes::{put_le32 as put_u32, put_le64 as put_u64};
use anyhow::{bail, ensure, Context, Result};
use ext::{SuperblockBytes, EXT4_SUPER_MAGIC};

/// Magic at byte 0 of the header.
pub const E2UNDO_MAGIC: &[u8; 8] = b"E2UNDO02";
/// Magic at byte 0 of every key block.
pub const KEYBLOCK_MAGIC: u32 = 0xCADE_CADE;
/// Header `state` bit: the writer closed the file cleanly.
pub const E2UNDO_STATE_FINISHED: u32 = 0x1;
/// A key's data must stay below this many undo blocks (e2undo rejects `size > 512·B`;
/// undo_io keeps `size < 512·B`), so one key holds at most `E2UNDO_MAX_EXTENT_BLOCKS - 1` blocks.
pub const E2UNDO_MAX_EXTENT_BLOCKS: u64 = 512;
/// Size in bytes of the header structure (the rest of undo block 0 is zero).
pub const E2UNDO_HEADER_SIZE: usize = 512;
/// Size in bytes of the superblock record (the rest of its undo block is zero).
pub const E2UNDO_SUPERBLOCK_SIZE: usize = 1024;
/// Smallest fs block size accepted (bytes).
pub const MIN_BLOCK_SIZE: u32 = 1024;
/// Largest fs block size accepted (bytes).
pub const MAX_BLOCK_SIZE: u32 = 65536;

/// Largest number of fs blocks in one key.
const MAX_KEY_BLOCKS: u64 = E2UNDO_MAX_EXTENT_BLOCKS - 1;
/// Undo-block index of the superblock record.
const SUPER_OFFSET: u64 = 1;
/// Undo-block index of the first key block.
const KEY_OFFSET: u64 = 2;
/// Size of one key in a key block, and of the key-block header before the keys.
const KEY_SIZE: usize = 16;

// Header field offsets (bytes).
const HDR_NUM_KEYS: usize = 8;
const HDR_SUPER_OFFSET: usize = 16;
const HDR_KEY_OFFSET: usize = 24;
const HDR_BLOCK_SIZE: usize = 32;
const HDR_FS_BLOCK_SIZE: usize = 36;
const HDR_SB_CRC: usize = 40;
const HDR_STATE: usize = 44;
const HDR_F_COMPAT: usize = 48;
const HDR_F_INCOMPAT: usize = 52;
const HDR_F_ROCOMPAT: usize = 56;
const HDR_FS_OFFSET: usize = 64;
const HDR_HEADER_CRC: usize = 508;
/// `f_compat` bit: `fs_offset` holds where the filesystem starts on the device, and e2undo
/// replays at that offset when not given `-o`.
const E2UNDO_FEATURE_COMPAT_FS_OFFSET: u32 = 0x1;

// Key-block field offsets (bytes).
const KB_CRC: usize = 4;

/// e2fsprogs' CRC32C convention: `ext2fs_crc32c_le(0xFFFFFFFF, data)`, i.e. the standard
/// CRC-32C without the final inversion.
pub fn e2fs_crc32c(data: &[u8]) -> u32 {
    !crc32c::crc32c(data)
}

/// One key of the current key block. `crc` is the *standard* CRC-32C of the data so far
/// (chainable with `crc32c_append`); it is inverted when the key is stored.
#[derive(Debug, Clone, Copy)]
struct Key {
    fsblk: u64,
    blocks: u64,
    crc: u32,
}

/// Streams the pre-images of fs blocks about to be overwritten into an `E2UNDO02` file.
///
/// Use: [`create`](Self::create) on a new empty file, [`add`](Self::add) the old bytes of each
/// run of blocks (before overwriting them) in increasing block order, then
/// [`finish`](Self::finish) with the superblock the target holds after the modification.
/// After any error the writer refuses further calls; the file then has no header and is
/// rejected by `e2undo`.
#[derive(Debug)]
pub struct UndoFileWriter {
    out: File,
    /// B = F, bytes.
    block_size: u32,
    /// B/16 − 1.
    keys_per_block: usize,
    /// Undo-block index of the slot reserved for the current key block.
    key_block_index: u64,
    /// Keys of the current key block (at most `keys_per_block`).
    keys: Vec<Key>,
    /// Next free undo block (where the next data goes); also the file length in blocks.
    next_block: u64,
    /// Keys written so far (all key blocks).
    num_keys: u64,
    /// Smallest fs block the next `add` may start at.
    next_fs_block: u64,
    /// Set once a call failed; the file is then unusable.
    failed: bool,
    /// Where the filesystem starts on the target, in bytes (0: at its start).
    fs_offset: u64,
}

impl UndoFileWriter {
    /// Starts an undo file in `out`, which must be a new, empty file opened for writing
    /// (positioned writes are used; the file position does not matter). `block_size` is the fs
    /// block size in bytes (B = F): a power of two in 1024..=65536.
    ///
    /// Errors: invalid `block_size`.
    pub fn create(out: File, block_size: u32) -> Result<UndoFileWriter> {
        ensure!(
            (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) && block_size.is_power_of_two(),
            "undo file: block size {block_size} is not a power of two in \
             {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE}"
        );
        let keys_per_block = block_size as usize / KEY_SIZE - 1;
        Ok(UndoFileWriter {
            out,
            block_size,
            keys_per_block,
            key_block_index: KEY_OFFSET,
            keys: Vec::with_capacity(keys_per_block),
            next_block: KEY_OFFSET + 1,
            num_keys: 0,
            next_fs_block: 0,
            failed: false,
            fs_offset: 0,
        })
    }

    /// Records that the filesystem starts `fs_offset` bytes into the target (a partition of
    /// a disk image): the header's `fs_offset` with the `f_compat` bit that makes e2undo
    /// replay there.
    pub fn with_fs_offset(mut self, fs_offset: u64) -> UndoFileWriter {
        self.fs_offset = fs_offset;
        self
    }

    /// Number of keys recorded so far.
    pub fn num_keys(&self) -> u64 {
        self.num_keys
    }

    /// Size in bytes the file will have once finished (given no further `add`).
    pub fn file_size(&self) -> u64 {
        self.next_block.saturating_mul(u64::from(self.block_size))
    }

    /// Records `old`, the current (pre-modification) bytes of fs blocks
    /// `first..first + old.len() / block_size`, writing them to the undo file at once.
    ///
    /// Calls must come in strictly increasing, non-overlapping block order. A run contiguous
    /// with the previous key extends it while the key stays under 512·B bytes (≤ 511 blocks);
    /// longer runs are split over several keys. An empty `old` is a no-op.
    ///
    /// Errors: `old.len()` not a multiple of the block size, a run starting before the end of
    /// the previous one, block numbers overflowing a 64-bit byte offset, write errors (after
    /// which the writer is unusable).
    pub fn add(&mut self, first: u64, old: &[u8]) -> Result<()> {
        ensure!(
            !self.failed,
            "undo file: writer unusable after an earlier error"
        );
        let b = u64::from(self.block_size);
        ensure!(
            old.len().is_multiple_of(self.block_size as usize),
            "undo file: {} bytes for block {first} is not a multiple of the block size {b}",
            old.len()
        );
        if old.is_empty() {
            return Ok(());
        }
        ensure!(
            first >= self.next_fs_block,
            "undo file: block {first} added out of order (expected block {} or later)",
            self.next_fs_block
        );
        let count = old.len() as u64 / b;
        let end = first
            .checked_add(count)
            .filter(|e| e.checked_mul(b).is_some())
            .with_context(|| format!("undo file: block run {first}+{count} overflows"))?;
        let result = self.add_inner(first, old);
        if result.is_err() {
            self.failed = true;
        } else {
            self.next_fs_block = end;
        }
        result
    }

    fn add_inner(&mut self, first: u64, old: &[u8]) -> Result<()> {
        let bs = self.block_size as usize;
        let mut cur = first;
        let mut rest = old;
        while !rest.is_empty() {
            let remaining = (rest.len() / bs) as u64;
            let extendable = self.keys.last().is_some_and(|k| {
                k.fsblk.checked_add(k.blocks) == Some(cur) && k.blocks < MAX_KEY_BLOCKS
            });
            if !extendable {
                if self.keys.len() == self.keys_per_block {
                    self.write_key_block()?;
                    self.key_block_index = self.next_block;
                    self.next_block = self.bump(self.next_block, 1)?;
                    self.keys.clear();
                }
                self.keys.push(Key {
                    fsblk: cur,
                    blocks: 0,
                    crc: 0,
                });
                self.num_keys = self
                    .num_keys
                    .checked_add(1)
                    .context("undo file: key count overflow")?;
            }
            let last_blocks = self.keys.last().map_or(0, |k| k.blocks);
            let n = remaining.min(MAX_KEY_BLOCKS - last_blocks);
            let nbytes = usize::try_from(n)
                .ok()
                .and_then(|n| n.checked_mul(bs))
                .context("undo file: chunk size overflow")?;
            let (chunk, tail) = rest.split_at(nbytes);
            let offset = self.byte_offset(self.next_block)?;
            self.out.write_all_at(chunk, offset).with_context(|| {
                format!("undo file: writing data of block {cur} at byte {offset}")
            })?;
            self.next_block = self.bump(self.next_block, n)?;
            let key = self.keys.last_mut().context("undo file: no current key")?;
            key.crc = crc32c::crc32c_append(key.crc, chunk);
            key.blocks += n;
            cur = cur
                .checked_add(n)
                .context("undo file: block number overflow")?;
            rest = tail;
        }
        Ok(())
    }

    /// Writes the last key block, the superblock record and the header, and returns the file
    /// (not synced: the caller fsyncs and renames). `new_superblock` is the 1024 bytes the target
    /// holds at byte 1024 *after* the modification; `e2undo` compares them with the target
    /// before replaying.
    ///
    /// Errors: `new_superblock` without the ext2/3/4 magic 0xEF53, the writer failed earlier,
    /// write errors.
    pub fn finish(mut self, new_superblock: &[u8; 1024]) -> Result<File> {
        ensure!(
            !self.failed,
            "undo file: writer unusable after an earlier error"
        );
        let magic = SuperblockBytes::new(new_superblock)?.s_magic();
        if magic != EXT4_SUPER_MAGIC {
            bail!("undo file: superblock magic is {magic:#06x}, expected {EXT4_SUPER_MAGIC:#06x}");
        }
        self.write_key_block()?;

        let bs = self.block_size as usize;
        let mut sb = vec![0u8; bs];
        sb[..E2UNDO_SUPERBLOCK_SIZE].copy_from_slice(new_superblock);
        SuperblockBytes::new(&mut sb[..E2UNDO_SUPERBLOCK_SIZE])?.set_s_magic(!magic);
        let offset = self.byte_offset(SUPER_OFFSET)?;
        self.out
            .write_all_at(&sb, offset)
            .context("undo file: writing the superblock record")?;

        let len = self.file_size();
        self.out
            .set_len(len)
            .with_context(|| format!("undo file: setting the length to {len} bytes"))?;

        let mut hdr = vec![0u8; bs];
        hdr[..8].copy_from_slice(E2UNDO_MAGIC);
        put_u64(&mut hdr, HDR_NUM_KEYS, self.num_keys);
        put_u64(&mut hdr, HDR_SUPER_OFFSET, SUPER_OFFSET);
        put_u64(&mut hdr, HDR_KEY_OFFSET, KEY_OFFSET);
        put_u32(&mut hdr, HDR_BLOCK_SIZE, self.block_size);
        put_u32(&mut hdr, HDR_FS_BLOCK_SIZE, self.block_size);
        put_u32(&mut hdr, HDR_SB_CRC, e2fs_crc32c(new_superblock));
        put_u32(&mut hdr, HDR_STATE, E2UNDO_STATE_FINISHED);
        let compat = match self.fs_offset {
            0 => 0,
            _ => E2UNDO_FEATURE_COMPAT_FS_OFFSET,
        };
        put_u32(&mut hdr, HDR_F_COMPAT, compat);
        put_u32(&mut hdr, HDR_F_INCOMPAT, 0);
        put_u32(&mut hdr, HDR_F_ROCOMPAT, 0);
        put_u64(&mut hdr, HDR_FS_OFFSET, self.fs_offset);
        let crc = e2fs_crc32c(&hdr[..HDR_HEADER_CRC]);
        put_u32(&mut hdr, HDR_HEADER_CRC, crc);
        debug_assert_eq!(HDR_HEADER_CRC + 4, E2UNDO_HEADER_SIZE);
        self.out
            .write_all_at(&hdr, 0)
            .context("undo file: writing the header")?;
        Ok(self.out)
    }

    /// Writes the current key block into its reserved slot (unused key slots zero).
    fn write_key_block(&mut self) -> Result<()> {
        let b = u64::from(self.block_size);
        let mut kb = vec![0u8; self.block_size as usize];
        put_u32(&mut kb, 0, KEYBLOCK_MAGIC);
        for (i, k) in self.keys.iter().enumerate() {
            let at = KEY_SIZE * (i + 1);
            let size = k
                .blocks
                .checked_mul(b)
                .and_then(|s| u32::try_from(s).ok())
                .context("undo file: key size overflow")?;
            put_u64(&mut kb, at, k.fsblk);
            put_u32(&mut kb, at + 8, !k.crc);
            put_u32(&mut kb, at + 12, size);
        }
        let crc = e2fs_crc32c(&kb);
        put_u32(&mut kb, KB_CRC, crc);
        let offset = self.byte_offset(self.key_block_index)?;
        let result = self
            .out
            .write_all_at(&kb, offset)
            .with_context(|| format!("undo file: writing the key block at byte {offset}"));
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn byte_offset(&self, undo_block: u64) -> Result<u64> {
        undo_block
            .checked_mul(u64::from(self.block_size))
            .context("undo file: file offset overflow")
    }

    fn bump(&self, block: u64, n: u64) -> Result<u64> {
        block
            .checked_add(n)
            .filter(|&e| self.byte_offset(e).is_ok())
            .context("undo file: file size overflow")
    }
}

#[cfg(test)]
mod tests;

//! The patch file format (version 1): constants, the header and state record codecs,
//! the run and digest tables, and the checks of their sizes against each other and the file.
//! See the module above for the layout.

use crate::bytes::{
    get_array, get_str, le32 as get_u32, le64 as get_u64, put_le32 as put_u32, put_le64 as put_u64,
    put_str,
};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// File magic, "e2image-rs rollback patch" (apply writes the same format).
pub const PATCH_MAGIC: [u8; 8] = *b"E2RSRBPT";
/// State record magic.
pub const STATE_MAGIC: [u8; 8] = *b"E2RSRBST";
/// Format version written for a filesystem at the start of its target (and read): version 1.
pub const PATCH_VERSION: u32 = 1;
/// Format version written for a filesystem at a byte offset of its target (`-o`), and read:
/// version 1 with the image path 8 bytes shorter and `fs_offset` (u64) at byte 496.
pub const PATCH_VERSION_OFFSET: u32 = 2;
/// Size of the header, in bytes.
pub const HEADER_BYTES: usize = 512;
/// Byte offset and size of the state record.
pub const STATE_OFFSET: u64 = 512;
pub(super) const STATE_BYTES: usize = 512;
/// Byte offset of the data region.
pub const DATA_OFFSET: u64 = 1024;
/// Size of a run record and of a digest record, in bytes.
pub(super) const RUN_RECORD_BYTES: usize = 32;
pub(super) const DIGEST_RECORD_BYTES: usize = 64;
/// Offset of the CRC32C in the header and in the state record.
pub(super) const CRC_AT: usize = 508;
/// Longest label stored (state and image path), in bytes.
const LABEL_BYTES: usize = 128;
const PATH_BYTES: usize = 168;
/// Version 2: the image path's room, and where `fs_offset` is.
const PATH_BYTES_V2: usize = 160;
const FS_OFFSET_AT: usize = 496;
/// Most blocks a patch may describe: bounds the digest table allocated on open (2^32 blocks =
/// 16 TiB at 4 KiB; the table is then 256 GiB, which no sane patch reaches).
const MAX_PATCH_BLOCKS: u64 = 1 << 32;
/// Bytes read at once while verifying the data region.
pub(super) const VERIFY_CHUNK_BYTES: usize = 8 << 20;
/// Header flag: blocks whose new bytes are all zero are discarded on the target (a hole
/// punched in an image file, BLKZEROOUT on a block device) instead of written.
pub const FLAG_DISCARD_ZEROS: u32 = 1;
/// Header flag: the patch was made by `apply` (a delta), not by `rollback`.
pub const FLAG_APPLY: u32 = 2;

/// Where a rollback stands, as recorded in the state record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchState {
    /// Written and flushed; the target has not been touched.
    Prepared = 1,
    /// Writing new bytes onto the target (the rollback) has begun.
    Applying = 2,
    /// The target holds the new bytes.
    Done = 3,
    /// Writing old bytes back (undo) has begun.
    Undoing = 4,
    /// The target holds the old bytes again.
    Undone = 5,
}

impl PatchState {
    fn from_u32(v: u32) -> Option<PatchState> {
        Some(match v {
            1 => PatchState::Prepared,
            2 => PatchState::Applying,
            3 => PatchState::Done,
            4 => PatchState::Undoing,
            5 => PatchState::Undone,
            _ => return None,
        })
    }

    /// Lower-case name for messages.
    pub fn name(self) -> &'static str {
        match self {
            PatchState::Prepared => "prepared",
            PatchState::Applying => "applying",
            PatchState::Done => "done",
            PatchState::Undoing => "undoing",
            PatchState::Undone => "undone",
        }
    }
}

/// The fixed fields of a patch (the header without magic, version and CRC).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PatchHeader {
    /// Filesystem block size, in bytes; every run is in these units.
    pub block_size: u32,
    /// [`FLAG_DISCARD_ZEROS`], [`FLAG_APPLY`] (0 in rollback patches, and in patches written
    /// before the field existed).
    pub flags: u32,
    /// `s_uuid` of the filesystem.
    pub fs_uuid: [u8; 16],
    /// `s_blocks_count` of the filesystem.
    pub s_blocks_count: u64,
    /// Size of the target in bytes when the patch was made.
    pub target_size: u64,
    /// Block holding the primary superblock (written last); it is always a run of its own.
    pub sb_block: u64,
    /// Number of runs and of blocks in them.
    pub nb_runs: u64,
    pub nb_blocks: u64,
    /// Byte offset and length of the run and digest tables.
    pub tables_offset: u64,
    pub tables_bytes: u64,
    /// SHA-256 of the tables.
    pub tables_sha256: [u8; 32],
    /// Byte offset of the "not clean" variant of the superblock block, and its SHA-256.
    pub dirty_offset: u64,
    pub dirty_sha256: [u8; 32],
    /// Size in bytes and SHA-256 of the first cluster of the QCOW2 image the state came from.
    pub image_size: u64,
    pub image_sha256: [u8; 32],
    /// Which state of the image ("active", or "snapshot ID NAME").
    pub state_label: String,
    /// Path of the image when the patch was made (informational).
    pub image_path: String,
    /// Where the filesystem starts in the target, in bytes from the start of the device or
    /// image file (`-o`; 0 in version 1 patches): every block of the runs is at
    /// `fs_offset + block * block_size`.
    pub fs_offset: u64,
}

/// One run of consecutive blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// First filesystem block.
    pub first_block: u64,
    /// Number of blocks.
    pub nb_blocks: u64,
    /// Byte offset of the old bytes in the patch; the new bytes follow them.
    pub data_offset: u64,
    /// Index of the first block's digest record.
    pub digest_index: u64,
}

/// SHA-256 of a block's old and new bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockDigests {
    pub old: [u8; 32],
    pub new: [u8; 32],
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// CRC32C as e2fsprogs computes it (seed !0, no final inversion).
pub(super) fn crc(data: &[u8]) -> u32 {
    !crc32c::crc32c(data)
}

impl PatchHeader {
    /// True if `flag` is set.
    pub fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }

    pub(super) fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..8].copy_from_slice(&PATCH_MAGIC);
        let version = match self.fs_offset {
            0 => PATCH_VERSION,
            _ => PATCH_VERSION_OFFSET,
        };
        put_u32(&mut b, 8, version);
        put_u32(&mut b, 12, HEADER_BYTES as u32);
        put_u32(&mut b, 16, self.block_size);
        put_u32(&mut b, 20, self.flags);
        b[24..40].copy_from_slice(&self.fs_uuid);
        put_u64(&mut b, 40, self.s_blocks_count);
        put_u64(&mut b, 48, self.target_size);
        put_u64(&mut b, 56, self.sb_block);
        put_u64(&mut b, 64, self.nb_runs);
        put_u64(&mut b, 72, self.nb_blocks);
        put_u64(&mut b, 80, self.tables_offset);
        put_u64(&mut b, 88, self.tables_bytes);
        b[96..128].copy_from_slice(&self.tables_sha256);
        put_u64(&mut b, 128, self.dirty_offset);
        b[136..168].copy_from_slice(&self.dirty_sha256);
        put_u64(&mut b, 168, self.image_size);
        b[176..208].copy_from_slice(&self.image_sha256);
        put_str(&mut b, 208, LABEL_BYTES, &self.state_label);
        if self.fs_offset == 0 {
            put_str(&mut b, 336, PATH_BYTES, &self.image_path);
        } else {
            put_str(&mut b, 336, PATH_BYTES_V2, &self.image_path);
            put_u64(&mut b, FS_OFFSET_AT, self.fs_offset);
        }
        let c = crc(&b[..CRC_AT]);
        put_u32(&mut b, CRC_AT, c);
        b
    }

    pub(super) fn decode(b: &[u8; HEADER_BYTES]) -> Result<PatchHeader> {
        if b[0..8] != PATCH_MAGIC {
            bail!("byte 0: not an e2image-rs rollback patch (bad magic)");
        }
        if crc(&b[..CRC_AT]) != get_u32(b, CRC_AT) {
            bail!("byte {CRC_AT}: header checksum mismatch");
        }
        let version = get_u32(b, 8);
        let v2 = version == PATCH_VERSION_OFFSET;
        if !(version == PATCH_VERSION || v2) || get_u32(b, 12) != HEADER_BYTES as u32 {
            bail!("byte 8: unsupported patch version {version}");
        }
        let fs_offset = if v2 { get_u64(b, FS_OFFSET_AT) } else { 0 };
        if v2 && fs_offset == 0 {
            bail!("byte {FS_OFFSET_AT}: a version 2 patch with no filesystem offset");
        }
        Ok(PatchHeader {
            block_size: get_u32(b, 16),
            flags: get_u32(b, 20),
            fs_uuid: b[24..40].try_into().unwrap_or_default(),
            s_blocks_count: get_u64(b, 40),
            target_size: get_u64(b, 48),
            sb_block: get_u64(b, 56),
            nb_runs: get_u64(b, 64),
            nb_blocks: get_u64(b, 72),
            tables_offset: get_u64(b, 80),
            tables_bytes: get_u64(b, 88),
            tables_sha256: get_array(b, 96),
            dirty_offset: get_u64(b, 128),
            dirty_sha256: get_array(b, 136),
            image_size: get_u64(b, 168),
            image_sha256: get_array(b, 176),
            state_label: get_str(b, 208, LABEL_BYTES),
            image_path: get_str(b, 336, if v2 { PATH_BYTES_V2 } else { PATH_BYTES }),
            fs_offset,
        })
    }
}

pub(super) fn encode_state(state: PatchState, seq: u32, header_crc: u32) -> [u8; STATE_BYTES] {
    let mut b = [0u8; STATE_BYTES];
    b[0..8].copy_from_slice(&STATE_MAGIC);
    put_u32(&mut b, 8, state as u32);
    put_u32(&mut b, 12, seq);
    put_u32(&mut b, 16, header_crc);
    let c = crc(&b[..CRC_AT]);
    put_u32(&mut b, CRC_AT, c);
    b
}

pub(super) fn encode_tables(runs: &[Run], digests: &[BlockDigests]) -> Vec<u8> {
    let mut t = Vec::with_capacity(runs.len() * RUN_RECORD_BYTES + digests.len() * 64);
    for r in runs {
        for v in [r.first_block, r.nb_blocks, r.data_offset, r.digest_index] {
            t.extend_from_slice(&v.to_le_bytes());
        }
    }
    for d in digests {
        t.extend_from_slice(&d.old);
        t.extend_from_slice(&d.new);
    }
    t
}

pub(super) fn read_state(file: &File, header_crc: u32) -> Result<(PatchState, u32)> {
    let mut s = [0u8; STATE_BYTES];
    file.read_exact_at(&mut s, STATE_OFFSET)
        .map_err(|_| anyhow::anyhow!("byte {STATE_OFFSET}: no state record"))?;
    if s[0..8] != STATE_MAGIC || crc(&s[..CRC_AT]) != get_u32(&s, CRC_AT) {
        bail!("byte {STATE_OFFSET}: state record checksum mismatch");
    }
    if get_u32(&s, 16) != header_crc {
        bail!(
            "byte {}: state record belongs to another patch",
            STATE_OFFSET + 16
        );
    }
    let state = PatchState::from_u32(get_u32(&s, 8)).with_context(|| {
        format!(
            "byte {}: unknown state {}",
            STATE_OFFSET + 8,
            get_u32(&s, 8)
        )
    })?;
    Ok((state, get_u32(&s, 12)))
}

/// Checks the header's sizes against each other and the file length, before any allocation.
pub(super) fn check_geometry(h: &PatchHeader, len: u64) -> Result<()> {
    if !(1024..=65536).contains(&h.block_size) || !h.block_size.is_power_of_two() {
        bail!("byte 16: block size {} out of range", h.block_size);
    }
    if h.nb_blocks > MAX_PATCH_BLOCKS || h.nb_runs > h.nb_blocks || h.nb_runs == 0 {
        bail!("byte 64: {} runs of {} blocks", h.nb_runs, h.nb_blocks);
    }
    let bs = u64::from(h.block_size);
    let data_end = h.nb_blocks * bs * 2 + DATA_OFFSET;
    let tables = h.nb_runs * RUN_RECORD_BYTES as u64 + h.nb_blocks * DIGEST_RECORD_BYTES as u64;
    if h.dirty_offset != data_end
        || h.tables_offset != data_end + bs
        || h.tables_bytes != tables
        || h.tables_offset + h.tables_bytes != len
    {
        bail!(
            "byte 80: tables at {}+{} do not fit a {len}-byte file",
            h.tables_offset,
            h.tables_bytes
        );
    }
    let fs_end = h
        .s_blocks_count
        .checked_mul(bs)
        .and_then(|b| b.checked_add(h.fs_offset));
    if h.sb_block >= h.s_blocks_count || fs_end.is_none() {
        bail!(
            "byte 40: superblock block {} past the filesystem",
            h.sb_block
        );
    }
    Ok(())
}

pub(super) fn decode_tables(h: &PatchHeader, t: &[u8]) -> Result<(Vec<Run>, Vec<BlockDigests>)> {
    let bs = u64::from(h.block_size);
    let mut runs = Vec::with_capacity(h.nb_runs as usize);
    let (mut cursor, mut index, mut next) = (DATA_OFFSET, 0u64, 0u64);
    let mut sb_run = false;
    for i in 0..h.nb_runs as usize {
        let at = i * RUN_RECORD_BYTES;
        let r = Run {
            first_block: get_u64(t, at),
            nb_blocks: get_u64(t, at + 8),
            data_offset: get_u64(t, at + 16),
            digest_index: get_u64(t, at + 24),
        };
        let end = r.first_block.checked_add(r.nb_blocks);
        if r.nb_blocks == 0
            || r.first_block < next
            || end.is_none_or(|e| e > h.s_blocks_count)
            || r.data_offset != cursor
            || r.digest_index != index
            || index + r.nb_blocks > h.nb_blocks
        {
            bail!(
                "byte {}: run {i} is inconsistent",
                h.tables_offset + at as u64
            );
        }
        sb_run |= r.first_block == h.sb_block && r.nb_blocks == 1;
        cursor += 2 * r.nb_blocks * bs;
        index += r.nb_blocks;
        next = r.first_block + r.nb_blocks;
        runs.push(r);
    }
    if index != h.nb_blocks || !sb_run {
        bail!("byte {}: run table incomplete", h.tables_offset);
    }
    let base = h.nb_runs as usize * RUN_RECORD_BYTES;
    let digests = (0..h.nb_blocks as usize)
        .map(|i| {
            let at = base + i * DIGEST_RECORD_BYTES;
            BlockDigests {
                old: get_array(t, at),
                new: get_array(t, at + 32),
            }
        })
        .collect();
    Ok((runs, digests))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(fs_offset: u64, path: &str) -> PatchHeader {
        PatchHeader {
            block_size: 4096,
            fs_uuid: [7; 16],
            s_blocks_count: 1000,
            image_path: path.to_string(),
            state_label: "active".into(),
            fs_offset,
            ..PatchHeader::default()
        }
    }

    #[test]
    fn the_filesystem_offset_round_trips_in_version_2_only() {
        let long = "/p".repeat(100);
        for (offset, version, room) in [(0, PATCH_VERSION, PATH_BYTES), (5 << 20, 2, 160)] {
            let h = header(offset, &long);
            let b = h.encode();
            assert_eq!(get_u32(&b, 8), version);
            let back = PatchHeader::decode(&b).unwrap();
            assert_eq!(back.fs_offset, offset);
            assert!(back.image_path.len() < room && long.starts_with(&back.image_path));
        }
    }

    #[test]
    fn a_version_2_header_without_an_offset_is_refused() {
        let mut b = header(4096, "/x").encode();
        put_u64(&mut b, FS_OFFSET_AT, 0);
        let c = crc(&b[..CRC_AT]);
        put_u32(&mut b, CRC_AT, c);
        let e = PatchHeader::decode(&b).unwrap_err().to_string();
        assert!(e.contains("no filesystem offset"), "{e}");
    }
}

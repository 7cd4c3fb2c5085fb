//! The rollback patch file: everything needed to finish (redo) or rewind (undo) a rollback,
//! written and flushed before the target is touched. The format is described in README.md
//! ("Rollback patch file"); in short:
//!
//! ```text
//! 0      header (512 bytes, CRC32C at 508)         identity, geometry, table offsets, digests
//! 512    state record (512 bytes, CRC32C at 508)   the only part rewritten after creation
//! 1024   data: per run, its old bytes then its new bytes; then one block: the superblock
//!        block in its "not clean" variant
//! T      run table (32 bytes per run), then the digest table (64 bytes per block:
//!        SHA-256 of the old bytes, SHA-256 of the new bytes); SHA-256 of both in the header
//! ```
//!
//! All integers are little-endian. Every byte of the file is covered by a checksum: the header
//! and state record by their CRC32C, the tables by the header's SHA-256, the data by the
//! per-block digests, and the file length is fixed by the header. [`Patch::open`] checks all of
//! it, so a corrupt patch is refused before anything is written.

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// File magic, "e2image-rs rollback patch".
pub const PATCH_MAGIC: [u8; 8] = *b"E2RSRBPT";
/// State record magic.
pub const STATE_MAGIC: [u8; 8] = *b"E2RSRBST";
/// Format version written and the only one read.
pub const PATCH_VERSION: u32 = 1;
/// Size of the header, in bytes.
pub const HEADER_BYTES: usize = 512;
/// Byte offset and size of the state record.
pub const STATE_OFFSET: u64 = 512;
const STATE_BYTES: usize = 512;
/// Byte offset of the data region.
pub const DATA_OFFSET: u64 = 1024;
/// Size of a run record and of a digest record, in bytes.
const RUN_RECORD_BYTES: usize = 32;
const DIGEST_RECORD_BYTES: usize = 64;
/// Offset of the CRC32C in the header and in the state record.
const CRC_AT: usize = 508;
/// Longest label stored (state and image path), in bytes.
const LABEL_BYTES: usize = 128;
const PATH_BYTES: usize = 168;
/// Most blocks a patch may describe: bounds the digest table allocated on open (2^32 blocks =
/// 16 TiB at 4 KiB; the table is then 256 GiB, which no sane patch reaches).
const MAX_PATCH_BLOCKS: u64 = 1 << 32;
/// Bytes read at once while verifying the data region.
const VERIFY_CHUNK_BYTES: usize = 8 << 20;

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
fn crc(data: &[u8]) -> u32 {
    !crc32c::crc32c(data)
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
fn get_32(b: &[u8], at: usize) -> [u8; 32] {
    let mut a = [0u8; 32];
    a.copy_from_slice(&b[at..at + 32]);
    a
}
fn put_str(b: &mut [u8], at: usize, len: usize, s: &str) {
    let mut n = s.len().min(len - 1);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    b[at..at + n].copy_from_slice(&s.as_bytes()[..n]);
}
fn get_str(b: &[u8], at: usize, len: usize) -> String {
    let f = &b[at..at + len];
    let end = f.iter().position(|&c| c == 0).unwrap_or(len);
    String::from_utf8_lossy(&f[..end]).into_owned()
}

impl PatchHeader {
    fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..8].copy_from_slice(&PATCH_MAGIC);
        put_u32(&mut b, 8, PATCH_VERSION);
        put_u32(&mut b, 12, HEADER_BYTES as u32);
        put_u32(&mut b, 16, self.block_size);
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
        put_str(&mut b, 336, PATH_BYTES, &self.image_path);
        let c = crc(&b[..CRC_AT]);
        put_u32(&mut b, CRC_AT, c);
        b
    }

    fn decode(b: &[u8; HEADER_BYTES]) -> Result<PatchHeader> {
        if b[0..8] != PATCH_MAGIC {
            bail!("byte 0: not an e2image-rs rollback patch (bad magic)");
        }
        if crc(&b[..CRC_AT]) != get_u32(b, CRC_AT) {
            bail!("byte {CRC_AT}: header checksum mismatch");
        }
        let version = get_u32(b, 8);
        if version != PATCH_VERSION || get_u32(b, 12) != HEADER_BYTES as u32 {
            bail!("byte 8: unsupported patch version {version}");
        }
        Ok(PatchHeader {
            block_size: get_u32(b, 16),
            fs_uuid: b[24..40].try_into().unwrap_or_default(),
            s_blocks_count: get_u64(b, 40),
            target_size: get_u64(b, 48),
            sb_block: get_u64(b, 56),
            nb_runs: get_u64(b, 64),
            nb_blocks: get_u64(b, 72),
            tables_offset: get_u64(b, 80),
            tables_bytes: get_u64(b, 88),
            tables_sha256: get_32(b, 96),
            dirty_offset: get_u64(b, 128),
            dirty_sha256: get_32(b, 136),
            image_size: get_u64(b, 168),
            image_sha256: get_32(b, 176),
            state_label: get_str(b, 208, LABEL_BYTES),
            image_path: get_str(b, 336, PATH_BYTES),
        })
    }
}

fn encode_state(state: PatchState, seq: u32, header_crc: u32) -> [u8; STATE_BYTES] {
    let mut b = [0u8; STATE_BYTES];
    b[0..8].copy_from_slice(&STATE_MAGIC);
    put_u32(&mut b, 8, state as u32);
    put_u32(&mut b, 12, seq);
    put_u32(&mut b, 16, header_crc);
    let c = crc(&b[..CRC_AT]);
    put_u32(&mut b, CRC_AT, c);
    b
}

/// Builds a patch file: runs are appended in increasing block order, then [`PatchWriter::finish`]
/// writes the tables, the header and the state record "prepared".
pub struct PatchWriter {
    file: File,
    block_size: u64,
    cursor: u64,
    runs: Vec<Run>,
    digests: Vec<BlockDigests>,
    next_block: u64,
}

impl PatchWriter {
    /// Starts a patch in `file` (new and empty) for blocks of `block_size` bytes.
    pub fn new(file: File, block_size: u32) -> PatchWriter {
        PatchWriter {
            file,
            block_size: u64::from(block_size),
            cursor: DATA_OFFSET,
            runs: Vec::new(),
            digests: Vec::new(),
            next_block: 0,
        }
    }

    /// Appends a run at block `first`: `old` and `new` hold the same whole number of blocks.
    ///
    /// # Errors
    /// Out-of-order or overlapping runs, unequal or partial lengths, I/O errors.
    pub fn add_run(&mut self, first: u64, old: &[u8], new: &[u8]) -> Result<()> {
        let bs = self.block_size as usize;
        if old.len() != new.len() || old.is_empty() || !old.len().is_multiple_of(bs) {
            bail!("run at block {first}: old and new bytes must be the same whole blocks");
        }
        if first < self.next_block {
            bail!("run at block {first}: runs must come in increasing block order");
        }
        let n = (old.len() / bs) as u64;
        self.runs.push(Run {
            first_block: first,
            nb_blocks: n,
            data_offset: self.cursor,
            digest_index: self.digests.len() as u64,
        });
        self.digests
            .par_extend(
                old.par_chunks(bs)
                    .zip(new.par_chunks(bs))
                    .map(|(o, w)| BlockDigests {
                        old: sha256(o),
                        new: sha256(w),
                    }),
            );
        self.file
            .write_all_at(old, self.cursor)
            .context("cannot write the patch")?;
        self.file
            .write_all_at(new, self.cursor + old.len() as u64)
            .context("cannot write the patch")?;
        self.cursor += 2 * old.len() as u64;
        self.next_block = first + n;
        Ok(())
    }

    /// Writes the "not clean" superblock block, the tables, the header (completing `header`'s
    /// offsets, counts and digests) and the state record "prepared", then flushes the file.
    ///
    /// # Errors
    /// I/O errors.
    pub fn finish(mut self, mut header: PatchHeader, dirty: &[u8]) -> Result<File> {
        header.dirty_offset = self.cursor;
        header.dirty_sha256 = sha256(dirty);
        self.file
            .write_all_at(dirty, self.cursor)
            .context("cannot write the patch")?;
        self.cursor += dirty.len() as u64;
        let tables = encode_tables(&self.runs, &self.digests);
        header.tables_offset = self.cursor;
        header.tables_bytes = tables.len() as u64;
        header.tables_sha256 = sha256(&tables);
        header.nb_runs = self.runs.len() as u64;
        header.nb_blocks = self.digests.len() as u64;
        self.file
            .write_all_at(&tables, self.cursor)
            .context("cannot write the patch")?;
        let h = header.encode();
        self.file
            .write_all_at(&h, 0)
            .context("cannot write the patch")?;
        let st = encode_state(PatchState::Prepared, 0, get_u32(&h, CRC_AT));
        self.file
            .write_all_at(&st, STATE_OFFSET)
            .context("cannot write the patch")?;
        self.file.sync_all().context("cannot flush the patch")?;
        Ok(self.file)
    }
}

fn encode_tables(runs: &[Run], digests: &[BlockDigests]) -> Vec<u8> {
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

/// An opened, fully verified patch.
pub struct Patch {
    file: File,
    path: PathBuf,
    /// The header fields.
    pub header: PatchHeader,
    header_crc: u32,
    state: PatchState,
    seq: u32,
    /// The runs, in increasing block order.
    pub runs: Vec<Run>,
    /// Per-block digests, indexed by `Run::digest_index + i`.
    pub digests: Vec<BlockDigests>,
}

impl Patch {
    /// Opens `path` (read-write when `write`) and verifies every checksum: header, state record,
    /// file length, tables, and the old and new bytes of every block.
    ///
    /// # Errors
    /// A message naming the first corrupt byte offset; I/O errors.
    pub fn open(path: &Path, write: bool) -> Result<Patch> {
        Patch::open_checked(path, write, true)
    }

    /// Like [`Patch::open`], for a patch this process has just written and flushed: the
    /// header, state record, length and tables are checked, but the data is not read back
    /// (it would come from the page cache, i.e. from the very buffers its digests were
    /// computed from, and prove nothing about the disk).
    ///
    /// # Errors
    /// As [`Patch::open`].
    pub fn open_fresh(path: &Path) -> Result<Patch> {
        Patch::open_checked(path, true, false)
    }

    fn open_checked(path: &Path, write: bool, data: bool) -> Result<Patch> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .with_context(|| format!("cannot open the patch {}", path.display()))?;
        if write {
            crate::sys::lock::exclusive(&file, path, "the patch")?;
        }
        let corrupt = |e: anyhow::Error| e.context(format!("patch {} is corrupt", path.display()));
        let p = Patch::read_parts(file, path).map_err(corrupt)?;
        if data {
            p.verify_data().map_err(corrupt)?;
        }
        Ok(p)
    }

    fn read_parts(file: File, path: &Path) -> Result<Patch> {
        let len = file.metadata()?.len();
        let mut h = [0u8; HEADER_BYTES];
        file.read_exact_at(&mut h, 0)
            .map_err(|_| anyhow::anyhow!("byte 0: shorter than a patch header"))?;
        let header = PatchHeader::decode(&h)?;
        let header_crc = get_u32(&h, CRC_AT);
        let (state, seq) = read_state(&file, header_crc)?;
        check_geometry(&header, len)?;
        let mut tables = vec![0u8; header.tables_bytes as usize];
        file.read_exact_at(&mut tables, header.tables_offset)?;
        if sha256(&tables) != header.tables_sha256 {
            bail!(
                "byte {}: run or digest table does not match its SHA-256",
                header.tables_offset
            );
        }
        let (runs, digests) = decode_tables(&header, &tables)?;
        Ok(Patch {
            file,
            path: path.to_path_buf(),
            header,
            header_crc,
            state,
            seq,
            runs,
            digests,
        })
    }

    /// Reads every data block and checks it against its digest.
    fn verify_data(&self) -> Result<()> {
        let bs = self.header.block_size as usize;
        let mut buf = Vec::new();
        for r in &self.runs {
            for which in [false, true] {
                let mut done = 0u64;
                while done < r.nb_blocks {
                    let n = (r.nb_blocks - done).min((VERIFY_CHUNK_BYTES / bs) as u64);
                    buf.resize(n as usize * bs, 0);
                    let at = self.block_offset(r, done, which);
                    self.file.read_exact_at(&mut buf, at)?;
                    let sums: Vec<[u8; 32]> = buf.par_chunks(bs).map(sha256).collect();
                    for (i, sum) in sums.iter().enumerate() {
                        let d = &self.digests[(r.digest_index + done) as usize + i];
                        let want = if which { &d.new } else { &d.old };
                        if sum != want {
                            bail!(
                                "byte {}: {} bytes of block {} do not match their SHA-256",
                                at + (i * bs) as u64,
                                if which { "new" } else { "old" },
                                r.first_block + done + i as u64
                            );
                        }
                    }
                    done += n;
                }
            }
        }
        let mut dirty = vec![0u8; bs];
        self.file
            .read_exact_at(&mut dirty, self.header.dirty_offset)?;
        if sha256(&dirty) != self.header.dirty_sha256 {
            bail!(
                "byte {}: the not-clean superblock block does not match its SHA-256",
                self.header.dirty_offset
            );
        }
        Ok(())
    }

    /// Patch byte offset of block `i` of run `r`, old (`new == false`) or new bytes.
    fn block_offset(&self, r: &Run, i: u64, new: bool) -> u64 {
        let bs = u64::from(self.header.block_size);
        r.data_offset + if new { r.nb_blocks * bs } else { 0 } + i * bs
    }

    /// Reads `buf.len() / block_size` blocks of run `r` from block `i` on, old or new bytes.
    ///
    /// # Errors
    /// I/O errors.
    pub fn read_blocks(&self, r: &Run, i: u64, new: bool, buf: &mut [u8]) -> Result<()> {
        let at = self.block_offset(r, i, new);
        self.file
            .read_exact_at(buf, at)
            .with_context(|| format!("cannot read the patch {} at byte {at}", self.path.display()))
    }

    /// The "not clean" variant of the superblock block.
    ///
    /// # Errors
    /// I/O errors.
    pub fn dirty_block(&self) -> Result<Vec<u8>> {
        let mut b = vec![0u8; self.header.block_size as usize];
        self.file
            .read_exact_at(&mut b, self.header.dirty_offset)
            .context("cannot read the patch")?;
        Ok(b)
    }

    /// The recorded state.
    pub fn state(&self) -> PatchState {
        self.state
    }

    /// Records `state` in the state record and flushes the file.
    ///
    /// # Errors
    /// I/O errors.
    pub fn set_state(&mut self, state: PatchState) -> Result<()> {
        let seq = self.seq.wrapping_add(1);
        let b = encode_state(state, seq, self.header_crc);
        self.file
            .write_all_at(&b, STATE_OFFSET)
            .context("cannot write the patch state")?;
        self.file
            .sync_data()
            .context("cannot flush the patch state")?;
        self.state = state;
        self.seq = seq;
        Ok(())
    }
}

fn read_state(file: &File, header_crc: u32) -> Result<(PatchState, u32)> {
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
fn check_geometry(h: &PatchHeader, len: u64) -> Result<()> {
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
    if h.sb_block >= h.s_blocks_count || h.s_blocks_count.checked_mul(bs).is_none() {
        bail!(
            "byte 40: superblock block {} past the filesystem",
            h.sb_block
        );
    }
    Ok(())
}

fn decode_tables(h: &PatchHeader, t: &[u8]) -> Result<(Vec<Run>, Vec<BlockDigests>)> {
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
                old: get_32(t, at),
                new: get_32(t, at + 32),
            }
        })
        .collect();
    Ok((runs, digests))
}

//! The patch file of rollback and apply: everything needed to finish (redo) or rewind (undo)
//! the change of a target, written and flushed before the target is touched. The format is
//! described in docs/rollback-apply.md ("Rollback patch file"); in short:
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
//! Version 1 is a filesystem at the start of its target; version 2 (written only for one at a
//! byte offset of it, `-o`) is the same with the image path 8 bytes shorter (bytes 336–495)
//! and `fs_offset` (u64) at byte 496: every block of the runs is at `fs_offset + block × B`.
//!
//! All integers are little-endian. Every byte of the file is covered by a checksum: the header
//! and state record by their CRC32C, the tables by the header's SHA-256, the data by the
//! per-block digests, and the file length is fixed by the header. [`Patch::open`] checks all of
//! it, so a corrupt patch is refused before anything is written. All-zero data (the new bytes
//! of a delta's discards) is left as holes, which read back as the same zeros.

mod format;

pub use format::{
    sha256, BlockDigests, PatchHeader, PatchState, Run, FLAG_APPLY, FLAG_DISCARD_ZEROS,
};

use crate::bytes::le32 as get_u32;
use anyhow::{bail, Context, Result};
use format::{
    check_geometry, decode_tables, encode_state, encode_tables, read_state, CRC_AT, DATA_OFFSET,
    HEADER_BYTES, STATE_OFFSET, VERIFY_CHUNK_BYTES,
};
use rayon::prelude::*;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

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
        self.write_data(old, self.cursor)?;
        self.write_data(new, self.cursor + old.len() as u64)?;
        self.cursor += 2 * old.len() as u64;
        self.next_block = first + n;
        Ok(())
    }

    /// Lays the new bytes of the runs added so far over `buf`, which holds the target's bytes
    /// at byte `offset` of the target (the goal as far as the patch knows it; holes of
    /// all-zero new bytes read as zeros).
    ///
    /// # Errors
    /// I/O errors.
    pub fn read_new(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let bs = self.block_size;
        let end = offset + buf.len() as u64;
        let i = self
            .runs
            .partition_point(|r| (r.first_block + r.nb_blocks) * bs <= offset);
        for r in self.runs[i..]
            .iter()
            .take_while(|r| r.first_block * bs < end)
        {
            let (rs, re) = (r.first_block * bs, (r.first_block + r.nb_blocks) * bs);
            let (s, e) = (rs.max(offset), re.min(end));
            let part = &mut buf[(s - offset) as usize..(e - offset) as usize];
            let at = r.data_offset + r.nb_blocks * bs + (s - rs);
            let mut got = 0;
            while got < part.len() {
                match self.file.read_at(&mut part[got..], at + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e).context("cannot read the patch back"),
                }
            }
            part[got..].fill(0); // a hole past the end written so far
        }
        Ok(())
    }

    /// Writes `data` at byte `at`, or leaves a hole there when it is all zeros (the discards of
    /// a delta: reading the hole gives the same bytes, and the file stays small). The tables
    /// written last always extend the file past every hole.
    fn write_data(&self, data: &[u8], at: u64) -> Result<()> {
        if data.iter().all(|&b| b == 0) {
            return Ok(());
        }
        self.file
            .write_all_at(data, at)
            .context("cannot write the patch")
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

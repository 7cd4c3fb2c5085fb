//! Writing a patch (and an optional e2fsprogs undo file) from the runs that differ: the
//! [`RunSink`] the comparisons of rollback and apply feed, [`emit_differing`] which turns a
//! compared chunk into runs, and [`PatchFiles`], which writes both files under temporary
//! names, flushes them and renames them into place (never over an existing file).

use super::command::Command;
use super::e2undo::UndoFileWriter;
use super::patch::{PatchHeader, PatchWriter};
use super::target::not_clean;
use crate::sys::output::TempOutput;
use anyhow::{Context, Result};
use ext::{SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};
use std::path::{Path, PathBuf};

/// Receives the runs that differ, in increasing block order.
pub trait RunSink {
    /// A run at block `first`: `old` (target) and `new` (goal) hold the same whole blocks.
    ///
    /// # Errors
    /// Those of the sink (I/O of the files it writes).
    fn run(&mut self, first: u64, old: &[u8], new: &[u8]) -> Result<()>;
}

/// Hands the differing runs of one compared chunk starting at block `first` to `sink`, and
/// the superblock block `sb_block` (when in the chunk) as a run of its own whether it differs
/// or not: the engine writes it last, after a "not clean" variant of it was written first.
/// Returns the number of differing blocks.
///
/// # Errors
/// Those of the sink.
pub fn emit_differing(
    first: u64,
    old: &[u8],
    new: &[u8],
    bs: usize,
    sb_block: u64,
    sink: &mut dyn RunSink,
) -> Result<u64> {
    let n = old.len() / bs;
    let blk = |v: &[u8], i: usize| v[i * bs..(i + 1) * bs].to_vec();
    let same = |i: usize| old[i * bs..(i + 1) * bs] == new[i * bs..(i + 1) * bs];
    let is_sb = |i: usize| first + i as u64 == sb_block;
    let mut differ = 0;
    let mut i = 0;
    while i < n {
        if is_sb(i) {
            differ += u64::from(!same(i));
            sink.run(sb_block, &blk(old, i), &blk(new, i))?;
            i += 1;
            continue;
        }
        if same(i) {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < n && !same(j) && !is_sb(j) {
            j += 1;
        }
        sink.run(first + i as u64, &old[i * bs..j * bs], &new[i * bs..j * bs])?;
        differ += (j - i) as u64;
        i = j;
    }
    Ok(differ)
}

/// An undo file being written under a temporary name.
struct UndoFile {
    path: PathBuf,
    tmp: TempOutput,
    writer: UndoFileWriter,
}

/// The patch, and optionally an undo file, being written from runs (a [`RunSink`]).
pub struct PatchFiles {
    path: PathBuf,
    tmp: TempOutput,
    writer: PatchWriter,
    undo: Option<UndoFile>,
    block_size: u32,
    sb_block: u64,
    sb: Option<(Vec<u8>, Vec<u8>)>,
}

impl PatchFiles {
    /// Starts the patch `path` and the undo file `undo_file` (under temporary names) for
    /// `block_size`-byte blocks, the primary superblock being in block `sb_block`, the
    /// filesystem starting `fs_offset` bytes into the target (recorded in the undo file).
    ///
    /// # Errors
    /// The files cannot be created.
    pub fn create(
        path: &Path,
        undo_file: Option<&Path>,
        block_size: u32,
        sb_block: u64,
        fs_offset: u64,
    ) -> Result<PatchFiles> {
        let (tmp, file) = TempOutput::create(path)?;
        let undo = match undo_file {
            Some(u) => {
                let (utmp, ufile) = TempOutput::create(u)?;
                Some(UndoFile {
                    path: u.to_path_buf(),
                    tmp: utmp,
                    writer: UndoFileWriter::create(ufile, block_size)?.with_fs_offset(fs_offset),
                })
            }
            None => None,
        };
        Ok(PatchFiles {
            path: path.to_path_buf(),
            tmp,
            writer: PatchWriter::new(file, block_size),
            undo,
            block_size,
            sb_block,
            sb: None,
        })
    }

    /// Completes both files: the patch gets `header` (flags of `command` added) and the "not
    /// clean" superblock naming it; the undo file gets the new superblock. Flushes and
    /// renames them. Returns the line about the undo file, if one was written.
    ///
    /// # Errors
    /// The superblock block was not handed over; I/O errors; an existing file in the way.
    pub fn finish(
        self,
        mut header: PatchHeader,
        command: Command,
        target: &Path,
    ) -> Result<Option<String>> {
        let (sb_old, sb_new) = self.sb.context("the superblock block was not compared")?;
        let sb_at = (SUPERBLOCK_OFFSET % u64::from(self.block_size)) as usize;
        header.flags |= command.header_flags();
        self.writer
            .finish(header, &not_clean(&sb_old, sb_at, &self.path, command)?)?;
        let mut undo_line = None;
        let undo_path = self.undo.as_ref().map(|u| u.path.clone());
        if let Some(u) = self.undo {
            let mut rec = [0u8; SUPERBLOCK_SIZE];
            rec.copy_from_slice(&sb_new[sb_at..sb_at + SUPERBLOCK_SIZE]);
            let (keys, bytes) = (u.writer.num_keys(), u.writer.file_size());
            let f = u.writer.finish(&rec)?;
            f.sync_all().context("cannot flush the undo file")?;
            u.tmp.commit_new()?;
            undo_line = Some(format!(
                "  undo file {}: {keys} keys, {}; `e2undo {} {}` rewinds the {}",
                u.path.display(),
                crate::text::size(bytes),
                u.path.display(),
                target.display(),
                command.name()
            ));
        }
        if let Err(e) = self.tmp.commit_new() {
            if let Some(u) = undo_path {
                let _ = std::fs::remove_file(u);
            }
            return Err(e);
        }
        Ok(undo_line)
    }
}

impl PatchFiles {
    /// Lays the new bytes of the runs written so far over `buf` (the target's bytes at target
    /// byte `offset`): the goal, read back from the patch (`PatchWriter::read_new`).
    ///
    /// # Errors
    /// I/O errors.
    pub fn read_new(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.writer.read_new(offset, buf)
    }
}

impl RunSink for PatchFiles {
    fn run(&mut self, first: u64, old: &[u8], new: &[u8]) -> Result<()> {
        if first == self.sb_block {
            self.sb = Some((old.to_vec(), new.to_vec()));
        }
        self.writer.add_run(first, old, new)?;
        if let Some(u) = &mut self.undo {
            u.writer.add(first, old)?;
        }
        Ok(())
    }
}

//! `-r -c` (e2image's compare mode): the raw image written in place onto an existing OUT (a
//! block device or an image file holding an earlier copy, e.g. on flash storage), writing
//! only the blocks whose bytes differ from what OUT holds; `-n` writes nothing and counts the
//! blocks that would be written. OUT is refused when mounted (any mount, read-only included;
//! a disk image by the loop devices over it), opened exclusively when it is a block device,
//! locked against other e2image-rs runs, and must hold the whole image. Blocks outside the
//! copy set are left as OUT holds them, as e2image leaves them. In place means not
//! crash-safe: a crash part-way leaves OUT part-way (`e2image-rs rollback` and `apply` write
//! only changed blocks through a patch that resumes or undoes).

use super::{one_state_only, Finished, Sink, Table};
use crate::sys::mounted::mounted_anywhere;
use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Most runs of differing blocks listed in the report (the counts cover them all).
const MAX_RUNS_LISTED: usize = 1000;
/// Runs shown in the text note of `-n`.
const RUNS_IN_NOTE: usize = 8;

/// See the module comment.
pub struct CompareSink {
    file: File,
    path: PathBuf,
    /// Bytes of the image (with `-O`, the offset included).
    size: u64,
    /// The unit compared and counted, in bytes (the filesystem's block size).
    block_size: usize,
    dry_run: bool,
    states: u32,
    written: u64,
    unchanged: u64,
    /// Where the image starts in OUT (`-O`), in bytes: block numbers count from there.
    base: u64,
    /// Runs of differing blocks (first block, blocks), the first [`MAX_RUNS_LISTED`].
    runs: Vec<(u64, u64)>,
    runs_omitted: u64,
}

impl CompareSink {
    /// Opens the existing `path` (a block device or a regular file) for a `size`-byte image
    /// (the `-O` offset `base` included) compared in `block_size`-byte blocks; read-only when
    /// `dry_run`.
    ///
    /// # Errors
    /// Mounted, busy, locked, not a device or file, or smaller than `size`.
    pub fn open(
        path: &Path,
        size: u64,
        block_size: u32,
        dry_run: bool,
        base: u64,
    ) -> Result<CompareSink> {
        if let Some(at) = mounted_anywhere(path) {
            bail!(
                "OUT {} is mounted on {}: unmount it first; nothing was written",
                path.display(),
                at.display()
            );
        }
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot open OUT {}", path.display()))?;
        let mut o = OpenOptions::new();
        o.read(true).write(!dry_run);
        if meta.file_type().is_block_device() {
            o.custom_flags(rustix::fs::OFlags::EXCL.bits() as i32);
        } else if !meta.is_file() {
            bail!(
                "OUT {}: not a block device or a regular file",
                path.display()
            );
        }
        let mut file = o
            .open(path)
            .with_context(|| format!("cannot open OUT {} (is it in use?)", path.display()))?;
        if dry_run {
            crate::sys::lock::shared(&file, path, "OUT")?;
        } else {
            crate::sys::lock::exclusive(&file, path, "OUT")?;
        }
        let len = file.seek(SeekFrom::End(0))?;
        if len < size {
            bail!(
                "OUT {} is {}, smaller than the image ({}); nothing was written",
                path.display(),
                crate::text::size(len),
                crate::text::size(size)
            );
        }
        Ok(CompareSink {
            file,
            path: path.to_path_buf(),
            size,
            block_size: block_size.max(512) as usize,
            dry_run,
            states: 0,
            written: 0,
            unchanged: 0,
            base,
            runs: Vec::new(),
            runs_omitted: 0,
        })
    }

    /// Writes the runs of `data` (at byte `offset`) whose blocks differ from `old`.
    fn write_differing(&mut self, offset: u64, data: &[u8], old: &[u8]) -> Result<()> {
        let bs = self.block_size;
        let mut run: Option<usize> = None;
        let n = data.len().div_ceil(bs);
        for i in 0..=n {
            let differs = i < n && {
                let r = i * bs..((i + 1) * bs).min(data.len());
                data[r.clone()] != old[r]
            };
            match (differs, run) {
                (true, None) => run = Some(i),
                (false, Some(start)) => {
                    run = None;
                    self.written += (i - start) as u64;
                    let r = start * bs..(i * bs).min(data.len());
                    let at = offset + r.start as u64;
                    self.list_run(at, (i - start) as u64);
                    if !self.dry_run {
                        self.file.write_all_at(&data[r], at).with_context(|| {
                            format!("write error at byte {at} of OUT {}", self.path.display())
                        })?;
                    }
                }
                (false, None) => self.unchanged += u64::from(i < n),
                (true, Some(_)) => {}
            }
        }
        Ok(())
    }
}

impl CompareSink {
    /// Lists the run of `blocks` differing blocks at byte `at` of OUT.
    fn list_run(&mut self, at: u64, blocks: u64) {
        let first = at.saturating_sub(self.base) / self.block_size as u64;
        let room = self.runs.len() < MAX_RUNS_LISTED;
        match self.runs.last_mut() {
            Some((f, n)) if *f + *n == first => *n += blocks,
            _ if room => self.runs.push((first, blocks)),
            _ => self.runs_omitted += 1,
        }
    }

    /// The first runs, as `100-107, 215, …`.
    fn runs_text(&self) -> String {
        let mut shown: Vec<String> = self
            .runs
            .iter()
            .take(RUNS_IN_NOTE)
            .map(|&(f, n)| match n {
                1 => format!("{f}"),
                n => format!("{f}-{}", f + n - 1),
            })
            .collect();
        if self.runs.len() > RUNS_IN_NOTE || self.runs_omitted > 0 {
            shown.push("…".into());
        }
        shown.join(", ")
    }
}

impl Sink for CompareSink {
    fn begin_state(&mut self) -> Result<()> {
        one_state_only(&mut self.states)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let keep = self.size.saturating_sub(offset).min(data.len() as u64) as usize;
        let data = &data[..keep];
        let mut old = vec![0u8; data.len()];
        self.file
            .read_exact_at(&mut old, offset)
            .with_context(|| format!("cannot read OUT {} at byte {offset}", self.path.display()))?;
        self.write_differing(offset, data, &old)
    }

    fn end_state(&mut self) -> Result<()> {
        Ok(())
    }

    fn finish(self: Box<Self>, _table: &Table, _sync: bool) -> Result<Finished> {
        if !self.dry_run {
            self.file
                .sync_all()
                .with_context(|| format!("cannot flush OUT {}", self.path.display()))?;
        }
        let (w, u, bs) = (self.written, self.unchanged, self.block_size);
        let note = match self.dry_run {
            true if w > 0 => format!("-n: {w} blocks of {bs} bytes differ from OUT and would be written ({}), {u} are the same; nothing was written", self.runs_text()),
            true => format!("-n: {w} blocks of {bs} bytes differ from OUT and would be written, {u} are the same; nothing was written"),
            false => format!("-c: {w} blocks of {bs} bytes written (they differed from OUT), {u} unchanged (not written)"),
        };
        let doc = serde_json::json!({
            "dry_run": self.dry_run,
            "block_size": bs,
            "blocks_written": if self.dry_run { 0 } else { w },
            "blocks_differing": w,
            "blocks_unchanged": u,
            "differing_runs": self.runs,
            "differing_runs_omitted": self.runs_omitted,
        });
        Ok(Finished {
            notes: vec![note],
            json: vec![("compare".to_string(), doc)],
            ..Finished::default()
        })
    }
}

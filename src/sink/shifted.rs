//! `-O DST_OFFSET`: a raw image written at a byte offset of OUT (e2image's `-O`), as when a
//! filesystem is placed in a partition of a disk image. The inner sink is sized for the
//! offset plus the image and every write is moved by the offset. For a file, the bytes OUT
//! holds before the offset (a partition table) are copied into the new file first, so the
//! result is what e2image leaves in place — but made under a temporary name and renamed, as
//! every file output is.

use super::{Finished, SharedCluster, Sink, Table};
use anyhow::{Context, Result};
use std::fs::File;
use std::path::Path;

/// A sink whose writes land `by` bytes further.
pub struct Shifted {
    inner: Box<dyn Sink>,
    by: u64,
}

impl Shifted {
    /// `inner`, sized for `by` + the image, with its writes moved by `by` bytes.
    pub fn new(inner: Box<dyn Sink>, by: u64) -> Shifted {
        Shifted { inner, by }
    }
}

impl Sink for Shifted {
    fn begin_state(&mut self) -> Result<()> {
        self.inner.begin_state()
    }

    fn share(&mut self, clusters: Vec<SharedCluster>) -> Result<()> {
        self.inner.share(clusters)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let at = offset
            .checked_add(self.by)
            .context("-O: the offset plus the image overflows")?;
        self.inner.write(at, data)
    }

    fn end_state(&mut self) -> Result<()> {
        self.inner.end_state()
    }

    fn two_passes(&mut self, states: usize) -> bool {
        // Only raw outputs take -O, and they are written in one pass.
        let two = self.inner.two_passes(states);
        debug_assert!(!two, "-O goes with raw outputs only");
        two
    }

    fn finish(self: Box<Self>, table: &Table, sync: bool) -> Result<Finished> {
        self.inner.finish(table, sync)
    }
}

/// Copies the first `len` bytes of the existing file `old` (fewer if it is shorter; nothing
/// if it does not exist) to the start of the new file `new`.
///
/// # Errors
/// Reading `old` or writing `new` fails.
pub fn copy_prefix(old: &Path, new: &File, len: u64) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let Ok(f) = File::open(old) else {
        return Ok(());
    };
    let mut out = new;
    out.seek(SeekFrom::Start(0))?;
    std::io::copy(&mut f.take(len), &mut out).with_context(|| {
        format!(
            "-O: cannot copy the bytes before the offset from {}",
            old.display()
        )
    })?;
    out.flush()?;
    Ok(())
}

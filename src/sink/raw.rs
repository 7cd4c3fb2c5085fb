//! A sparse raw image in a regular file: the file has the filesystem's size and holds only the
//! copied, non-zero bytes at their own offsets. All-zero data is never written out: it is left
//! as a hole, as e2image does (a hole reads back as zeros).

use super::{is_zero, one_state_only, Finished, Sink, Table};
use anyhow::{Context, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Granularity of zero detection, in bytes.
const RAW_ZERO_GRANULE: usize = 4096;

/// See the module comment.
pub struct RawSink {
    file: File,
    size: u64,
    states: u32,
}

impl RawSink {
    /// Sizes the (new, empty) file to `size` bytes.
    ///
    /// # Errors
    /// The file cannot be that large (the message says the size the filesystem claims).
    pub fn new(file: File, size: u64) -> Result<RawSink> {
        file.set_len(size).with_context(|| {
            format!(
                "cannot make a raw image of {} (the size the filesystem claims)",
                crate::text::size(size)
            )
        })?;
        Ok(RawSink {
            file,
            size,
            states: 0,
        })
    }
}

impl Sink for RawSink {
    fn begin_state(&mut self) -> Result<()> {
        one_state_only(&mut self.states)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        // Never extend the image past its size (a last QCOW2 cluster may overhang it).
        let keep = self.size.saturating_sub(offset).min(data.len() as u64) as usize;
        let data = &data[..keep];
        let mut pos = 0;
        while pos < data.len() {
            let skip = data[pos..]
                .chunks(RAW_ZERO_GRANULE)
                .take_while(|c| is_zero(c))
                .count();
            pos = (pos + skip * RAW_ZERO_GRANULE).min(data.len());
            let run = data[pos..]
                .chunks(RAW_ZERO_GRANULE)
                .take_while(|c| !is_zero(c))
                .count();
            let end = (pos + run * RAW_ZERO_GRANULE).min(data.len());
            if end > pos {
                let at = offset + pos as u64;
                self.file
                    .write_all_at(&data[pos..end], at)
                    .with_context(|| format!("write error at byte {at} of the raw image"))?;
            }
            pos = end;
        }
        Ok(())
    }

    fn end_state(&mut self) -> Result<()> {
        Ok(())
    }

    fn finish(self: Box<Self>, _table: &Table, sync: bool) -> Result<Finished> {
        if sync {
            self.file.sync_all().context("cannot flush the raw image")?;
        }
        Ok(Finished::default())
    }
}

//! A raw image streamed to standard output (`e2image-rs -r SOURCE - | gzip`), as e2image does:
//! written front to back, the gaps between copied blocks as zeros, padded to the filesystem's
//! size. Nothing is written to disk, so there is no temporary file. A reader that goes away
//! (a closed pipe) is a write error, reported as such.

use super::{one_state_only, Finished, Sink, Table};
use anyhow::{Context, Result};
use std::io::{BufWriter, Stdout, Write};

/// Bytes of zeros written at once for a gap.
const ZERO_CHUNK: usize = 1 << 20;
/// Output buffer, in bytes.
const BUFFER_BYTES: usize = 1 << 20;

/// See the module comment.
pub struct StreamSink {
    out: BufWriter<Stdout>,
    /// Bytes written so far (the stream position).
    pos: u64,
    size: u64,
    states: u32,
    zeros: Vec<u8>,
}

impl StreamSink {
    /// A stream of a `size`-byte disk on standard output.
    pub fn new(size: u64) -> StreamSink {
        StreamSink {
            out: BufWriter::with_capacity(BUFFER_BYTES, std::io::stdout()),
            pos: 0,
            size,
            states: 0,
            zeros: vec![0u8; ZERO_CHUNK],
        }
    }

    /// Writes zeros up to byte `to`.
    fn zeros_to(&mut self, to: u64) -> Result<()> {
        while self.pos < to {
            let n = (to - self.pos).min(ZERO_CHUNK as u64) as usize;
            let pos = self.pos;
            self.out
                .write_all(&self.zeros[..n])
                .with_context(|| format!("cannot write byte {pos} to standard output"))?;
            self.pos += n as u64;
        }
        Ok(())
    }

    fn put(&mut self, data: &[u8]) -> Result<()> {
        self.out
            .write_all(data)
            .with_context(|| format!("cannot write byte {} to standard output", self.pos))?;
        self.pos += data.len() as u64;
        Ok(())
    }
}

impl Sink for StreamSink {
    fn begin_state(&mut self) -> Result<()> {
        one_state_only(&mut self.states)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        anyhow::ensure!(offset >= self.pos, "stream written out of order");
        let keep = self.size.saturating_sub(offset).min(data.len() as u64) as usize;
        self.zeros_to(offset)?;
        self.put(&data[..keep])
    }

    fn end_state(&mut self) -> Result<()> {
        Ok(())
    }

    fn finish(mut self: Box<Self>, _table: &Table, _sync: bool) -> Result<Finished> {
        let size = self.size;
        self.zeros_to(size)?;
        self.out
            .flush()
            .context("cannot write to standard output")?;
        Ok(Finished::default())
    }
}

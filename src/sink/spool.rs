//! Where a compressed QCOW2 stream keeps its payloads between its two passes: the payloads'
//! lengths go into the stream's tables, which come before every data byte, so the payloads
//! made while planning are kept until they are written. In memory up to [`MEMORY_BYTES`],
//! then in an unlinked temporary file in `$TMPDIR` (nothing is left behind, whatever happens).

use anyhow::{Context, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Payload bytes kept in memory before the spool spills to a temporary file: 256 MiB.
pub const MEMORY_BYTES: usize = 256 << 20;

/// [`MEMORY_BYTES`], or with the `fault-injection` feature (tests) the
/// `E2IMAGE_RS_SPOOL_MEMORY` bytes given, so that a small stream spills too.
fn memory_limit() -> usize {
    let forced = cfg!(feature = "fault-injection")
        .then(|| std::env::var("E2IMAGE_RS_SPOOL_MEMORY").ok()?.parse().ok())
        .flatten();
    forced.unwrap_or(MEMORY_BYTES)
}

/// Payloads appended in order and read back in the same order.
#[derive(Default)]
pub struct Spool {
    memory: Vec<u8>,
    file: Option<File>,
    /// Bytes in the file.
    spilled: u64,
    /// Bytes appended in all.
    len: u64,
}

impl Spool {
    /// Appends `bytes`; returns where they start.
    ///
    /// # Errors
    /// The temporary file cannot be made or written.
    pub fn push(&mut self, bytes: &[u8]) -> Result<u64> {
        let at = self.len;
        if self.file.is_none() && self.memory.len() + bytes.len() <= memory_limit() {
            self.memory.extend_from_slice(bytes);
        } else {
            let f = match &mut self.file {
                Some(f) => f,
                None => self.file.insert(
                    tempfile::tempfile()
                        .context("cannot make a temporary file for the compressed stream")?,
                ),
            };
            f.write_all_at(bytes, self.spilled)
                .context("cannot write the compressed stream's temporary file")?;
            self.spilled += bytes.len() as u64;
        }
        self.len += bytes.len() as u64;
        Ok(at)
    }

    /// The `len` bytes appended at `at`.
    ///
    /// # Errors
    /// A read error of the temporary file; a range never appended.
    pub fn read(&self, at: u64, len: u32) -> Result<Vec<u8>> {
        let n = self.memory.len() as u64;
        let end = at
            .checked_add(u64::from(len))
            .context("spool range overflow")?;
        anyhow::ensure!(
            end <= self.len,
            "spool range {at}+{len} past its {} bytes",
            self.len
        );
        if end <= n {
            return Ok(self.memory[at as usize..end as usize].to_vec());
        }
        anyhow::ensure!(at >= n, "a payload split between memory and file");
        let f = self.file.as_ref().context("no spool file")?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, at - n)
            .context("cannot read the compressed stream's temporary file")?;
        Ok(buf)
    }

    /// Bytes that went to the temporary file (0: all in memory).
    pub fn spilled(&self) -> u64 {
        self.spilled
    }
}

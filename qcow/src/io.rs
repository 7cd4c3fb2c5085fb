//! Positional file I/O: checked reads for the reader, and the writer's buffered output file.
//!
//! Design: all I/O is positional (`FileExt::read_exact_at` / `write_all_at`), so readers can be
//! shared between threads and the writer never seeks. [`OutFile`] collects the writer's strictly
//! sequential appends in one large buffer (flushed with a single `pwrite` when full, and bypassed
//! for writes larger than the buffer), serves reads of not-yet-flushed bytes from the buffer, and
//! patches in-place rewrites (COPIED fix-ups, the header) wherever the bytes currently are.
//! Ahead of the appends, the file's blocks are allocated in [`PREALLOC_STEP`] steps with
//! `fallocate(ZERO_RANGE | KEEP_SIZE)` (as `qemu-img convert` does): writing into allocated,
//! unwritten extents is cheaper for the filesystem than delayed allocation. What is allocated
//! past the final length is released in [`OutFile::finish`].

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;

use crate::error::Error;

/// Reads exactly `buf.len()` bytes at host byte `offset`. A short file is reported as
/// [`Error::Corrupt`] (a structure points past the end of the file), other failures as
/// [`Error::Io`] naming `op`.
pub(crate) fn read_exact_at(
    file: &File,
    buf: &mut [u8],
    offset: u64,
    op: &'static str,
) -> Result<(), Error> {
    file.read_exact_at(buf, offset).map_err(|e| {
        if e.kind() == ErrorKind::UnexpectedEof {
            Error::corrupt(
                format!("{op}: {} bytes extend past the end of the file", buf.len()),
                offset,
            )
        } else {
            Error::Io {
                op,
                offset,
                source: e,
            }
        }
    })
}

/// Default capacity of the writer's output buffer in bytes: 8 MiB, large enough that data
/// clusters reach the disk in few large writes, small enough for the 64 MiB RSS budget.
pub(crate) const OUT_BUFFER_BYTES: usize = 8 << 20;

/// Bytes allocated ahead of the write cursor at a time.
const PREALLOC_STEP: u64 = 32 << 20;

/// Appends of at least this many bytes skip the buffer and go to the file directly: they are
/// already large writes, and copying them would cost a memcpy of every data byte.
const DIRECT_WRITE_BYTES: usize = 256 << 10;

/// A file written front to back through a large buffer.
#[derive(Debug)]
pub(crate) struct OutFile {
    file: File,
    /// Pending bytes, to be written at `buf_offset`.
    buf: Vec<u8>,
    buf_offset: u64,
    cap: usize,
    /// End of the range allocated ahead with `fallocate`; `None` once the filesystem refused.
    prealloc_end: Option<u64>,
}

impl OutFile {
    /// Wraps `file`; the first append is expected at `start` (bytes).
    pub(crate) fn new(file: File, start: u64, cap: usize) -> OutFile {
        OutFile {
            file,
            buf: Vec::with_capacity(cap),
            buf_offset: start,
            cap,
            prealloc_end: Some(0),
        }
    }

    fn buf_end(&self) -> u64 {
        self.buf_offset + self.buf.len() as u64
    }

    /// Writes `data` at host byte `offset`, which is normally the end of the previous append.
    pub(crate) fn append(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
        let direct = data.len() >= self.cap.min(DIRECT_WRITE_BYTES);
        if direct || offset != self.buf_end() || self.buf.len() + data.len() > self.cap {
            self.flush()?;
            self.buf_offset = offset;
        }
        if direct {
            self.preallocate(offset + data.len() as u64);
            self.buf_offset = offset + data.len() as u64;
            return self
                .file
                .write_all_at(data, offset)
                .map_err(Error::io("writing clusters", offset));
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Allocates the file's blocks up to at least `end` bytes, a step at a time. Only an
    /// optimisation: a filesystem without `fallocate` support turns it off.
    fn preallocate(&mut self, end: u64) {
        use rustix::fs::{fallocate, FallocateFlags};
        let Some(mut at) = self.prealloc_end else {
            return;
        };
        while at < end {
            let flags = FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE;
            if fallocate(&self.file, flags, at, PREALLOC_STEP).is_err() {
                self.prealloc_end = None;
                return;
            }
            at += PREALLOC_STEP;
        }
        self.prealloc_end = Some(at);
    }

    /// Writes the pending buffer to the file.
    pub(crate) fn flush(&mut self) -> Result<(), Error> {
        if !self.buf.is_empty() {
            self.preallocate(self.buf_end());
            let at = self.buf_offset;
            self.file
                .write_all_at(&self.buf, at)
                .map_err(Error::io("writing clusters", at))?;
            self.buf_offset = self.buf_end();
            self.buf.clear();
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at host byte `offset`, from the pending buffer or the file.
    pub(crate) fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        let end = offset + buf.len() as u64;
        if offset >= self.buf_offset && end <= self.buf_end() {
            let start = (offset - self.buf_offset) as usize;
            buf.copy_from_slice(&self.buf[start..start + buf.len()]);
            return Ok(());
        }
        if end > self.buf_offset && offset < self.buf_end() {
            self.flush()?;
        }
        read_exact_at(&self.file, buf, offset, "reading back written clusters")
    }

    /// Overwrites already-appended bytes at host byte `offset` (in the buffer or the file).
    pub(crate) fn rewrite_at(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
        let end = offset + data.len() as u64;
        if offset >= self.buf_offset && end <= self.buf_end() {
            let start = (offset - self.buf_offset) as usize;
            self.buf[start..start + data.len()].copy_from_slice(data);
            return Ok(());
        }
        if end > self.buf_offset && offset < self.buf_end() {
            self.flush()?;
        }
        self.file
            .write_all_at(data, offset)
            .map_err(Error::io("rewriting a table", offset))
    }

    /// Flushes, sets the file length to `len` bytes, then writes `header` at offset 0 (last, so
    /// an interrupted run leaves a file without the magic) and returns the file (not synced).
    pub(crate) fn finish(mut self, len: u64, header: &[u8]) -> Result<File, Error> {
        self.flush()?;
        if let Some(end) = self.prealloc_end.filter(|&e| e > len) {
            use rustix::fs::{fallocate, FallocateFlags};
            // Release the blocks allocated ahead past the final length (best effort: the
            // truncation below releases them too on filesystems that honour it).
            let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            let _ = fallocate(&self.file, flags, len, end - len);
        }
        self.file
            .set_len(len)
            .map_err(Error::io("setting the file length", len))?;
        self.file
            .write_all_at(header, 0)
            .map_err(Error::io("writing the header", 0))?;
        Ok(self.file)
    }
}

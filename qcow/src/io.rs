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
//!
//! An [`OutFile`] over an existing image ([`OutFile::in_place`], used by the editor) writes only
//! where it is told (free clusters and past the end), never preallocates (a zeroed range could
//! hold live data), and reports every physical operation to an optional hook first
//! ([`WriteEvent`]): the editor's tests stop an edit at any of them, as a crash would.

use std::fmt;
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use crate::error::Error;
use crate::sums::ClusterSums;

/// One physical operation on an image file, reported to a write hook before it happens
/// ([`Editor::set_write_hook`](crate::Editor::set_write_hook)). Offsets and lengths in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteEvent {
    /// `pwrite` of `len` bytes at host byte `offset`.
    Write {
        /// Host byte offset.
        offset: u64,
        /// Bytes written.
        len: u64,
    },
    /// `fsync` of the file.
    Sync,
    /// `ftruncate` to `len` bytes.
    Truncate {
        /// New file length.
        len: u64,
    },
    /// `fallocate(PUNCH_HOLE | KEEP_SIZE)` of `len` bytes at `offset`.
    PunchHole {
        /// Host byte offset.
        offset: u64,
        /// Bytes deallocated.
        len: u64,
    },
}

/// A hook called before every physical operation; an `Err` stops the operation (and the edit).
pub(crate) type WriteHook = Box<dyn FnMut(WriteEvent) -> Result<(), Error> + Send>;

/// The optional hook of an [`OutFile`]: in a mutex (only ever reached through `&mut`, so never
/// locked) to keep [`OutFile`] `Sync`, and wrapped so that it can derive `Debug`.
#[derive(Default)]
struct Hook(Mutex<Option<WriteHook>>);

impl Hook {
    fn call(&mut self, event: WriteEvent) -> Result<(), Error> {
        let hook = self
            .0
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match hook {
            Some(hook) => hook(event),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hook")
    }
}

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
    /// End of the range allocated ahead with `fallocate`; `None` once the filesystem refused
    /// (or for an existing image, where preallocation is off).
    prealloc_end: Option<u64>,
    hook: Hook,
    /// Bytes physically written so far.
    written: u64,
    /// The checksums of the clusters written, when the image gets a cluster checksum table.
    sums: Option<ClusterSums>,
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
            hook: Hook::default(),
            written: 0,
            sums: None,
        }
    }

    /// Wraps an existing image `file` for in-place edits: no preallocation, appends anywhere.
    pub(crate) fn in_place(file: File, cap: usize) -> OutFile {
        OutFile {
            prealloc_end: None,
            ..OutFile::new(file, 0, cap)
        }
    }

    /// Installs the hook called before every physical operation.
    pub(crate) fn set_hook(&mut self, hook: WriteHook) {
        self.hook = Hook(Mutex::new(Some(hook)));
    }

    /// Keeps the CRC-32C of every cluster written from now on (clusters of
    /// `1 << cluster_bits` bytes), starting from the `base` table of an existing image.
    pub(crate) fn keep_sums(&mut self, cluster_bits: u32, base: Vec<u32>) {
        self.sums = Some(ClusterSums::new(cluster_bits, base));
    }

    /// The checksums kept, if [`OutFile::keep_sums`] was called.
    pub(crate) fn take_sums(&mut self) -> Option<ClusterSums> {
        self.sums.take()
    }

    /// Bytes physically written so far (data, tables, header).
    pub(crate) fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Reports `event` to the hook, if any.
    fn before(&mut self, event: WriteEvent) -> Result<(), Error> {
        self.hook.call(event)
    }

    /// `pwrite` of `data` at `offset`, reported to the hook first.
    fn write_at(&mut self, data: &[u8], offset: u64, op: &'static str) -> Result<(), Error> {
        self.before(WriteEvent::Write {
            offset,
            len: data.len() as u64,
        })?;
        self.file
            .write_all_at(data, offset)
            .map_err(Error::io(op, offset))?;
        self.written += data.len() as u64;
        if let Some(sums) = &mut self.sums {
            sums.record(offset, data);
        }
        Ok(())
    }

    /// Writes `data` at host byte `offset` right away (pending appends stay pending).
    pub(crate) fn write_now(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
        self.write_at(data, offset, "writing the header")
    }

    /// Flushes the pending appends and `fsync`s the file.
    pub(crate) fn sync(&mut self) -> Result<(), Error> {
        self.flush()?;
        self.before(WriteEvent::Sync)?;
        self.file
            .sync_all()
            .map_err(Error::io("syncing the image", 0))
    }

    /// The file's current length in bytes (after flushing pending appends).
    pub(crate) fn len(&mut self) -> Result<u64, Error> {
        self.flush()?;
        Ok(self
            .file
            .metadata()
            .map_err(Error::io("reading the file size", 0))?
            .len())
    }

    /// Sets the file length to `len` bytes (pending appends must have been flushed).
    pub(crate) fn set_len(&mut self, len: u64) -> Result<(), Error> {
        self.before(WriteEvent::Truncate { len })?;
        self.file
            .set_len(len)
            .map_err(Error::io("setting the file length", len))
    }

    /// Deallocates `len` bytes at `offset`, keeping the file size (best effort: a filesystem
    /// without hole punching keeps the blocks; only the hook's error is returned).
    pub(crate) fn punch_hole(&mut self, offset: u64, len: u64) -> Result<(), Error> {
        use rustix::fs::{fallocate, FallocateFlags};
        self.before(WriteEvent::PunchHole { offset, len })?;
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        let _ = fallocate(&self.file, flags, offset, len);
        Ok(())
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
            return self.write_at(data, offset, "writing clusters");
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
            let buf = std::mem::take(&mut self.buf);
            let result = self.write_at(&buf, at, "writing clusters");
            self.buf = buf;
            result?;
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

    /// Like [`OutFile::read_at`], but bytes past the end of what was written so far read as
    /// zeros (the last sector of a compressed payload may lie past the file's current end).
    pub(crate) fn read_at_padded(&mut self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        let end = offset + buf.len() as u64;
        if offset >= self.buf_offset && end <= self.buf_end() {
            return self.read_at(buf, offset);
        }
        self.flush()?;
        let mut done = 0;
        while done < buf.len() {
            let n = self
                .file
                .read_at(&mut buf[done..], offset + done as u64)
                .map_err(Error::io("reading back written clusters", offset))?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf[done..].fill(0);
        Ok(())
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
        self.write_at(data, offset, "rewriting a table")
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

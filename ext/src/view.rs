//! Block views: read-only access to one state of a filesystem.
//!
//! A view reads bytes at absolute offsets of the filesystem's block device. The walker only
//! ever reads through this trait, so the same walk runs on a live device, an image file, a
//! reconstructed snapshot or a QCOW2 image. Reads past the end of the backing store return
//! zeros (a truncated image reads like e2fsprogs' unix_io does); [`BlockView::size`] lets the
//! caller detect that case.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A read-only view of one state of a filesystem's block device.
///
/// Implementations must be usable from several threads at once (the walker and the copy
/// pipeline read in parallel).
pub trait BlockView: Sync {
    /// Reads `buf.len()` bytes at byte `offset` of the device. Bytes past [`size`](Self::size)
    /// read as zeros.
    ///
    /// # Errors
    /// An I/O error of the backing store.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Size of the backing store, in bytes.
    fn size(&self) -> u64;

    /// Reads the blocks `[first, first + buf.len() / block_size)` of `block_size` bytes each.
    ///
    /// # Errors
    /// `InvalidInput` if `buf.len()` is not a multiple of `block_size` or the byte offset
    /// overflows; otherwise as [`read_at`](Self::read_at).
    fn read_blocks(&self, block_size: u32, first: u64, buf: &mut [u8]) -> io::Result<()> {
        if block_size == 0 || !buf.len().is_multiple_of(block_size as usize) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "partial block read",
            ));
        }
        let offset = first
            .checked_mul(u64::from(block_size))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "block offset overflows"))?;
        self.read_at(offset, buf)
    }
}

impl<T: BlockView + ?Sized> BlockView for &T {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(offset, buf)
    }
    fn size(&self) -> u64 {
        (**self).size()
    }
}

/// A file or block device opened read-only.
#[derive(Debug)]
pub struct FileView {
    file: File,
    /// Byte offset in the file where the view starts (a filesystem inside a disk image).
    offset: u64,
    size: u64,
}

impl FileView {
    /// Opens `path` read-only (never for writing) and records its size in bytes (for a block
    /// device, the device size).
    ///
    /// # Errors
    /// The `open` or size query failure.
    pub fn open(path: &Path) -> io::Result<FileView> {
        let file = File::open(path)?;
        FileView::from_file(file)
    }

    /// Wraps an already opened file; the caller guarantees it was opened read-only.
    ///
    /// # Errors
    /// Failure to query the size.
    pub fn from_file(file: File) -> io::Result<FileView> {
        FileView::from_file_at(file, 0)
    }

    /// Wraps an already opened file (opened read-only by the caller) as a view that starts at
    /// byte `offset` of it (e2image's `-o`: a filesystem inside a partitioned disk image); its
    /// size is what follows the offset.
    ///
    /// # Errors
    /// Failure to query the size; [`io::ErrorKind::InvalidInput`] for an offset past the end.
    pub fn from_file_at(file: File, offset: u64) -> io::Result<FileView> {
        use std::io::{Seek, SeekFrom};
        let mut handle = &file;
        let len = handle.seek(SeekFrom::End(0))?;
        let size = len.checked_sub(offset).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("offset {offset} is past the end ({len} bytes)"),
            )
        })?;
        Ok(FileView { file, offset, size })
    }

    /// The underlying file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl BlockView for FileView {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let avail = self.size.saturating_sub(offset);
        let n = usize::try_from(avail.min(buf.len() as u64)).unwrap_or(buf.len());
        let (head, tail) = buf.split_at_mut(n);
        tail.fill(0);
        let mut done = 0;
        while done < head.len() {
            let at = self
                .offset
                .checked_add(offset + done as u64)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset overflow"))?;
            match self.file.read_at(&mut head[done..], at) {
                Ok(0) => {
                    head[done..].fill(0);
                    break;
                }
                Ok(k) => done += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.size
    }
}

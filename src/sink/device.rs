//! A raw image written onto a block device in place (`e2image-rs -r SOURCE /dev/sdX`), as a
//! dump is restored onto a disk. The device is opened exclusively (O_EXCL: the kernel refuses
//! while it is mounted or held by another exclusive user) and refused when mounted or smaller
//! than the filesystem. Every copied byte is written, zeros included: unlike a new file, the
//! device holds old bytes wherever nothing is written. It is flushed at the end.

use super::{one_state_only, Finished, Sink, Table};
use crate::sys::mounted::mounted_anywhere;
use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// See the module comment.
pub struct DeviceSink {
    file: File,
    path: PathBuf,
    size: u64,
    states: u32,
}

impl DeviceSink {
    /// Opens the block device `path` for a `size`-byte filesystem.
    ///
    /// # Errors
    /// Mounted, busy (opened exclusively elsewhere) or smaller than `size`.
    pub fn open(path: &Path, size: u64) -> Result<DeviceSink> {
        if let Some(at) = mounted_anywhere(path) {
            bail!(
                "OUT {} is mounted on {}: unmount it first; nothing was written",
                path.display(),
                at.display()
            );
        }
        let mut file = OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
            .open(path)
            .with_context(|| {
                format!(
                    "cannot open OUT {} exclusively (is it in use?)",
                    path.display()
                )
            })?;
        let dev_size = file.seek(SeekFrom::End(0))?;
        if dev_size < size {
            bail!(
                "OUT {} is {}, smaller than the filesystem ({}); nothing was written",
                path.display(),
                crate::text::size(dev_size),
                crate::text::size(size)
            );
        }
        Ok(DeviceSink {
            file,
            path: path.to_path_buf(),
            size,
            states: 0,
        })
    }
}

impl Sink for DeviceSink {
    fn begin_state(&mut self) -> Result<()> {
        one_state_only(&mut self.states)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let keep = self.size.saturating_sub(offset).min(data.len() as u64) as usize;
        self.file
            .write_all_at(&data[..keep], offset)
            .with_context(|| format!("write error at byte {offset} of {}", self.path.display()))
    }

    fn end_state(&mut self) -> Result<()> {
        Ok(())
    }

    fn finish(self: Box<Self>, _table: &Table, _sync: bool) -> Result<Finished> {
        self.file
            .sync_all()
            .with_context(|| format!("cannot flush {}", self.path.display()))?;
        Ok(Finished::default())
    }
}

//! The device or image file a rollback or apply writes to (its filesystem starting at byte 0,
//! or at the `-o` offset: a partition of a disk image; every offset below is one inside the
//! filesystem, moved by it): refused when mounted, opened exclusively when it is a block
//! device, locked (flock) against other e2image-rs runs, read and written in whole filesystem
//! blocks, and discarded (zeroed deterministically).
//!
//! While a rollback or apply is part-way, the target's primary superblock is the "not clean"
//! variant ([`not_clean`]): `s_state` without EXT2_VALID_FS, and `s_last_mounted` naming the
//! patch (`e2image-rs rollback: PATH` or `e2image-rs apply: PATH`, cut from the left to fit
//! its 64 bytes), so that a later run (or a person reading `dumpe2fs`) can tell which patch
//! finishes or rewinds it.
//!
//! A discard ([`Target::discard`]) leaves zeros that read back the same on every later read,
//! so that `--resume` and `--undo` can tell a discarded block from any other: on a block
//! device BLKZEROOUT, on an image file a hole punched (`FALLOC_FL_PUNCH_HOLE |
//! FALLOC_FL_KEEP_SIZE`); where either is not supported, zeros are written.

use super::command::Command;
use crate::sys::mounted::mounted_anywhere;
use anyhow::{bail, Context, Result};
use ext::{SuperblockBytes, EXT2_VALID_FS, LAST_MOUNTED_MAX, SUPERBLOCK_SIZE};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// `BLKZEROOUT`, `_IO(0x12, 127)`: zero a byte range of a block device (its argument points
/// at two u64, start and length, both multiples of 512).
const BLKZEROOUT: rustix::ioctl::Opcode = rustix::ioctl::opcode::none(0x12, 127);
/// Zeros written at once where a discard falls back to writing.
const ZERO_PIECE_BYTES: u64 = 1 << 20;

/// An opened rollback or apply target: the filesystem that starts `offset` bytes into a
/// device or image file (`-o`: a partition of a disk image); every offset given to its
/// methods is a byte offset into the filesystem, moved by `offset` on the file.
pub struct Target {
    file: File,
    path: PathBuf,
    /// Bytes from `offset` to the end of the file or device.
    size: u64,
    /// Where the filesystem starts, in bytes from the start of the file or device.
    offset: u64,
    block_device: bool,
}

/// How a discard was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discard {
    /// BLKZEROOUT on a block device, or a hole punched in a file.
    Discarded,
    /// Neither is supported here: zeros were written.
    ZerosWritten,
}

impl Target {
    /// Opens `path` for reading, or for reading and writing when `write`; refuses a mounted
    /// target (any mount, read-only included) and opens block devices with O_EXCL, which the
    /// kernel refuses while anything else holds the device exclusively (a mount included).
    ///
    /// The filesystem starts `offset` bytes into the file or device.
    ///
    /// # Errors
    /// Mounted or busy target, an offset at or past its end, I/O errors.
    pub fn open(path: &Path, write: bool, offset: u64) -> Result<Target> {
        let t = Target::open_unlocked(path, write, offset)?;
        if write {
            crate::sys::lock::exclusive(&t.file, path, "the target")?;
        } else {
            crate::sys::lock::shared(&t.file, path, "the target")?;
        }
        Ok(t)
    }

    fn open_unlocked(path: &Path, write: bool, offset: u64) -> Result<Target> {
        if let Some(at) = mounted_anywhere(path) {
            bail!(
                "{} is mounted on {}: unmount it first; nothing was written",
                path.display(),
                at.display()
            );
        }
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut o = OpenOptions::new();
        o.read(true).write(write);
        if meta.file_type().is_block_device() {
            o.custom_flags(rustix::fs::OFlags::EXCL.bits() as i32);
        } else if !meta.is_file() {
            bail!("{}: not a block device or a regular file", path.display());
        }
        let mut file = o.open(path).with_context(|| {
            format!(
                "cannot open {} {}",
                path.display(),
                if write { "for writing" } else { "" }
            )
        })?;
        let len = file.seek(SeekFrom::End(0))?;
        let Some(size) = len.checked_sub(offset).filter(|&s| s > 0) else {
            bail!(
                "-o {offset}: {} is only {len} bytes, so no filesystem starts at byte {offset} of it",
                path.display()
            );
        };
        Ok(Target {
            file,
            path: path.to_path_buf(),
            size,
            offset,
            block_device: meta.file_type().is_block_device(),
        })
    }

    /// Size of the target in bytes, from where the filesystem starts to the end of the file.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Where the filesystem starts, in bytes from the start of the file or device (`-o`).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The ` -o N` to repeat in the commands a message suggests (empty at offset 0).
    pub fn offset_flag(&self) -> String {
        offset_flag(self.offset)
    }

    /// `offset` bytes into the filesystem, as a byte offset of the file or device.
    fn at(&self, offset: u64) -> Result<u64> {
        offset.checked_add(self.offset).with_context(|| {
            format!(
                "{}: byte {offset} of the filesystem at byte {} overflows",
                self.path.display(),
                self.offset
            )
        })
    }

    /// The path it was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads `buf.len()` bytes at byte `offset` of the filesystem.
    ///
    /// # Errors
    /// I/O errors, naming the offset.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(buf, self.at(offset)?)
            .with_context(|| format!("cannot read {} at byte {offset}", self.path.display()))
    }

    /// Writes `buf` at byte `offset` of the filesystem.
    ///
    /// # Errors
    /// I/O errors, naming the offset.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.file
            .write_all_at(buf, self.at(offset)?)
            .with_context(|| format!("cannot write {} at byte {offset}", self.path.display()))
    }

    /// Zeros `len` bytes at byte `offset` of the filesystem (both multiples of 512) by
    /// discarding them (see the module comment); falls back to writing zeros where discarding
    /// is not supported, or on a block device where the filesystem's offset is not a multiple
    /// of 512 (BLKZEROOUT takes whole sectors).
    ///
    /// # Errors
    /// I/O errors, naming the offset.
    #[allow(unsafe_code)] // BLKZEROOUT has no safe wrapper in rustix
    pub fn discard(&self, offset: u64, len: u64) -> Result<Discard> {
        let at = self.at(offset)?;
        let done = if self.block_device && !self.offset.is_multiple_of(512) {
            Err(rustix::io::Errno::INVAL)
        } else if self.block_device {
            // SAFETY: BLKZEROOUT reads two u64 (start, length) through the pointer that
            // `Setter` passes, and writes nothing back.
            unsafe {
                let ctl = rustix::ioctl::Setter::<BLKZEROOUT, [u64; 2]>::new([at, len]);
                rustix::ioctl::ioctl(&self.file, ctl)
            }
        } else {
            use rustix::fs::FallocateFlags as F;
            rustix::fs::fallocate(&self.file, F::PUNCH_HOLE | F::KEEP_SIZE, at, len)
        };
        match done {
            Ok(()) => Ok(Discard::Discarded),
            Err(e) if unsupported(e) => {
                self.write_zeros(offset, len)?;
                Ok(Discard::ZerosWritten)
            }
            Err(e) => Err(std::io::Error::from(e)).with_context(|| {
                format!(
                    "cannot discard {len} bytes of {} at byte {offset}",
                    self.path.display()
                )
            }),
        }
    }

    fn write_zeros(&self, offset: u64, len: u64) -> Result<()> {
        let zeros = vec![0u8; len.min(ZERO_PIECE_BYTES) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ZERO_PIECE_BYTES);
            self.write_at(offset + done, &zeros[..n as usize])?;
            done += n;
        }
        Ok(())
    }

    /// Flushes written data to stable storage.
    ///
    /// # Errors
    /// I/O errors.
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_all()
            .with_context(|| format!("cannot flush {}", self.path.display()))
    }

    /// A read-only view of the filesystem (from its offset) for the filesystem reader.
    ///
    /// # Errors
    /// The file cannot be duplicated, or its size read.
    pub fn view(&self) -> Result<ext::FileView> {
        Ok(ext::FileView::from_file_at(
            self.file.try_clone()?,
            self.offset,
        )?)
    }
}

/// ` -o N`, the option a suggested command needs for a filesystem at byte `offset` of its
/// target; empty at offset 0.
pub fn offset_flag(offset: u64) -> String {
    match offset {
        0 => String::new(),
        o => format!(" -o {o}"),
    }
}

/// True for the errors that say a discard is not supported by this file or device.
fn unsupported(e: rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    [Errno::OPNOTSUPP, Errno::NOTTY, Errno::NOSYS, Errno::INVAL].contains(&e)
}

/// The superblock block `block` with `s_state` saying "not cleanly unmounted" (EXT2_VALID_FS
/// cleared), `s_last_mounted` naming `patch` of `command` (see the module comment) and, with
/// metadata_csum, `s_checksum` recomputed. `sb_at` is the superblock's byte offset inside
/// the block.
///
/// # Errors
/// The block does not hold 1024 bytes at `sb_at`.
pub fn not_clean(block: &[u8], sb_at: usize, patch: &Path, command: Command) -> Result<Vec<u8>> {
    let mut b = block.to_vec();
    let at = sb_at..sb_at.saturating_add(SUPERBLOCK_SIZE);
    let field = b.get_mut(at).context("the superblock block is too short")?;
    let mut sb = SuperblockBytes::new(field)?;
    sb.clear_state_bits(EXT2_VALID_FS);
    sb.set_last_mounted(part_way_mark(patch, command).as_bytes())?;
    sb.update_checksum();
    Ok(b)
}

/// `e2image-rs rollback: PATH` (or `apply`) in at most 63 bytes (NUL-terminated field): the
/// path is cut from the left, at a character boundary, marked with `…`.
fn part_way_mark(patch: &Path, command: Command) -> String {
    let prefix = command.mark();
    let path = std::path::absolute(patch).unwrap_or_else(|_| patch.to_path_buf());
    let path = path.display().to_string();
    let room = LAST_MOUNTED_MAX - prefix.len();
    if path.len() <= room {
        return format!("{prefix}{path}");
    }
    let mut cut = path.len() + '…'.len_utf8() - room;
    while !path.is_char_boundary(cut) {
        cut += 1;
    }
    format!("{prefix}…{}", &path[cut..])
}

/// A part-way mark found in a target's superblock: which command left it, naming which patch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartWay {
    /// The command whose interrupted run left the mark.
    pub command: Command,
    /// The patch that finishes or rewinds it (as the mark names it).
    pub patch: String,
}

/// The patch a part-way rollback or apply left its mark for in the superblock `sb` (1024
/// bytes), if the filesystem is marked not clean by one.
pub fn part_way(sb: &[u8]) -> Option<PartWay> {
    let sb = SuperblockBytes::new(sb.get(..SUPERBLOCK_SIZE)?).ok()?;
    if sb.s_state() & EXT2_VALID_FS != 0 {
        return None;
    }
    let text = String::from_utf8_lossy(sb.s_last_mounted());
    Command::ALL.into_iter().find_map(|command| {
        text.strip_prefix(command.mark()).map(|p| PartWay {
            command,
            patch: p.to_string(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_way_mark_round_trips_and_fits() {
        let mut sb = vec![0u8; SUPERBLOCK_SIZE];
        SuperblockBytes::new(&mut sb[..])
            .unwrap()
            .set_state_bits(EXT2_VALID_FS);
        let long = format!("/{}/patch", "d".repeat(100));
        for command in Command::ALL {
            for p in ["/tmp/p1", long.as_str()] {
                let b = not_clean(&sb, 0, Path::new(p), command).unwrap();
                let got = part_way(&b).unwrap();
                assert_eq!(got.command, command);
                assert!(p.ends_with(got.patch.trim_start_matches('…')), "{got:?}");
                let mark = SuperblockBytes::new(&b[..]).unwrap().s_last_mounted().len();
                assert!(mark <= LAST_MOUNTED_MAX, "{mark} bytes");
            }
        }
        assert_eq!(part_way(&sb), None);
    }
}

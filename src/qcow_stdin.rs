//! A QCOW2 image on standard input (`e2image-rs -r - OUT`, `e2image-rs apply - TARGET`): read
//! in one pass when it is laid out for it (a stream of `e2image-rs -Q … -`: tables first, data
//! in host order), else spooled to an unlinked temporary file in `$TMPDIR` first and read from
//! there (a QEMU-made image interleaves its tables with its data). Standard input that is a
//! regular file (`< IMAGE`) is read in place.

use anyhow::{Context, Result};
use qcow::{StreamImage, StreamOpen, StreamOptions};
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::os::fd::AsFd;

/// Bytes read from standard input at a time.
const READ_BUFFER_BYTES: usize = 1 << 20;

/// The name of standard input in messages.
pub const STDIN: &str = "standard input";

/// The stream read from standard input.
pub type Input = BufReader<File>;

/// A QCOW2 image on standard input, opened.
pub enum StdinImage {
    /// Tables read; the data follows on the stream, in host order.
    Stream(Box<StreamImage<Input>>),
    /// A file holding the whole image: standard input itself when it is a regular file, or the
    /// temporary file it was spooled to (with the note saying so).
    File(File, Option<String>),
}

/// Opens the QCOW2 image on standard input (see the module comment).
///
/// # Errors
/// Standard input cannot be read, holds no QCOW2 image, ends inside its tables (the message
/// says after how many bytes); the spool cannot be written.
pub fn open() -> Result<StdinImage> {
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot duplicate standard input")?;
    let file = File::from(fd);
    if file.metadata().is_ok_and(|m| m.is_file()) {
        return Ok(StdinImage::File(file, None));
    }
    let input = BufReader::with_capacity(READ_BUFFER_BYTES, file);
    let opened = StreamImage::open(input, StreamOptions::default())
        .with_context(|| format!("{STDIN}: not a usable QCOW2 image"))?;
    match opened {
        StreamOpen::OnePass(img) => Ok(StdinImage::Stream(img)),
        StreamOpen::Spool {
            consumed,
            input,
            reason,
        } => spool(&consumed, input, &reason),
    }
}

/// Writes `consumed` and the rest of `input` to an unlinked temporary file in `$TMPDIR`;
/// returns it with the note saying why and how large it is.
///
/// # Errors
/// The temporary file cannot be created or written; standard input cannot be read.
pub fn spool(consumed: &[u8], mut input: impl Read, reason: &str) -> Result<StdinImage> {
    let dir = std::env::temp_dir();
    let mut f = tempfile::tempfile_in(&dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    f.write_all(consumed)
        .with_context(|| format!("cannot spool {STDIN} to {}", dir.display()))?;
    let rest = std::io::copy(&mut input, &mut f)
        .with_context(|| format!("cannot spool {STDIN} to {}", dir.display()))?;
    f.flush()?;
    let total = consumed.len() as u64 + rest;
    let note = format!(
        "{STDIN} is not laid out to be read in one pass ({reason}): spooled its {} to an unlinked temporary file in {} first",
        crate::text::size(total),
        dir.display()
    );
    Ok(StdinImage::File(f, Some(note)))
}

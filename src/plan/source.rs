//! The source part of the export plan: SOURCE opened read-only once, what it holds (a
//! filesystem or a QCOW2 image), how its filesystem is opened (`-b`/`-B`, `-f`, the external
//! journal) and which view of it is exported (as on disk, replayed, one snapshot).

use crate::qcow_view::open_image_file;
use crate::sys::identity::Identity;
use anyhow::{bail, Context, Result};
use ext::FileView;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// What SOURCE holds, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// An ext2/3/4 filesystem (an image file or a block device).
    Filesystem,
    /// A QCOW2 image (its states are read through its layers).
    Qcow2,
}

/// Which view of SOURCE is exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceView {
    /// The current state as it is on disk (a journal that needs recovery is copied with
    /// every block its replay needs).
    Plain,
    /// The current state with its journal replayed in memory (`--replay`).
    Replayed,
    /// One snapshot (`--from-snapshot`): an internal snapshot of a QCOW2 SOURCE or a
    /// filesystem (next3) snapshot, by name or id; with `replayed`, its journal replayed.
    Snapshot {
        /// The snapshot's name or id.
        name: String,
        /// Its journal is replayed in memory.
        replayed: bool,
    },
}

impl SourceView {
    /// The view for `--from-snapshot` and `--replay`.
    pub fn of(from_snapshot: Option<&str>, replay: bool) -> SourceView {
        match (from_snapshot, replay) {
            (Some(n), replayed) => SourceView::Snapshot {
                name: n.to_string(),
                replayed,
            },
            (None, true) => SourceView::Replayed,
            (None, false) => SourceView::Plain,
        }
    }

    /// True if the journal is replayed in memory.
    pub fn replayed(&self) -> bool {
        matches!(
            self,
            SourceView::Replayed | SourceView::Snapshot { replayed: true, .. }
        )
    }

    /// The snapshot exported, if one is.
    pub fn snapshot(&self) -> Option<&str> {
        match self {
            SourceView::Snapshot { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// SOURCE, opened read-only once when the plan is built.
#[derive(Debug)]
pub struct Source {
    path: PathBuf,
    file: File,
    /// `-o`: where the filesystem starts in the file, in bytes.
    offset: u64,
    kind: SourceKind,
    open: ext::OpenOptions,
    force: bool,
    journal_dev: Option<PathBuf>,
    view: SourceView,
    /// SOURCE `-` on a pipe (see [`Source::stdin_stream`]).
    stdin_stream: bool,
}

/// How SOURCE is opened and read, as the arguments give it.
pub(super) struct SourceArgs {
    pub(super) offset: u64,
    pub(super) open: ext::OpenOptions,
    pub(super) force: bool,
    pub(super) journal_dev: Option<PathBuf>,
    pub(super) view: SourceView,
}

impl Source {
    /// Opens `path` read-only and reads what it holds.
    ///
    /// # Errors
    /// It cannot be opened or read.
    pub(super) fn open(path: &Path, a: SourceArgs) -> Result<Source> {
        let (file, stdin_stream) = match path.as_os_str() == "-" {
            true => stdin_file()?,
            false => (
                File::open(path)
                    .with_context(|| format!("cannot open {} read-only", path.display()))?,
                false,
            ),
        };
        if stdin_stream {
            if a.offset > 0 {
                return Err(crate::exit::UsageError(
                    "-o SRC_OFFSET: standard input is read as a QCOW2 stream, which has no offset"
                        .into(),
                )
                .into());
            }
            return Ok(Source {
                path: path.to_path_buf(),
                file,
                offset: 0,
                kind: SourceKind::Qcow2,
                open: a.open,
                force: a.force,
                journal_dev: a.journal_dev,
                view: a.view,
                stdin_stream,
            });
        }
        let mut magic = [0u8; 4];
        let n = read_prefix(&file, &mut magic)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let kind = match n == 4 && magic == qcow::QCOW2_MAGIC {
            true => SourceKind::Qcow2,
            false => SourceKind::Filesystem,
        };
        if kind == SourceKind::Qcow2 && a.offset > 0 {
            return Err(crate::exit::UsageError(format!(
                "-o {}: {} is a QCOW2 image; -o gives where a filesystem starts inside a disk image",
                a.offset,
                path.display()
            ))
            .into());
        }
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if a.offset > 0 && len > 0 && a.offset >= len {
            return Err(crate::exit::UsageError(format!(
                "-o {}: {} is only {len} bytes long",
                a.offset,
                path.display()
            ))
            .into());
        }
        Ok(Source {
            path: path.to_path_buf(),
            file,
            offset: a.offset,
            kind,
            open: a.open,
            force: a.force,
            journal_dev: a.journal_dev,
            view: a.view,
            stdin_stream,
        })
    }

    /// True if SOURCE is `-` and standard input is a pipe (or anything but a regular file):
    /// a QCOW2 image read in one pass (`crate::qcow_stdin`), never opened as a file.
    pub fn stdin_stream(&self) -> bool {
        self.stdin_stream
    }

    /// SOURCE as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What it holds.
    pub fn kind(&self) -> SourceKind {
        self.kind
    }

    /// `-b` / `-B`: how the current state's filesystem is opened.
    pub fn open_options(&self) -> &ext::OpenOptions {
        &self.open
    }

    /// `-f`: image a source mounted read-write.
    pub fn force(&self) -> bool {
        self.force
    }

    /// `--journal-dev`: the external journal device.
    pub fn journal_dev(&self) -> Option<&Path> {
        self.journal_dev.as_deref()
    }

    /// Which view is exported.
    pub fn view(&self) -> &SourceView {
        &self.view
    }

    /// What the opened file is, for the check that OUT is not SOURCE.
    pub fn identity(&self) -> Option<Identity> {
        Identity::from_meta(&self.file.metadata().ok()?)
    }

    /// The filesystem source as a block view (over the file opened once), starting at the
    /// `-o` offset.
    ///
    /// # Errors
    /// Duplicating the file handle or reading its size fails; the offset is past the end.
    pub fn file_view(&self) -> Result<FileView> {
        let f = self
            .file
            .try_clone()
            .context("duplicating SOURCE's handle")?;
        FileView::from_file_at(f, self.offset).with_context(|| {
            format!(
                "cannot read {} from byte {}",
                self.path.display(),
                self.offset
            )
        })
    }

    /// The QCOW2 source's reader (over the file opened once); a delta or overlay (a backing
    /// file) is refused with a message saying what it is.
    ///
    /// # Errors
    /// Not a usable QCOW2 image; a backing file.
    pub fn qcow_reader(&self) -> Result<qcow::Reader> {
        let f = self
            .file
            .try_clone()
            .context("duplicating SOURCE's handle")?;
        open_image_file(f, &self.path, true)
    }

    /// Refuses a source mounted read-write unless `-f`; `what` names the result ("the image",
    /// "the delta").
    ///
    /// # Errors
    /// SOURCE is mounted read-write and `-f` was not given.
    pub fn check_not_mounted(&self, what: &str) -> Result<()> {
        if self.force {
            return Ok(());
        }
        if let Some(mnt) = crate::sys::mounted::mounted_rw(&self.path) {
            bail!(
                "{} is mounted read-write on {}; {what} could be inconsistent. Use -f to make it anyway",
                self.path.display(),
                mnt.display()
            );
        }
        Ok(())
    }
}

/// SOURCE `-`: standard input, and whether it is a stream (not a regular file, which is read
/// in place like any SOURCE).
fn stdin_file() -> Result<(File, bool)> {
    use std::os::fd::AsFd;
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot duplicate standard input")?;
    let file = File::from(fd);
    let regular = file.metadata().is_ok_and(|m| m.is_file());
    Ok((file, !regular))
}

/// Reads up to `buf.len()` bytes from the start of `file`; returns how many were read.
fn read_prefix(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

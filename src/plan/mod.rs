//! The validated plans, built once from the command line: the only description of a run that
//! the pipelines see (they never see clap's structures). The export's [`ExportPlan`] (its
//! [`Mode`] and its [`Source`], opened once) in `export` and `source`, the rollback's
//! plan (a [`PatchPlan`] over a [`RollbackSource`]) and the apply's (over an [`ApplySource`]), in `patch`, the archive
//! parts and `prune`'s [`PrunePlan`] in `archive`, a delta's in `delta`.
//!
//! Building the export plan checks everything that can be checked from the arguments first:
//! the mode, the e2image options not implemented yet, what OUT is (a file, a block device,
//! standard output, or something that is refused); then it opens SOURCE read-only and checks
//! that OUT is none of the inputs (the same file, a link to it, the same device, a loop
//! device over it). Errors are usage errors (exit 2) or refusals (exit 1); nothing has been
//! written when they are returned.

mod apply;
mod archive;
mod compare;
mod delta;
mod export;
mod patch;
mod rollback;
mod scramble;
mod source;

pub use apply::{apply_plan, ApplySource, APPLY_USAGE};
pub use archive::{PrunePlan, PRUNE_USAGE};
pub use delta::{backing_path, DeltaPlan, StateRef};
pub use export::{ExportPlan, Mode};
pub use patch::{PatchPlan, PatchRun, PatchStart};
pub use rollback::{rollback_plan, RollbackSource, ROLLBACK_USAGE};
pub use scramble::Scramble;
pub use source::SourceKind;

pub use crate::exit::UsageError;
use crate::sys::identity::node_kind;
use std::io::IsTerminal;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// The image format written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// QCOW2 of the given version; the cluster size in bytes when `--cluster-size` gave one.
    Qcow2 {
        /// QCOW2 version.
        version: qcow::Version,
        /// Requested cluster size, in bytes (a validated power of two).
        cluster_size: Option<u64>,
    },
    /// A raw image: the filesystem's size, copied blocks at their offsets.
    Raw,
}

/// Where the image goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// A regular file, written under a temporary name and renamed when complete.
    File(PathBuf),
    /// A block device, written in place (`-r` only).
    Device(PathBuf),
    /// Standard output, written sequentially (OUT `-`): a raw image, or a QCOW2 image laid
    /// out for one pass (tables first).
    Stdout,
    /// An existing archive, changed in place (`--append`).
    Archive(PathBuf),
}

impl Output {
    /// The name to show in messages.
    pub fn display(&self) -> String {
        match self {
            Output::File(p) | Output::Device(p) | Output::Archive(p) => p.display().to_string(),
            Output::Stdout => "standard output".into(),
        }
    }
}

/// Older states stored beside the current one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Older {
    /// Only the current state (a QCOW2 source keeps its own snapshots).
    None,
    /// Point-in-time images, oldest first as given.
    Images(Vec<PathBuf>),
    /// The filesystem's own (next3) snapshots.
    FsSnapshots,
}

/// Usage line of the export.
pub const EXPORT_USAGE: &str = "Usage: e2image-rs -Q|-r [OPTIONS] SOURCE OUT; e2image-rs snapshots IMAGE; e2image-rs rollback IMAGE TARGET --patch PATCH; e2image-rs apply DELTA TARGET --patch PATCH; e2image-rs prune ARCHIVE --keep-* N (see --help)";

/// OUT of `--append`: an existing regular file.
fn archive_output(out: &Path) -> Result<Output, UsageError> {
    if out.as_os_str() == "-" {
        return Err(usage(
            "--append changes an archive in place: OUT - (standard output) cannot be appended to; name the archive file",
        ));
    }
    match std::fs::metadata(out) {
        Ok(m) if m.is_file() => Ok(Output::Archive(out.to_path_buf())),
        Ok(m) => Err(usage(&format!(
            "--append: ARCHIVE {} is {}, not an archive file",
            out.display(),
            node_kind(&m)
        ))),
        Err(_) => Err(usage(&format!(
            "--append: ARCHIVE {} does not exist; create it first with `e2image-rs -Q --name NAME SOURCE {}`",
            out.display(),
            out.display()
        ))),
    }
}

pub(crate) fn usage(msg: &str) -> UsageError {
    UsageError(msg.to_string())
}

/// What OUT is: `-` is standard output; an existing block device is written in place; any
/// other existing node that is not a regular file is refused.
fn output_kind(out: &Path, format: Format, json: bool) -> Result<Output, UsageError> {
    let qcow = matches!(format, Format::Qcow2 { .. });
    if out.as_os_str() == "-" {
        if json {
            return Err(usage(
                "--json prints on standard output, which OUT - uses for the image",
            ));
        }
        if std::io::stdout().is_terminal() {
            return Err(usage(
                "standard output is a terminal: redirect it to a file or a pipe (e.g. `e2image-rs -r SOURCE - | gzip > OUT.gz`, `e2image-rs -Q SOURCE - | ssh HOST 'cat > OUT.qcow2'`)",
            ));
        }
        return Ok(Output::Stdout);
    }
    let Ok(meta) = std::fs::metadata(out) else {
        return Ok(Output::File(out.to_path_buf()));
    };
    let t = meta.file_type();
    if t.is_file() {
        return Ok(Output::File(out.to_path_buf()));
    }
    if t.is_block_device() {
        if qcow {
            return Err(usage(&format!(
                "OUT {} is a block device: only raw images (-r) are written onto a device",
                out.display()
            )));
        }
        return Ok(Output::Device(out.to_path_buf()));
    }
    Err(usage(&format!(
        "OUT {} is {}: write the image to a regular file{}",
        out.display(),
        node_kind(&meta),
        if qcow {
            ""
        } else {
            ", a block device, or - (standard output)"
        }
    )))
}

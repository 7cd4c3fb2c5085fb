//! The validated plans, built once from the command line: the only description of a run that
//! the pipelines see (they never see clap's structures). [`ExportPlan`] here, the rollback's
//! [`RollbackPlan`] in `rollback`, the apply's [`ApplyDeltaPlan`] in `apply`.
//!
//! Building it checks everything that can be checked before opening the source: the mode, the
//! e2image options not implemented yet, what OUT is (a file, a block device, standard output,
//! or something that is refused), and that OUT is none of the inputs (the same file, a link
//! to it, the same device, a loop device over it). Errors are usage errors (exit 2) or
//! refusals (exit 1); nothing has been written when they are returned.

mod apply;
mod archive;
mod delta;
mod rollback;

pub use apply::{ApplyDeltaPlan, ApplyStart, APPLY_USAGE};
pub use archive::{check_name, ArchivePlan, PrunePlan, PRUNE_USAGE};
pub use delta::{backing_path, DeltaPlan, StateRef};
pub use rollback::{ApplyPlan, RollbackPlan, ROLLBACK_USAGE};

use crate::cli::{unknown_subcommand, Compat, ExportArgs};
pub use crate::exit::UsageError;
use crate::sys::identity::{node_kind, Identity};
use std::io::IsTerminal;
use std::os::fd::AsFd;
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
    /// Standard output, written sequentially (`-r` only; OUT `-`).
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

/// Everything an export needs to know.
#[derive(Clone, Debug)]
pub struct ExportPlan {
    /// The filesystem (image file or block device) or a QCOW2 image.
    pub source: PathBuf,
    /// Where the image goes.
    pub output: Output,
    /// What is written.
    pub format: Format,
    /// Copy file data too (`-d`).
    pub data: bool,
    /// Show a progress bar.
    pub progress: bool,
    /// `-b` / `-B`: backup superblock block number and block size in bytes.
    pub open: ext::OpenOptions,
    /// Image a source mounted read-write.
    pub force: bool,
    /// Flush to stable storage before the rename.
    pub sync: bool,
    /// Print the JSON summary.
    pub json: bool,
    /// Older states to store.
    pub older: Older,
    /// Export one snapshot instead of the current state.
    pub from_snapshot: Option<String>,
    /// Leave snapshot files' blocks out.
    pub no_snapshots: bool,
    /// Creating or appending to an archive.
    pub archive: Option<ArchivePlan>,
    /// Writing a delta between two states.
    pub delta: Option<DeltaPlan>,
    /// `--replay`: write the replayed state of a filesystem whose journal needs recovery.
    pub replay: bool,
    /// `--journal-dev`: the external journal device.
    pub journal_dev: Option<PathBuf>,
}

impl ExportPlan {
    /// Validates the arguments into a plan.
    ///
    /// # Errors
    /// [`UsageError`] for wrong arguments, an OUT that is an input included.
    pub fn from_args(a: &ExportArgs) -> Result<ExportPlan, UsageError> {
        if let Some((flag, hint)) = a.unsupported.first() {
            return Err(UsageError(format!(
                "the e2image option {flag} is not supported yet{hint}"
            )));
        }
        let format = match (a.qcow2, a.raw) {
            (true, _) => Format::Qcow2 {
                version: match a.compat {
                    Compat::V2 => qcow::Version::V2,
                    Compat::V3 => qcow::Version::V3,
                },
                cluster_size: a.cluster_size,
            },
            (false, true) => Format::Raw,
            (false, false) => {
                let unknown = a
                    .source
                    .as_deref()
                    .and_then(|s| unknown_subcommand(s.as_os_str()));
                return Err(usage(&unknown.unwrap_or_else(|| {
                    "one of -Q (QCOW2) or -r (raw) is required".into()
                })));
            }
        };
        let source = a.source.clone().ok_or_else(|| usage("SOURCE is missing"))?;
        let out = a.output.as_deref().ok_or_else(|| usage("OUT is missing"))?;
        let archive = archive_plan(a, format)?;
        let delta = delta::delta_plan(a, format, out)?;
        let output = match &archive {
            Some(p) if p.append => archive_output(out)?,
            _ => output_kind(out, format, a.json)?,
        };
        let older = match (a.fs_snapshots, a.snapshots.is_empty()) {
            (true, _) => Older::FsSnapshots,
            (false, false) => Older::Images(a.snapshots.clone()),
            (false, true) => Older::None,
        };
        let plan = ExportPlan {
            source,
            output,
            format,
            data: a.data,
            progress: a.progress,
            open: ext::OpenOptions {
                superblock: a.superblock.map(ext::BlockNr),
                block_size: a.block_size,
            },
            force: a.force,
            sync: a.sync,
            json: a.json,
            older,
            from_snapshot: a.from_snapshot.clone(),
            no_snapshots: a.no_snapshots,
            archive,
            delta,
            replay: a.replay,
            journal_dev: a.journal_dev.clone(),
        };
        plan.check_replay()?;
        plan.check_output_is_no_input()?;
        Ok(plan)
    }

    /// Every input of the run with its role in messages: SOURCE, the `--snapshot` images,
    /// the journal device, a delta's `--base` image and its `--backing` file (read to check
    /// it holds FROM, and referenced by the delta).
    fn inputs(&self) -> Vec<(String, PathBuf)> {
        let mut v = vec![("SOURCE".to_string(), self.source.clone())];
        if let Older::Images(images) = &self.older {
            v.extend(images.iter().map(|p| ("--snapshot".to_string(), p.clone())));
        }
        if let Some(j) = &self.journal_dev {
            v.push(("--journal-dev".to_string(), j.clone()));
        }
        if let Some(d) = &self.delta {
            if let StateRef::Image { path, .. } = &d.from {
                v.push(("--base".to_string(), path.clone()));
            }
            if let (Some(b), Output::File(out)) = (&d.backing, &self.output) {
                v.push(("--backing".to_string(), backing_path(b, out)));
            }
        }
        v
    }

    /// Refuses `--replay` where it does not apply yet.
    fn check_replay(&self) -> Result<(), UsageError> {
        if self.replay && self.delta.is_some() {
            return Err(usage(
                "--replay is not supported with deltas (-x, --base) yet: export the replayed states first (e2image-rs -Q --replay), then make the delta between those images",
            ));
        }
        Ok(())
    }

    /// Refuses an OUT that resolves to an input.
    fn check_output_is_no_input(&self) -> Result<(), UsageError> {
        let out = match &self.output {
            Output::File(p) | Output::Device(p) | Output::Archive(p) => Identity::of(p),
            Output::Stdout => std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .ok()
                .and_then(|fd| std::fs::File::from(fd).metadata().ok())
                .and_then(|m| Identity::from_meta(&m)),
        };
        let Some(out) = out else { return Ok(()) };
        for (role, p) in self.inputs() {
            if Identity::of(&p).is_some_and(|i| i.overlaps(&out)) {
                return Err(usage(&format!(
                    "OUT {} is {role} {} (the same file or device): writing it would destroy the input; choose another OUT",
                    self.output.display(),
                    p.display()
                )));
            }
        }
        Ok(())
    }
}

/// The archive part of the plan: `--name`, `--append` and `--keep-*` checked together.
fn archive_plan(a: &ExportArgs, format: Format) -> Result<Option<ArchivePlan>, UsageError> {
    if let Some(n) = &a.name {
        check_name(n)?;
    }
    if a.keep.any() && !a.append {
        return Err(usage(
            "--keep-* applies to --append (to prune an archive, use `e2image-rs prune`)",
        ));
    }
    if !a.append {
        return Ok(a.name.as_ref().map(|n| ArchivePlan {
            name: Some(n.clone()),
            append: false,
            policy: archive::policy(&a.keep),
        }));
    }
    if format == Format::Raw {
        return Err(usage(
            "--append adds a state to a QCOW2 archive: it needs -Q",
        ));
    }
    Ok(Some(ArchivePlan {
        name: a.name.clone(),
        append: true,
        policy: archive::policy(&a.keep),
    }))
}

/// OUT of `--append`: an existing regular file.
fn archive_output(out: &Path) -> Result<Output, UsageError> {
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

fn usage(msg: &str) -> UsageError {
    UsageError(msg.to_string())
}

/// What OUT is: `-` is standard output; an existing block device is written in place; any
/// other existing node that is not a regular file is refused.
fn output_kind(out: &Path, format: Format, json: bool) -> Result<Output, UsageError> {
    let qcow = matches!(format, Format::Qcow2 { .. });
    if out.as_os_str() == "-" {
        if qcow {
            return Err(usage(
                "OUT - (standard output) is for raw images (-r); streaming QCOW2 is not supported yet: write it to a file",
            ));
        }
        if json {
            return Err(usage(
                "--json prints on standard output, which OUT - uses for the image",
            ));
        }
        if std::io::stdout().is_terminal() {
            return Err(usage(
                "standard output is a terminal: redirect it to a file or a pipe (e.g. `e2image-rs -r SOURCE - | gzip > OUT.gz`)",
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

//! The validated plan of a command that changes a target through a patch (`rollback`,
//! `apply`): one validation of its three forms — the first run (`--patch`, or a dry run),
//! `--resume PATCH TARGET` and `--undo PATCH TARGET` — with the paths checked against each
//! other (no patch or undo file over the target or the source of the new bytes). Only the
//! source of the new bytes (`S`: a state of an image, a delta) differs between the commands.

use super::UsageError;
use crate::cli::PatchArgs;
use crate::sys::identity::same_name_or_target;
use std::path::{Path, PathBuf};

/// A patch command's run and how it reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatchPlan<S> {
    /// Which form runs.
    pub run: PatchRun<S>,
    /// `--json`: the report is one JSON document on standard output.
    pub json: bool,
    /// `-p`: a progress bar while the target is written.
    pub progress: bool,
}

/// The three forms of a patch command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatchRun<S> {
    /// The first run: check, write the patch, drive the target (or only report: a dry run).
    Start(PatchStart<S>),
    /// `--resume PATCH TARGET` (`resume`) or `--undo PATCH TARGET`: drive the target to the
    /// patch's new or old side.
    Finish {
        /// The patch file.
        patch: PathBuf,
        /// The target.
        target: PathBuf,
        /// True for `--resume`, false for `--undo`.
        resume: bool,
        /// `-o`: where the filesystem starts in the target, in bytes (0 without it); it must
        /// be the patch's.
        offset: u64,
    },
}

/// The first run of a patch command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatchStart<S> {
    /// Where the new bytes come from.
    pub source: S,
    /// The device or image file written.
    pub target: PathBuf,
    /// `-o`: where the filesystem starts in the target, in bytes (0 without it).
    pub offset: u64,
    /// The patch to write (absent only with `dry_run`).
    pub patch: Option<PathBuf>,
    /// An e2fsprogs undo file to write too.
    pub undo_file: Option<PathBuf>,
    /// Report only; write nothing.
    pub dry_run: bool,
    /// Go ahead past the command's refusals.
    pub force: bool,
}

impl<S> PatchPlan<S> {
    /// Validates `paths` (the source and the target; only the target to finish a patch) and
    /// the patch options. `role` names the source in messages ("IMAGE", "DELTA"); `source`
    /// makes the command's source from its path.
    ///
    /// # Errors
    /// [`UsageError`]: wrong paths for the form, a missing `--patch`, options of the first run
    /// given to `--resume`/`--undo`, two paths naming the same file or device.
    pub fn validate(
        paths: &[PathBuf],
        a: &PatchArgs,
        role: &str,
        source: impl FnOnce(&Path) -> S,
    ) -> Result<PatchPlan<S>, UsageError> {
        let run = match (&a.resume, &a.undo) {
            (Some(p), None) => finish(paths, a, p, true, role)?,
            (None, Some(p)) => finish(paths, a, p, false, role)?,
            _ => PatchRun::Start(start(paths, a, role, source)?),
        };
        Ok(PatchPlan {
            run,
            json: a.json,
            progress: a.progress,
        })
    }
}

/// `--resume PATCH TARGET` or `--undo PATCH TARGET`.
fn finish<S>(
    paths: &[PathBuf],
    a: &PatchArgs,
    patch: &Path,
    resume: bool,
    role: &str,
) -> Result<PatchRun<S>, UsageError> {
    let flag = if resume { "--resume" } else { "--undo" };
    let target = match paths {
        [t] if a.patch.is_none() && a.undo_file.is_none() => t,
        [_] => {
            return Err(usage(&format!(
                "{flag} takes only the patch and TARGET (not --patch or --undo-file)"
            )))
        }
        _ => {
            return Err(usage(&format!(
                "{flag} PATCH takes TARGET only, not {role}: `{flag} PATCH TARGET`"
            )))
        }
    };
    check_distinct(&[("the patch", patch), ("TARGET", target)])?;
    Ok(PatchRun::Finish {
        patch: patch.to_path_buf(),
        target: target.clone(),
        resume,
        offset: a.offset.unwrap_or(0),
    })
}

/// The first run: `SOURCE TARGET --patch PATCH [--undo-file FILE]`, or a dry run.
fn start<S>(
    paths: &[PathBuf],
    a: &PatchArgs,
    role: &str,
    source: impl FnOnce(&Path) -> S,
) -> Result<PatchStart<S>, UsageError> {
    let [src, target] = paths else {
        return Err(usage(&format!(
            "expected {role} and TARGET (or --resume PATCH TARGET, --undo PATCH TARGET)"
        )));
    };
    if a.patch.is_none() && !a.dry_run {
        return Err(usage(
            "--patch PATCH is required (the file that makes the change resumable and undoable), or --dry-run",
        ));
    }
    let mut named: Vec<(&str, &Path)> = vec![(role, src), ("TARGET", target)];
    named.extend(a.patch.as_deref().map(|p| ("--patch", p)));
    named.extend(a.undo_file.as_deref().map(|u| ("--undo-file", u)));
    check_distinct(&named)?;
    Ok(PatchStart {
        source: source(src),
        target: target.clone(),
        offset: a.offset.unwrap_or(0),
        patch: a.patch.clone(),
        undo_file: a.undo_file.clone(),
        dry_run: a.dry_run,
        force: a.force,
    })
}

fn usage(msg: &str) -> UsageError {
    UsageError(msg.to_string())
}

/// Refuses when two of the named paths are the same file or device, or the same name for
/// files still to be created: a patch or undo file written over the target or the image
/// would destroy it.
fn check_distinct(named: &[(&str, &Path)]) -> Result<(), UsageError> {
    for (i, (ra, a)) in named.iter().enumerate() {
        for (rb, b) in &named[i + 1..] {
            if same_name_or_target(a, b) {
                return Err(UsageError(format!(
                    "{ra} {} and {rb} {} are the same file or device; nothing was written",
                    a.display(),
                    b.display()
                )));
            }
        }
    }
    Ok(())
}

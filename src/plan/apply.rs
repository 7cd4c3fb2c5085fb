//! The validated plan of `e2image-rs apply`: which of its three forms runs, with its paths
//! checked against each other (no patch or undo file over the target or the delta).

use super::rollback::check_distinct;
use super::UsageError;
use crate::cli::ApplyArgs;
use std::path::{Path, PathBuf};

/// Usage lines of the apply subcommand.
pub const APPLY_USAGE: &str = "usage: e2image-rs apply DELTA TARGET --patch PATCH [--undo-file FILE] [--dry-run] [--force] [--no-discard] [-p] [--json]\n       e2image-rs apply --resume PATCH TARGET | --undo PATCH TARGET";

/// What an apply run does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyDeltaPlan {
    /// The first run: check, write the patch, drive the target (or only report: `dry_run`).
    Start(ApplyStart),
    /// `--resume PATCH TARGET` (`goal_new`) or `--undo PATCH TARGET`: drive the target to the
    /// patch's new (TO) or old (FROM) side.
    Finish {
        /// The patch file.
        patch: PathBuf,
        /// The target.
        target: PathBuf,
        /// True for `--resume`, false for `--undo`.
        resume: bool,
        /// Print a JSON summary.
        json: bool,
    },
}

/// The first run of an apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyStart {
    /// The delta (QCOW2).
    pub delta: PathBuf,
    /// The device or image file written.
    pub target: PathBuf,
    /// The patch to write (absent only with `dry_run`).
    pub patch: Option<PathBuf>,
    /// An e2fsprogs undo file to write too.
    pub undo_file: Option<PathBuf>,
    /// Report only; write nothing.
    pub dry_run: bool,
    /// Apply a delta without a record, unchecked.
    pub force: bool,
    /// Discard the blocks the delta zeroes (else write zeros).
    pub discard: bool,
    /// Print a JSON summary.
    pub json: bool,
}

impl ApplyDeltaPlan {
    /// Validates the apply arguments.
    ///
    /// # Errors
    /// [`UsageError`]: wrong paths for the form, a missing `--patch`, two paths naming the
    /// same file or device.
    pub fn from_args(a: &ApplyArgs) -> Result<ApplyDeltaPlan, UsageError> {
        if let Some((patch, resume)) = match (&a.resume, &a.undo) {
            (Some(p), None) => Some((p, true)),
            (None, Some(p)) => Some((p, false)),
            _ => None,
        } {
            let target = match a.paths.as_slice() {
                [t] if a.patch.is_none() && a.undo_file.is_none() => t,
                [_] => {
                    return Err(usage(
                        "--resume and --undo take only the patch and the target",
                    ))
                }
                _ => return Err(usage("--resume PATCH and --undo PATCH take one TARGET")),
            };
            check_distinct(&[("the patch", patch), ("TARGET", target)])?;
            return Ok(ApplyDeltaPlan::Finish {
                patch: patch.clone(),
                target: target.clone(),
                resume,
                json: a.json,
            });
        }
        let [delta, target] = a.paths.as_slice() else {
            return Err(usage("expected DELTA and TARGET"));
        };
        if a.patch.is_none() && !a.dry_run {
            return Err(usage("--patch PATCH is required"));
        }
        let mut named: Vec<(&str, &Path)> = vec![("DELTA", delta), ("TARGET", target)];
        named.extend(a.patch.as_deref().map(|p| ("--patch", p)));
        named.extend(a.undo_file.as_deref().map(|u| ("--undo-file", u)));
        check_distinct(&named)?;
        Ok(ApplyDeltaPlan::Start(ApplyStart {
            delta: delta.clone(),
            target: target.clone(),
            patch: a.patch.clone(),
            undo_file: a.undo_file.clone(),
            dry_run: a.dry_run,
            force: a.force,
            discard: !a.no_discard,
            json: a.json,
        }))
    }

    /// Whether the run prints JSON.
    pub fn json(&self) -> bool {
        match self {
            ApplyDeltaPlan::Start(s) => s.json,
            ApplyDeltaPlan::Finish { json, .. } => *json,
        }
    }
}

fn usage(msg: &str) -> UsageError {
    UsageError(msg.to_string())
}

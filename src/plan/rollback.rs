//! The validated plan of `e2image-rs rollback`: which of its three forms runs, with its paths
//! checked against each other (no patch or undo file over the target or the image).

use super::UsageError;
use crate::cli::RollbackArgs;
use crate::sys::identity::same_name_or_target;
use std::path::{Path, PathBuf};

/// Usage lines of the rollback subcommand.
pub const ROLLBACK_USAGE: &str = "usage: e2image-rs rollback IMAGE TARGET [--snapshot ID|NAME] --patch PATCH [--undo-file FILE] [--dry-run] [--force] [-p] [--json]\n       e2image-rs rollback --resume PATCH TARGET | --undo PATCH TARGET";

/// What a rollback run does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RollbackPlan {
    /// The first run: plan, write the patch, drive the target (or only report: `dry_run`).
    Apply(ApplyPlan),
    /// `--resume PATCH TARGET`: drive the target to the patch's new side.
    Resume {
        /// The patch file.
        patch: PathBuf,
        /// The target.
        target: PathBuf,
    },
    /// `--undo PATCH TARGET`: drive the target back to the patch's old side.
    Undo {
        /// The patch file.
        patch: PathBuf,
        /// The target.
        target: PathBuf,
    },
}

/// The first run of a rollback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyPlan {
    /// The QCOW2 image holding the state.
    pub image: PathBuf,
    /// The device or image file written.
    pub target: PathBuf,
    /// The internal snapshot to restore (id or name); the active state when absent.
    pub snapshot: Option<String>,
    /// The patch to write (absent only with `dry_run`).
    pub patch: Option<PathBuf>,
    /// An e2fsprogs undo file to write too.
    pub undo_file: Option<PathBuf>,
    /// Report only; write nothing.
    pub dry_run: bool,
    /// Roll back despite conflicts of a metadata-only image.
    pub force: bool,
}

impl RollbackPlan {
    /// Validates the rollback arguments.
    ///
    /// # Errors
    /// [`UsageError`]: wrong paths for the form, a missing `--patch`, two paths naming the
    /// same file or device.
    pub fn from_args(a: &RollbackArgs) -> Result<RollbackPlan, UsageError> {
        let finish = |patch: &PathBuf| -> Result<(PathBuf, PathBuf), UsageError> {
            let target = match a.paths.as_slice() {
                [t] if a.snapshot.is_none() && a.patch.is_none() && a.undo_file.is_none() => t,
                [_] => {
                    return Err(usage(
                        "--resume and --undo take only the patch and the target",
                    ))
                }
                _ => return Err(usage("--resume PATCH and --undo PATCH take one TARGET")),
            };
            check_distinct(&[("the patch", patch), ("TARGET", target)])?;
            Ok((patch.clone(), target.clone()))
        };
        match (&a.resume, &a.undo) {
            (Some(p), None) => {
                let (patch, target) = finish(p)?;
                return Ok(RollbackPlan::Resume { patch, target });
            }
            (None, Some(p)) => {
                let (patch, target) = finish(p)?;
                return Ok(RollbackPlan::Undo { patch, target });
            }
            _ => {}
        }
        let [image, target] = a.paths.as_slice() else {
            return Err(usage("expected IMAGE and TARGET"));
        };
        if a.patch.is_none() && !a.dry_run {
            return Err(usage("--patch PATCH is required"));
        }
        let mut named: Vec<(&str, &Path)> = vec![("IMAGE", image), ("TARGET", target)];
        named.extend(a.patch.as_deref().map(|p| ("--patch", p)));
        named.extend(a.undo_file.as_deref().map(|u| ("--undo-file", u)));
        check_distinct(&named)?;
        Ok(RollbackPlan::Apply(ApplyPlan {
            image: image.clone(),
            target: target.clone(),
            snapshot: a.snapshot.clone(),
            patch: a.patch.clone(),
            undo_file: a.undo_file.clone(),
            dry_run: a.dry_run,
            force: a.force,
        }))
    }
}

fn usage(msg: &str) -> UsageError {
    UsageError(msg.to_string())
}

/// Refuses when two of the named paths are the same file or device, or the same name for
/// files still to be created: a patch or undo file written over the target or the image
/// would destroy it.
pub(super) fn check_distinct(named: &[(&str, &Path)]) -> Result<(), UsageError> {
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

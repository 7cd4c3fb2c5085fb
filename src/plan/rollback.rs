//! The validated plan of `e2image-rs rollback`: a [`PatchPlan`] whose new bytes are a state
//! of a QCOW2 image; and the check that no two paths of a patch command are the same file.

use super::patch::PatchPlan;
use super::UsageError;
use crate::cli::RollbackArgs;
use crate::sys::identity::same_name_or_target;
use std::path::{Path, PathBuf};

/// Usage lines of the rollback subcommand.
pub const ROLLBACK_USAGE: &str = "usage: e2image-rs rollback IMAGE TARGET [--snapshot ID|NAME] --patch PATCH [--undo-file FILE] [--dry-run] [--force] [-p] [--json]\n       e2image-rs rollback --resume PATCH TARGET | --undo PATCH TARGET";

/// Where a rollback's new bytes come from: a state of a QCOW2 image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RollbackSource {
    /// The QCOW2 image holding the state.
    pub image: PathBuf,
    /// The internal snapshot to restore (id or name); the active state when absent.
    pub snapshot: Option<String>,
}

/// Validates the rollback arguments.
///
/// # Errors
/// [`UsageError`]: see [`PatchPlan::validate`].
pub fn rollback_plan(a: &RollbackArgs) -> Result<PatchPlan<RollbackSource>, UsageError> {
    PatchPlan::validate(&a.paths, &a.patch, "IMAGE", |image| RollbackSource {
        image: image.to_path_buf(),
        snapshot: a.snapshot.clone(),
    })
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

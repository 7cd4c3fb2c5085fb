//! The validated plan of `e2image-rs rollback`: a [`PatchPlan`] whose new bytes are a state
//! of a QCOW2 image.

use super::patch::PatchPlan;
use super::UsageError;
use crate::cli::RollbackArgs;
use std::path::PathBuf;

/// Usage lines of the rollback subcommand.
pub const ROLLBACK_USAGE: &str = "usage: e2image-rs rollback IMAGE TARGET [--snapshot ID|NAME] --patch PATCH [--undo-file FILE] [--dry-run] [--force] [-o BYTES] [-p] [--json]\n       e2image-rs rollback --resume PATCH [-o BYTES] TARGET | --undo PATCH [-o BYTES] TARGET";

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

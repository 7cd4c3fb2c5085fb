//! The validated plan of `e2image-rs apply`: a [`PatchPlan`] whose new bytes come from a
//! delta.

use super::patch::PatchPlan;
use super::UsageError;
use crate::cli::ApplyArgs;
use std::path::PathBuf;

/// Usage lines of the apply subcommand.
pub const APPLY_USAGE: &str = "usage: e2image-rs apply DELTA TARGET --patch PATCH [--undo-file FILE] [--dry-run] [--force] [--no-discard] [-o BYTES] [-p] [--json]\n       e2image-rs apply --resume PATCH [-o BYTES] TARGET | --undo PATCH [-o BYTES] TARGET";

/// Where an apply's new bytes come from: a delta.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplySource {
    /// The delta (QCOW2).
    pub delta: PathBuf,
    /// Discard the blocks the delta zeroes (else write zeros).
    pub discard: bool,
}

/// Validates the apply arguments.
///
/// # Errors
/// [`UsageError`]: see [`PatchPlan::validate`].
pub fn apply_plan(a: &ApplyArgs) -> Result<PatchPlan<ApplySource>, UsageError> {
    PatchPlan::validate(&a.paths, &a.patch, "DELTA", |delta| ApplySource {
        delta: delta.to_path_buf(),
        discard: !a.no_discard,
    })
}

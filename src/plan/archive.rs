//! The archive parts of the plans: state names (`--name`), retention policies (`--keep-*`),
//! and `prune`.

use super::UsageError;
use crate::cli::{KeepArgs, PruneArgs};
use crate::retention::Policy;
use std::path::PathBuf;

/// Usage line of the prune subcommand.
pub const PRUNE_USAGE: &str = "usage: e2image-rs prune ARCHIVE [--keep-last N] [--keep-hourly N] [--keep-daily N] [--keep-weekly N] [--keep-monthly N] [--keep-yearly N] [--dry-run] [--json]";

/// Longest state name accepted, in bytes (QEMU lists names up to 256 bytes).
pub const MAX_NAME_BYTES: usize = 255;

/// `e2image-rs prune`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrunePlan {
    /// The archive.
    pub archive: PathBuf,
    /// The retention policy (never empty).
    pub policy: Policy,
    /// Report only.
    pub dry_run: bool,
    /// JSON output.
    pub json: bool,
}

impl PrunePlan {
    /// Validates the prune arguments.
    ///
    /// # Errors
    /// [`UsageError`] for an empty policy (it would keep nothing).
    pub fn from_args(a: &PruneArgs) -> Result<PrunePlan, UsageError> {
        let policy = policy(&a.keep);
        if policy.is_empty() {
            return Err(UsageError(
                "no --keep-* rule keeps anything: refusing to remove every state (give at least one --keep-* of 1 or more)".into(),
            ));
        }
        Ok(PrunePlan {
            archive: a.archive.clone(),
            policy,
            dry_run: a.dry_run,
            json: a.json,
        })
    }
}

/// The policy the `--keep-*` options give.
pub fn policy(k: &KeepArgs) -> Policy {
    Policy {
        last: k.keep_last,
        hourly: k.keep_hourly,
        daily: k.keep_daily,
        weekly: k.keep_weekly,
        monthly: k.keep_monthly,
        yearly: k.keep_yearly,
    }
}

/// Checks a state name: non-empty, at most [`MAX_NAME_BYTES`], no control characters, not
/// all digits (QEMU looks `-l X` up as a snapshot id first, and ids are numbers), and not
/// `current` (reserved: `-x current..NAME` means the active layer).
///
/// # Errors
/// [`UsageError`] saying what is wrong.
pub fn check_name(name: &str) -> Result<(), UsageError> {
    let bad = if name.is_empty() {
        Some("is empty")
    } else if name.len() > MAX_NAME_BYTES {
        Some("is longer than 255 bytes")
    } else if name.chars().any(char::is_control) {
        Some("contains control characters")
    } else if name.chars().all(|c| c.is_ascii_digit()) {
        Some("is a number (QEMU would take it for a snapshot id)")
    } else if name == super::delta::CURRENT {
        Some("is reserved: `current` names the active layer (as in -x current..NAME)")
    } else {
        None
    };
    match bad {
        Some(why) => Err(UsageError(format!("--name {name:?} {why}"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("2026-11-29T20:18:39Z").is_ok());
        assert!(check_name("nightly").is_ok());
        for bad in ["", "42", "a\nb", &"x".repeat(256), "current"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}

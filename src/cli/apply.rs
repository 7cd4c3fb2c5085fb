//! The `apply` subcommand's arguments.

use super::patch::PatchArgs;
use clap::Args;
use std::path::PathBuf;

/// `e2image-rs apply DELTA TARGET --patch PATCH [...]`, `--resume PATCH TARGET`,
/// `--undo PATCH TARGET`.
#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// DELTA.qcow2 (`-`: standard input, read in one pass when streamed by `-Q … -`, else
    /// spooled to $TMPDIR first) and TARGET; only TARGET with --resume or --undo.
    #[arg(required = true, num_args = 1..=2, value_names = ["DELTA", "TARGET"])]
    pub paths: Vec<PathBuf>,
    /// Write zeros where the delta discards blocks, instead of punching holes (image files)
    /// or BLKZEROOUT (block devices).
    #[arg(long, conflicts_with_all = ["resume", "undo"])]
    pub no_discard: bool,
    /// The patch, its forms and how the run reports.
    #[command(flatten)]
    pub patch: PatchArgs,
}

//! The `apply` subcommand's arguments.

use clap::Args;
use std::path::PathBuf;

/// `e2image-rs apply DELTA TARGET --patch PATCH [...]`, `--resume PATCH TARGET`,
/// `--undo PATCH TARGET`.
#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// DELTA.qcow2 and TARGET; only TARGET with --resume or --undo.
    #[arg(required = true, num_args = 1..=2, value_name = "PATHS")]
    pub paths: Vec<PathBuf>,
    /// The patch file to write (it must not exist): old and new bytes of every changed block.
    #[arg(long, value_name = "PATCH")]
    pub patch: Option<PathBuf>,
    /// Also write an e2fsprogs undo file (E2UNDO02): `e2undo FILE TARGET` rewinds the apply.
    #[arg(long, value_name = "FILE.e2undo")]
    pub undo_file: Option<PathBuf>,
    /// Print what would be written and discarded (blocks, bytes, runs, files affected); write
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply a delta that has no delta record (not made by `e2image-rs -x`): unallocated
    /// clusters keep TARGET's bytes, allocated ones are written, zero ones discarded, and
    /// nothing checks that TARGET holds FROM. Also applies onto a TARGET whose journal needs
    /// recovery.
    #[arg(long)]
    pub force: bool,
    /// Write zeros where the delta discards blocks, instead of punching holes (image files)
    /// or BLKZEROOUT (block devices).
    #[arg(long)]
    pub no_discard: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Show a progress bar on stderr over the bytes written to TARGET (only when stderr is a
    /// terminal).
    #[arg(short = 'p')]
    pub progress: bool,
    /// Finish an interrupted apply: `--resume PATCH TARGET`.
    #[arg(long, value_name = "PATCH", conflicts_with_all = ["undo", "dry_run", "force", "no_discard"])]
    pub resume: Option<PathBuf>,
    /// Rewind a finished or interrupted apply to TARGET's exact old bytes (FROM):
    /// `--undo PATCH TARGET`.
    #[arg(long, value_name = "PATCH", conflicts_with_all = ["dry_run", "force", "no_discard"])]
    pub undo: Option<PathBuf>,
}

//! The options of the commands that change a target through a patch (`rollback`, `apply`):
//! one struct, flattened into both, so that both take the same forms and the same flags.

use clap::Args;
use std::path::PathBuf;

/// `--patch PATCH [--undo-file FILE] [--dry-run] [--force]` for the first run, `--resume PATCH`
/// or `--undo PATCH` to finish or rewind one; `-p` and `--json` for all three forms.
#[derive(Args, Debug, Default)]
pub struct PatchArgs {
    /// The patch file to write (it must not exist): the old and new bytes of every block
    /// changed, every byte checksummed; `--resume` and `--undo` read it.
    #[arg(long, value_name = "PATCH")]
    pub patch: Option<PathBuf>,
    /// Also write an e2fsprogs undo file (E2UNDO02): `e2undo FILE TARGET` rewinds the change.
    #[arg(long, value_name = "FILE.e2undo")]
    pub undo_file: Option<PathBuf>,
    /// Print what would be written (blocks per class, bytes, runs, files affected); write
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Go ahead past the refusals the dry run explains: rollback of a metadata-only image
    /// whose restored files would read data blocks the target now uses otherwise; apply of a
    /// delta without a record (unchecked); either onto a target whose journal needs recovery.
    #[arg(long)]
    pub force: bool,
    /// Finish an interrupted run: `--resume PATCH TARGET`.
    #[arg(long, value_name = "PATCH", conflicts_with_all = ["undo", "dry_run", "force"])]
    pub resume: Option<PathBuf>,
    /// Rewind a finished or interrupted run to TARGET's exact old bytes: `--undo PATCH TARGET`.
    #[arg(long, value_name = "PATCH", conflicts_with_all = ["dry_run", "force"])]
    pub undo: Option<PathBuf>,
    /// TARGET's filesystem starts at this byte offset of it (a partition of a disk image), as
    /// e2image's and e2undo's -o; recorded in the patch, and `--resume`/`--undo` must be
    /// given the same.
    #[arg(short = 'o', long = "offset", value_name = "BYTES", value_parser = super::parse_offset)]
    pub offset: Option<u64>,
    /// Show progress on stderr: a line naming each phase (checking and writing the patch,
    /// applying it) and, on a terminal, a bar over the bytes written to TARGET.
    #[arg(short = 'p')]
    pub progress: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

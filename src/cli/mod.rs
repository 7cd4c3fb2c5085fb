//! Command line, compatible with e2image where the options overlap.
//!
//! `e2image-rs -Q|-r [options] SOURCE OUT` exports; `e2image-rs snapshots IMAGE` lists the
//! states stored in a QCOW2 image; `e2image-rs rollback` writes one back onto a device;
//! `e2image-rs apply` replays a delta onto a replica; `man` and `completions` print the manual
//! page and shell completions (`package`). Usage errors exit with status 2 (clap's default).

mod apply;
mod package;
mod patch;
mod scramble;

pub use apply::ApplyArgs;
use clap::{Args, Parser, Subcommand, ValueEnum};
pub use package::{CompletionsArgs, EXIT_STATUS_HELP};
pub use patch::PatchArgs;
pub use scramble::ScrambleArgs;
use std::path::PathBuf;

/// Image ext2/3/4 filesystem metadata (and optionally data) into QCOW2 or sparse raw images.
#[derive(Parser, Debug)]
#[command(
    name = "e2image-rs",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = EXIT_STATUS_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub export: ExportArgs,
}

/// Subcommands besides the export.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// List the states (internal snapshots) of a QCOW2 image with their shared and own clusters.
    #[command(after_help = EXIT_STATUS_HELP)]
    Snapshots {
        /// The QCOW2 image.
        image: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write one state of a QCOW2 image back onto the device (or image file) holding the same
    /// filesystem, atomically in effect, through a rollback patch file.
    #[command(after_help = EXIT_STATUS_HELP)]
    Rollback(RollbackArgs),
    /// Remove states of an archive by a retention policy (restic's --keep-* rules), in place;
    /// freed space is reused by later appends and returned to the filesystem.
    #[command(after_help = EXIT_STATUS_HELP)]
    Prune(PruneArgs),
    /// Replay a delta (`-x FROM..TO`) onto a device or image file holding FROM, so that it
    /// holds TO, crash-safely through a patch file.
    #[command(after_help = EXIT_STATUS_HELP)]
    Apply(ApplyArgs),
    /// Check a QCOW2 image: structure (refcounts against references, table bounds, as
    /// `qemu-img check`), then every cluster against its checksum when the image has a current
    /// cluster checksum table (docs/verify.md). Exit 0 clean, 3 damage found, 1 unreadable.
    #[command(after_help = EXIT_STATUS_HELP)]
    Verify {
        /// The QCOW2 image.
        image: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the manual page e2image-rs(1), roff, on standard output (`e2image-rs man | man -l -`).
    Man,
    /// Print a shell completion script on standard output (bash, zsh, fish).
    Completions(CompletionsArgs),
}

/// `e2image-rs prune ARCHIVE --keep-* N... [--dry-run] [--json]`.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// The archive (a QCOW2 image whose states are internal snapshots).
    pub archive: PathBuf,
    /// The retention policy.
    #[command(flatten)]
    pub keep: KeepArgs,
    /// Print which states would go and which rule keeps each kept one; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Retention rules, with restic's meaning; N is a count or `unlimited`.
#[derive(Args, Debug, Default, Clone)]
pub struct KeepArgs {
    /// Keep the N newest states.
    #[arg(help_heading = "Retention", long, value_name = "N", value_parser = parse_keep)]
    pub keep_last: Option<u32>,
    /// For the last N hours that have states, keep the newest state of each hour.
    #[arg(help_heading = "Retention", long, value_name = "N", value_parser = parse_keep)]
    pub keep_hourly: Option<u32>,
    /// For the last N days that have states, keep the newest state of each day.
    #[arg(help_heading = "Retention", long, value_name = "N", value_parser = parse_keep)]
    pub keep_daily: Option<u32>,
    /// For the last N weeks (Monday to Sunday) that have states, keep the newest of each week.
    #[arg(help_heading = "Retention", long, value_name = "N", value_parser = parse_keep)]
    pub keep_weekly: Option<u32>,
    /// For the last N months that have states, keep the newest state of each month.
    #[arg(help_heading = "Retention", long, value_name = "N", value_parser = parse_keep)]
    pub keep_monthly: Option<u32>,
    /// For the last N years that have states, keep the newest state of each year.
    #[arg(help_heading = "Retention", long, value_name = "N", value_parser = parse_keep)]
    pub keep_yearly: Option<u32>,
}

impl KeepArgs {
    /// True if any `--keep-*` option was given.
    pub fn any(&self) -> bool {
        [
            self.keep_last,
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
        ]
        .iter()
        .any(Option::is_some)
    }
}

/// A `--keep-*` count: a number, or `unlimited` (u32::MAX).
fn parse_keep(s: &str) -> Result<u32, String> {
    if s == "unlimited" {
        return Ok(u32::MAX);
    }
    s.parse()
        .map_err(|_| format!("{s:?} is not a count (a number, or `unlimited`)"))
}

/// `e2image-rs rollback IMAGE TARGET --patch PATCH [...]`, `--resume PATCH TARGET`,
/// `--undo PATCH TARGET`.
#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// IMAGE.qcow2 and TARGET; only TARGET with --resume or --undo.
    #[arg(required = true, num_args = 1..=2, value_names = ["IMAGE", "TARGET"])]
    pub paths: Vec<PathBuf>,
    /// The internal snapshot to restore, by id or name (default: the image's active state).
    #[arg(long, value_name = "ID|NAME", conflicts_with_all = ["resume", "undo"])]
    pub snapshot: Option<String>,
    /// The patch, its forms and how the run reports.
    #[command(flatten)]
    pub patch: PatchArgs,
}

/// QCOW2 version to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Compat {
    /// QCOW2 version 2.
    #[value(name = "0.10")]
    V2,
    /// QCOW2 version 3 (default).
    #[value(name = "1.1")]
    V3,
}

/// `--compression-type`: QEMU's names of the QCOW2 compression types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompressionKind {
    /// Raw deflate with a 4 KiB window, as QEMU writes it (QCOW2 `compression_type` 0).
    Zlib,
    /// zstd, one frame per cluster (QCOW2 `compression_type` 1; needs --compat 1.1).
    Zstd,
}

/// Options of the export (and of QCOW2 → raw conversion).
#[derive(Args, Debug)]
#[group(id = "export")]
pub struct ExportArgs {
    /// Write a QCOW2 image.
    #[arg(help_heading = "Export", short = 'Q', conflicts_with = "raw")]
    pub qcow2: bool,
    /// Write a raw sparse image (or convert a QCOW2 SOURCE to raw).
    #[arg(help_heading = "Export", short = 'r')]
    pub raw: bool,
    /// Include file data: every block referenced by an in-use inode (also `-a`, as in e2image).
    #[arg(help_heading = "Export", short = 'd', visible_short_alias = 'a')]
    pub data: bool,
    /// Show progress on stderr: a line naming each phase (walking metadata, replaying the
    /// journal, copying state 2/3: NAME, ...) and, on a terminal, a bar over the bytes copied.
    #[arg(help_heading = "Export", short = 'p')]
    pub progress: bool,
    /// Open the filesystem through the backup superblock at this block number.
    #[arg(help_heading = "Export", short = 'b', value_name = "SUPERBLOCK")]
    pub superblock: Option<u64>,
    /// Block size in bytes to read the backup superblock with (requires -b).
    #[arg(
        help_heading = "Export",
        short = 'B',
        value_name = "BLOCKSIZE",
        requires = "superblock"
    )]
    pub block_size: Option<u32>,
    /// The filesystem starts at this byte offset of SOURCE (a partition inside a disk image),
    /// as e2image's -o.
    #[arg(help_heading = "Export", short = 'o', value_name = "SRC_OFFSET", value_parser = parse_offset)]
    pub src_offset: Option<u64>,
    /// Write the raw image at this byte offset of OUT (-r only), as e2image's -O.
    #[arg(help_heading = "Export", short = 'O', value_name = "DST_OFFSET", value_parser = parse_offset)]
    pub dest_offset: Option<u64>,
    /// Image a source that is mounted read-write (the image may be inconsistent).
    #[arg(help_heading = "Export", short = 'f')]
    pub force: bool,
    /// QCOW2 cluster size in bytes (power of two, 512 to 2 MiB).
    #[arg(help_heading = "QCOW2 output", long, value_name = "BYTES", value_parser = parse_cluster_size)]
    pub cluster_size: Option<u64>,
    /// With -Q: compress the QCOW2 image's clusters as `qemu-img convert -c` does (each
    /// cluster on its own; one that does not get smaller is stored plain; zero clusters stay
    /// zero clusters), on all cores. Larger clusters compress better (e.g. --cluster-size
    /// 65536, QEMU's default). With --append, new clusters use the archive's compression type.
    /// With -r, e2image's -c: compare each block with the existing OUT (a device or image
    /// file) and write, in place, only those that differ.
    #[arg(help_heading = "Compression", short = 'c')]
    pub compress: bool,
    /// With -r -c: compare only, write nothing; report how many blocks would be written (as
    /// e2image's -n).
    #[arg(help_heading = "Export", short = 'n')]
    pub no_write: bool,
    /// With -c: zlib (deflate, the default, what QEMU reads everywhere) or zstd (faster,
    /// QEMU 5.1 and later, --compat 1.1).
    #[arg(help_heading = "Compression", long, value_enum, value_name = "TYPE")]
    pub compression_type: Option<CompressionKind>,
    /// With -c: the level, zlib 1 to 9 (default 6, QEMU's), zstd 1 to 19 (default 3, QEMU's).
    #[arg(help_heading = "Compression", long, value_name = "N")]
    pub compression_level: Option<u32>,
    /// QCOW2 version: 0.10 (v2) or 1.1 (v3).
    #[arg(help_heading = "QCOW2 output", long, value_enum, default_value = "1.1")]
    pub compat: Compat,
    /// Flush the image to stable storage before renaming it over OUT, so that it survives a
    /// power failure (e2image never does; qemu-img convert does).
    #[arg(help_heading = "Export", long)]
    pub sync: bool,
    /// Print a JSON summary on stdout.
    #[arg(help_heading = "Export", long)]
    pub json: bool,
    /// An older point-in-time image of the same filesystem (an LVM or dm snapshot, an earlier
    /// -r or -ra dump), stored as a QCOW2 internal snapshot; repeat, oldest first.
    #[arg(help_heading = "States", long = "snapshot", value_name = "IMAGE", conflicts_with_all = ["raw", "fs_snapshots", "from_snapshot"])]
    pub snapshots: Vec<PathBuf>,
    /// Store the filesystem's own snapshots (next3 / ext4-snapshots) as QCOW2 internal snapshots.
    #[arg(help_heading = "States", long, conflicts_with_all = ["raw", "from_snapshot"])]
    pub fs_snapshots: bool,
    /// Export one snapshot instead of the current state: an in-filesystem snapshot (by name or
    /// id), or an internal snapshot of a QCOW2 SOURCE.
    #[arg(help_heading = "States", long, value_name = "NAME")]
    pub from_snapshot: Option<String>,
    /// Leave the blocks of in-filesystem snapshot files out of the current state.
    #[arg(help_heading = "States", long)]
    pub no_snapshots: bool,
    /// Name of the state: with --append the new state's (default: the export time, e.g.
    /// 2026-11-29T20:18:39Z); without it, OUT is created as an archive whose only state is NAME.
    #[arg(help_heading = "Archive", long, value_name = "NAME", conflicts_with_all = ["snapshots", "fs_snapshots"])]
    pub name: Option<String>,
    /// Add SOURCE's current state to the existing archive OUT, in place, as its newest state;
    /// only what changed since the archive's newest state is written.
    #[arg(help_heading = "Archive", long, conflicts_with_all = ["raw", "snapshots", "fs_snapshots", "from_snapshot"])]
    pub append: bool,
    /// Retention after an append (see `e2image-rs prune`).
    #[command(flatten)]
    pub keep: KeepArgs,
    /// Write a delta between two states of SOURCE (QCOW2 v3): FROM..TO, each an internal
    /// snapshot of a QCOW2 SOURCE or a filesystem snapshot (by name or id), or `current`;
    /// FROM alone means FROM..current. Only clusters that differ are stored; blocks FROM used
    /// and TO frees read as zeros.
    #[arg(help_heading = "Delta", short = 'x', value_name = "FROM[..TO]", conflicts_with_all = ["raw", "snapshots", "fs_snapshots", "from_snapshot", "append", "name", "base"])]
    pub delta: Option<String>,
    /// Write a delta from BASE, another image of the same filesystem (a raw image, a QCOW2
    /// export's active state, or IMAGE.qcow2@SNAPSHOT), to SOURCE's current state.
    #[arg(help_heading = "Delta", long, value_name = "BASE", conflicts_with_all = ["raw", "snapshots", "fs_snapshots", "from_snapshot", "append", "name"])]
    pub base: Option<PathBuf>,
    /// Record FILE, a full export (raw or QCOW2) of the delta's FROM state, as the delta's
    /// backing file, so that QEMU reads the delta as state TO; stored relative to the delta.
    #[arg(help_heading = "Delta", long, value_name = "FILE")]
    pub backing: Option<PathBuf>,
    /// Write the replayed state of a filesystem whose journal needs recovery (built in memory
    /// from the journal and the disk; the source is never written): as after `e2fsck -E
    /// journal_only`. Without it the image holds the blocks as they are on disk, the whole
    /// journal and every block the replay needs.
    #[arg(help_heading = "Journal", long)]
    pub replay: bool,
    /// The external journal device (or image) of a filesystem whose journal is not internal;
    /// read only.
    #[arg(help_heading = "Journal", long, value_name = "PATH")]
    pub journal_dev: Option<PathBuf>,
    /// The filesystem (image file or block device), or a QCOW2 image; `-` reads a QCOW2 image
    /// from standard input (-r only: converted to raw, in one pass when it was streamed by
    /// `-Q … -`, else spooled to $TMPDIR first).
    #[arg(required = true)]
    pub source: Option<PathBuf>,
    /// The image to write; `-` writes it to standard output (-r: raw; -Q: QCOW2 laid out for
    /// one pass, tables first; not with --append).
    #[arg(required = true)]
    pub output: Option<PathBuf>,
    /// e2image options that e2image-rs does not implement yet; accepted by the parser only so
    /// that they are refused with a clear message (see `plan`).
    #[command(flatten)]
    pub unsupported: UnsupportedArgs,
    /// `-s`, `--scramble-seed`, `--allow-data` (docs/scrambling.md).
    #[command(flatten)]
    pub scramble: ScrambleArgs,
}

/// e2image's options that are not implemented yet. Hidden from `--help`; each one is a usage
/// error that says so (instead of clap's "unexpected argument").
#[derive(Args, Debug, Default)]
pub struct UnsupportedArgs {
    /// e2image -I: install the metadata of an image onto a device.
    #[arg(short = 'I', hide = true)]
    pub install: bool,
}

impl UnsupportedArgs {
    /// The first unsupported e2image option given, with what to use instead, if any.
    pub fn first(&self) -> Option<(&'static str, &'static str)> {
        [(self.install, "-I", INSTALL_HINT)]
            .into_iter()
            .find(|(set, _, _)| *set)
            .map(|(_, flag, hint)| (flag, hint))
    }
}

/// What `-I` is answered with: e2image -I writes an image's metadata over the device in place,
/// with nothing to resume or undo it; `rollback` does the same crash-safely.
const INSTALL_HINT: &str = ": e2image -I writes an image's metadata back over the device in place, and a crash or a mistake half-way leaves it broken. `e2image-rs rollback` does this crash-safely, through a patch file that resumes or undoes it: `e2image-rs rollback IMAGE.qcow2 DEVICE --patch PATCH` (add --dry-run first to see what it writes; --snapshot ID|NAME picks a state; -o BYTES for a filesystem at an offset of DEVICE). Note the order: the image first, then the device";

/// The subcommands, for the message about an unknown one.
pub const SUBCOMMANDS: &str = "snapshots, rollback, prune, apply, verify, man, completions";

/// If `word` (the first positional argument) names no file, is no subcommand and looks like a
/// subcommand name (lower-case letters and dashes), the message saying it is not one.
pub fn unknown_subcommand(word: &std::ffi::OsStr) -> Option<String> {
    let w = word.to_str()?;
    let wordlike = !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c == '-');
    let known = SUBCOMMANDS.split(", ").any(|s| s == w);
    if known || !wordlike || w.starts_with('-') || std::path::Path::new(w).exists() {
        return None;
    }
    Some(format!(
        "unknown subcommand {w:?} (the subcommands are {SUBCOMMANDS}); to export, one of -Q or -r is required"
    ))
}

/// Smallest and largest QCOW2 cluster sizes QEMU accepts, in bytes.
pub const CLUSTER_SIZE_RANGE: std::ops::RangeInclusive<u64> =
    1 << qcow::MIN_CLUSTER_BITS..=1 << qcow::MAX_CLUSTER_BITS;

/// `-o` / `-O`: a byte offset.
pub(crate) fn parse_offset(s: &str) -> Result<u64, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not a number of bytes"))
}

/// `--cluster-size`: a power of two in [`CLUSTER_SIZE_RANGE`].
fn parse_cluster_size(s: &str) -> Result<u64, String> {
    let c: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of bytes"))?;
    if !c.is_power_of_two() || !CLUSTER_SIZE_RANGE.contains(&c) {
        return Err(format!(
            "{c} is not a power of two from {} to {}",
            CLUSTER_SIZE_RANGE.start(),
            CLUSTER_SIZE_RANGE.end()
        ));
    }
    Ok(c)
}

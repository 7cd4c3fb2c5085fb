//! `-s`: the current state read through ext's scrambled view (names and symlink targets
//! replaced, docs/scrambling.md), with its counts as a note and the `scramble` JSON member.

use super::{open_with_fallback, Early};
use crate::plan::{usage, ExportPlan, Scramble};
use anyhow::Result;
use ext::{BlockView, ScrambleOptions, ScrambledView};

/// The scrambled view of the filesystem on `view` (the source's, or its replayed view with
/// `--replay`); its report goes into `early`.
///
/// # Errors
/// A usage error when the journal needs recovery and was not replayed (its log holds old
/// copies of directory blocks); the filesystem cannot be opened or read.
pub(super) fn view<'v>(
    view: &'v dyn BlockView,
    plan: &ExportPlan,
    s: &Scramble,
    early: &mut Early,
) -> Result<ScrambledView<'v>> {
    let (fs, _) = open_with_fallback(view, plan)?;
    if fs.sb.needs_recovery() {
        return Err(usage(
            "-s: SOURCE's journal needs recovery, and its log holds old copies of directory blocks (names) that cannot be scrambled in place; add --replay (the image then holds the replayed state with an empty journal), or recover the filesystem first (e2fsck, or mount and unmount it)",
        )
        .into());
    }
    let (scrambled, report) = ScrambledView::build(&fs, &ScrambleOptions { seed: s.seed })
        .map_err(|e| anyhow::anyhow!("{}: cannot scramble: {e}", plan.source().path().display()))?;
    let how = if s.seed_given {
        format!("seed {}", s.seed)
    } else {
        format!(
            "random seed {} (--scramble-seed {} repeats this image)",
            s.seed, s.seed
        )
    };
    early.notes.push(format!(
        "-s: {} names in {} directories and {} symlink targets scrambled ({how}); {} encrypted directories and symlinks kept as they are; {} journal blocks written as zeros",
        report.names, report.directories, report.symlinks, report.encrypted_kept, report.journal_blocks_zeroed
    ));
    early.warnings.extend(report.warnings.iter().cloned());
    early.extra.push((
        "scramble".into(),
        serde_json::json!({
            "seed": s.seed,
            "seed_given": s.seed_given,
            "names": report.names,
            "directories": report.directories,
            "symlinks": report.symlinks,
            "encrypted_kept": report.encrypted_kept,
            "journal_blocks_zeroed": report.journal_blocks_zeroed,
            "warnings": report.warnings.len(),
        }),
    ));
    Ok(scrambled)
}

//! `e2image-rs prune ARCHIVE --keep-* N`: removes the states of an archive that no retention
//! rule keeps, in place and crash-safely (one `qcow::Editor` commit: a new snapshot table and
//! the changed refcount blocks, then the header sector), frees the clusters only they used
//! (holes punched, reused by later appends) and leaves every kept state byte-identical. The
//! state the active layer shows is always kept. `--dry-run` says which states would go and
//! which rule keeps each kept one, and changes nothing. A QCOW2 image that is not an archive
//! (not written by e2image-rs, or without states) is refused before it is opened for writing.

use crate::archive::{decide, open_archive, Decision, DecisionDoc};
use crate::plan::PrunePlan;
use crate::sys::report;
use crate::text::{format_date, size};
use anyhow::{Context, Result};
use serde::Serialize;
use std::fmt::Write;
use std::path::Path;

/// The `--json` document of `prune`.
#[derive(Debug, Serialize)]
struct PruneDoc {
    archive: String,
    dry_run: bool,
    /// Every state, in snapshot-table order (the states of a dry run, or before the prune).
    states: Vec<DecisionDoc>,
    /// States removed (a dry run: that would be).
    removed: usize,
    /// The archive's apparent size before and after, bytes.
    bytes_before: u64,
    bytes_after: u64,
    exit_status: i32,
}

/// Runs the prune; prints its report (text or JSON) on stdout once the prune is committed
/// (or, for a dry run, decided), and notes on stderr.
///
/// # Errors
/// Not a QCOW2 image, or not an archive (no export record, no states); the archive cannot
/// be opened, is locked or not usable; the commit fails (the archive is then as it was: the
/// header is written last).
pub fn run(plan: &PrunePlan) -> Result<()> {
    let mut archive = open_archive(&plan.archive)?;
    let active = archive.editor.snapshot_matching_active();
    let decisions = decide(&archive.editor, &plan.policy, None, active);
    let before = file_size(&plan.archive);
    let going: Vec<usize> = decisions
        .iter()
        .filter(|d| d.kept.is_none())
        .filter_map(|d| d.snapshot)
        .collect();
    for n in &archive.notes {
        report::note(n);
    }
    if !plan.dry_run && !going.is_empty() {
        for &i in &going {
            archive.editor.remove_snapshot(i)?;
        }
        archive
            .editor
            .commit(None, &[])
            .with_context(|| format!("cannot prune {}", plan.archive.display()))?;
    }
    let after = file_size(&plan.archive);
    if plan.json {
        report::json(&PruneDoc {
            archive: plan.archive.display().to_string(),
            dry_run: plan.dry_run,
            states: decisions.iter().map(DecisionDoc::from).collect(),
            removed: going.len(),
            bytes_before: before,
            bytes_after: after,
            exit_status: crate::exit::EXIT_OK,
        });
    } else {
        report::text(&render(plan, &decisions, before, after));
    }
    Ok(())
}

/// The text report: one line per state, newest first.
fn render(plan: &PrunePlan, decisions: &[Decision], before: u64, after: u64) -> String {
    let mut d: Vec<&Decision> = decisions.iter().collect();
    d.sort_by_key(|x| std::cmp::Reverse(x.order));
    let kept = d.iter().filter(|x| x.kept.is_some()).count();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "prune of {}: keep {kept} state(s), remove {}{}",
        plan.archive.display(),
        d.len() - kept,
        if plan.dry_run {
            " (dry run, nothing changed)"
        } else {
            ""
        }
    );
    for x in d {
        let (what, why) = match &x.kept {
            Some(r) => ("keep  ", r.words().join(", ")),
            None => ("remove", String::new()),
        };
        let date = format_date(i64::from(x.date.0));
        let _ = writeln!(s, "  {what} {:<24} {date}  {why}", x.name);
    }
    if !plan.dry_run {
        let _ = writeln!(
            s,
            "  apparent size of the archive: {} → {}",
            size(before),
            size(after)
        );
    }
    s
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

//! `e2image-rs prune ARCHIVE --keep-* N`: removes the states of an archive that no retention
//! rule keeps, in place and crash-safely (one `qcow::Editor` commit: a new snapshot table and
//! the changed refcount blocks, then the header sector), frees the clusters only they used
//! (holes punched, reused by later appends) and leaves every kept state byte-identical. The
//! state the active layer shows is always kept. `--dry-run` says which states would go and
//! which rule keeps each kept one, and changes nothing.

use crate::archive::{decide, decisions_json, open_archive, Decision};
use crate::plan::PrunePlan;
use crate::text::format_date;
use anyhow::{Context, Result};
use std::fmt::Write;

/// Runs the prune; prints its report (text or JSON) on stdout and notes on stderr.
///
/// # Errors
/// The archive cannot be opened, is locked or not usable; the commit fails (the archive is
/// then as it was: the header is written last).
pub fn run(plan: &PrunePlan) -> Result<()> {
    let mut archive = open_archive(&plan.archive)?;
    archive.record()?;
    let active = archive.editor.snapshot_matching_active();
    let decisions = decide(&archive.editor, &plan.policy, None, active);
    let before = file_size(&plan.archive);
    let going: Vec<usize> = decisions
        .iter()
        .filter(|d| d.kept.is_none())
        .filter_map(|d| d.snapshot)
        .collect();
    for n in &archive.notes {
        eprintln!("e2image-rs: note: {n}");
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
        let doc = serde_json::json!({
            "archive": plan.archive.display().to_string(),
            "dry_run": plan.dry_run,
            "states": decisions_json(&decisions),
            "removed": going.len(),
            "bytes_before": before,
            "bytes_after": after,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", render(plan, &decisions, before, after));
    }
    Ok(())
}

/// The text report: one line per state, newest first.
fn render(plan: &PrunePlan, decisions: &[Decision], before: u64, after: u64) -> String {
    let mut d: Vec<&Decision> = decisions.iter().collect();
    d.sort_by_key(|x| std::cmp::Reverse(x.date));
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
            "  archive: {} → {} (apparent size)",
            crate::text::size(before),
            crate::text::size(after)
        );
    }
    s
}

fn file_size(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

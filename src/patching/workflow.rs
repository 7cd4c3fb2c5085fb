//! The one runner of the commands that change a target through a patch (`rollback`, `apply`):
//! the three forms of a [`PatchPlan`] — the first run, `--resume`, `--undo` — run and
//! reported the same way; only where the new bytes come from differs, behind [`NewBytes`].
//!
//! The first run: the command's [`NewBytes::prepare`] checks everything and writes the patch
//! (nothing touches the target before it returns; a refusal says the target is untouched);
//! a dry run reports and stops; otherwise the target is driven to the patch's new side and
//! the report follows (text: also when the drive failed, before its error). `--resume` and
//! `--undo` verify the patch and drive the target ([`finish`]). Reports go through
//! `sys::report`, after the work is committed or before it starts, never in between.

use super::command::Command;
use super::engine::{Driven, Goal};
use super::session::{drive_fresh, finish, then};
use super::target::Target;
use crate::exit::{fail, EXIT_OK};
use crate::plan::{PatchPlan, PatchRun, PatchStart};
use crate::sys::report;
use anyhow::Result;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A patch written and flushed, ready to drive the target with.
pub struct Ready {
    /// The patch.
    pub patch: PathBuf,
    /// The opened, locked target.
    pub target: Target,
}

/// Where a patch command's new bytes come from (a state of an image, a delta), and how its
/// first run reports.
pub trait NewBytes: Sized {
    /// The command ("rollback", "apply").
    const COMMAND: Command;
    /// What the first run found, for its report.
    type Report;
    /// The report's `--json` document.
    type Doc: Serialize;

    /// Everything before the first write to the target: checks, what to write, the patch
    /// (and undo file) written and flushed — or, for a dry run, only the report.
    ///
    /// # Errors
    /// Refusals and failures; nothing was written to the target.
    fn prepare(start: &PatchStart<Self>) -> Result<(Self::Report, Option<Ready>)>;

    /// The text report (`dry_run`: what would be written).
    fn render(report: &Self::Report, dry_run: bool) -> String;

    /// The JSON document: planned (`driven` absent: a dry run) or done.
    fn doc(report: &Self::Report, driven: Option<&Driven>, patch: Option<&Path>) -> Self::Doc;

    /// The closing line of a first run that drove the target.
    fn done_line(report: &Self::Report, driven: &Driven, patch: &Path, target: &Target) -> String;
}

/// Runs a patch command's plan; returns the exit status (0 done; 1 refused or failed, and the
/// message says where the target stands).
pub fn run<S: NewBytes>(plan: &PatchPlan<S>) -> i32 {
    let r = match &plan.run {
        PatchRun::Start(s) => first_run(s, plan),
        PatchRun::Finish {
            patch,
            target,
            resume,
            offset,
        } => resume_or_undo(patch, target, *offset, *resume, plan),
    };
    match r {
        Ok(()) => EXIT_OK,
        Err(e) => fail(&e, plan.json),
    }
}

/// `--resume` / `--undo`: verify the patch, then drive the target to its new or old side.
fn resume_or_undo<S>(
    patch: &Path,
    target: &Path,
    offset: u64,
    resume: bool,
    plan: &PatchPlan<S>,
) -> Result<()> {
    let goal = if resume { Goal::New } else { Goal::Old };
    let f = finish(patch, target, offset, goal, plan.progress)?;
    if plan.json {
        report::json(&with_offset(&f.doc(target, patch, goal), offset));
    } else {
        report::line(&f.line(target, patch, goal));
    }
    Ok(())
}

/// The first run: prepare (the patch written), drive the target, then report.
fn first_run<S: NewBytes>(s: &PatchStart<S>, plan: &PatchPlan<S>) -> Result<()> {
    let untouched = |e: anyhow::Error| {
        then(
            e,
            &format!(
                "{} refused: nothing was written, {} is untouched",
                S::COMMAND.name(),
                s.target.display()
            ),
        )
    };
    let doing = match s.dry_run {
        true => "checking TARGET and comparing it with the new bytes (dry run)",
        false => "checking TARGET, comparing it with the new bytes, writing the patch",
    };
    let what = format!("{}: {doing}", S::COMMAND.name());
    report::phase(plan.progress, &what);
    let (rep, ready) = S::prepare(s).map_err(untouched)?;
    let Some(ready) = ready else {
        match plan.json {
            true => report::json(&with_offset(&S::doc(&rep, None, None), s.offset)),
            false => report::text(&S::render(&rep, true)),
        }
        return Ok(());
    };
    let d = drive_fresh(&ready.patch, &ready.target, S::COMMAND, plan.progress);
    if plan.json {
        let doc = S::doc(&rep, Some(&d?), Some(&ready.patch));
        report::json(&with_offset(&doc, s.offset));
        return Ok(());
    }
    report::text(&S::render(&rep, false));
    report::line(&S::done_line(&rep, &d?, &ready.patch, &ready.target));
    Ok(())
}

/// A `--json` document followed by `target_offset`: where TARGET's filesystem starts, in
/// bytes (`-o`; 0 without it).
#[derive(Serialize)]
struct WithOffset<'a, T: Serialize> {
    #[serde(flatten)]
    doc: &'a T,
    target_offset: u64,
}

fn with_offset<T: Serialize>(doc: &T, offset: u64) -> WithOffset<'_, T> {
    WithOffset {
        doc,
        target_offset: offset,
    }
}

//! `e2image-rs rollback`: writes one state of a QCOW2 image back onto the device (or image
//! file) holding the same filesystem, atomically in effect, through a rollback patch file.
//!
//! Pipeline: open the image state and the target (refused when mounted; block devices opened
//! exclusively) → check they hold the same filesystem (UUID, block size, block count) →
//! compute the blocks the state holds (`held`) → for metadata-only images, refuse when the
//! restored files would read data blocks the target now uses otherwise (`conflicts`) →
//! compare held blocks with the target and stream the differing runs into the patch and the
//! optional e2undo file (`diff`) → flush and rename both → drive the target to the new side.
//! `--resume` and `--undo` reopen a patch, verify every checksum in it, and drive the target
//! to the new or the old side. The patch, the engine and the target are `crate::patching`'s,
//! shared with `apply`.

mod conflicts;
mod diff;
mod held;
mod prepare;
mod report;

use crate::exit::{fail, EXIT_OK};
use crate::patching::{drive_fresh, finish, then, Command, Goal};
use crate::plan::{ApplyPlan, RollbackPlan};
use crate::sys::report::{self as out, Reporting};
use crate::text::size_short;
use anyhow::Result;
use std::path::Path;

/// Runs a rollback plan and returns the exit status (0 done; 1 refused or failed, and the
/// message says where the target stands); prints its own messages and its report (`how`:
/// text or JSON, progress bar) before the target is touched (a dry run) or after the drive.
pub fn run(plan: &RollbackPlan, how: Reporting) -> i32 {
    let r = match plan {
        RollbackPlan::Resume { patch, target } => resume_or_undo(patch, target, Goal::New, how),
        RollbackPlan::Undo { patch, target } => resume_or_undo(patch, target, Goal::Old, how),
        RollbackPlan::Apply(a) => apply(a, how),
    };
    match r {
        Ok(()) => EXIT_OK,
        Err(e) => fail(&e, how.json),
    }
}

/// `--resume` / `--undo`: verify the patch, then drive the target to `goal`.
fn resume_or_undo(patch: &Path, target: &Path, goal: Goal, how: Reporting) -> Result<()> {
    let f = finish(patch, target, goal, how.progress)?;
    if how.json {
        out::json(&f.doc(target, patch, goal));
    } else {
        out::line(&f.line(target, patch, goal));
    }
    Ok(())
}

/// The first run: plan, write the patch (and undo file), drive the target, then report (the
/// text report also when the drive failed, before its error).
fn apply(a: &ApplyPlan, how: Reporting) -> Result<()> {
    let untouched = |e: anyhow::Error| {
        then(
            e,
            &format!(
                "rollback refused: nothing was written, {} is untouched",
                a.target.display()
            ),
        )
    };
    let (facts, ready) = prepare::prepare(a).map_err(untouched)?;
    let Some((patch_path, t)) = ready else {
        if how.json {
            out::json(&facts.doc(None, None));
        } else {
            out::text(&facts.render(true));
        }
        return Ok(());
    };
    let d = drive_fresh(&patch_path, &t, Command::Rollback, how.progress);
    if how.json {
        out::json(&facts.doc(Some(&d?), Some(&patch_path)));
        return Ok(());
    }
    out::text(&facts.render(false));
    let d = d?;
    out::line(&format!(
        "{}: rolled back to {}: {} blocks ({}) written; `e2image-rs rollback --undo {} {}` rewinds it",
        t.path().display(),
        facts.state(),
        d.blocks_written,
        size_short(d.bytes_written),
        patch_path.display(),
        t.path().display()
    ));
    Ok(())
}

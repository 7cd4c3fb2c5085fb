//! `e2image-rs apply`: replays a delta (`e2image-rs -Q [-d] -x FROM..TO`) onto a device or
//! image file holding state FROM, so that it holds state TO, crash-safely through the same
//! patch machinery as rollback (`crate::patching`).
//!
//! Pipeline: open the delta and map the clusters it replaces through its L1/L2 tables
//! (`delta`) → open the target (refused when mounted or part-way; locked; block devices
//! opened exclusively) → check it holds FROM: the record's UUID, block size and block count,
//! the fingerprint of its superblock and group descriptors, and TO's through the delta laid
//! over it (`states`) → one pass over the replaced blocks only: the target's bytes feed the
//! digest of FROM's replaced blocks, the delta laid over them gives the new bytes, and the
//! blocks that differ stream into the patch (`compare`); a digest that is not the record's
//! refuses before the patch is completed → drive the target: blocks whose new bytes are all
//! zero (the discards) are discarded, the others written. `--resume` and `--undo` are the
//! patch machinery's. The work follows the delta's size: only the target's metadata (the
//! walks) and the replaced blocks are read.

mod compare;
mod delta;
mod prepare;
mod report;
mod states;

use crate::exit::{fail, EXIT_OK};
use crate::patching::{drive_fresh, finish, then, Command, Goal};
use crate::plan::{ApplyDeltaPlan, ApplyStart};
use crate::sys::report::{self as out, Reporting};
use anyhow::Result;
use std::path::Path;

/// Runs an apply plan and returns the exit status (0 done; 1 refused or failed, and the
/// message says where the target stands); prints its own messages and its report (`how`:
/// text or JSON, progress bar) before the target is touched (a dry run) or after the drive.
pub fn run(plan: &ApplyDeltaPlan, how: Reporting) -> i32 {
    let r = match plan {
        ApplyDeltaPlan::Start(s) => start(s, how),
        ApplyDeltaPlan::Finish {
            patch,
            target,
            resume,
            ..
        } => resume_or_undo(patch, target, *resume, how),
    };
    match r {
        Ok(()) => EXIT_OK,
        Err(e) => fail(&e, plan.json()),
    }
}

/// `--resume` / `--undo`: verify the patch, then drive the target to TO or back to FROM.
fn resume_or_undo(patch: &Path, target: &Path, resume: bool, how: Reporting) -> Result<()> {
    let goal = if resume { Goal::New } else { Goal::Old };
    let f = finish(patch, target, goal, how.progress)?;
    if how.json {
        out::json(&f.doc(target, patch, goal));
    } else {
        out::line(&f.line(target, patch, goal));
    }
    Ok(())
}

/// The first run: check, write the patch (and undo file), drive the target, then report
/// (the text report also when the drive failed, before its error).
fn start(s: &ApplyStart, how: Reporting) -> Result<()> {
    let untouched = |e: anyhow::Error| {
        then(
            e,
            &format!(
                "apply refused: nothing was written, {} is untouched",
                s.target.display()
            ),
        )
    };
    let (rep, ready) = prepare::prepare(s).map_err(untouched)?;
    let Some(ready) = ready else {
        if how.json {
            out::json(&rep.doc(true, None));
        } else {
            out::text(&rep.render(true));
        }
        return Ok(());
    };
    let d = drive_fresh(&ready.patch, &ready.target, Command::Apply, how.progress);
    if how.json {
        out::json(&rep.doc(false, Some(&d?)));
    } else {
        out::text(&rep.render(false));
        out::line(&rep.done_line(&d?));
    }
    Ok(())
}

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
use anyhow::Result;
use serde_json::json;
use std::path::Path;

/// Runs an apply plan and returns the exit status (0 done; 1 refused or failed, and the
/// message says where the target stands); prints its own messages.
pub fn run(plan: &ApplyDeltaPlan) -> i32 {
    let r = match plan {
        ApplyDeltaPlan::Start(s) => start(s),
        ApplyDeltaPlan::Finish {
            patch,
            target,
            resume,
            json,
        } => resume_or_undo(patch, target, *resume, *json),
    };
    match r {
        Ok(()) => EXIT_OK,
        Err(e) => fail(&e, plan.json()),
    }
}

/// `--resume` / `--undo`: verify the patch, then drive the target to TO or back to FROM.
fn resume_or_undo(patch: &Path, target: &Path, resume: bool, json: bool) -> Result<()> {
    let goal = if resume { Goal::New } else { Goal::Old };
    let f = finish(patch, target, goal)?;
    if json {
        let d = &f.driven;
        let doc = json!({
            "target": target.display().to_string(),
            "patch": patch.display().to_string(),
            "goal": if resume { "to" } else { "from" },
            "already": d.already,
            "blocks_written": d.blocks_written,
            "bytes_written": d.bytes_written,
            "blocks_discarded": d.blocks_discarded,
            "bytes_discarded": d.bytes_discarded,
            "patch_state": f.state.name(),
            "exit_status": EXIT_OK,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("{}", f.line(target, patch, goal));
    }
    Ok(())
}

/// The first run: check, write the patch (and undo file), then drive the target.
fn start(s: &ApplyStart) -> Result<()> {
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
    if !s.json {
        print!("{}", rep.render(s.dry_run));
    }
    let Some(ready) = ready else {
        if s.json {
            println!("{}", serde_json::to_string_pretty(&rep.json(true, None))?);
        }
        return Ok(());
    };
    let d = drive_fresh(&ready.patch, &ready.target, Command::Apply)?;
    if s.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rep.json(false, Some(&d)))?
        );
    } else {
        println!("{}", rep.done_line(&d));
    }
    Ok(())
}

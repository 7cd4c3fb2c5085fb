//! `e2image-rs rollback`: writes one state of a QCOW2 image back onto the device (or image
//! file) holding the same filesystem, atomically in effect, through a rollback patch file.
//!
//! Pipeline: open the image state and the target (refused when mounted; block devices opened
//! exclusively) → check they hold the same filesystem (UUID, block size, block count) →
//! compute the blocks the state holds (`held`) → for metadata-only images, refuse when the
//! restored files would read data blocks the target now uses otherwise (`conflicts`) →
//! compare held blocks with the target and stream the differing runs into the patch and the
//! optional e2undo file (`diff`) → flush and rename both → drive the target to the new side
//! (`engine`). `--resume` and `--undo` reopen a patch, verify every checksum in it, and drive
//! the target to the new or the old side. The patch format is in `patch` and README.md.

mod conflicts;
mod diff;
mod e2undo;
mod engine;
mod held;
mod patch;
mod prepare;
mod report;
mod target;

use crate::exit::{fail, EXIT_OK};
use crate::plan::{ApplyPlan, RollbackPlan};
use crate::text::uuid;
use anyhow::{bail, Context, Result};
use engine::{drive, DriveError, Faults, Goal};
use ext::{SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};
use patch::{Patch, PatchState};
use std::path::Path;
use target::{part_way_patch, Target};

/// Runs a rollback plan and returns the exit status (0 done; 1 refused or failed, and the
/// message says where the target stands); prints its own messages.
pub fn run(plan: &RollbackPlan) -> i32 {
    let r = match plan {
        RollbackPlan::Resume { patch, target } => finish(patch, target, Goal::New),
        RollbackPlan::Undo { patch, target } => finish(patch, target, Goal::Old),
        RollbackPlan::Apply(a) => apply(a),
    };
    match r {
        Ok(()) => EXIT_OK,
        Err(e) => fail(&e, false),
    }
}

/// `--resume` / `--undo`: verify the patch, then drive the target to `goal`.
fn finish(patch: &Path, target: &Path, goal: Goal) -> Result<()> {
    let t = Target::open(target, true).map_err(|e| then(e, "nothing was written"))?;
    let mut p = Patch::open(patch, true).map_err(|e| unusable_patch(e, patch, &t))?;
    check_patch_target(&p, &t)?;
    let before = p.state();
    let d = drive(&mut p, &t, goal, &mut Faults::from_env())
        .map_err(|e| stated(e, patch, &t, before))?;
    let (tp, pp) = (t.path().display(), patch.display());
    let side = match goal {
        Goal::New => "the rolled-back state",
        Goal::Old => "its state from before the rollback",
    };
    if d.already {
        println!(
            "{tp} already holds {side}; nothing was written (patch {pp} is {})",
            p.state().name()
        );
    } else {
        println!(
            "{tp} holds {side}: {} blocks ({} bytes) written; patch {pp} is {}",
            d.blocks_written,
            d.bytes_written,
            p.state().name()
        );
    }
    Ok(())
}

/// A patch that cannot be opened or fails its checksums: says where the target stands and
/// what can still bring it back.
fn unusable_patch(e: anyhow::Error, patch: &Path, t: &Target) -> anyhow::Error {
    let tp = t.path().display();
    let part_way = read_target_sb_raw(t)
        .ok()
        .and_then(|sb| part_way_patch(&sb));
    let state = match part_way {
        Some(by) => format!(
            "nothing was written; {tp} is part-way through the rollback of patch {by}, and {pp} cannot finish or rewind it: restore the patch from a copy and run `e2image-rs rollback --resume` or `--undo` again, or rewind with the undo file if one was written (`e2undo FILE {tp}`), else repair with `e2fsck -f {tp}`",
            pp = patch.display()
        ),
        None => format!("nothing was written; {tp} is as it was"),
    };
    then(e, &state)
}

/// The error `e` followed by what it means for the target: "problem; consequence".
fn then(e: anyhow::Error, consequence: &str) -> anyhow::Error {
    anyhow::anyhow!("{}; {consequence}", crate::exit::error_text(&e))
}

/// The target's superblock must name the patch's filesystem (it may hold either side, or the
/// not-clean variant, so only the identity fields are compared).
fn check_patch_target(p: &Patch, t: &Target) -> Result<()> {
    let sb = read_target_sb(t)?;
    let h = &p.header;
    if sb.s_uuid != h.fs_uuid || sb.block_size != h.block_size {
        bail!(
            "{} holds filesystem {} ({}-byte blocks), the patch is for {} ({}-byte blocks); nothing was written",
            t.path().display(),
            uuid(&sb.s_uuid),
            sb.block_size,
            uuid(&h.fs_uuid),
            h.block_size
        );
    }
    Ok(())
}

/// Turns a drive error into a message stating where the target stands and what to do next;
/// `before` is the patch's state when this run began.
fn stated(e: DriveError, patch: &Path, t: &Target, before: PatchState) -> anyhow::Error {
    let (p, tp) = (patch.display(), t.path().display());
    let state = if e.touched {
        format!("{tp} is part-way: finish with `e2image-rs rollback --resume {p} {tp}`, or rewind with `e2image-rs rollback --undo {p} {tp}`")
    } else if before == PatchState::Prepared {
        format!("nothing was written; {tp} is untouched")
    } else if matches!(before, PatchState::Applying | PatchState::Undoing) {
        format!("this run wrote nothing; {tp} is part-way, as the interrupted run of {p} left it, and something else has written to it since, so neither --resume nor --undo can finish exactly: rewind with the undo file if one was written (`e2undo FILE {tp}`), else repair with `e2fsck -f {tp}`")
    } else {
        format!(
            "this run wrote nothing; {tp} is as the earlier run of {p} left it (patch {})",
            before.name()
        )
    };
    then(e.error, &state)
}

/// The target's primary superblock bytes.
fn read_target_sb_raw(t: &Target) -> Result<Vec<u8>> {
    let mut raw = vec![0u8; SUPERBLOCK_SIZE];
    t.read_at(SUPERBLOCK_OFFSET, &mut raw)?;
    Ok(raw)
}

fn read_target_sb(t: &Target) -> Result<ext::Superblock> {
    let raw = read_target_sb_raw(t)?;
    ext::Superblock::parse(&raw).with_context(|| {
        format!(
            "{}: no valid ext2/3/4 superblock at byte {SUPERBLOCK_OFFSET}; nothing was written",
            t.path().display()
        )
    })
}

/// The first run: plan, write the patch (and undo file), then drive the target.
fn apply(a: &ApplyPlan) -> Result<()> {
    let untouched = |e: anyhow::Error| {
        then(
            e,
            &format!(
                "rollback refused: nothing was written, {} is untouched",
                a.target.display()
            ),
        )
    };
    let Some((patch_path, t, label)) = prepare::prepare(a).map_err(untouched)? else {
        return Ok(());
    };
    let mut p = Patch::open_fresh(&patch_path)?;
    let d = drive(&mut p, &t, Goal::New, &mut Faults::from_env())
        .map_err(|e| stated(e, &patch_path, &t, PatchState::Prepared))?;
    println!(
        "{}: rolled back to {label}: {} blocks ({} bytes) written; `e2image-rs rollback --undo {} {}` rewinds it",
        t.path().display(),
        d.blocks_written,
        d.bytes_written,
        patch_path.display(),
        t.path().display()
    );
    debug_assert_eq!(p.state(), PatchState::Done);
    Ok(())
}

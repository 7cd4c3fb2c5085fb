//! The runs of rollback and apply that drive a target through a patch, and what their
//! failures mean for the target: `--resume` and `--undo` ([`finish`]), the first drive after
//! the patch was written ([`drive_fresh`]), and the messages stating where the target stands
//! and which command finishes or rewinds it.

use super::command::Command;
use super::engine::{drive, DriveError, Driven, Faults, Goal};
use super::patch::{Patch, PatchState};
use super::target::{part_way, Target};
use crate::sys::report::{self, Progress};
use crate::text::{size_short, uuid};
use anyhow::{bail, Context, Result};
use ext::{SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};
use std::path::Path;

/// What `--resume` or `--undo` did.
#[derive(Debug)]
pub struct Finished {
    /// The drive's totals.
    pub driven: Driven,
    /// The command the patch belongs to.
    pub command: Command,
    /// The patch's state afterwards.
    pub state: PatchState,
}

impl Finished {
    /// The one-line summary: what the target holds now, what was written, the patch's state.
    pub fn line(&self, target: &Path, patch: &Path, goal: Goal) -> String {
        let (tp, pp) = (target.display(), patch.display());
        let side = match goal {
            Goal::New => self.command.new_side(),
            Goal::Old => self.command.old_side(),
        };
        let d = &self.driven;
        if d.already {
            return format!(
                "{tp} already holds {side}; nothing was written (patch {pp} is {})",
                self.state.name()
            );
        }
        let discarded = if d.blocks_discarded > 0 {
            format!(
                ", {} blocks ({}) discarded",
                d.blocks_discarded,
                size_short(d.bytes_discarded)
            )
        } else {
            String::new()
        };
        format!(
            "{tp} holds {side}: {} blocks ({}) written{discarded}; patch {pp} is {}",
            d.blocks_written,
            size_short(d.bytes_written),
            self.state.name()
        )
    }
}

/// The `--json` document of `--resume` and `--undo` (rollback's and apply's).
#[derive(Debug, serde::Serialize)]
pub struct FinishDoc {
    /// The command the patch belongs to: "rollback" or "apply".
    pub command: &'static str,
    /// The target's path.
    pub target: String,
    /// The patch's path.
    pub patch: String,
    /// The side reached: apply "to" (TO) or "from" (FROM); rollback "state" (the rolled-back
    /// state) or "before" (the target's state from before the rollback).
    pub goal: &'static str,
    /// The target held that side already: nothing was written.
    pub already: bool,
    /// Blocks written.
    pub blocks_written: u64,
    /// Bytes of the blocks written.
    pub bytes_written: u64,
    /// Blocks discarded (apply's zero blocks).
    pub blocks_discarded: u64,
    /// Bytes of the blocks discarded.
    pub bytes_discarded: u64,
    /// The patch's state afterwards ("done", "undone").
    pub patch_state: &'static str,
    /// 0.
    pub exit_status: i32,
}

impl Finished {
    /// The `--json` document of this run of `--resume` (`Goal::New`) or `--undo`.
    pub fn doc(&self, target: &Path, patch: &Path, goal: Goal) -> FinishDoc {
        let d = &self.driven;
        FinishDoc {
            command: self.command.name(),
            target: target.display().to_string(),
            patch: patch.display().to_string(),
            goal: match (self.command, goal) {
                (Command::Apply, Goal::New) => "to",
                (Command::Apply, Goal::Old) => "from",
                (Command::Rollback, Goal::New) => "state",
                (Command::Rollback, Goal::Old) => "before",
            },
            already: d.already,
            blocks_written: d.blocks_written,
            bytes_written: d.bytes_written,
            blocks_discarded: d.blocks_discarded,
            bytes_discarded: d.bytes_discarded,
            patch_state: self.state.name(),
            exit_status: crate::exit::EXIT_OK,
        }
    }
}

/// `--resume` / `--undo`: verify the patch, then drive the target to `goal`. Either command
/// finishes any patch; messages speak in the terms of the command that made it. With
/// `progress`, a bar on stderr counts the bytes written (see [`Progress`]).
///
/// # Errors
/// A message stating where the target stands (see [`stated`]).
pub fn finish(
    patch: &Path,
    target: &Path,
    offset: u64,
    goal: Goal,
    progress: bool,
) -> Result<Finished> {
    let t = Target::open(target, true, offset).map_err(|e| then(e, "nothing was written"))?;
    let mut p = Patch::open(patch, true).map_err(|e| unusable_patch(e, patch, &t))?;
    check_patch_offset(&p, &t, patch, goal)?;
    check_patch_target(&p, &t)?;
    let before = p.state();
    let command = Command::of(&p.header);
    let bar = bar(&p, &t, command, goal, progress);
    let driven = drive(&mut p, &t, goal, &mut Faults::from_env(), &bar);
    bar.finish();
    let driven = driven.map_err(|e| stated(e, patch, &t, before, command))?;
    Ok(Finished {
        driven,
        command,
        state: p.state(),
    })
}

/// The first drive of a patch this process has just written and flushed, to the new side;
/// with `progress`, a bar on stderr counts the bytes written.
///
/// # Errors
/// A message stating where the target stands.
pub fn drive_fresh(patch: &Path, t: &Target, command: Command, progress: bool) -> Result<Driven> {
    let mut p = Patch::open_fresh(patch)?;
    let bar = bar(&p, t, command, Goal::New, progress);
    let d = drive(&mut p, t, Goal::New, &mut Faults::from_env(), &bar);
    bar.finish();
    let d = d.map_err(|e| stated(e, patch, t, PatchState::Prepared, command))?;
    debug_assert_eq!(p.state(), PatchState::Done);
    Ok(d)
}

/// The progress bar of a drive: every patched byte ("apply: applying the patch to t.img: …
/// written", "rollback: undoing the patch on t.img: …").
fn bar(p: &Patch, t: &Target, command: Command, goal: Goal, wanted: bool) -> Progress {
    let bs = u64::from(p.header.block_size);
    let total = p.runs.iter().map(|r| r.nb_blocks.saturating_mul(bs)).sum();
    let doing = match goal {
        Goal::New => "applying the patch to",
        Goal::Old => "undoing the patch on",
    };
    let what = format!("{}: {doing} {}", command.name(), t.path().display());
    Progress::counting(wanted, total, &what, "written")
}

/// A patch that cannot be opened or fails its checksums: says where the target stands and
/// what can still bring it back.
fn unusable_patch(e: anyhow::Error, patch: &Path, t: &Target) -> anyhow::Error {
    let tp = t.path().display();
    let part = read_target_sb_raw(t).ok().and_then(|sb| part_way(&sb));
    let state = match part {
        Some(by) => format!(
            "nothing was written; {tp} is part-way through the {} of patch {}, and {pp} cannot finish or rewind it: restore the patch from a copy and run `e2image-rs {} --resume` or `--undo` again, or rewind with the undo file if one was written (`e2undo FILE {tp}`), else repair with `e2fsck -f {tp}`",
            by.command.name(),
            by.patch,
            by.command.name(),
            pp = patch.display()
        ),
        None => format!("nothing was written; {tp} is as it was"),
    };
    then(e, &state)
}

/// The error `e` followed by what it means for the target: "problem; consequence".
pub fn then(e: anyhow::Error, consequence: &str) -> anyhow::Error {
    anyhow::anyhow!("{}; {consequence}", crate::exit::error_text(&e))
}

/// The filesystem must be where the patch was made for (`-o`): a patch of partition 2 of a
/// disk image resumed or undone at another offset would write its blocks over the wrong bytes.
fn check_patch_offset(p: &Patch, t: &Target, patch: &Path, goal: Goal) -> Result<()> {
    let (want, got) = (p.header.fs_offset, t.offset());
    if want == got {
        return Ok(());
    }
    let flag = match goal {
        Goal::New => "--resume",
        Goal::Old => "--undo",
    };
    bail!(
        "patch {} was made for the filesystem at byte offset {want} of {tp}, not {got}; nothing was written: run `e2image-rs {} {flag} {} -o {want} {tp}`",
        patch.display(),
        Command::of(&p.header).name(),
        patch.display(),
        tp = t.path().display()
    );
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
fn stated(
    e: DriveError,
    patch: &Path,
    t: &Target,
    before: PatchState,
    command: Command,
) -> anyhow::Error {
    let (p, tp, c) = (patch.display(), t.path().display(), command.name());
    let state = if e.touched {
        let o = t.offset_flag();
        format!("{tp} is part-way: finish with `e2image-rs {c} --resume {p}{o} {tp}`, or rewind with `e2image-rs {c} --undo {p}{o} {tp}`")
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
///
/// # Errors
/// Read errors.
pub fn read_target_sb_raw(t: &Target) -> Result<Vec<u8>> {
    let mut raw = vec![0u8; SUPERBLOCK_SIZE];
    t.read_at(SUPERBLOCK_OFFSET, &mut raw)?;
    Ok(raw)
}

/// How the target's filesystem (superblock `tsb`) differs from the one a state or delta is
/// of (`uuid`, `block_size` in bytes, `blocks_count`): "UUID a vs b", "block size …",
/// "block count …" (target first); empty when it is the same filesystem.
pub fn identity_diffs(
    tsb: &ext::Superblock,
    fs_uuid: &[u8; 16],
    block_size: u32,
    blocks_count: u64,
) -> Vec<String> {
    let mut diffs = Vec::new();
    if &tsb.s_uuid != fs_uuid {
        diffs.push(format!("UUID {} vs {}", uuid(&tsb.s_uuid), uuid(fs_uuid)));
    }
    if tsb.block_size != block_size {
        diffs.push(format!("block size {} vs {block_size}", tsb.block_size));
    }
    if tsb.s_blocks_count != blocks_count {
        diffs.push(format!(
            "block count {} vs {blocks_count}",
            tsb.s_blocks_count
        ));
    }
    diffs
}

/// Refuses (unless `force`) a target whose journal needs recovery (`INCOMPAT_RECOVER`):
/// the next mount or e2fsck would replay the journal over the blocks `command` writes.
/// With `force`, or in a dry run, a warning on stderr instead.
///
/// # Errors
/// The refusal, naming the target and how to replay its journal first.
pub fn refuse_dirty_journal(
    t: &Target,
    tsb: &ext::Superblock,
    command: Command,
    force: bool,
    dry_run: bool,
) -> Result<()> {
    if !tsb.has_incompat(ext::incompat::RECOVER) {
        return Ok(());
    }
    let path = t.path().display();
    let why = format!(
        "{path}: its journal needs recovery (needs_recovery is set): mounting it or e2fsck would replay the journal over the blocks {} writes",
        command.name()
    );
    let how = format!(
        "replay it first with `e2fsck -E journal_only {path}` (or mount and unmount it), then run {} again",
        command.name()
    );
    if force || dry_run {
        let then = if force {
            "--force: going on"
        } else {
            "a run without --force will be refused"
        };
        report::warning(&format!("{why}; {then}"));
        return Ok(());
    }
    bail!("{why}; nothing was written.\n{how}; --force writes anyway");
}

/// The target's primary superblock, parsed.
///
/// # Errors
/// Read errors; no valid ext2/3/4 superblock.
pub fn read_target_sb(t: &Target) -> Result<ext::Superblock> {
    let raw = read_target_sb_raw(t)?;
    ext::Superblock::parse(&raw).with_context(|| {
        format!(
            "{}: no valid ext2/3/4 superblock at byte {SUPERBLOCK_OFFSET}; nothing was written",
            t.path().display()
        )
    })
}

/// Opens the target whose filesystem starts `offset` bytes into it (for writing unless
/// `dry_run`), refused while an earlier rollback or apply left it part-way.
///
/// # Errors
/// As [`Target::open`]; a part-way target.
pub fn open_target(target: &Path, offset: u64, dry_run: bool) -> Result<Target> {
    let t = Target::open(target, !dry_run, offset)?;
    if let Some(by) = part_way(&read_target_sb_raw(&t)?) {
        let c = by.command.name();
        bail!(
            "{tp} is part-way through the {c} of patch {}: finish that one first with `e2image-rs {c} --resume PATCH{o} {tp}`, or rewind it with `--undo PATCH{o} {tp}`",
            by.patch,
            o = t.offset_flag(),
            tp = t.path().display()
        );
    }
    Ok(t)
}

//! Which command a patch belongs to (rollback or apply): how messages name it, what the
//! part-way mark in the target's superblock says, and the header flag that records it.

use super::patch::{PatchHeader, FLAG_APPLY};

/// The command that made a patch; `--resume` and `--undo` of either command finish any patch,
/// and speak of it in its own command's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `e2image-rs rollback`: a state of a QCOW2 image written back.
    Rollback,
    /// `e2image-rs apply`: a delta replayed onto a replica.
    Apply,
}

impl Command {
    /// The subcommand's name ("rollback", "apply").
    pub fn name(self) -> &'static str {
        match self {
            Command::Rollback => "rollback",
            Command::Apply => "apply",
        }
    }

    /// The command recorded in a patch header.
    pub fn of(header: &PatchHeader) -> Command {
        if header.has(FLAG_APPLY) {
            Command::Apply
        } else {
            Command::Rollback
        }
    }

    /// The header flags that record this command.
    pub fn header_flags(self) -> u32 {
        match self {
            Command::Rollback => 0,
            Command::Apply => FLAG_APPLY,
        }
    }

    /// Prefix of the part-way mark in `s_last_mounted`.
    pub(super) fn mark(self) -> &'static str {
        match self {
            Command::Rollback => "e2image-rs rollback: ",
            Command::Apply => "e2image-rs apply: ",
        }
    }

    /// What the target holds on the new side of the patch.
    pub fn new_side(self) -> &'static str {
        match self {
            Command::Rollback => "the rolled-back state",
            Command::Apply => "the delta's TO state",
        }
    }

    /// What the target holds on the old side.
    pub fn old_side(self) -> &'static str {
        match self {
            Command::Rollback => "its state from before the rollback",
            Command::Apply => "its state from before the apply (FROM)",
        }
    }

    /// Both commands, for reading a part-way mark.
    pub(super) const ALL: [Command; 2] = [Command::Rollback, Command::Apply];
}

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
//! to the new or the old side. The patch, the engine, the target and the runner of the three
//! forms are `crate::patching`'s, shared with `apply`: this module says where the new bytes
//! come from ([`NewBytes`] for a state of an image).

mod conflicts;
mod diff;
mod held;
mod prepare;
mod report;

use crate::patching::{Command, Driven, NewBytes, Ready, Target};
use crate::plan::{PatchStart, RollbackSource};
use crate::text::size_short;
use anyhow::Result;
use std::path::Path;

impl NewBytes for RollbackSource {
    const COMMAND: Command = Command::Rollback;
    type Report = report::Facts;
    type Doc = report::RollbackDoc;

    fn prepare(start: &PatchStart<Self>) -> Result<(report::Facts, Option<Ready>)> {
        let (facts, ready) = prepare::prepare(start)?;
        Ok((facts, ready.map(|(patch, target)| Ready { patch, target })))
    }

    fn render(facts: &report::Facts, dry_run: bool) -> String {
        facts.render(dry_run)
    }

    fn doc(facts: &report::Facts, driven: Option<&Driven>, patch: Option<&Path>) -> Self::Doc {
        facts.doc(driven, patch)
    }

    fn done_line(facts: &report::Facts, d: &Driven, patch: &Path, t: &Target) -> String {
        format!(
            "{}: rolled back to {}: {} blocks ({}) written; `e2image-rs rollback --undo {}{} {}` rewinds it",
            t.path().display(),
            facts.state(),
            d.blocks_written,
            size_short(d.bytes_written),
            patch.display(),
            t.offset_flag(),
            t.path().display()
        )
    }
}

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
//! zero (the discards) are discarded, the others written. `--resume`, `--undo` and the runner
//! of the three forms are the patch machinery's: this module says where the new bytes come
//! from ([`NewBytes`] for a delta). The work follows the delta's size: only the target's metadata (the
//! walks) and the replaced blocks are read. DELTA `-` reads the delta from standard input
//! (`stdin`): a one-pass stream is consumed by the pass itself, and its TO fingerprint is
//! checked after the pass, on the target with the patch laid over it, before the patch is
//! completed; nothing touches the target before every byte has arrived and checked.

mod compare;
mod delta;
mod prepare;
mod report;
mod states;
mod stdin;

use crate::patching::{Command, Driven, NewBytes, Ready, Target};
use crate::plan::{ApplySource, PatchStart};
use anyhow::Result;
use std::path::Path;

impl NewBytes for ApplySource {
    const COMMAND: Command = Command::Apply;
    type Report = report::Report;
    type Doc = report::ApplyDoc;

    fn prepare(start: &PatchStart<Self>) -> Result<(report::Report, Option<Ready>)> {
        prepare::prepare(start)
    }

    fn render(rep: &report::Report, dry_run: bool) -> String {
        rep.render(dry_run)
    }

    fn doc(rep: &report::Report, driven: Option<&Driven>, _patch: Option<&Path>) -> Self::Doc {
        rep.doc(driven.is_none(), driven)
    }

    fn done_line(rep: &report::Report, d: &Driven, _patch: &Path, target: &Target) -> String {
        rep.done_line(d, &target.offset_flag())
    }
}

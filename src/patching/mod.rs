//! Changing a filesystem's device or image file in place, crash-safely, through a patch file:
//! the machinery `rollback` and `apply` share.
//!
//! A run compares what the target holds with what it should hold and streams the blocks that
//! differ into a patch (old and new bytes of every block, every byte checksummed) and
//! optionally an e2fsprogs undo file (`writer`); both are flushed before the target is touched.
//! The engine then drives the target to the patch's new side (or, for `--undo`, its old side):
//! a "not clean" superblock naming the patch first, the runs, the goal superblock last
//! (`engine`); `--resume` and `--undo` reopen a patch, verify it, and drive the target again
//! (`session`), classifying every patched block (torn writes per 512-byte sector). Files:
//! `patch/` (the format), `target` (opening, locking, writing and discarding the target, the
//! part-way mark), `e2undo/` (undo files), `command` (rollback or apply: messages, marks),
//! `affected` (blocks per class and files a patch changes, for the reports), `workflow` (the
//! one runner of the three forms of both commands, over [`NewBytes`]).

mod affected;
mod command;
mod e2undo;
mod engine;
mod patch;
mod session;
mod target;
mod workflow;
mod writer;

pub use affected::{by_class, owners_of};
pub use command::Command;
pub use engine::Driven;
pub use patch::{sha256, PatchHeader, FLAG_DISCARD_ZEROS};
pub use session::{identity_diffs, open_target, read_target_sb, refuse_dirty_journal};
pub use target::Target;
pub use workflow::{run, NewBytes, Ready};
pub use writer::{emit_differing, PatchFiles, RunSink};

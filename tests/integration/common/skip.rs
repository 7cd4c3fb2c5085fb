//! Tools, the `../shared` corpus, and skipping a test visibly (fatal under `CI=true` when a
//! tool or the corpus is missing): the workspace's one implementation (`tests/support/skip.rs`),
//! plus the oracles most tests of this crate need ([`ORACLES`], [`skip`]).

#[path = "../../support/skip.rs"]
mod imp;
pub use imp::*;

/// The tools most tests need: the oracles e2fsprogs (mke2fs, e2image, e2fsck, debugfs) and
/// qemu-img, and python3, which the fixture scripts (`fixtures/*.sh`) run.
pub const ORACLES: [&str; 6] = [
    "mke2fs", "e2image", "e2fsck", "debugfs", "qemu-img", "python3",
];

/// True if all of [`ORACLES`] are installed (says nothing; see [`skip`]).
pub fn have_oracles() -> bool {
    ORACLES.iter().all(|t| have(t))
}

/// True (after saying so; panics under `CI=true`) when one of [`ORACLES`] is missing: the
/// caller returns.
#[track_caller]
pub fn skip() -> bool {
    !require(&ORACLES)
}

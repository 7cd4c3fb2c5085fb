//! Tools, the e2fsprogs corpus, and skipping a test visibly (fatal under `CI=true` when a tool
//! or the corpus is missing): the workspace's one implementation (`tests/support/skip.rs`).

#[path = "../../../../tests/support/skip.rs"]
mod imp;
pub use imp::*;

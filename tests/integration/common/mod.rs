//! Shared helpers of the integration tests, one submodule per concern, all re-exported here
//! (`common::NAME`, or `use crate::common::*`):
//! - [`skip`]: tools, the `../shared` corpus, and skipping a test visibly (fatal under
//!   `CI=true` when a tool or the corpus is missing);
//! - [`run`]: the e2image-rs binary under test and other commands;
//! - [`scratch`]: per-test scratch directories and sparse copies of images;
//! - [`fixtures`]: the fixture matrix, next3 snapshot fixtures, committed images, state chains;
//! - [`compare`]: hashes and block-by-block comparison;
//! - [`oracles`]: qemu-img and e2fsprogs run on an image, their verdicts asserted;
//! - `data` (test data), `faults` (fault injection), `loopdev` (loop devices), [`kernel`]
//!   (states the kernel writes through a loop mount, and the trees it shows).
#![allow(dead_code)]

mod compare;
mod data;
mod faults;
mod fixtures;
pub mod kernel;
mod loopdev;
mod oracles;
mod run;
mod scratch;
mod skip;

pub use compare::*;
pub use data::{mkfs_from, Xorshift};
pub use faults::{run_faulty, Stop};
pub use fixtures::*;
pub use loopdev::Loop;
pub use oracles::*;
pub use run::*;
pub use scratch::*;
pub use skip::*;

use std::path::PathBuf;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

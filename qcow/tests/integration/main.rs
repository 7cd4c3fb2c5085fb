//! The integration tests of the `qcow` crate, one test binary with a module per subject (one
//! link instead of one per file); the helpers they share are in `tests/common/`.
//!
//! `tests/scale.rs` stays a binary of its own: its memory test reads the peak resident set
//! size of the whole process, which other tests running beside it would inflate.
#![allow(clippy::print_stdout, clippy::print_stderr)] // tests report what they measured

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod checksums;
mod compressed;
mod editor_append;
mod editor_faults;
mod editor_qemu;
mod editor_refcounts;
mod editor_remove;
mod header_extensions;
mod imago_cross;
mod reader_qemu;
mod robustness;
mod snapshots_qemu;
mod stats_shared;
mod stream;
mod writer_api;
mod writer_qemu;
mod zero_clusters;

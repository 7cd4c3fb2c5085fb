//! Integration tests of the e2image-rs binary, in one test binary (as ripgrep's tests/ are):
//! one module per area, the shared helpers and oracles in `common`. Fixtures are built once
//! per target directory; every test works in its own scratch directory.
#![allow(clippy::print_stdout, clippy::print_stderr)] // tests report what they measured

mod common;

mod apply;
mod archive;
mod archive_checks;
mod archive_kernel;
mod archive_refcounts;
mod checksums;
mod cli;
mod committed;
mod compress;
mod convert;
mod copy_set;
mod corpus;
mod delta;
mod export_matrix;
mod hostile;
mod journal;
mod large;
mod messages;
mod offsets;
mod packaging;
mod partitions;
mod replay_kernel;
mod replay_states;
mod replication;
mod rollback;
mod rollback_faults;
mod safety;
mod scramble;
mod skips;
mod snapshots_next3;
mod snapshots_pit;
mod stream;
mod verify;

//! The ext crate's integration tests, one binary: the walker against e2image and the
//! e2fsprogs corpus, block owners and paths against debugfs, byte-patched images, and the
//! checksum report's two paths (verified as a copy reads, or by reading).
#![allow(clippy::print_stdout, clippy::print_stderr)] // tests report what they measured

mod checksums;
mod common;
mod corpus;
mod e2image_oracle;
mod journal;
mod orphan;
mod owners_oracle;
mod robustness;

//! QCOW2 images written and read in one pass, through a pipe (`e2image-rs -Q SOURCE - | ...`,
//! `... | e2image-rs apply - TARGET`).
//!
//! Layout (host order, nothing sought or rewritten): cluster 0 (the header, its extensions,
//! the backing file name), the refcount table, the refcount blocks, one L1 table per use of a
//! state (active first, then the snapshots in table order), the snapshot table, the L2 tables,
//! then the data clusters in the order they were planned. QEMU's `scripts/qcow2-to-stdout.py`
//! writes the same order for one state (read for the facts only); snapshots and shared
//! clusters are ours.
//!
//! Writing: a [`StreamPlan`] is told every state first, guest cluster by guest cluster — a new
//! data cluster ([`DataKind::Plain`], or [`DataKind::Payload`] of a known length for a
//! compressed cluster), a zero cluster, or a share of a data cluster planned earlier
//! ([`DataRef`]); identical L2 tables of several states are shared, as the file writer does.
//! [`StreamPlan::finish`] fixes every offset and refcount ([`StreamLayout`]);
//! [`StreamWriter::start`] writes all tables, then takes the data clusters' bytes in
//! [`DataRef`] order. Memory: the L2 tables of every state, the refcounts (2 bytes per host
//! cluster) and a fixed buffer; no temporary file.
//!
//! Reading: [`StreamImage::open`] keeps the stream's first bytes in memory until every table is
//! among them (`prefix`), then serves the mappings through an ordinary [`Reader`](crate::Reader)
//! over them and the data forward only ([`StreamData::read_cluster`], host order). An image
//! whose tables are spread through its data (QEMU's own layout) is handed back for spooling
//! ([`StreamOpen::Spool`]).
//!
//! Files: `plan.rs` (planning), `layout.rs` (offsets, refcounts, table encodings), `writer.rs`
//! (the output), `prefix.rs` (reading the tables), `reader.rs` (the one-pass image).

mod layout;
mod plan;
mod prefix;
mod reader;
mod writer;

pub use layout::StreamLayout;
pub use plan::{DataKind, DataRef, StreamPlan};
pub use prefix::{StreamOptions, DEFAULT_MAX_PREFIX_BYTES, SLACK_BYTES};
pub use reader::{StreamData, StreamImage, StreamOpen};
pub use writer::{StreamSummary, StreamWriter};

//! QCOW2 images for e2image-rs: a streaming writer with any number of L1 tables (the active layer
//! plus internal snapshots, sharing L2 tables and data clusters through refcounts), and a reader
//! for v2/v3 images made by us or by QEMU.
//!
//! Design: the writer allocates host clusters with a bump allocator, so the file is written
//! front to back: header placeholder, then data clusters and L2 tables interleaved as each L2
//! window completes, then the L1 tables, the snapshot table and finally the refcount structures
//! (sized by fixed point) and the header. Nothing refers to a cluster that is not yet written,
//! and the header is written last, so an interrupted run leaves a file without the QCOW2 magic.
//! The reader validates every on-disk value (checked arithmetic, bounded table sizes) and
//! returns [`Error`] instead of panicking on corrupt input; its `LayerReader`s use positional
//! reads only, so they can serve several threads.
//!
//! References: QEMU's `docs/interop/qcow2.rst` (cited by section name, e.g. "Snapshots") and
//! the project's notes `shared/notes/qcow2.md` (cited as "notes §n").

#![forbid(unsafe_code)]

pub mod error;
pub mod extension;
pub mod header;
mod io;
pub mod reader;
pub mod refcount;
pub mod snapshot;
pub mod stats;
pub mod table;
pub mod writer;

pub use error::Error;
pub use extension::HeaderExtension;
pub use header::{Header, Version, QCOW2_MAGIC};
pub use reader::{ClusterMapping, Layer, LayerReader, Reader};
pub use snapshot::{SnapshotInfo, SnapshotSpec};
pub use stats::LayerStats;
pub use writer::{StateId, Writer, WriterOptions, WriterSummary};

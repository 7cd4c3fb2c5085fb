//! QCOW2 images for e2image-rs: a streaming writer with any number of L1 tables (the active layer
//! plus internal snapshots, sharing L2 tables and data clusters through refcounts; deflate- or
//! zstd-compressed clusters optional), a reader for v2/v3 images made by us or by QEMU, and an
//! editor that changes an existing image in place, crash-safely (adds states, makes one the
//! active layer, removes snapshots).
//!
//! Design: the writer allocates host clusters with a bump allocator, so the file is written
//! front to back: header placeholder, then data clusters and L2 tables interleaved as each L2
//! window completes, then the L1 tables, the snapshot table and finally the refcount structures
//! (sized by fixed point) and the header. Nothing refers to a cluster that is not yet written,
//! and the header is written last, so an interrupted run leaves a file without the QCOW2 magic.
//! The reader validates every on-disk value (checked arithmetic, bounded table sizes) and
//! returns [`Error`] instead of panicking on corrupt input; its [`LayerReader`]s use positional
//! reads only, so they can serve several threads. The [`Editor`] drives a [`Writer`] over an
//! existing image: at open it counts every reference of every L1 and L2 table and refuses an
//! image whose refcounts disagree (it trusts none), then allocates clusters free in the
//! committed refcounts or past the end, copies refcount blocks on write and commits with one
//! header write, so an interrupted edit leaves the previous image intact. Guest and host
//! cluster numbers are distinct types ([`GuestCluster`], [`HostCluster`]) where both meet.
//!
//! Layers, bottom to top; a module uses only modules below it, never one above:
//!
//! | layer | modules | holds |
//! |---|---|---|
//! | ground | `error`, `bytes` | [`Error`]; big-endian fields, tables and records |
//! | geometry | `geometry` | [`Version`], the limits with their reasons, L1/L2 sizing |
//! | types | `types` | [`StateId`], [`GuestCluster`], [`HostCluster`] |
//! | format | `format/` (`header/`, `extension`, `checksums`, `table`, `snapshot`, `refcount`) | on-disk codecs: raw records, then validated structs; L1/L2 entry decoders and encoders; no I/O |
//! | compression | `compression/` (`deflate`, `zstd`, `packer`) | compressed clusters: [`Compression`] (a cluster to its payload, or "store plain"), [`decompress_cluster`], [`PayloadPacker`]; no I/O |
//! | io | `sums`, `io` | CRC-32C of the clusters written; positional reads, the writer's buffered output file, [`WriteEvent`] |
//! | reader | `reader/` (`image`, `snapshot_table`, `layer`) | [`Reader`], [`LayerReader`] |
//! | stats | `stats` | [`LayerStats`]: per-layer cluster statistics, on top of the reader |
//! | writer | `writer/` (`state`, `data`, `tables`, `finish`, `refcounts`, `free_runs`, `edit`) | [`Writer`]; its allocator over an existing image |
//! | editor | `editor/` (`open`, `census`, `references`, `copied`, `refblocks`, `commit`) | [`Editor`]: in-place edits, on top of the reader and the writer |
//! | verify | `verify/` (`walk`) | [`verify`]: structure (the editor's census), then every cluster against the checksum table; bad clusters named |
//! | stream | `stream/` (`plan`, `layout`, `writer`, `prefix`, `reader`) | [`StreamPlan`], [`StreamWriter`], [`StreamImage`]: images written and read in one pass (pipes), on top of the format codecs and the reader |
//!
//! The modules are private; this root re-exports the public API.
//!
//! References: QEMU's `docs/interop/qcow2.rst` (cited by section name, e.g. "Snapshots") and
//! the project's notes `shared/notes/qcow2.md` (cited as "notes §n").

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod bytes;
mod compression;
mod editor;
mod error;
mod format;
mod geometry;
mod io;
mod reader;
mod stats;
mod stream;
mod sums;
mod types;
mod verify;
mod writer;

pub use compression::{
    compressed_descriptor, decompress_cluster, CompressedCluster, Compression, CompressionType,
    PayloadPacker, Placement, MAX_PAYLOADS_PER_CLUSTER,
};
pub use editor::{CommitSummary, Editor};
pub use error::Error;
pub use format::checksums::{
    crc32c, ChecksumExtension, ALGORITHM_CRC32C, AUTOCLEAR_CLUSTER_CHECKSUMS, CHECKSUM_EXT_BYTES,
    EXT_CLUSTER_CHECKSUMS, FLAG_CRC_TRAILER,
};
pub use format::extension::{
    HeaderExtension, EXT_BACKING_FORMAT, EXT_BITMAPS, EXT_END, EXT_EXTERNAL_DATA_FILE,
    EXT_FEATURE_TABLE, EXT_FULL_DISK_ENCRYPTION,
};
pub use format::header::{Header, QCOW2_MAGIC};
pub use format::snapshot::{SnapshotInfo, SnapshotSpec};
pub use geometry::{max_virtual_size, Version, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS};
pub use io::WriteEvent;
pub use reader::{ClusterMapping, Layer, LayerReader, Reader};
pub use stats::{LayerStats, STATS_WINDOW_CLUSTERS};
pub use stream::{
    DataKind, DataRef, StreamData, StreamImage, StreamLayout, StreamOpen, StreamOptions,
    StreamPlan, StreamSummary, StreamWriter, DEFAULT_MAX_PREFIX_BYTES, SLACK_BYTES,
};
pub use types::{GuestCluster, HostCluster, StateId};
pub use verify::{verify, BadCluster, ClusterKind, ClusterUse, TableStatus, VerifyReport};
pub use writer::{StoredCluster, Writer, WriterOptions, WriterSummary};

//! The streaming QCOW2 writer (notes §2 and §5): any number of guest states, each becoming the
//! active layer or an internal snapshot, sharing data clusters and L2 tables through refcounts.
//!
//! Design: host clusters are bump-allocated ([`RefcountChunks`]) and written front to back
//! through one large buffer (`OutFile`). Each state keeps its L1 table sparsely (only populated
//! entries, sorted by index, with a hash of the L2 table's entries) and one open L2 window
//! (C/8 guest clusters). When a state moves to a later window, the finished window's L2 table is
//! compared with the tables other states hold at the same L1 index: an identical one is shared
//! (refcount +1), otherwise a new table is appended. Its COPIED bits reflect the refcounts at
//! that time; `finish` (in `writer/finish.rs`) corrects them in the active layer once all
//! references are known, then writes the L1 tables, the snapshot table, the refcount structures
//! and finally the header. Every state is counted as referenced by exactly one L1 table until
//! `finish`, which adjusts the counts of states used zero or several times.
//!
//! Files: `state.rs` (per-state bookkeeping), `data.rs` (guest clusters), `compressed.rs`
//! (compressed guest clusters, clusters shared whatever the base stores), `tables.rs` (L2
//! windows and tables), `finish.rs` (everything after the last data cluster), `checksums.rs`
//! (the cluster checksum table), `refcounts.rs`
//! (the cluster allocator), `free_runs.rs` (free clusters of an existing image), `edit.rs`
//! (what the editor needs: a writer over an existing image and its snapshots as states).
//!
//! Zero clusters (v3, [`Writer::write_zero_clusters`]) are L2 entries with only the zero flag:
//! no host cluster, no refcount, never COPIED. They are kept as such in windows and compare
//! equal across states, so tables holding them stay shareable.

mod checksums;
mod compressed;
mod data;
mod edit;
mod finish;
mod free_runs;
mod refcounts;
mod state;
mod tables;

use std::fs::File;

pub use compressed::StoredCluster;
pub(crate) use refcounts::RefcountChunks;
use state::State;

use crate::compression::{CompressionType, PayloadPacker};
use crate::error::Error;
use crate::format::extension::{self, HeaderExtension};
use crate::format::header::V3_HEADER_LENGTH;
use crate::geometry::{
    guest_clusters, l1_entries_within_limit, l2_entries, Version, MAX_CLUSTER_BITS,
    MIN_CLUSTER_BITS,
};
use crate::io::{OutFile, OUT_BUFFER_BYTES};
use crate::types::{GuestCluster, StateId};

/// Parameters of a new image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterOptions {
    /// log2 of the cluster size in bytes, 9..=21 (512 B .. 2 MiB).
    pub cluster_bits: u32,
    /// Virtual disk size in bytes: > 0 and a multiple of 512 (QEMU ignores a partial last
    /// sector); it need not be a multiple of the cluster size.
    pub virtual_size: u64,
    /// Format version (v2 = qemu "compat=0.10", v3 = "compat=1.1").
    pub version: Version,
}

/// What [`Writer::finish`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterSummary {
    /// Final file size in bytes.
    pub file_size: u64,
    /// Host data clusters written uncompressed.
    pub data_clusters: u64,
    /// Guest clusters written compressed ([`Writer::write_compressed_cluster`]).
    pub compressed_clusters: u64,
    /// Guest clusters mapped to an already written data cluster instead of a new one
    /// ([`Writer::share_cluster`] and the matches of [`Writer::write_clusters_dedup`]).
    pub shared_data_refs: u64,
    /// L2 tables written.
    pub l2_tables: u64,
    /// L1 entries pointing to an L2 table another L1 also uses (identical tables shared
    /// between states, and the tables copied by [`Writer::clone_state`]).
    pub shared_l2_refs: u64,
    /// L1 tables written: the active layer plus one per snapshot.
    pub states: u32,
}

/// Writes a QCOW2 image front to back: any number of guest states (each written in increasing
/// guest cluster order), sharing data clusters and identical L2 tables through refcounts;
/// [`Writer::finish`] makes one state the active layer and others internal snapshots (spec
/// "Snapshots") and writes the header last, so an interrupted run leaves no QCOW2 magic.
///
/// The editor (`Editor::writer`) lends a writer over an existing image: it allocates clusters
/// free in the image first, may share the image's clusters and tables, and its states are
/// committed by `Editor::commit` (`finish` is refused).
#[derive(Debug)]
pub struct Writer {
    out: OutFile,
    version: Version,
    cluster_bits: u32,
    virtual_size: u64,
    guest_clusters: u64,
    l1_size: u32,
    refcounts: RefcountChunks,
    states: Vec<State>,
    /// The last L2 table read back: (host offset, entries).
    l2_cache: Option<(u64, Vec<u64>)>,
    /// A refcount changed after allocation, so COPIED bits written earlier may be stale.
    refcounts_changed: bool,
    /// Flush the file to stable storage at the end of [`Writer::finish`].
    sync: bool,
    /// Header extensions written after the header by [`Writer::finish`].
    extensions: Vec<HeaderExtension>,
    /// Backing file name and format (spec "Header": backing_file_offset; extension
    /// "Backing file format name").
    backing: Option<(String, String)>,
    summary: WriterSummary,
    /// The image's compression type (header `compression_type`).
    compression: CompressionType,
    /// Where the next compressed payload goes.
    packer: PayloadPacker,
    /// Adding states to an existing image (`Writer::in_place`, for the editor): `finish` is
    /// refused, the editor commits.
    editing: bool,
    /// The image gets a cluster checksum table (`writer/checksums.rs`).
    checksums: bool,
}

impl Writer {
    /// Starts a new image in `file`, a new, empty, writable file (the caller writes to a
    /// temporary name and renames it after [`Writer::finish`]). Cluster 0 stays reserved for
    /// the header, which `finish` writes last. All-zero L1 clusters are left as holes, which is
    /// why the file must be empty.
    ///
    /// Errors: [`Error::Limit`] if `cluster_bits` is outside 9..=21 or the virtual size needs an
    /// L1 table over 32 MiB (4 Mi entries); [`Error::InvalidArgument`] if the virtual size is 0
    /// or not a multiple of 512, or the file is not empty; [`Error::Io`].
    pub fn create(file: File, opts: WriterOptions) -> Result<Writer, Error> {
        let len = file
            .metadata()
            .map_err(Error::io("reading the output file size", 0))?
            .len();
        if len != 0 {
            return Err(Error::InvalidArgument(format!(
                "the output file is not empty ({len} bytes)"
            )));
        }
        let cb = opts.cluster_bits;
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cb) {
            return Err(Error::Limit(format!(
                "cluster_bits {cb} outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"
            )));
        }
        if opts.virtual_size == 0 || !opts.virtual_size.is_multiple_of(512) {
            return Err(Error::InvalidArgument(format!(
                "virtual size {} is not a positive multiple of 512",
                opts.virtual_size
            )));
        }
        let l1_size = l1_entries_within_limit(opts.virtual_size, cb).ok_or_else(|| {
            Error::Limit(format!(
                "virtual size {} needs an L1 table over 32 MiB (4 Mi entries) at cluster_bits {cb}",
                opts.virtual_size
            ))
        })?;
        let mut refcounts = RefcountChunks::new(cb);
        refcounts.allocate(1)?; // cluster 0: the header
        Ok(Writer {
            out: OutFile::new(file, 1u64 << cb, OUT_BUFFER_BYTES),
            version: opts.version,
            cluster_bits: cb,
            virtual_size: opts.virtual_size,
            guest_clusters: guest_clusters(opts.virtual_size, cb),
            l1_size: l1_size as u32,
            refcounts,
            states: Vec::new(),
            l2_cache: None,
            refcounts_changed: false,
            sync: true,
            extensions: Vec::new(),
            backing: None,
            summary: WriterSummary::default(),
            compression: CompressionType::Deflate,
            packer: PayloadPacker::new(),
            editing: false,
            checksums: false,
        })
    }

    /// Whether [`Writer::finish`] flushes the file to stable storage (`fsync`) after writing
    /// the header; on by default.
    pub fn set_sync(&mut self, sync: bool) {
        self.sync = sync;
    }

    /// Adds a header extension of `ext_type` (a private type, not one the spec defines) with
    /// `data`, written after the header by [`Writer::finish`] (spec "Header extensions").
    ///
    /// Errors: [`Error::InvalidArgument`] for a spec-defined or repeated type, data over
    /// 64 KiB, or the writer of an editor; [`Error::Limit`] when the header and its extensions
    /// would not fit in cluster 0.
    pub fn add_header_extension(&mut self, ext_type: u32, data: &[u8]) -> Result<(), Error> {
        if self.editing {
            return Err(Error::InvalidArgument(
                "the editor keeps the image's header extensions as they are".into(),
            ));
        }
        extension::check_new(&self.extensions, ext_type, data.len())?;
        self.extensions.push(HeaderExtension {
            ext_type,
            data: data.to_vec(),
        });
        let len = u64::from(V3_HEADER_LENGTH) + extension::encode(&self.extensions).len() as u64;
        if len > 1u64 << self.cluster_bits {
            self.extensions.pop();
            return Err(Error::Limit(format!(
                "header extensions need {len} bytes, more than cluster 0 ({} bytes)",
                1u64 << self.cluster_bits
            )));
        }
        Ok(())
    }

    /// Names a backing file (`name` as stored, e.g. a path relative to the image; `format`
    /// "raw" or "qcow2"): unallocated clusters then read from it, zero clusters read zeros
    /// (spec "Header", backing_file_offset, and the backing file format extension).
    ///
    /// Errors: [`Error::InvalidArgument`] for an empty name or one over 1023 bytes, a format
    /// other than "raw" or "qcow2", or an image being edited in place.
    pub fn set_backing_file(&mut self, name: &str, format: &str) -> Result<(), Error> {
        if self.editing {
            return Err(Error::InvalidArgument(
                "an image edited in place keeps its header (no backing file)".into(),
            ));
        }
        crate::geometry::check_backing_file(name, format)?;
        self.backing = Some((name.to_string(), format.to_string()));
        Ok(())
    }

    /// Format version of the image being written (zero clusters need [`Version::V3`]).
    pub fn version(&self) -> Version {
        self.version
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    /// Number of guest clusters of the disk: `ceil(virtual_size / C)` (the last one may be
    /// partial; it is still written as a whole cluster).
    pub fn guest_clusters(&self) -> u64 {
        self.guest_clusters
    }

    /// Number of entries of every L1 table: `ceil(virtual_size / (C · C/8))`.
    pub fn l1_size(&self) -> u32 {
        self.l1_size
    }

    /// Adds a new guest state with an empty (all unallocated) L1 table.
    pub fn new_state(&mut self) -> StateId {
        self.states.push(State::default());
        StateId::from_index(self.states.len() - 1)
    }

    pub(super) fn entries_per_l2(&self) -> u64 {
        l2_entries(self.cluster_bits)
    }

    /// The index of `state`. Errors: [`Error::InvalidArgument`] for an unknown state.
    pub(crate) fn state_index(&self, state: StateId) -> Result<usize, Error> {
        let i = state.index();
        if i >= self.states.len() {
            return Err(Error::InvalidArgument(format!(
                "unknown state {}",
                state.index()
            )));
        }
        Ok(i)
    }

    /// Checks that `count` guest clusters from `first` may be written to state `s`.
    pub(super) fn check_guest_range(
        &self,
        s: usize,
        first: GuestCluster,
        count: u64,
    ) -> Result<(), Error> {
        if self.states[s].loaded {
            return Err(Error::InvalidArgument(format!(
                "state {s} is a snapshot loaded from the image: it cannot be written to (write a new state, or clone it)"
            )));
        }
        let next = self.states[s].next_guest;
        if first < next {
            return Err(Error::InvalidArgument(format!(
                "{first} of state {s}: writes must be strictly increasing (next allowed: {})",
                next.0
            )));
        }
        if first
            .0
            .checked_add(count)
            .is_none_or(|end| end > self.guest_clusters)
        {
            return Err(Error::InvalidArgument(format!(
                "guest clusters {}+{count} exceed the disk's {} clusters",
                first.0, self.guest_clusters
            )));
        }
        Ok(())
    }

    pub(super) fn cluster_count(&self, data: &[u8]) -> Result<u64, Error> {
        if !(data.len() as u64).is_multiple_of(self.cluster_size()) {
            return Err(Error::InvalidArgument(format!(
                "data of {} bytes is not a whole number of {}-byte clusters",
                data.len(),
                self.cluster_size()
            )));
        }
        Ok(data.len() as u64 >> self.cluster_bits)
    }
}

//! [`StreamPlan`]: the whole image laid out before any byte of it is written. States are
//! described guest cluster by guest cluster (a new data cluster, a zero cluster, or a share of a
//! data cluster planned earlier); finished L2 windows identical to another state's table at the
//! same L1 index are shared, as the file writer does. Nothing is written here: data clusters
//! are numbered ([`DataRef`]) in the order their bytes will follow the tables.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hasher};

use crate::error::Error;
use crate::format::extension::{self, HeaderExtension};
use crate::format::header::V3_HEADER_LENGTH;
use crate::geometry::{
    guest_clusters, l1_entries_within_limit, l2_entries, Version, MAX_CLUSTER_BITS,
    MIN_CLUSTER_BITS,
};
use crate::types::{GuestCluster, StateId};
use crate::writer::WriterOptions;

/// What the bytes of one planned data cluster are: a whole plain cluster, or a compressed
/// payload of known length (spec "Compressed Clusters Descriptor"), byte-packed after the
/// previous payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    /// One uncompressed cluster: exactly cluster-size bytes follow.
    Plain,
    /// A compressed payload of `len` bytes (1 ..= cluster size) that inflates to one cluster.
    Payload {
        /// Payload length in bytes.
        len: u32,
    },
}

/// One planned data cluster, numbered in the order its bytes are written after the tables
/// (host order): 0, 1, ...
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DataRef(pub(crate) u64);

impl DataRef {
    /// The number of this data cluster in writing order.
    pub fn index(self) -> u64 {
        self.0
    }
}

/// A planned L2 entry: 0 unallocated, [`PROTO_ZERO`] a zero cluster, else data ref `r` as
/// `(r + 1) << 1`.
pub(super) const PROTO_ZERO: u64 = 1;

/// The data ref of a planned entry, if it maps one.
pub(super) fn proto_data(e: u64) -> Option<u64> {
    (e >= 2).then(|| (e >> 1) - 1)
}

fn proto_of(r: DataRef) -> u64 {
    (r.0 + 1) << 1
}

/// A finished L2 table of the plan: its planned entries.
#[derive(Debug)]
pub(super) struct PlanTable {
    pub(super) entries: Vec<u64>,
}

/// One state of the plan: its finished tables (sorted by L1 index) and its open window.
#[derive(Debug, Default)]
pub(super) struct PlanState {
    /// (L1 index, index into `StreamPlan::tables`), sorted by L1 index.
    pub(super) l1: Vec<(u32, usize)>,
    open: Option<(u32, Vec<u64>)>,
    next_guest: u64,
}

/// The layout of a QCOW2 image written in one pass (see the module comment of `stream`):
/// states are planned first, then [`StreamPlan::finish`] fixes every offset.
#[derive(Debug)]
pub struct StreamPlan {
    pub(super) version: Version,
    pub(super) cluster_bits: u32,
    pub(super) virtual_size: u64,
    pub(super) l1_size: u32,
    guest_clusters: u64,
    pub(super) extensions: Vec<HeaderExtension>,
    pub(super) backing: Option<(String, String)>,
    pub(super) states: Vec<PlanState>,
    pub(super) tables: Vec<PlanTable>,
    /// Finished tables by (L1 index, hash of the entries), to find identical ones.
    by_hash: HashMap<(u32, u64), Vec<usize>>,
    /// Number of data clusters planned.
    pub(super) data_count: u64,
    /// The compressed payloads: (data ref, length), in data ref order.
    pub(super) payloads: Vec<(u64, u32)>,
    /// How the payloads are compressed (the header's `compression_type`).
    pub(super) compression: crate::compression::CompressionType,
    /// The image gets a cluster checksum table ([`StreamPlan::set_cluster_checksums`]).
    pub(super) cluster_checksums: bool,
}

impl StreamPlan {
    /// Starts the plan of a new image with `opts`.
    ///
    /// Errors: [`Error::Limit`] if `cluster_bits` is outside 9..=21 or the virtual size needs an
    /// L1 table over 32 MiB (4 Mi entries); [`Error::InvalidArgument`] if the virtual size is 0
    /// or not a multiple of 512.
    pub fn new(opts: WriterOptions) -> Result<StreamPlan, Error> {
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
        Ok(StreamPlan {
            version: opts.version,
            cluster_bits: cb,
            virtual_size: opts.virtual_size,
            l1_size: l1_size as u32,
            guest_clusters: guest_clusters(opts.virtual_size, cb),
            extensions: Vec::new(),
            backing: None,
            states: Vec::new(),
            tables: Vec::new(),
            by_hash: HashMap::new(),
            data_count: 0,
            payloads: Vec::new(),
            compression: crate::compression::CompressionType::Deflate,
            cluster_checksums: false,
        })
    }

    /// Gives the streamed image a cluster checksum table (docs/verify.md): its extension (with
    /// [`FLAG_CRC_TRAILER`](crate::format::checksums::FLAG_CRC_TRAILER): the header is written
    /// before the table is known) and auto-clear bit 40 in the header, the table after the
    /// last cluster, computed as the stream is written. Costs 4 bytes of memory per host
    /// cluster.
    ///
    /// Errors: [`Error::InvalidArgument`] for a v2 image (no auto-clear bits).
    pub fn set_cluster_checksums(&mut self) -> Result<(), Error> {
        if self.version == Version::V2 {
            return Err(Error::InvalidArgument(
                "cluster checksums need QCOW2 version 3 (compat 1.1)".into(),
            ));
        }
        self.cluster_checksums = true;
        Ok(())
    }

    /// Says how the image's compressed payloads are compressed (the v3 header's
    /// `compression_type` and, for zstd, incompatible feature bit 3, as QEMU sets them).
    ///
    /// Errors: [`Error::InvalidArgument`] for zstd in a version 2 image.
    pub fn set_compression_type(
        &mut self,
        kind: crate::compression::CompressionType,
    ) -> Result<(), Error> {
        if kind == crate::compression::CompressionType::Zstd && self.version == Version::V2 {
            return Err(Error::InvalidArgument(
                "zstd compression needs QCOW2 version 3 (compat 1.1)".into(),
            ));
        }
        self.compression = kind;
        Ok(())
    }

    /// Adds a private header extension (as [`Writer::add_header_extension`](crate::Writer)).
    ///
    /// Errors: [`Error::InvalidArgument`] for a spec-defined or repeated type or data over
    /// 64 KiB; [`Error::Limit`] when the header and its extensions would not fit in cluster 0.
    pub fn add_header_extension(&mut self, ext_type: u32, data: &[u8]) -> Result<(), Error> {
        extension::check_new(&self.extensions, ext_type, data.len())?;
        self.extensions.push(HeaderExtension {
            ext_type,
            data: data.to_vec(),
        });
        let len = u64::from(V3_HEADER_LENGTH) + extension::encode(&self.extensions).len() as u64;
        if len > self.cluster_size() {
            self.extensions.pop();
            return Err(Error::Limit(format!(
                "header extensions need {len} bytes, more than cluster 0 ({} bytes)",
                self.cluster_size()
            )));
        }
        Ok(())
    }

    /// Names a backing file (as [`Writer::set_backing_file`](crate::Writer)).
    ///
    /// Errors: [`Error::InvalidArgument`] for an empty name or one over 1023 bytes, or a format
    /// other than "raw" or "qcow2".
    pub fn set_backing_file(&mut self, name: &str, format: &str) -> Result<(), Error> {
        crate::geometry::check_backing_file(name, format)?;
        self.backing = Some((name.to_string(), format.to_string()));
        Ok(())
    }

    /// Format version of the image.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    /// Number of guest clusters of the disk.
    pub fn guest_clusters(&self) -> u64 {
        self.guest_clusters
    }

    /// Number of data clusters planned so far.
    pub fn data_clusters(&self) -> u64 {
        self.data_count
    }

    /// Adds a new guest state (all unallocated).
    pub fn new_state(&mut self) -> StateId {
        self.states.push(PlanState::default());
        StateId::from_index(self.states.len() - 1)
    }

    /// Plans guest cluster `guest_cluster` of `state` as a new data cluster of `kind`; returns
    /// its number in writing order (bytes are handed to the
    /// [`StreamWriter`](super::StreamWriter) in that order).
    ///
    /// Errors: [`Error::InvalidArgument`] for an unknown state, a guest cluster past the disk
    /// or not after the state's previous one, a payload of 0 bytes or more than a cluster.
    pub fn add_data(
        &mut self,
        state: StateId,
        guest_cluster: u64,
        kind: DataKind,
    ) -> Result<DataRef, Error> {
        if let DataKind::Payload { len } = kind {
            if len == 0 || u64::from(len) > self.cluster_size() {
                return Err(Error::InvalidArgument(format!(
                    "a compressed payload of {len} bytes (1 to {} allowed)",
                    self.cluster_size()
                )));
            }
        }
        let r = DataRef(self.data_count);
        self.set_entry(state, guest_cluster, proto_of(r))?;
        if let DataKind::Payload { len } = kind {
            self.payloads.push((r.0, len));
        }
        self.data_count += 1;
        Ok(r)
    }

    /// Plans `count` zero clusters (v3 zero flag, no host cluster) from `guest_cluster`.
    ///
    /// Errors: [`Error::InvalidArgument`] for a v2 image, an unknown state, or clusters past the
    /// disk or not after the state's previous one.
    pub fn add_zero(
        &mut self,
        state: StateId,
        guest_cluster: u64,
        count: u64,
    ) -> Result<(), Error> {
        if self.version != Version::V3 {
            return Err(Error::InvalidArgument(
                "zero clusters need QCOW2 version 3 (compat 1.1)".into(),
            ));
        }
        for k in 0..count {
            self.set_entry(state, guest_cluster.saturating_add(k), PROTO_ZERO)?;
        }
        Ok(())
    }

    /// Maps guest cluster `guest_cluster` of `state` to the data cluster `data` planned earlier
    /// (by any state): one more reference to it.
    ///
    /// Errors: [`Error::InvalidArgument`] for a data ref not planned, an unknown state, or a
    /// guest cluster past the disk or not after the state's previous one.
    pub fn add_shared(
        &mut self,
        state: StateId,
        guest_cluster: u64,
        data: DataRef,
    ) -> Result<(), Error> {
        if data.0 >= self.data_count {
            return Err(Error::InvalidArgument(format!(
                "data cluster {} was not planned",
                data.0
            )));
        }
        self.set_entry(state, guest_cluster, proto_of(data))
    }

    pub(super) fn state_index(&self, state: StateId) -> Result<usize, Error> {
        let i = state.index();
        if i >= self.states.len() {
            return Err(Error::InvalidArgument(format!("unknown state {i}")));
        }
        Ok(i)
    }

    /// Sets the planned entry of guest cluster `g` of `state`, in strictly increasing order.
    fn set_entry(&mut self, state: StateId, g: u64, entry: u64) -> Result<(), Error> {
        let s = self.state_index(state)?;
        if g >= self.guest_clusters {
            return Err(Error::InvalidArgument(format!(
                "{} past the disk's {} clusters",
                GuestCluster(g),
                self.guest_clusters
            )));
        }
        if g < self.states[s].next_guest {
            return Err(Error::InvalidArgument(format!(
                "{} of state {s}: clusters must come in strictly increasing order (next allowed: {})",
                GuestCluster(g),
                self.states[s].next_guest
            )));
        }
        let (l1_index, i) = GuestCluster(g).table_indices(self.cluster_bits);
        let l1_index = l1_index as u32;
        if self.states[s].open.as_ref().is_none_or(|w| w.0 != l1_index) {
            self.finish_window(s);
            let epl = l2_entries(self.cluster_bits) as usize;
            self.states[s].open = Some((l1_index, vec![0u64; epl]));
        }
        if let Some((_, entries)) = self.states[s].open.as_mut() {
            entries[i] = entry;
        }
        self.states[s].next_guest = g + 1;
        Ok(())
    }

    /// Closes state `s`'s open window: shares an identical table at the same L1 index, or
    /// keeps a new one.
    pub(super) fn finish_window(&mut self, s: usize) {
        let Some((l1_index, entries)) = self.states[s].open.take() else {
            return;
        };
        let mut h = DefaultHasher::new();
        for e in &entries {
            h.write_u64(*e);
        }
        let key = (l1_index, h.finish());
        let same = self.by_hash.get(&key).and_then(|ids| {
            ids.iter()
                .copied()
                .find(|&t| self.tables[t].entries == entries)
        });
        let t = match same {
            Some(t) => t,
            None => {
                self.tables.push(PlanTable { entries });
                let t = self.tables.len() - 1;
                self.by_hash.entry(key).or_default().push(t);
                t
            }
        };
        self.states[s].l1.push((l1_index, t));
    }
}

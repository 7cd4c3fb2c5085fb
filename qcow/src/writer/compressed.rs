//! Compressed guest clusters of a state (spec "Compressed Clusters Descriptor"): payloads
//! packed back to back by the writer's [`PayloadPacker`], clusters shared with a base state
//! whatever the base stores (a normal or a compressed cluster), and a base state's stored
//! bytes read back so that equal guest bytes can be found before anything is compressed.
//!
//! Design: the caller compresses ([`crate::Compression::compress_cluster`], on any thread);
//! the writer places the payload and records the descriptor, never COPIED. Sharing a
//! compressed cluster adds one reference to every host cluster its payload touches; where
//! that would leave too little room below the 16-bit refcount limit for the rest of the edit
//! ([`SHARE_LIMIT`]), the guest bytes are stored again instead, as a normal cluster.

use super::Writer;
use crate::compression::{decompress_cluster, CompressionType, MAX_PAYLOADS_PER_CLUSTER};
use crate::error::Error;
use crate::format::refcount::MAX_REFCOUNT;
use crate::format::table::{compressed_len, L2Entry};
use crate::geometry::Version;
use crate::types::{GuestCluster, HostCluster, StateId};

/// Highest refcount a host cluster may have for a new reference to a compressed payload in it:
/// the later steps of a write may add as many references again as one state holds to it (a
/// state used twice, or the editor's additions before its removals), at most one per payload.
const SHARE_LIMIT: u16 = MAX_REFCOUNT - 2 * MAX_PAYLOADS_PER_CLUSTER as u16 - 2;

/// The bytes a state stores for one guest cluster, read back by [`Writer::stored_cluster`] to
/// compare guest bytes (on any thread) before a cluster is compressed or shared.
#[derive(Clone, Debug)]
pub struct StoredCluster {
    /// `None`: `bytes` is the cluster; else its payload, of this type, at this host offset.
    compressed: Option<(CompressionType, u64)>,
    bytes: Vec<u8>,
}

impl StoredCluster {
    /// Whether the stored cluster holds exactly the guest bytes `data` (one cluster); a
    /// compressed one is decoded first.
    ///
    /// Errors: [`Error::Corrupt`] for a payload that does not decode to one cluster;
    /// [`Error::InvalidArgument`] for `data` of a wrong length.
    pub fn holds(&self, data: &[u8]) -> Result<bool, Error> {
        match self.compressed {
            None if self.bytes.len() != data.len() => Err(Error::InvalidArgument(format!(
                "{} bytes compared with a {}-byte cluster",
                data.len(),
                self.bytes.len()
            ))),
            None => Ok(self.bytes == data),
            Some((kind, host)) => {
                let mut out = vec![0u8; data.len()];
                decompress_cluster(kind, &self.bytes, &mut out, host)?;
                Ok(out == data)
            }
        }
    }

    /// The guest bytes (one cluster of `cluster_size` bytes).
    fn decode(&self, cluster_size: usize) -> Result<Vec<u8>, Error> {
        match self.compressed {
            None => Ok(self.bytes.clone()),
            Some((kind, host)) => {
                let mut out = vec![0u8; cluster_size];
                decompress_cluster(kind, &self.bytes, &mut out, host)?;
                Ok(out)
            }
        }
    }
}

impl Writer {
    /// Sets the compression type of the image (spec "Header", `compression_type`; zstd sets
    /// incompatible feature bit 3): what [`Writer::write_compressed_cluster`] payloads must be
    /// and what stored payloads are decoded with. Deflate by default; over an existing image,
    /// the image's.
    ///
    /// Errors: [`Error::InvalidArgument`] for zstd in a v2 image (it has no
    /// `compression_type`), another type than the edited image's, or another type than that
    /// of payloads already written.
    pub fn set_compression_type(&mut self, kind: CompressionType) -> Result<(), Error> {
        if kind == self.compression {
            return Ok(());
        }
        if self.editing {
            return Err(Error::InvalidArgument(format!(
                "the image's compressed clusters are {}: new ones must be too",
                self.compression.name()
            )));
        }
        if kind == CompressionType::Zstd && self.version == Version::V2 {
            return Err(Error::InvalidArgument(
                "zstd compression needs QCOW2 version 3 (compat 1.1)".into(),
            ));
        }
        if self.summary.compressed_clusters > 0 {
            return Err(Error::InvalidArgument(format!(
                "{} payloads were written already",
                self.compression.name()
            )));
        }
        self.compression = kind;
        Ok(())
    }

    /// The image's compression type ([`Writer::set_compression_type`]).
    pub fn compression_type(&self) -> CompressionType {
        self.compression
    }

    /// Records guest cluster `guest_cluster` of `state` as a compressed cluster whose payload
    /// is `payload` (1 to C − 1 bytes, compressed with the image's type, e.g. by
    /// [`crate::Compression::compress_cluster`]), packed after the previous payload as QEMU
    /// packs them ([`crate::PayloadPacker`]); the host clusters it touches gain one
    /// reference each.
    ///
    /// Errors: [`Error::InvalidArgument`] for an empty or too long payload, an unknown state,
    /// a guest cluster out of range or not strictly after the state's last one;
    /// [`Error::Limit`] when the file outgrows what a descriptor addresses; [`Error::Io`].
    pub fn write_compressed_cluster(
        &mut self,
        state: StateId,
        guest_cluster: u64,
        payload: &[u8],
    ) -> Result<(), Error> {
        let s = self.state_index(state)?;
        let g = GuestCluster(guest_cluster);
        self.check_guest_range(s, g, 1)?;
        let cb = self.cluster_bits;
        let (l1_index, i) = g.table_indices(cb);
        // Open (and so finish the previous) window before placing the payload.
        self.open_window(s, l1_index)?;
        let refcounts = &mut self.refcounts;
        let placement = self.packer.place(payload.len() as u64, cb, |_| {
            refcounts.allocate(1).map(HostCluster)
        })?;
        if let Some(c) = placement.continues {
            self.refcounts.increment(c.0, 1)?;
        }
        self.out.append(placement.host_offset, payload)?;
        if let Some(w) = self.states[s].open.as_mut() {
            w.entries[i] = placement.descriptor;
        }
        self.summary.compressed_clusters += 1;
        self.states[s].next_guest = g.plus(1);
        Ok(())
    }

    /// What `state` stores at `guest_cluster` when it is data (a normal or a compressed
    /// cluster), read back; `None` for unallocated and zero clusters.
    ///
    /// Errors: [`Error::InvalidArgument`] for an unknown state or a cluster past the disk;
    /// [`Error::Corrupt`] for an invalid entry; [`Error::Io`].
    pub fn stored_cluster(
        &mut self,
        state: StateId,
        guest_cluster: u64,
    ) -> Result<Option<StoredCluster>, Error> {
        let c = self.cluster_size();
        match self.entry_of(state, guest_cluster)? {
            L2Entry::Normal { host } => {
                let mut bytes = vec![0u8; c as usize];
                self.out.read_at(&mut bytes, host)?;
                Ok(Some(StoredCluster {
                    compressed: None,
                    bytes,
                }))
            }
            L2Entry::Compressed {
                host,
                additional_sectors,
            } => {
                // The payload's sectors; those past the end written so far read as zeros.
                let mut bytes = vec![0u8; compressed_len(host, additional_sectors) as usize];
                self.out.read_at_padded(&mut bytes, host)?;
                Ok(Some(StoredCluster {
                    compressed: Some((self.compression, host)),
                    bytes,
                }))
            }
            _ => Ok(None),
        }
    }

    /// Maps `guest_cluster` of `state` to what `base` stores there when that is data: a normal
    /// cluster is shared ([`Writer::share_cluster`]), a compressed one too (one more reference
    /// to every host cluster its payload touches), unless that would bring a refcount near the
    /// limit: its guest bytes are then stored again as a normal cluster. Returns false, and
    /// maps nothing, when `base` holds no data there (unallocated or a zero cluster).
    ///
    /// Errors: those of [`Writer::share_cluster`] and [`Writer::write_clusters`];
    /// [`Error::Corrupt`] for a payload that does not decode.
    pub fn share_base_cluster(
        &mut self,
        state: StateId,
        guest_cluster: u64,
        base: StateId,
    ) -> Result<bool, Error> {
        let s = self.state_index(state)?;
        let g = GuestCluster(guest_cluster);
        self.check_guest_range(s, g, 1)?;
        let cb = self.cluster_bits;
        let entry = self.entry_of(base, guest_cluster)?;
        match entry {
            L2Entry::Normal { host } => {
                self.share_cluster(state, guest_cluster, HostCluster::of_offset(host, cb))?;
            }
            L2Entry::Compressed { .. } => {
                let Some((first, last)) = entry.host_cluster_range(cb) else {
                    return Ok(false);
                };
                if (first..=last).any(|c| self.refcounts.get(c) >= SHARE_LIMIT) {
                    let stored = self.stored_cluster(base, guest_cluster)?;
                    let bytes = match stored {
                        Some(st) => st.decode(self.cluster_size() as usize)?,
                        None => return Ok(false),
                    };
                    self.write_clusters(state, guest_cluster, &bytes)?;
                    return Ok(true);
                }
                let (l1_index, i) = g.table_indices(cb);
                self.open_window(s, l1_index)?;
                for c in first..=last {
                    self.refcounts.increment(c, 1)?;
                }
                self.refcounts_changed = true;
                if let Some(w) = self.states[s].open.as_mut() {
                    w.entries[i] = entry.encode(cb)?;
                }
                self.summary.shared_data_refs += 1;
                self.states[s].next_guest = g.plus(1);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

//! [`StreamLayout`]: every offset of a one-pass image, fixed from a finished [`StreamPlan`].
//!
//! Host clusters in stream order: cluster 0 (header, extensions, backing file name), the
//! refcount table, the refcount blocks, one L1 table per use of a state (the active layer's
//! first, then the snapshots' in table order), the snapshot table, the L2 tables in use, then
//! the data clusters in [`DataRef`](super::DataRef) order (plain clusters cluster aligned,
//! compressed payloads byte-packed). The refcount structures are sized by the same fixed
//! point as the file writer's (notes §5.3), here placed before everything they count.
//! Refcounts follow notes §2.1: an L2 table counts once per L1 table using it, each entry of
//! it once per such use; COPIED (§2.2) is set exactly where the refcount is 1.

use super::plan::{proto_data, StreamPlan, PROTO_ZERO};
use crate::bytes::encode_be;
use crate::error::Error;
use crate::format::checksums::{
    ChecksumExtension, ALGORITHM_CRC32C, AUTOCLEAR_CLUSTER_CHECKSUMS, EXT_CLUSTER_CHECKSUMS,
    FLAG_CRC_TRAILER,
};
use crate::format::extension::{self, HeaderExtension};
use crate::format::header::{
    Header, INCOMPAT_COMPRESSION_TYPE, V2_HEADER_LENGTH, V3_HEADER_LENGTH,
};
use crate::format::refcount::{refcount_structure_clusters, DEFAULT_REFCOUNT_ORDER, MAX_REFCOUNT};
use crate::format::snapshot::{encode_entry, SnapshotSpec};
use crate::format::table::{compressed_sectors, encode_l1_entry, set_copied, L2Entry};
use crate::geometry::{Version, MAX_HOST_OFFSET, MAX_REFTABLE_BYTES};
use crate::types::StateId;

/// Where everything of a one-pass image goes; made by [`StreamPlan::finish`], written by
/// [`StreamWriter::start`](super::StreamWriter::start).
#[derive(Debug)]
pub struct StreamLayout {
    pub(super) plan: StreamPlan,
    /// Cluster 0's bytes (not padded).
    pub(super) cluster0: Vec<u8>,
    pub(super) reftable_clusters: u64,
    pub(super) refblocks: u64,
    /// The state index of each L1 table, in stream order.
    pub(super) l1_states: Vec<usize>,
    pub(super) l1_clusters: u64,
    /// The snapshot table's bytes (not padded); empty without snapshots.
    pub(super) snapshot_table: Vec<u8>,
    /// The tables written, in stream order (indices into `plan.tables`).
    pub(super) l2_order: Vec<usize>,
    /// Host byte offset of each table of the plan (0 for those not written).
    pub(super) l2_offset: Vec<u64>,
    /// Number of L1 tables using each table of the plan.
    pub(super) table_uses: Vec<u32>,
    /// Host byte offset of the first data cluster.
    pub(super) data_start: u64,
    /// Host byte offset of every data cluster, when payloads are mixed in (else arithmetic).
    pub(super) data_offsets: Option<Vec<u64>>,
    /// Refcount of every host cluster of the image.
    pub(super) refcounts: Vec<u16>,
    pub(super) file_size: u64,
}

impl StreamPlan {
    /// Fixes every offset: the active layer is `active`'s, one snapshot per spec (ids, names,
    /// dates, in table order). A state may be used several times or not at all.
    ///
    /// Errors: [`Error::InvalidArgument`] for unknown states or invalid snapshot specs (those
    /// of [`Writer::finish`](crate::Writer::finish)); [`Error::Limit`] for a refcount overflow, a
    /// refcount table over 8 MiB or host offsets past 2^56.
    pub fn finish(
        mut self,
        active: StateId,
        snapshots: &[SnapshotSpec],
    ) -> Result<StreamLayout, Error> {
        let mut uses = vec![0u32; self.states.len()];
        for s in std::iter::once(active).chain(snapshots.iter().map(|s| s.state)) {
            let i = self.state_index(s)?;
            uses[i] += 1;
        }
        crate::format::snapshot::validate_specs(snapshots)?;
        for s in 0..self.states.len() {
            self.finish_window(s);
        }
        StreamLayout::new(self, active.index(), snapshots, &uses)
    }
}

impl StreamLayout {
    /// Fixes the offsets of `plan` (windows closed) for the active state `active`, the
    /// snapshots `snapshots` and `uses[s]` L1 tables per state.
    pub(super) fn new(
        plan: StreamPlan,
        active: usize,
        snapshots: &[SnapshotSpec],
        uses: &[u32],
    ) -> Result<StreamLayout, Error> {
        let cb = plan.cluster_bits;
        let c = 1u64 << cb;
        let mut table_uses = vec![0u32; plan.tables.len()];
        for (s, st) in plan.states.iter().enumerate() {
            for &(_, t) in &st.l1 {
                table_uses[t] += uses[s];
            }
        }
        let l2_order: Vec<usize> = (0..plan.tables.len())
            .filter(|&t| table_uses[t] > 0)
            .collect();
        let mut l1_states = vec![active];
        l1_states.extend(snapshots.iter().map(|s| s.state.index()));
        let l1_clusters = (u64::from(plan.l1_size) * 8).div_ceil(c);
        let mut snapshot_table = Vec::new();
        for spec in snapshots {
            encode_entry(
                &mut snapshot_table,
                spec,
                0,
                plan.l1_size,
                plan.virtual_size,
            )?;
        }
        let (data_bytes, data_rel) = data_extent(&plan);
        let data_clusters = data_bytes.div_ceil(c);
        let used = 1
            + l1_clusters * l1_states.len() as u64
            + (snapshot_table.len() as u64).div_ceil(c)
            + l2_order.len() as u64
            + data_clusters;
        let (refblocks, reftable_clusters) = refcount_structure_clusters(used, cb);
        if reftable_clusters << cb > MAX_REFTABLE_BYTES {
            return Err(Error::Limit(format!(
                "a refcount table of {reftable_clusters} clusters exceeds {MAX_REFTABLE_BYTES} bytes"
            )));
        }
        let total = used + refblocks + reftable_clusters;
        if total
            .checked_shl(cb)
            .is_none_or(|end| end > MAX_HOST_OFFSET)
        {
            return Err(Error::Limit(format!(
                "an image of {total} clusters exceeds host offset 2^56"
            )));
        }
        let l1_first = 1 + reftable_clusters + refblocks;
        let snap_first = l1_first + l1_clusters * l1_states.len() as u64;
        if !snapshots.is_empty() {
            snapshot_table.clear();
            for (k, spec) in snapshots.iter().enumerate() {
                let l1 = (l1_first + l1_clusters * (k as u64 + 1)) << cb;
                encode_entry(
                    &mut snapshot_table,
                    spec,
                    l1,
                    plan.l1_size,
                    plan.virtual_size,
                )?;
            }
        }
        let l2_first = snap_first + (snapshot_table.len() as u64).div_ceil(c);
        let mut l2_offset = vec![0u64; plan.tables.len()];
        for (k, &t) in l2_order.iter().enumerate() {
            l2_offset[t] = (l2_first + k as u64) << cb;
        }
        let data_start = (l2_first + l2_order.len() as u64) << cb;
        let mut layout = StreamLayout {
            cluster0: Vec::new(),
            reftable_clusters,
            refblocks,
            l1_states,
            l1_clusters,
            snapshot_table,
            l2_order,
            l2_offset,
            table_uses,
            data_start,
            data_offsets: data_rel.map(|v| v.into_iter().map(|o| o + data_start).collect()),
            refcounts: Vec::new(),
            file_size: total << cb,
            plan,
        };
        layout.cluster0 = layout.cluster0_bytes(snapshots.len() as u32)?;
        layout.refcounts = layout.count_references(total)?;
        Ok(layout)
    }

    /// Total size of the image in bytes (a whole number of clusters).
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// Number of data clusters the stream carries after its tables.
    pub fn data_clusters(&self) -> u64 {
        self.plan.data_count
    }

    /// Host byte offset of the first data cluster: every table lies before it.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// Host byte offset of data cluster `r`.
    pub(super) fn data_offset(&self, r: u64) -> u64 {
        match &self.data_offsets {
            Some(v) => v[r as usize],
            None => self.data_start + (r << self.plan.cluster_bits),
        }
    }

    /// Bytes of data cluster `r`: a cluster, or its payload's length.
    pub(super) fn data_len(&self, r: u64) -> u64 {
        let p = &self.plan.payloads;
        match p.binary_search_by_key(&r, |x| x.0) {
            Ok(i) => u64::from(p[i].1),
            Err(_) => self.plan.cluster_size(),
        }
    }

    /// The stored L2 entry (COPIED included) of planned entry `e`.
    pub(super) fn l2_entry(&self, e: u64) -> Result<u64, Error> {
        let cb = self.plan.cluster_bits;
        let Some(r) = proto_data(e) else {
            return match e {
                PROTO_ZERO => L2Entry::ZeroPlain.encode(cb),
                _ => Ok(0),
            };
        };
        let host = self.data_offset(r);
        let len = self.data_len(r);
        if self.is_payload(r) {
            let additional_sectors = compressed_sectors(host, len);
            return L2Entry::Compressed {
                host,
                additional_sectors,
            }
            .encode(cb);
        }
        let raw = L2Entry::Normal { host }.encode(cb)?;
        Ok(set_copied(raw, self.refcounts[(host >> cb) as usize] == 1))
    }

    fn is_payload(&self, r: u64) -> bool {
        self.data_offsets.is_some() && self.plan.payloads.binary_search_by_key(&r, |x| x.0).is_ok()
    }

    /// The L1 table of state `s` as stored (COPIED where the L2 table's refcount is 1).
    pub(super) fn l1_bytes(&self, s: usize) -> Vec<u8> {
        let c = self.plan.cluster_size() as usize;
        let mut entries = vec![0u64; self.l1_clusters as usize * c / 8];
        for &(i, t) in &self.plan.states[s].l1 {
            let copied = self.table_uses[t] == 1;
            entries[i as usize] = encode_l1_entry(self.l2_offset[t], copied);
        }
        let mut bytes = Vec::with_capacity(entries.len() * 8);
        encode_be(&entries, &mut bytes);
        bytes
    }

    /// Cluster 0: the header with every table's offset, its extensions and end marker, then
    /// the backing file name.
    fn cluster0_bytes(&self, nb_snapshots: u32) -> Result<Vec<u8>, Error> {
        let p = &self.plan;
        let cb = p.cluster_bits;
        let mut exts: Vec<HeaderExtension> = p.extensions.clone();
        if let Some((_, format)) = &p.backing {
            exts.insert(
                0,
                HeaderExtension {
                    ext_type: extension::EXT_BACKING_FORMAT,
                    data: format.as_bytes().to_vec(),
                },
            );
        }
        if p.cluster_checksums {
            exts.insert(0, self.checksum_extension());
        }
        let l1_first = 1 + self.reftable_clusters + self.refblocks;
        let snap_first = l1_first + self.l1_clusters * self.l1_states.len() as u64;
        let mut header = Header {
            version: p.version,
            cluster_bits: cb,
            size: p.virtual_size,
            l1_size: p.l1_size,
            l1_table_offset: l1_first << cb,
            refcount_table_offset: 1 << cb,
            refcount_table_clusters: self.reftable_clusters as u32,
            nb_snapshots,
            snapshots_offset: if nb_snapshots == 0 {
                0
            } else {
                snap_first << cb
            },
            incompatible_features: match p.compression {
                crate::compression::CompressionType::Zstd => INCOMPAT_COMPRESSION_TYPE,
                crate::compression::CompressionType::Deflate => 0,
            },
            compatible_features: 0,
            autoclear_features: if p.cluster_checksums {
                AUTOCLEAR_CLUSTER_CHECKSUMS
            } else {
                0
            },
            refcount_order: DEFAULT_REFCOUNT_ORDER,
            header_length: match p.version {
                Version::V3 => V3_HEADER_LENGTH,
                Version::V2 => V2_HEADER_LENGTH,
            },
            compression_type: p.compression.header_value(),
            backing_file_offset: 0,
            backing_file_size: 0,
            crypt_method: 0,
        };
        let mut tail = match exts.is_empty() {
            true => Vec::new(),
            false => extension::encode(&exts),
        };
        if let Some((name, _)) = &p.backing {
            header.backing_file_offset = (header.to_bytes().len() + tail.len()) as u64;
            header.backing_file_size = name.len() as u32;
            tail.extend_from_slice(name.as_bytes());
        }
        let mut head = header.to_bytes();
        head.extend_from_slice(&tail);
        if head.len() as u64 > p.cluster_size() {
            return Err(Error::Limit(format!(
                "the header, its extensions and the backing file name need {} bytes, more than cluster 0",
                head.len()
            )));
        }
        Ok(head)
    }

    /// The cluster checksum extension: the table right after the image's last cluster, covering
    /// every cluster before it, its CRC-32C after its entries (written last, by the stream).
    fn checksum_extension(&self) -> HeaderExtension {
        let ext = ChecksumExtension {
            table_offset: self.file_size,
            covered_clusters: self.file_size >> self.plan.cluster_bits,
            algorithm: ALGORITHM_CRC32C,
            table_crc: 0,
            flags: FLAG_CRC_TRAILER,
        };
        HeaderExtension {
            ext_type: EXT_CLUSTER_CHECKSUMS,
            data: ext.to_bytes().to_vec(),
        }
    }

    /// The refcount of every host cluster (notes §2.1).
    fn count_references(&self, total: u64) -> Result<Vec<u16>, Error> {
        let cb = self.plan.cluster_bits;
        let mut rc = vec![0u16; total as usize];
        let data_first = (self.data_start >> cb) as usize;
        rc[..data_first].fill(1);
        for &t in &self.l2_order {
            let uses = self.table_uses[t];
            rc[(self.l2_offset[t] >> cb) as usize] = checked(u32::from(0u16), uses, t)?;
            for &e in &self.plan.tables[t].entries {
                let Some(r) = proto_data(e) else { continue };
                let host = self.data_offset(r);
                let last = (host + self.data_len(r) - 1) >> cb;
                for k in host >> cb..=last {
                    rc[k as usize] = checked(u32::from(rc[k as usize]), uses, k as usize)?;
                }
            }
        }
        Ok(rc)
    }
}

/// `have + add` as a refcount, or [`Error::Limit`] when it reaches 65 535 (notes §2.1).
fn checked(have: u32, add: u32, cluster: usize) -> Result<u16, Error> {
    let n = have + add;
    if n >= u32::from(MAX_REFCOUNT) {
        return Err(Error::Limit(format!(
            "host cluster {cluster} would have {n} references (at most {})",
            MAX_REFCOUNT - 1
        )));
    }
    Ok(n as u16)
}

/// Bytes the data clusters take after the tables, and (with payloads) each one's offset from
/// the start of the data: plain clusters aligned to a cluster, payloads packed.
fn data_extent(plan: &StreamPlan) -> (u64, Option<Vec<u64>>) {
    let c = plan.cluster_size();
    if plan.payloads.is_empty() {
        return (plan.data_count * c, None);
    }
    let mut offsets = Vec::with_capacity(plan.data_count as usize);
    let mut payloads = plan.payloads.iter().peekable();
    let mut at = 0u64;
    for r in 0..plan.data_count {
        match payloads.next_if(|p| p.0 == r) {
            Some(&(_, len)) => {
                offsets.push(at);
                at += u64::from(len);
            }
            None => {
                at = at.next_multiple_of(c);
                offsets.push(at);
                at += c;
            }
        }
    }
    (at, Some(offsets))
}

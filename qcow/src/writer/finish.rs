//! [`Writer::finish`]: everything written after the last data cluster (notes §5.2 layout A).
//!
//! Design: order matters. (1) Close every open L2 window. (2) Make the refcounts exact: until
//! now each state counted as referenced by one L1 table; a state used by no L1 gives its
//! references back, one used k times adds k − 1 (§2.1). (3) With final refcounts, correct COPIED
//! in the active layer's L2 tables, rewriting only tables that change (§2.2). (4) Append the L1
//! tables, the snapshot table, then the refcount blocks and table sized by fixed point.
//! (5) With cluster checksums, the checksum table past the refcounted clusters (refcount 0).
//! (6) Flush, set the length, write cluster 0 (header) last and fsync.

use super::{Writer, WriterSummary};
use crate::bytes::encode_be;
use crate::compression::CompressionType;
use crate::error::Error;
use crate::format::checksums::{
    ChecksumExtension, AUTOCLEAR_CLUSTER_CHECKSUMS, EXT_CLUSTER_CHECKSUMS,
};
use crate::format::extension;
use crate::format::header::{
    Header, INCOMPAT_COMPRESSION_TYPE, V2_HEADER_LENGTH, V3_HEADER_LENGTH,
};
use crate::format::refcount::{refcount_structure_clusters, DEFAULT_REFCOUNT_ORDER};
use crate::format::snapshot::{encode_entry, validate_specs, SnapshotSpec};
use crate::format::table::{encode_l1_entry, without_copied};
use crate::geometry::{Version, MAX_REFTABLE_BYTES};
use crate::types::StateId;

impl Writer {
    /// Completes the image: writes the L1 table of every use of a state (the active layer's,
    /// then one per snapshot, in the given order), the snapshot table (one entry per
    /// [`SnapshotSpec`], in order; 24 bytes of extra data with disk_size = virtual size),
    /// the refcount blocks and table, sets COPIED in the active layer exactly where the
    /// refcount is 1, and writes the header last, then fsyncs. `active` becomes the active L1.
    /// A state may be used several times (e.g. active and newest snapshot) or not at all.
    ///
    /// Errors: [`Error::InvalidArgument`] for unknown states, empty/duplicate snapshot ids,
    /// duplicate names, a name equal to another snapshot's id, or ids/names over 65 535 bytes,
    /// and for the writer of an editor (which commits instead);
    /// [`Error::Limit`] for over 65 536 snapshots, refcount overflow or a refcount table over
    /// 8 MiB; [`Error::Io`].
    pub fn finish(
        mut self,
        active: StateId,
        snapshots: &[SnapshotSpec],
    ) -> Result<WriterSummary, Error> {
        if self.editing {
            return Err(Error::InvalidArgument(
                "this writer adds states to an existing image: commit them with Editor::commit"
                    .into(),
            ));
        }
        let a = self.state_index(active)?;
        let mut snapshot_states = Vec::with_capacity(snapshots.len());
        for spec in snapshots {
            snapshot_states.push(self.state_index(spec.state)?);
        }
        validate_specs(snapshots)?;
        for s in 0..self.states.len() {
            self.finish_window(s)?;
        }
        self.adjust_for_uses(a, &snapshot_states)?;
        self.fix_active_copied(a)?;
        let l1_table_offset = self.write_l1(a)?;
        let snapshots_offset = self.write_snapshot_table(snapshots, &snapshot_states)?;
        let (refcount_table_offset, refcount_table_clusters) = self.write_refcounts()?;
        let mut header = Header {
            l1_table_offset,
            refcount_table_offset,
            refcount_table_clusters,
            nb_snapshots: snapshots.len() as u32,
            snapshots_offset,
            ..self.header_without_tables()
        };
        let covered = self.refcounts.allocated();
        let mut file_size = covered << self.cluster_bits;
        let mut checksums = None;
        if self.checksums {
            let (ext, clusters) = self.write_checksum_table(covered, covered, |_| true)?;
            file_size += clusters << self.cluster_bits;
            header.autoclear_features |= AUTOCLEAR_CLUSTER_CHECKSUMS;
            checksums = Some(ext);
        }
        let head = self.cluster0(&mut header, checksums)?;
        let file = self.out.finish(file_size, &head)?;
        if self.sync {
            file.sync_all().map_err(Error::io("syncing the image", 0))?;
        }
        Ok(WriterSummary {
            file_size,
            states: 1 + snapshots.len() as u32,
            ..self.summary
        })
    }

    /// Cluster 0's bytes: the header, its extensions and their end marker, then the backing
    /// file name if any (its offset and size set in `header`); the rest stays a hole.
    ///
    /// Errors: [`Error::Limit`] when they do not fit in cluster 0.
    fn cluster0(
        &self,
        header: &mut Header,
        checksums: Option<ChecksumExtension>,
    ) -> Result<Vec<u8>, Error> {
        let mut exts = self.extensions.clone();
        if let Some(ext) = checksums {
            // First, so that it lies in the header sector the editor rewrites.
            exts.insert(
                0,
                extension::HeaderExtension {
                    ext_type: EXT_CLUSTER_CHECKSUMS,
                    data: ext.to_bytes().to_vec(),
                },
            );
        }
        if let Some((_, format)) = &self.backing {
            exts.insert(
                0,
                extension::HeaderExtension {
                    ext_type: extension::EXT_BACKING_FORMAT,
                    data: format.as_bytes().to_vec(),
                },
            );
        }
        let mut tail = Vec::new();
        if !exts.is_empty() {
            tail = extension::encode(&exts);
        }
        let head_len = header.to_bytes().len() as u64;
        if let Some((name, _)) = &self.backing {
            header.backing_file_offset = head_len + tail.len() as u64;
            header.backing_file_size = name.len() as u32;
            tail.extend_from_slice(name.as_bytes());
        }
        let mut head = header.to_bytes();
        head.extend_from_slice(&tail);
        if head.len() as u64 > self.cluster_size() {
            return Err(Error::Limit(format!(
                "the header, its extensions and the backing file name need {} bytes, more than cluster 0",
                head.len()
            )));
        }
        Ok(head)
    }

    /// The header of this image with every table offset and count still 0. A zstd image has
    /// `compression_type` 1 and incompatible bit 3, as QEMU sets them (spec "Header").
    fn header_without_tables(&self) -> Header {
        let zstd = self.compression == CompressionType::Zstd;
        Header {
            version: self.version,
            cluster_bits: self.cluster_bits,
            size: self.virtual_size,
            l1_size: self.l1_size,
            l1_table_offset: 0,
            refcount_table_offset: 0,
            refcount_table_clusters: 0,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: if zstd { INCOMPAT_COMPRESSION_TYPE } else { 0 },
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: DEFAULT_REFCOUNT_ORDER,
            header_length: if self.version == Version::V3 {
                V3_HEADER_LENGTH
            } else {
                V2_HEADER_LENGTH
            },
            compression_type: self.compression.header_value(),
            backing_file_offset: 0,
            backing_file_size: 0,
            crypt_method: 0,
        }
    }

    /// Step (4a): appends the L1 table of each snapshot's state, then the snapshot table (spec
    /// "Snapshots"); returns the table's byte offset (0 without snapshots).
    fn write_snapshot_table(
        &mut self,
        snapshots: &[SnapshotSpec],
        snapshot_states: &[usize],
    ) -> Result<u64, Error> {
        let mut table = Vec::new();
        for (spec, &s) in snapshots.iter().zip(snapshot_states) {
            let l1 = self.write_l1(s)?;
            encode_entry(&mut table, spec, l1, self.l1_size, self.virtual_size)?;
        }
        if snapshots.is_empty() {
            return Ok(0);
        }
        self.append_padded(&table)
    }

    /// Step (2): every state counted one L1 reference so far; make it the real number of uses.
    fn adjust_for_uses(&mut self, active: usize, snapshot_states: &[usize]) -> Result<(), Error> {
        let mut uses = vec![0i32; self.states.len()];
        uses[active] += 1;
        for &s in snapshot_states {
            uses[s] += 1;
        }
        for (s, &n) in uses.iter().enumerate() {
            if n == 1 {
                continue;
            }
            let slots = self.states[s].l1.clone();
            for slot in slots {
                self.add_table_references(slot.l2_offset, n - 1)?;
            }
        }
        Ok(())
    }

    /// Step (3): rewrites the active layer's L2 tables whose COPIED bits no longer match the
    /// final refcounts. Skipped when no refcount changed after allocation (all are 1).
    fn fix_active_copied(&mut self, active: usize) -> Result<(), Error> {
        if !self.refcounts_changed {
            return Ok(());
        }
        let offsets: Vec<u64> = self.states[active].l1.iter().map(|s| s.l2_offset).collect();
        for offset in offsets {
            let table = self.read_l2(offset)?;
            let fixed: Vec<u64> = table
                .iter()
                .map(|&e| self.with_copied(without_copied(e)))
                .collect();
            if fixed != table {
                let mut bytes = Vec::with_capacity(self.cluster_size() as usize);
                encode_be(&fixed, &mut bytes);
                self.out.rewrite_at(offset, &bytes)?;
            }
        }
        Ok(())
    }

    /// Appends state `s`'s L1 table (l1_size entries, COPIED iff the L2 refcount is 1), one
    /// cluster at a time from the sparse slots, all-zero clusters left as holes; returns its
    /// byte offset.
    fn write_l1(&mut self, s: usize) -> Result<u64, Error> {
        let per_cluster = self.cluster_size() / 8;
        let clusters = (u64::from(self.l1_size) * 8).div_ceil(self.cluster_size());
        let first = self.refcounts.allocate(clusters)?;
        let mut slots = self.states[s].l1.iter().peekable();
        let mut entries = vec![0u64; per_cluster as usize];
        let mut bytes = Vec::with_capacity(self.cluster_size() as usize);
        for k in 0..clusters {
            entries.fill(0);
            while let Some(slot) = slots.next_if(|x| u64::from(x.l1_index) < (k + 1) * per_cluster)
            {
                let copied = self.refcounts.get(slot.l2_offset >> self.cluster_bits) == 1;
                let i = (u64::from(slot.l1_index) - k * per_cluster) as usize;
                entries[i] = encode_l1_entry(slot.l2_offset, copied);
            }
            if entries.iter().all(|&e| e == 0) {
                continue; // a hole in the (empty) file reads as zeros
            }
            bytes.clear();
            encode_be(&entries, &mut bytes);
            self.out.append((first + k) << self.cluster_bits, &bytes)?;
        }
        Ok(first << self.cluster_bits)
    }

    /// Appends `bytes` zero-padded to whole clusters; returns the byte offset.
    pub(crate) fn append_padded(&mut self, bytes: &[u8]) -> Result<u64, Error> {
        let clusters = (bytes.len() as u64).div_ceil(self.cluster_size());
        let offset = self.refcounts.allocate(clusters)? << self.cluster_bits;
        let mut padded = bytes.to_vec();
        padded.resize((clusters << self.cluster_bits) as usize, 0);
        self.out.append(offset, &padded)?;
        Ok(offset)
    }

    /// Step (4b): appends the refcount blocks and the refcount table covering every cluster,
    /// themselves included; returns (refcount_table_offset, refcount_table_clusters).
    fn write_refcounts(&mut self) -> Result<(u64, u32), Error> {
        let used = self.refcounts.allocated();
        let (blocks, table_clusters) = refcount_structure_clusters(used, self.cluster_bits);
        if table_clusters << self.cluster_bits > MAX_REFTABLE_BYTES {
            return Err(Error::Limit(format!(
                "a refcount table of {table_clusters} clusters exceeds {MAX_REFTABLE_BYTES} bytes"
            )));
        }
        let first_block = self.refcounts.allocate(blocks)?;
        let table_first = self.refcounts.allocate(table_clusters)?;
        let mut bytes = Vec::with_capacity(self.cluster_size() as usize);
        for k in 0..blocks {
            bytes.clear();
            self.refcounts.encode_block(k, &mut bytes);
            self.out
                .append((first_block + k) << self.cluster_bits, &bytes)?;
        }
        let table: Vec<u64> = (0..blocks)
            .map(|k| (first_block + k) << self.cluster_bits)
            .collect();
        bytes.clear();
        encode_be(&table, &mut bytes);
        bytes.resize((table_clusters << self.cluster_bits) as usize, 0);
        self.out.append(table_first << self.cluster_bits, &bytes)?;
        Ok((table_first << self.cluster_bits, table_clusters as u32))
    }
}

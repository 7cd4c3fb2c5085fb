//! What the editor (`crate::editor`) needs from the writer: a writer adding states to an
//! existing image, the image's snapshots as read-only states (dedup bases), and the pieces of
//! `finish` (L1 tables, padded tables) whose order the editor's commit decides itself.
//!
//! Design: states are written as for a new image. Over an existing image the allocator
//! ([`RefcountChunks::over_image`]) hands out clusters free in the committed refcounts first,
//! then past the end, and the output file writes in place without preallocating. A loaded
//! state holds a snapshot's L2 table offsets (no hash: a new window that might share such a
//! table compares it entry by entry; its entries may be compressed or preallocated zeros,
//! which no new window equals), counts no references of its own (the snapshot's L1 table
//! holds them) and cannot be written to.

use std::fs::File;

use super::state::{L1Slot, State};
use super::{RefcountChunks, Writer, WriterSummary};
use crate::bytes::encode_be;
use crate::compression::{CompressionType, PayloadPacker};
use crate::error::Error;
use crate::format::header::Header;
use crate::format::table::{encode_l1_entry, l1_entry_table};
use crate::geometry::guest_clusters;
use crate::io::{OutFile, WriteHook, OUT_BUFFER_BYTES};
use crate::types::{GuestCluster, StateId};

impl Writer {
    /// A writer adding states to the existing image in `file` (opened read-write) whose
    /// validated header is `header` and whose committed refcounts are `refcounts`. Every L1
    /// table it writes has the header's `l1_size` entries.
    pub(crate) fn in_place(file: File, header: &Header, refcounts: RefcountChunks) -> Writer {
        Writer {
            out: OutFile::in_place(file, OUT_BUFFER_BYTES),
            version: header.version,
            cluster_bits: header.cluster_bits,
            virtual_size: header.size,
            guest_clusters: guest_clusters(header.size, header.cluster_bits),
            l1_size: header.l1_size,
            refcounts,
            states: Vec::new(),
            l2_cache: None,
            refcounts_changed: true,
            sync: true,
            extensions: Vec::new(),
            backing: None,
            summary: WriterSummary::default(),
            // Header::parse accepts compression types 0 and 1 only.
            compression: CompressionType::from_header(header.compression_type).unwrap_or_default(),
            packer: PayloadPacker::new(),
            editing: true,
            checksums: false,
        }
    }

    /// Adds a read-only state mapping guest space through the L2 tables of `l1` (a snapshot's
    /// L1 table as read: L2 table offsets with flags; entries past this image's `l1_size`, such
    /// as a VM state's, are left out). The state counts no references: the snapshot's own L1
    /// table holds them.
    pub(crate) fn load_state(&mut self, l1: &[u64]) -> StateId {
        let l1_slots = l1
            .iter()
            .take(self.l1_size as usize)
            .enumerate()
            .filter(|(_, &e)| l1_entry_table(e) != 0)
            .map(|(i, &e)| L1Slot {
                l1_index: i as u32,
                hash: None,
                l2_offset: l1_entry_table(e),
            })
            .collect();
        self.states.push(State {
            l1: l1_slots,
            open: None,
            next_guest: GuestCluster(0),
            loaded: true,
        });
        StateId::from_index(self.states.len() - 1)
    }

    /// Writes the L2 table of every open window.
    pub(crate) fn close_windows(&mut self) -> Result<(), Error> {
        (0..self.states.len()).try_for_each(|s| self.finish_window(s))
    }

    /// The L2 tables state `s` references, and how many L1 references to each it counts
    /// already (1 for a written state, 0 for a loaded one).
    pub(crate) fn state_tables(&self, s: usize) -> (Vec<u64>, u32) {
        let st = &self.states[s];
        let tables = st.l1.iter().map(|slot| slot.l2_offset).collect();
        (tables, u32::from(!st.loaded))
    }

    /// Number of states (written and loaded).
    pub(crate) fn state_count(&self) -> usize {
        self.states.len()
    }

    /// State `s`'s L1 table: `l1_size` entries, COPIED iff the L2 table's refcount is 1 now.
    pub(crate) fn l1_entries(&self, s: usize) -> Vec<u64> {
        let mut l1 = vec![0u64; self.l1_size as usize];
        for slot in &self.states[s].l1 {
            let copied = self.refcounts.get(slot.l2_offset >> self.cluster_bits) == 1;
            l1[slot.l1_index as usize] = encode_l1_entry(slot.l2_offset, copied);
        }
        l1
    }

    /// Writes `entries` as a new L1 table in newly allocated consecutive clusters; all-zero
    /// clusters are written too unless they lie past the committed image (holes there read as
    /// zeros). Returns its byte offset.
    pub(crate) fn write_l1_entries(&mut self, entries: &[u64]) -> Result<u64, Error> {
        let per_cluster = (self.cluster_size() / 8) as usize;
        let clusters = (entries.len() as u64 * 8).div_ceil(self.cluster_size());
        let first = self.refcounts.allocate(clusters)?;
        let mut bytes = Vec::with_capacity(self.cluster_size() as usize);
        for (k, chunk) in entries.chunks(per_cluster).enumerate() {
            let cluster = first + k as u64;
            if chunk.iter().all(|&e| e == 0) && self.refcounts.is_fresh(cluster) {
                continue;
            }
            bytes.clear();
            encode_be(chunk, &mut bytes);
            bytes.resize(self.cluster_size() as usize, 0);
            self.out.append(cluster << self.cluster_bits, &bytes)?;
        }
        Ok(first << self.cluster_bits)
    }

    /// The allocator and refcounts.
    pub(crate) fn refcounts(&self) -> &RefcountChunks {
        &self.refcounts
    }

    /// The allocator and refcounts, to change.
    pub(crate) fn refcounts_mut(&mut self) -> &mut RefcountChunks {
        &mut self.refcounts
    }

    /// The output file.
    pub(crate) fn out_mut(&mut self) -> &mut OutFile {
        &mut self.out
    }

    /// Installs the hook called before every physical operation on the file.
    pub(crate) fn set_write_hook(&mut self, hook: WriteHook) {
        self.out.set_hook(hook);
    }

    /// What was written so far: data clusters, L2 tables, shared references.
    pub(crate) fn summary(&self) -> WriterSummary {
        self.summary
    }
}

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
//! Zero clusters (v3, [`Writer::write_zero_clusters`]) are L2 entries with only the zero flag:
//! no host cluster, no refcount, never COPIED. They are kept as such in windows and compare
//! equal across states, so tables holding them stay shareable.

mod finish;

use std::fs::File;
use std::hash::DefaultHasher;
use std::hash::Hasher;

use crate::extension::HeaderExtension;
use crate::header::{
    Version, MAX_CLUSTER_BITS, MAX_L1_ENTRIES, MIN_CLUSTER_BITS, V3_HEADER_LENGTH,
};
use crate::io::{OutFile, OUT_BUFFER_BYTES};
use crate::refcount::RefcountChunks;
use crate::table::{
    decode_be_u64s, encode_be_u64s, guest_clusters, l1_entries_needed, l2_entries, L2E_OFFSET_MASK,
    OFLAG_COPIED, OFLAG_ZERO,
};
use crate::Error;

pub use crate::snapshot::SnapshotSpec;

/// Largest read of base clusters in [`Writer::write_clusters_dedup`], in bytes (1 MiB):
/// bounds the scratch buffer while keeping reads of contiguous base clusters large.
const DEDUP_READ_BYTES: u64 = 1 << 20;

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

/// Identifies one guest state (one future L1 table) of a [`Writer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StateId(u32);

impl StateId {
    #[cfg(test)]
    pub(crate) fn for_tests(n: u32) -> StateId {
        StateId(n)
    }
}

/// What [`Writer::finish`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterSummary {
    /// Final file size in bytes.
    pub file_size: u64,
    /// Host data clusters written.
    pub data_clusters: u64,
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

/// A populated L1 entry of a state.
#[derive(Clone, Copy, Debug)]
struct L1Slot {
    l1_index: u32,
    /// Hash of the L2 table's entries with COPIED masked off (to find identical tables); zero
    /// entries hash as themselves, so zero clusters in two states still share a table.
    hash: u32,
    l2_offset: u64,
}

/// The L2 window a state is currently filling: plain host offsets, 0 = unallocated,
/// [`OFLAG_ZERO`] alone = a zero cluster (v3; no host cluster). Never COPIED (set on write).
#[derive(Debug)]
struct OpenWindow {
    l1_index: u32,
    entries: Vec<u64>,
}

#[derive(Debug, Default)]
struct State {
    /// Finished L2 tables, sorted by `l1_index`.
    l1: Vec<L1Slot>,
    open: Option<OpenWindow>,
    /// Guest clusters below this were already written (writes must be strictly increasing).
    next_guest: u64,
}

impl State {
    fn slot(&self, l1_index: u32) -> Option<&L1Slot> {
        self.l1
            .binary_search_by_key(&l1_index, |s| s.l1_index)
            .ok()
            .map(|i| &self.l1[i])
    }
}

/// Writes a QCOW2 image with internal snapshots; see the module documentation.
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
    summary: WriterSummary,
}

/// A stored L2 entry written by this writer, as a window entry: COPIED dropped, the host
/// offset and the zero flag kept.
fn window_entry(stored: u64) -> u64 {
    stored & (L2E_OFFSET_MASK | OFLAG_ZERO)
}

/// Splits guest clusters `first..first + count` at L2 window boundaries (`epl` entries per
/// table): `(clusters before this run, first guest cluster, length)` per run.
fn window_runs(first: u64, count: u64, epl: u64) -> impl Iterator<Item = (u64, u64, u64)> {
    let mut done = 0u64;
    std::iter::from_fn(move || {
        if done >= count {
            return None;
        }
        let g = first + done;
        let run = (epl - g % epl).min(count - done);
        let item = (done, g, run);
        done += run;
        Some(item)
    })
}

fn hash_entries(entries: &[u64]) -> u32 {
    let mut h = DefaultHasher::new();
    for e in entries {
        h.write_u64(e & !OFLAG_COPIED);
    }
    h.finish() as u32
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
        let l1_size = l1_entries_needed(opts.virtual_size, cb).filter(|&n| n <= MAX_L1_ENTRIES).ok_or_else(|| {
            Error::Limit(format!("virtual size {} needs an L1 table over 32 MiB (4 Mi entries) at cluster_bits {cb}", opts.virtual_size))
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
            summary: WriterSummary::default(),
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
    /// Errors: [`Error::InvalidArgument`] for a spec-defined or repeated type or data over
    /// 64 KiB; [`Error::Limit`] when the header and its extensions would not fit in cluster 0.
    pub fn add_header_extension(&mut self, ext_type: u32, data: &[u8]) -> Result<(), Error> {
        crate::extension::check_new(&self.extensions, ext_type, data.len())?;
        self.extensions.push(HeaderExtension {
            ext_type,
            data: data.to_vec(),
        });
        let len =
            u64::from(V3_HEADER_LENGTH) + crate::extension::encode(&self.extensions).len() as u64;
        if len > 1u64 << self.cluster_bits {
            self.extensions.pop();
            return Err(Error::Limit(format!(
                "header extensions need {len} bytes, more than cluster 0 ({} bytes)",
                1u64 << self.cluster_bits
            )));
        }
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
        StateId((self.states.len() - 1) as u32)
    }

    fn entries_per_l2(&self) -> u64 {
        l2_entries(self.cluster_bits)
    }

    fn state_index(&self, state: StateId) -> Result<usize, Error> {
        let i = state.0 as usize;
        if i >= self.states.len() {
            return Err(Error::InvalidArgument(format!("unknown state {}", state.0)));
        }
        Ok(i)
    }

    /// Checks that `count` guest clusters from `guest_cluster` may be written to state `s`.
    fn check_guest_range(&self, s: usize, guest_cluster: u64, count: u64) -> Result<(), Error> {
        let next = self.states[s].next_guest;
        if guest_cluster < next {
            return Err(Error::InvalidArgument(format!(
                "guest cluster {guest_cluster} of state {s}: writes must be strictly increasing (next allowed: {next})"
            )));
        }
        if guest_cluster
            .checked_add(count)
            .is_none_or(|end| end > self.guest_clusters)
        {
            return Err(Error::InvalidArgument(format!(
                "guest clusters {guest_cluster}+{count} exceed the disk's {} clusters",
                self.guest_clusters
            )));
        }
        Ok(())
    }

    fn cluster_count(&self, data: &[u8]) -> Result<u64, Error> {
        if !(data.len() as u64).is_multiple_of(self.cluster_size()) {
            return Err(Error::InvalidArgument(format!(
                "data of {} bytes is not a whole number of {}-byte clusters",
                data.len(),
                self.cluster_size()
            )));
        }
        Ok(data.len() as u64 >> self.cluster_bits)
    }

    /// Appends `data` (a whole number of clusters) as guest clusters `guest_cluster..` of
    /// `state`, in newly allocated host clusters written with as few large writes as possible.
    /// Zero data is written as is: the caller records all-zero clusters with
    /// [`Writer::write_zero_clusters`] (v3) or leaves them out (v2).
    ///
    /// Errors: [`Error::InvalidArgument`] for an unknown state, `data` not a multiple of the
    /// cluster size, guest clusters past the end of the disk or not strictly after every guest
    /// cluster already written or shared in this state; [`Error::Io`]; [`Error::Limit`].
    pub fn write_clusters(
        &mut self,
        state: StateId,
        guest_cluster: u64,
        data: &[u8],
    ) -> Result<(), Error> {
        let s = self.state_index(state)?;
        let count = self.cluster_count(data)?;
        self.check_guest_range(s, guest_cluster, count)?;
        let epl = self.entries_per_l2();
        for (done, g, run) in window_runs(guest_cluster, count, epl) {
            // Open (and so finish the previous) window before allocating the data clusters.
            self.open_window(s, g / epl)?;
            let host = self.refcounts.allocate(run)?;
            let bytes = &data[(done << self.cluster_bits) as usize
                ..((done + run) << self.cluster_bits) as usize];
            self.out.append(host << self.cluster_bits, bytes)?;
            let cb = self.cluster_bits;
            let entries = self.window_entries(s, g, run)?;
            for (i, e) in entries.iter_mut().enumerate() {
                *e = (host + i as u64) << cb;
            }
        }
        self.summary.data_clusters += count;
        self.states[s].next_guest = guest_cluster + count;
        Ok(())
    }

    /// Records `count` guest clusters from `guest_cluster` of `state` as zero clusters: L2
    /// entries with only the zero flag set (QCOW2 spec "Standard Cluster Descriptor", bit 0;
    /// host offset 0). They read as zeros and, unlike unallocated clusters, say explicitly that
    /// the image holds zeros there. No host cluster is allocated and nothing is refcounted.
    /// Version 3 only: on a v2 image the caller leaves zero clusters unallocated.
    ///
    /// Errors: [`Error::InvalidArgument`] for a v2 image, an unknown state, guest clusters past
    /// the end of the disk or not strictly after every guest cluster already written or shared
    /// in this state; [`Error::Io`] and [`Error::Limit`] (finishing the previous L2 window).
    pub fn write_zero_clusters(
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
        let s = self.state_index(state)?;
        self.check_guest_range(s, guest_cluster, count)?;
        for (_, g, run) in window_runs(guest_cluster, count, self.entries_per_l2()) {
            self.window_entries(s, g, run)?.fill(OFLAG_ZERO);
        }
        self.states[s].next_guest = guest_cluster + count;
        Ok(())
    }

    /// The `run` entries of state `s`'s L2 window for guest clusters `g..g + run` (one window),
    /// opening that window first.
    fn window_entries(&mut self, s: usize, g: u64, run: u64) -> Result<&mut [u64], Error> {
        let epl = self.entries_per_l2();
        self.open_window(s, g / epl)?;
        let first = (g % epl) as usize;
        let window = self.states[s].open.as_mut().map(|w| &mut w.entries);
        let entries = window.ok_or_else(|| Error::InvalidArgument("no open L2 window".into()))?;
        Ok(&mut entries[first..first + run as usize])
    }

    /// Maps `guest_cluster` of `state` to the existing host data cluster at byte offset
    /// `host_offset` (written earlier by this writer), adding one reference to it.
    ///
    /// Errors: [`Error::InvalidArgument`] for an unknown state, an out-of-order or out-of-range
    /// guest cluster, or a host offset that is unaligned or not an allocated cluster;
    /// [`Error::Limit`] on refcount overflow (65 535 references).
    pub fn share_cluster(
        &mut self,
        state: StateId,
        guest_cluster: u64,
        host_offset: u64,
    ) -> Result<(), Error> {
        let s = self.state_index(state)?;
        self.check_guest_range(s, guest_cluster, 1)?;
        let host_cluster = host_offset >> self.cluster_bits;
        if !host_offset.is_multiple_of(self.cluster_size())
            || host_cluster == 0
            || self.refcounts.get(host_cluster) == 0
        {
            return Err(Error::InvalidArgument(format!(
                "host offset {host_offset:#x} is not a written data cluster"
            )));
        }
        let epl = self.entries_per_l2();
        self.open_window(s, guest_cluster / epl)?;
        self.refcounts.increment(host_cluster, 1)?;
        self.refcounts_changed = true;
        if let Some(w) = self.states[s].open.as_mut() {
            w.entries[(guest_cluster % epl) as usize] = host_offset;
        }
        self.summary.shared_data_refs += 1;
        self.states[s].next_guest = guest_cluster + 1;
        Ok(())
    }

    /// Like [`Writer::write_clusters`], but each cluster whose content equals the cluster `base`
    /// maps at the same guest cluster is shared with it ([`Writer::share_cluster`]) instead of
    /// written: older states of an "inverted chain" then store only the clusters that differ.
    ///
    /// Errors: those of `write_clusters`, plus [`Error::InvalidArgument`] if `base` is unknown
    /// or equals `state`.
    pub fn write_clusters_dedup(
        &mut self,
        state: StateId,
        guest_cluster: u64,
        data: &[u8],
        base: StateId,
    ) -> Result<(), Error> {
        let s = self.state_index(state)?;
        self.state_index(base)?;
        if state == base {
            return Err(Error::InvalidArgument(format!(
                "state {s} cannot deduplicate against itself"
            )));
        }
        let count = self.cluster_count(data)?;
        self.check_guest_range(s, guest_cluster, count)?;
        let c = self.cluster_size() as usize;
        let mut base_hosts = Vec::with_capacity(count as usize);
        for i in 0..count {
            base_hosts.push(self.lookup(base, guest_cluster + i)?);
        }
        let same = self.compare_with_base(&base_hosts, data)?;
        let mut i = 0usize;
        while i < count as usize {
            let g = guest_cluster + i as u64;
            if let (true, Some(host)) = (same[i], base_hosts[i]) {
                self.share_cluster(state, g, host)?;
                i += 1;
                continue;
            }
            let run = same[i..].iter().take_while(|&&m| !m).count();
            self.write_clusters(state, g, &data[i * c..(i + run) * c])?;
            i += run;
        }
        Ok(())
    }

    /// For each cluster of `data`, whether the base cluster at `base_hosts[i]` holds the same
    /// bytes. Contiguous base clusters are read together (up to 1 MiB per read).
    fn compare_with_base(
        &mut self,
        base_hosts: &[Option<u64>],
        data: &[u8],
    ) -> Result<Vec<bool>, Error> {
        let c = self.cluster_size();
        let max_run = (DEDUP_READ_BYTES / c).max(1) as usize;
        let mut same = vec![false; base_hosts.len()];
        let mut scratch = Vec::new();
        let mut i = 0usize;
        while i < base_hosts.len() {
            let Some(first) = base_hosts[i] else {
                i += 1;
                continue;
            };
            let mut run = 1usize;
            while run < max_run
                && i + run < base_hosts.len()
                && base_hosts[i + run] == Some(first + run as u64 * c)
            {
                run += 1;
            }
            scratch.resize(run * c as usize, 0);
            self.out.read_at(&mut scratch, first)?;
            for k in 0..run {
                let range = k * c as usize..(k + 1) * c as usize;
                same[i + k] =
                    scratch[range.clone()] == data[(i + k) * c as usize..(i + k + 1) * c as usize];
            }
            i += run;
        }
        Ok(same)
    }

    /// Host byte offset of `guest_cluster` in `state`, or `None` if unallocated or a zero
    /// cluster there (no host cluster). Reads back finished L2 tables as needed (one table is
    /// cached).
    ///
    /// Errors: [`Error::InvalidArgument`] for an unknown state or a guest cluster past the end
    /// of the disk; [`Error::Io`].
    pub fn lookup(&mut self, state: StateId, guest_cluster: u64) -> Result<Option<u64>, Error> {
        let s = self.state_index(state)?;
        if guest_cluster >= self.guest_clusters {
            return Err(Error::InvalidArgument(format!(
                "guest cluster {guest_cluster} past the disk's {} clusters",
                self.guest_clusters
            )));
        }
        let epl = self.entries_per_l2();
        let (l1_index, i) = ((guest_cluster / epl) as u32, (guest_cluster % epl) as usize);
        let st = &self.states[s];
        let entry = match (&st.open, st.slot(l1_index)) {
            (Some(w), _) if w.l1_index == l1_index => w.entries[i],
            (_, Some(slot)) => {
                let offset = slot.l2_offset;
                self.read_l2_cached(offset)?[i]
            }
            _ => 0,
        };
        Ok(Some(entry & L2E_OFFSET_MASK).filter(|&o| o != 0))
    }

    fn read_l2_cached(&mut self, offset: u64) -> Result<&[u64], Error> {
        if self.l2_cache.as_ref().is_none_or(|(o, _)| *o != offset) {
            let table = self.read_l2(offset)?;
            self.l2_cache = Some((offset, table));
        }
        Ok(self
            .l2_cache
            .as_ref()
            .map(|(_, t)| t.as_slice())
            .unwrap_or(&[]))
    }

    /// Reads the L2 table at host byte `offset` (entries with their flags).
    fn read_l2(&mut self, offset: u64) -> Result<Vec<u64>, Error> {
        let mut bytes = vec![0u8; self.cluster_size() as usize];
        self.out.read_at(&mut bytes, offset)?;
        Ok(decode_be_u64s(&bytes))
    }

    /// Adds a new state whose L1 table is a copy of `from`'s: every L2 table it references and
    /// every data cluster those tables map gain one reference. `from`'s open L2 window is
    /// finished first. Both states may be written further (strictly after `from`'s last guest
    /// cluster); a write into a window whose L2 table is still shared gives the writing state a
    /// private copy of that table.
    ///
    /// Errors: [`Error::InvalidArgument`] for an unknown state; [`Error::Limit`] on refcount
    /// overflow; [`Error::Io`].
    pub fn clone_state(&mut self, from: StateId) -> Result<StateId, Error> {
        let f = self.state_index(from)?;
        self.finish_window(f)?;
        let slots = self.states[f].l1.clone();
        for slot in &slots {
            self.add_table_references(slot.l2_offset, 1)?;
        }
        self.summary.shared_l2_refs += slots.len() as u64;
        let next_guest = self.states[f].next_guest;
        self.states.push(State {
            l1: slots,
            open: None,
            next_guest,
        });
        Ok(StateId((self.states.len() - 1) as u32))
    }

    /// Adds `delta` (may be negative) references to the L2 table at `l2_offset` and to every
    /// cluster it maps: the effect of one more (or one fewer) L1 table referencing it. Zero
    /// and unallocated entries (host offset 0) map no cluster.
    fn add_table_references(&mut self, l2_offset: u64, delta: i32) -> Result<(), Error> {
        let by = u16::try_from(delta.unsigned_abs())
            .map_err(|_| Error::Limit(format!("{delta} references to one table")))?;
        let mut clusters = vec![l2_offset >> self.cluster_bits];
        let table = self.read_l2(l2_offset)?;
        clusters.extend(
            table
                .iter()
                .map(|e| e & L2E_OFFSET_MASK)
                .filter(|&o| o != 0)
                .map(|o| o >> self.cluster_bits),
        );
        for c in clusters {
            if delta >= 0 {
                self.refcounts.increment(c, by)?;
            } else {
                self.refcounts.decrement(c, by)?;
            }
        }
        self.refcounts_changed = true;
        Ok(())
    }

    /// Makes `l1_index` the open window of state `s`, finishing the previous one. If the state
    /// already has a (shared) L2 table there, its entries are loaded into the window and the
    /// state's reference to the table is dropped (the data references move to the window).
    fn open_window(&mut self, s: usize, l1_index: u64) -> Result<(), Error> {
        let l1_index = l1_index as u32;
        if self.states[s]
            .open
            .as_ref()
            .is_some_and(|w| w.l1_index == l1_index)
        {
            return Ok(());
        }
        self.finish_window(s)?;
        let epl = self.entries_per_l2() as usize;
        let mut entries = vec![0u64; epl];
        let st = &mut self.states[s];
        if let Ok(pos) = st.l1.binary_search_by_key(&l1_index, |x| x.l1_index) {
            let slot = st.l1.remove(pos);
            let table = self.read_l2(slot.l2_offset)?;
            for (e, t) in entries.iter_mut().zip(table) {
                *e = window_entry(t);
            }
            self.refcounts
                .decrement(slot.l2_offset >> self.cluster_bits, 1)?;
            self.refcounts_changed = true;
        }
        self.states[s].open = Some(OpenWindow { l1_index, entries });
        Ok(())
    }

    /// Writes (or shares) the L2 table of state `s`'s open window and records it in its L1.
    fn finish_window(&mut self, s: usize) -> Result<(), Error> {
        let Some(w) = self.states[s].open.take() else {
            return Ok(());
        };
        let hash = hash_entries(&w.entries);
        if let Some(shared) = self.find_identical_table(s, w.l1_index, hash, &w.entries)? {
            self.refcounts.increment(shared >> self.cluster_bits, 1)?;
            self.refcounts_changed = true;
            self.summary.shared_l2_refs += 1;
            self.push_slot(
                s,
                L1Slot {
                    l1_index: w.l1_index,
                    hash,
                    l2_offset: shared,
                },
            );
            return Ok(());
        }
        let host = self.refcounts.allocate(1)? << self.cluster_bits;
        let flagged: Vec<u64> = w.entries.iter().map(|&e| self.with_copied(e)).collect();
        let mut bytes = Vec::with_capacity(self.cluster_size() as usize);
        encode_be_u64s(&flagged, &mut bytes);
        self.out.append(host, &bytes)?;
        self.summary.l2_tables += 1;
        self.push_slot(
            s,
            L1Slot {
                l1_index: w.l1_index,
                hash,
                l2_offset: host,
            },
        );
        Ok(())
    }

    /// `entry` (a window entry: a plain host offset, 0 or [`OFLAG_ZERO`]) with COPIED set iff
    /// it maps a host cluster whose refcount is 1 now. Zero and unallocated entries never get
    /// COPIED (their offset 0 is not a cluster; cluster 0 is the header).
    fn with_copied(&self, entry: u64) -> u64 {
        let host = entry & L2E_OFFSET_MASK;
        if host != 0 && self.refcounts.get(host >> self.cluster_bits) == 1 {
            entry | OFLAG_COPIED
        } else {
            entry
        }
    }

    fn push_slot(&mut self, s: usize, slot: L1Slot) {
        let l1 = &mut self.states[s].l1;
        let pos = l1.partition_point(|x| x.l1_index < slot.l1_index);
        l1.insert(pos, slot);
    }

    /// An L2 table of another state at the same L1 index with the same entries (COPIED
    /// ignored), found by hash and verified by reading it back.
    fn find_identical_table(
        &mut self,
        s: usize,
        l1_index: u32,
        hash: u32,
        entries: &[u64],
    ) -> Result<Option<u64>, Error> {
        let mut candidates: Vec<u64> = (0..self.states.len())
            .filter(|&o| o != s)
            .filter_map(|o| self.states[o].slot(l1_index))
            .filter(|slot| slot.hash == hash)
            .map(|slot| slot.l2_offset)
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        for offset in candidates {
            let table = self.read_l2(offset)?;
            if table
                .iter()
                .zip(entries)
                .all(|(&t, e)| window_entry(t) == *e)
            {
                return Ok(Some(offset));
            }
        }
        Ok(None)
    }
}

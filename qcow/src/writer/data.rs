//! Guest clusters of a state: data written in newly allocated host clusters, zero clusters,
//! and clusters shared with a data cluster already written (explicitly, or found equal to the
//! base state's by [`Writer::write_clusters_dedup`]).

use super::state::window_runs;
use super::Writer;
use crate::error::Error;
use crate::format::table::L2Entry;
use crate::geometry::Version;
use crate::types::{GuestCluster, HostCluster, StateId};

/// Largest read of base clusters in [`Writer::write_clusters_dedup`], in bytes (1 MiB):
/// bounds the scratch buffer while keeping reads of contiguous base clusters large.
const DEDUP_READ_BYTES: u64 = 1 << 20;

impl Writer {
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
        let first = GuestCluster(guest_cluster);
        self.check_guest_range(s, first, count)?;
        let cb = self.cluster_bits;
        for (done, g, run) in window_runs(first, count, self.entries_per_l2()) {
            // Open (and so finish the previous) window before allocating the data clusters.
            self.open_window(s, g.table_indices(cb).0)?;
            let mut k = 0;
            while k < run {
                // One run of consecutive host clusters (all of `run` for a new image).
                let (host, n) = self.refcounts.allocate_up_to(run - k)?;
                let host = HostCluster(host);
                let bytes = &data[((done + k) << cb) as usize..((done + k + n) << cb) as usize];
                self.out.append(host.offset(cb), bytes)?;
                let entries = self.window_entries(s, g.plus(k), n)?;
                for (i, e) in entries.iter_mut().enumerate() {
                    let host = host.plus(i as u64).offset(cb);
                    *e = L2Entry::Normal { host }.encode(cb)?;
                }
                k += n;
            }
        }
        self.summary.data_clusters += count;
        self.states[s].next_guest = first.plus(count);
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
        let first = GuestCluster(guest_cluster);
        self.check_guest_range(s, first, count)?;
        let zero = L2Entry::ZeroPlain.encode(self.cluster_bits)?;
        for (_, g, run) in window_runs(first, count, self.entries_per_l2()) {
            self.window_entries(s, g, run)?.fill(zero);
        }
        self.states[s].next_guest = first.plus(count);
        Ok(())
    }

    /// The `run` entries of state `s`'s L2 window for guest clusters `g..g + run` (one window),
    /// opening that window first.
    fn window_entries(&mut self, s: usize, g: GuestCluster, run: u64) -> Result<&mut [u64], Error> {
        let (l1_index, first) = g.table_indices(self.cluster_bits);
        self.open_window(s, l1_index)?;
        let window = self.states[s].open.as_mut().map(|w| &mut w.entries);
        let entries = window.ok_or_else(|| Error::InvalidArgument("no open L2 window".into()))?;
        Ok(&mut entries[first..first + run as usize])
    }

    /// Maps `guest_cluster` of `state` to the existing host data cluster `host` (written
    /// earlier by this writer, or mapped by a state of the edited image: what
    /// [`Writer::lookup`] returns), adding one reference to it.
    ///
    /// Errors: [`Error::InvalidArgument`] for an unknown state, an out-of-order or out-of-range
    /// guest cluster, or a host cluster that is the header or not allocated;
    /// [`Error::Limit`] on refcount overflow (65 535 references).
    pub fn share_cluster(
        &mut self,
        state: StateId,
        guest_cluster: u64,
        host: HostCluster,
    ) -> Result<(), Error> {
        let s = self.state_index(state)?;
        let g = GuestCluster(guest_cluster);
        self.check_guest_range(s, g, 1)?;
        if host.0 == 0 || self.refcounts.get(host.0) == 0 {
            return Err(Error::InvalidArgument(format!(
                "{host} is not a written data cluster"
            )));
        }
        let cb = self.cluster_bits;
        let entry = L2Entry::Normal {
            host: host.offset(cb),
        }
        .encode(cb)?;
        let (l1_index, i) = g.table_indices(cb);
        self.open_window(s, l1_index)?;
        self.refcounts.increment(host.0, 1)?;
        self.refcounts_changed = true;
        if let Some(w) = self.states[s].open.as_mut() {
            w.entries[i] = entry;
        }
        self.summary.shared_data_refs += 1;
        self.states[s].next_guest = g.plus(1);
        Ok(())
    }

    /// Like [`Writer::write_clusters`], but each cluster whose content equals the cluster `base`
    /// maps at the same guest cluster is shared with it instead of written (a normal cluster
    /// by [`Writer::share_cluster`], a compressed one by [`Writer::share_base_cluster`], its
    /// payload decoded to compare guest bytes): older states of an "inverted chain" then store
    /// only the clusters that differ.
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
        self.check_guest_range(s, GuestCluster(guest_cluster), count)?;
        let c = self.cluster_size() as usize;
        let mut base_hosts = Vec::with_capacity(count as usize);
        let mut compressed = Vec::new();
        for i in 0..count {
            let host = match self.entry_of(base, guest_cluster + i)? {
                L2Entry::Normal { host } => Some(HostCluster::of_offset(host, self.cluster_bits)),
                L2Entry::Compressed { .. } => {
                    compressed.push(i as usize);
                    None
                }
                _ => None,
            };
            base_hosts.push(host);
        }
        let mut same = self.compare_with_base(&base_hosts, data)?;
        for &i in &compressed {
            let stored = self.stored_cluster(base, guest_cluster + i as u64)?;
            same[i] = match stored {
                Some(st) => st.holds(&data[i * c..(i + 1) * c])?,
                None => false,
            };
        }
        let mut i = 0usize;
        while i < count as usize {
            let g = guest_cluster + i as u64;
            if same[i] {
                match base_hosts[i] {
                    Some(host) => self.share_cluster(state, g, host)?,
                    None => {
                        self.share_base_cluster(state, g, base)?;
                    }
                }
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
        base_hosts: &[Option<HostCluster>],
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
                && base_hosts[i + run] == Some(first.plus(run as u64))
            {
                run += 1;
            }
            scratch.resize(run * c as usize, 0);
            self.out
                .read_at(&mut scratch, first.offset(self.cluster_bits))?;
            for k in 0..run {
                let range = k * c as usize..(k + 1) * c as usize;
                same[i + k] =
                    scratch[range.clone()] == data[(i + k) * c as usize..(i + k + 1) * c as usize];
            }
            i += run;
        }
        Ok(same)
    }
}

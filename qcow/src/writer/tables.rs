//! L2 tables of the states: the open window of each state, finished into a new table or shared
//! with an identical one of another state, read back for lookups, and referenced again by
//! cloned states.

use super::state::{hash_entries, L1Slot, OpenWindow, State};
use super::Writer;
use crate::bytes::{decode_be, encode_be};
use crate::error::Error;
use crate::format::table::{set_copied, standard_cluster, without_copied, L2Entry};
use crate::types::{GuestCluster, HostCluster, StateId};

impl Writer {
    /// The host cluster holding `guest_cluster` of `state`, or `None` if it is not a plain data
    /// cluster there (unallocated, a zero cluster, or compressed in an existing image): what
    /// [`Writer::share_cluster`] takes. Reads back finished L2 tables as needed (one table is
    /// cached).
    ///
    /// Errors: [`Error::InvalidArgument`] for an unknown state or a guest cluster past the end
    /// of the disk; [`Error::Io`].
    pub fn lookup(
        &mut self,
        state: StateId,
        guest_cluster: u64,
    ) -> Result<Option<HostCluster>, Error> {
        Ok(match self.entry_of(state, guest_cluster)? {
            L2Entry::Normal { host } => Some(HostCluster::of_offset(host, self.cluster_bits)),
            _ => None,
        })
    }

    /// The decoded L2 entry of `guest_cluster` in `state` (its open window, or its finished
    /// table, read back; one table is cached).
    ///
    /// Errors: [`Error::InvalidArgument`] for an unknown state or a guest cluster past the end
    /// of the disk; [`Error::Corrupt`] for an invalid entry; [`Error::Io`].
    pub(super) fn entry_of(
        &mut self,
        state: StateId,
        guest_cluster: u64,
    ) -> Result<L2Entry, Error> {
        let s = self.state_index(state)?;
        let g = GuestCluster(guest_cluster);
        if g.0 >= self.guest_clusters {
            return Err(Error::InvalidArgument(format!(
                "{g} past the disk's {} clusters",
                self.guest_clusters
            )));
        }
        let (l1_index, i) = g.table_indices(self.cluster_bits);
        let l1_index = l1_index as u32;
        let st = &self.states[s];
        let (raw, at) = match (&st.open, st.slot(l1_index)) {
            (Some(w), _) if w.l1_index == l1_index => (w.entries[i], 0),
            (_, Some(slot)) => {
                let offset = slot.l2_offset;
                (self.read_l2_cached(offset)?[i], offset + 8 * i as u64)
            }
            _ => (0, 0),
        };
        L2Entry::decode(raw, self.cluster_bits, self.version, at)
    }

    pub(super) fn read_l2_cached(&mut self, offset: u64) -> Result<&[u64], Error> {
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
    pub(crate) fn read_l2(&mut self, offset: u64) -> Result<Vec<u64>, Error> {
        let mut bytes = vec![0u8; self.cluster_size() as usize];
        self.out.read_at(&mut bytes, offset)?;
        Ok(decode_be(&bytes))
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
            loaded: false,
        });
        Ok(StateId::from_index(self.states.len() - 1))
    }

    /// Adds `delta` (may be negative) references to the L2 table at `l2_offset` and to every
    /// cluster it maps: the effect of one more (or one fewer) L1 table referencing it (notes
    /// §2.1: zero and unallocated entries map no cluster; a compressed payload counts every
    /// host cluster it touches).
    pub(super) fn add_table_references(&mut self, l2_offset: u64, delta: i32) -> Result<(), Error> {
        let by = u16::try_from(delta.unsigned_abs())
            .map_err(|_| Error::Limit(format!("{delta} references to one table")))?;
        let mut clusters = vec![HostCluster::of_offset(l2_offset, self.cluster_bits)];
        let table = self.read_l2(l2_offset)?;
        for (j, &raw) in table.iter().enumerate() {
            let at = l2_offset + j as u64 * 8;
            let entry = L2Entry::decode(raw, self.cluster_bits, self.version, at)?;
            if let Some((first, last)) = entry.host_cluster_range(self.cluster_bits) {
                clusters.extend((first..=last).map(HostCluster));
            }
        }
        for c in clusters {
            if delta >= 0 {
                self.refcounts.increment(c.0, by)?;
            } else {
                self.refcounts.decrement(c.0, by)?;
            }
        }
        self.refcounts_changed = true;
        Ok(())
    }

    /// Makes `l1_index` the open window of state `s`, finishing the previous one. If the state
    /// already has a (shared) L2 table there, its entries are loaded into the window and the
    /// state's reference to the table is dropped (the data references move to the window).
    pub(super) fn open_window(&mut self, s: usize, l1_index: u64) -> Result<(), Error> {
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
                *e = without_copied(t);
            }
            self.refcounts
                .decrement(slot.l2_offset >> self.cluster_bits, 1)?;
            self.refcounts_changed = true;
        }
        self.states[s].open = Some(OpenWindow { l1_index, entries });
        Ok(())
    }

    /// Writes (or shares) the L2 table of state `s`'s open window and records it in its L1.
    pub(super) fn finish_window(&mut self, s: usize) -> Result<(), Error> {
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
                    hash: Some(hash),
                    l2_offset: shared,
                },
            );
            return Ok(());
        }
        let host = self.refcounts.allocate(1)? << self.cluster_bits;
        let flagged: Vec<u64> = w.entries.iter().map(|&e| self.with_copied(e)).collect();
        let mut bytes = Vec::with_capacity(self.cluster_size() as usize);
        encode_be(&flagged, &mut bytes);
        self.out.append(host, &bytes)?;
        self.summary.l2_tables += 1;
        self.push_slot(
            s,
            L1Slot {
                l1_index: w.l1_index,
                hash: Some(hash),
                l2_offset: host,
            },
        );
        Ok(())
    }

    /// `entry` (a window entry) with COPIED set iff it maps a host cluster whose refcount is 1
    /// now (notes §2.2). Zero-plain and unallocated entries never get COPIED (they map no
    /// cluster; cluster 0 is the header), nor do compressed ones.
    pub(crate) fn with_copied(&self, entry: u64) -> u64 {
        let copied = standard_cluster(entry)
            .is_some_and(|host| self.refcounts.get(host >> self.cluster_bits) == 1);
        set_copied(entry, copied)
    }

    fn push_slot(&mut self, s: usize, slot: L1Slot) {
        let l1 = &mut self.states[s].l1;
        let pos = l1.partition_point(|x| x.l1_index < slot.l1_index);
        l1.insert(pos, slot);
    }

    /// An L2 table of another state at the same L1 index with the same entries (COPIED
    /// ignored), found by hash and verified by reading it back (a table of the edited image,
    /// whose hash is unknown, is read and compared).
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
            .filter(|slot| slot.hash.is_none_or(|h| h == hash))
            .map(|slot| slot.l2_offset)
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        for offset in candidates {
            let table = self.read_l2_cached(offset)?;
            if table
                .iter()
                .zip(entries)
                .all(|(&t, e)| without_copied(t) == *e)
            {
                return Ok(Some(offset));
            }
        }
        Ok(None)
    }
}

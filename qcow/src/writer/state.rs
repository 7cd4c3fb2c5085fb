//! The writer's per-state bookkeeping: each state's sparse L1 table (one slot per finished L2
//! table) and its open L2 window, and the helpers on window entries.

use std::hash::{DefaultHasher, Hasher};

use crate::format::table::set_copied;
use crate::types::GuestCluster;

/// A populated L1 entry of a state.
#[derive(Clone, Copy, Debug)]
pub(super) struct L1Slot {
    pub(super) l1_index: u32,
    /// Hash of the L2 table's entries with COPIED masked off (to find identical tables); zero
    /// entries hash as themselves, so zero clusters in two states still share a table.
    /// `None` for tables of an existing image (not read yet): compared entry by entry.
    pub(super) hash: Option<u32>,
    pub(super) l2_offset: u64,
}

/// The L2 window a state is currently filling: L2 entries as stored but without COPIED
/// (`format::table::without_copied`; COPIED is set on write): normal clusters, zero clusters
/// without a host cluster (v3), unallocated entries; entries taken from an existing image's
/// table may also be compressed descriptors or preallocated zero clusters.
#[derive(Debug)]
pub(super) struct OpenWindow {
    pub(super) l1_index: u32,
    pub(super) entries: Vec<u64>,
}

/// One guest state being written: its finished L2 tables and its open window.
#[derive(Debug, Default)]
pub(super) struct State {
    /// Finished L2 tables, sorted by `l1_index`.
    pub(super) l1: Vec<L1Slot>,
    /// The L2 window being filled, if any.
    pub(super) open: Option<OpenWindow>,
    /// Guest clusters below this were already written (writes must be strictly increasing).
    pub(super) next_guest: GuestCluster,
    /// A snapshot of the image being edited ([`Writer::load_state`](super::Writer)): its
    /// tables are referenced by the snapshot's own L1 table, not by this state, and it cannot
    /// be written to.
    pub(super) loaded: bool,
}

impl State {
    /// The finished L2 table at `l1_index`, if any.
    pub(super) fn slot(&self, l1_index: u32) -> Option<&L1Slot> {
        self.l1
            .binary_search_by_key(&l1_index, |s| s.l1_index)
            .ok()
            .map(|i| &self.l1[i])
    }
}

/// Splits guest clusters `first..first + count` at L2 window boundaries (`epl` entries per
/// table): `(clusters before this run, first guest cluster, length)` per run.
pub(super) fn window_runs(
    first: GuestCluster,
    count: u64,
    epl: u64,
) -> impl Iterator<Item = (u64, GuestCluster, u64)> {
    let mut done = 0u64;
    std::iter::from_fn(move || {
        if done >= count {
            return None;
        }
        let g = first.plus(done);
        let run = (epl - g.0 % epl).min(count - done);
        let item = (done, g, run);
        done += run;
        Some(item)
    })
}

/// Hash of an L2 table's entries with COPIED masked off (to find identical tables).
pub(super) fn hash_entries(entries: &[u64]) -> u32 {
    let mut h = DefaultHasher::new();
    for e in entries {
        h.write_u64(set_copied(*e, false));
    }
    h.finish() as u32
}

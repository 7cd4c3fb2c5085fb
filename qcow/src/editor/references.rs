//! The reference changes of a commit (notes §2.1; QEMU's `snapshot -d` and `goto` in §2.3):
//! new states used as the active layer or as snapshots gain L1 references, the replaced active
//! layer and removed snapshots lose theirs.
//!
//! Design: an L1 table holds one reference to each of its own clusters and, per entry, one to
//! the L2 table and one to every cluster that table maps. The L1 tables' own clusters change
//! at once; for the L2 tables, the net change per distinct table (Δ) is summed first, then
//! each table with Δ ≠ 0 is read once and Δ added to it and to every cluster it maps. So a
//! table that the new active layer shares with the replaced one (−1 + 1) is not read at all,
//! and removing many states that share tables costs about the distinct tables, not states ×
//! tables. Positive changes are applied before negative ones, so no count dips below 0 on the
//! way.

use std::collections::BTreeMap;

use super::clusters_of;
use crate::error::Error;
use crate::format::table::{l1_entry_table, L2Entry};
use crate::geometry::Version;
use crate::writer::Writer;

/// Net changes of L1 references to L2 tables.
#[derive(Default)]
pub(super) struct TableDeltas {
    /// Distinct L2 table offset → net change of the number of L1 entries referencing it.
    deltas: BTreeMap<u64, i64>,
}

impl TableDeltas {
    /// `delta` more L1 references to the L2 table at `l2`.
    pub(super) fn add(&mut self, l2: u64, delta: i64) {
        *self.deltas.entry(l2).or_default() += delta;
    }

    /// Drops the L1 table `l1` (entries with flags) at byte `offset`: one reference to each of
    /// its clusters at once, one to each of its L2 tables counted.
    ///
    /// Errors: [`Error::InvalidArgument`] if a refcount would drop below 0; [`Error::Corrupt`]
    /// for a table past 2^64.
    pub(super) fn drop_l1(&mut self, w: &mut Writer, offset: u64, l1: &[u64]) -> Result<(), Error> {
        let cb = w.cluster_size().trailing_zeros();
        for cluster in clusters_of(offset, l1.len() as u64 * 8, cb)? {
            w.refcounts_mut().decrement(cluster, 1)?;
        }
        for &e in l1 {
            let l2 = l1_entry_table(e);
            if l2 != 0 {
                self.add(l2, -1);
            }
        }
        Ok(())
    }

    /// Applies the changes: each table with Δ ≠ 0 read once (through the writer: new tables
    /// may still be in its buffer), Δ added to it and to every cluster it maps, positive
    /// changes first. Returns the number of tables read.
    ///
    /// Errors: [`Error::InvalidArgument`] if a refcount would drop below 0 (the image's
    /// refcounts were too low); [`Error::Limit`] on overflow; [`Error::Corrupt`] for an invalid
    /// L2 entry; [`Error::Io`].
    pub(super) fn apply(self, w: &mut Writer, version: Version) -> Result<u64, Error> {
        let changed: Vec<(u64, i64)> = self.deltas.into_iter().filter(|&(_, d)| d != 0).collect();
        let ordered = changed
            .iter()
            .filter(|d| d.1 > 0)
            .chain(changed.iter().filter(|d| d.1 < 0));
        for &(l2, delta) in ordered {
            let by = u16::try_from(delta.unsigned_abs()).map_err(|_| {
                Error::Limit(format!("{delta} references to the L2 table at {l2:#x}"))
            })?;
            for cluster in table_clusters(w, l2, version)? {
                if delta > 0 {
                    w.refcounts_mut().increment(cluster, by)?;
                } else {
                    w.refcounts_mut().decrement(cluster, by)?;
                }
            }
        }
        Ok(changed.len() as u64)
    }
}

/// The clusters one L1 reference to the L2 table at `l2` counts (notes §2.1): the table, each
/// normal or preallocated zero cluster, every cluster a compressed payload touches.
fn table_clusters(w: &mut Writer, l2: u64, version: Version) -> Result<Vec<u64>, Error> {
    let cb = w.cluster_size().trailing_zeros();
    let mut clusters = vec![l2 >> cb];
    for (j, raw) in w.read_l2(l2)?.into_iter().enumerate() {
        let entry = L2Entry::decode(raw, cb, version, l2 + j as u64 * 8)?;
        if let Some((first, last)) = entry.host_cluster_range(cb) {
            clusters.extend(first..=last);
        }
    }
    Ok(clusters)
}

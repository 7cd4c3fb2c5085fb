//! Names the bad clusters [`verify`](super::verify) found: what each holds and which states
//! use it, from the image's tables (header fields, refcount table, snapshot table, every L1
//! table, every distinct L2 table read once).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use super::{BadCluster, ClusterKind, ClusterUse};
use crate::bytes::decode_be;
use crate::error::Error;
use crate::format::table::{l1_entry_table, L2Entry};
use crate::reader::{Layer, Reader};

/// The bad clusters being named, found by host cluster number.
struct Names<'a> {
    cluster_bits: u32,
    /// Host cluster → index in `bad`.
    index: BTreeMap<u64, usize>,
    bad: &'a mut [BadCluster],
}

impl Names<'_> {
    /// Whether a bad cluster lies in host clusters `[first, last]`.
    fn any(&self, first: u64, last: u64) -> bool {
        self.index.range(first..=last).next().is_some()
    }

    /// The bad clusters that bytes `[offset, offset + len)` touch hold `kind`, used by `u`.
    /// A cluster keeps the first kind found for it.
    fn mark(&mut self, offset: u64, len: u64, kind: ClusterKind, u: Option<ClusterUse>) {
        if len == 0 {
            return;
        }
        let last = (offset + len - 1) >> self.cluster_bits;
        for (_, &i) in self.index.range(offset >> self.cluster_bits..=last) {
            let b = &mut self.bad[i];
            if b.kind != ClusterKind::Unreferenced && b.kind != kind {
                continue;
            }
            b.kind = kind;
            if let Some(u) = u.filter(|u| !b.uses.contains(u)) {
                b.uses.push(u);
            }
        }
    }
}

/// Fills in `kind` and `uses` of every cluster in `bad` (`refblocks`: the refcount table's
/// block offsets). Errors: [`Error::Io`], [`Error::Corrupt`] reading an L1 or L2 table.
pub(super) fn name_clusters(
    r: &Reader,
    refblocks: &[u64],
    bad: &mut [BadCluster],
) -> Result<(), Error> {
    let h = r.header().clone();
    let c = r.cluster_size();
    let index = bad
        .iter()
        .enumerate()
        .map(|(i, b)| (b.host_offset >> h.cluster_bits, i))
        .collect();
    let mut names = Names {
        cluster_bits: h.cluster_bits,
        index,
        bad,
    };
    let reftable_len = u64::from(h.refcount_table_clusters) * c;
    names.mark(
        h.refcount_table_offset,
        reftable_len,
        ClusterKind::RefcountTable,
        None,
    );
    for &b in refblocks.iter().filter(|&&b| b != 0) {
        names.mark(b, c, ClusterKind::RefcountBlock, None);
    }
    let last = r.snapshots().len().checked_sub(1);
    if let Some((_, end)) = last.and_then(|i| r.snapshot_extent(i)) {
        let len = end - h.snapshots_offset;
        names.mark(h.snapshots_offset, len, ClusterKind::SnapshotTable, None);
    }
    let mut hits = HashMap::new();
    mark_layer(
        r,
        &mut names,
        &mut hits,
        Layer::Active,
        h.l1_table_offset,
        r.active_l1(),
    )?;
    for (i, s) in r.snapshots().iter().enumerate() {
        let l1 = r.read_l1(s.l1_table_offset, s.l1_size)?;
        mark_layer(
            r,
            &mut names,
            &mut hits,
            Layer::Snapshot(i),
            s.l1_table_offset,
            &l1,
        )?;
    }
    Ok(())
}

/// Per distinct L2 table: its entries that touch a bad cluster, (entry index, first host
/// cluster, last host cluster).
type Hits = HashMap<u64, Vec<(u64, u64, u64)>>;

/// Marks what state `layer` (its L1 table `l1` at byte `offset`) maps: its L1 table's
/// clusters, its L2 tables and the data clusters they map.
fn mark_layer(
    r: &Reader,
    names: &mut Names<'_>,
    hits: &mut Hits,
    layer: Layer,
    offset: u64,
    l1: &[u64],
) -> Result<(), Error> {
    let c = r.cluster_size();
    let span = c * (c / 8);
    let whole = |guest_offset| {
        Some(ClusterUse {
            layer,
            guest_offset,
        })
    };
    names.mark(offset, l1.len() as u64 * 8, ClusterKind::L1, whole(None));
    let mut buf = vec![0u8; c as usize];
    for (i, &e) in l1.iter().enumerate() {
        let l2 = l1_entry_table(e);
        if l2 == 0 {
            continue;
        }
        let guest = i as u64 * span;
        names.mark(l2, c, ClusterKind::L2, whole(Some(guest)));
        let found = match hits.entry(l2) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => v.insert(table_hits(r, l2, &mut buf, |a, b| names.any(a, b))?),
        };
        for &(j, first, last) in found.iter() {
            let len = (last - first + 1) * c;
            names.mark(
                first * c,
                len,
                ClusterKind::Data,
                whole(Some(guest + j * c)),
            );
        }
    }
    Ok(())
}

/// The entries of the L2 table at `l2` whose host clusters `hit(first, last)` says are bad:
/// (entry index, first cluster, last cluster). Invalid entries are skipped (the structure
/// pass reports them).
fn table_hits(
    r: &Reader,
    l2: u64,
    buf: &mut [u8],
    hit: impl Fn(u64, u64) -> bool,
) -> Result<Vec<(u64, u64, u64)>, Error> {
    let (cb, version) = (r.header().cluster_bits, r.header().version);
    buf.copy_from_slice(&r.read_bytes(l2, buf.len() as u64, "an L2 table")?);
    let mut out = Vec::new();
    for (j, raw) in decode_be::<u64>(buf).into_iter().enumerate() {
        let Ok(entry) = L2Entry::decode(raw, cb, version, l2 + j as u64 * 8) else {
            continue;
        };
        if let Some((first, last)) = entry.host_cluster_range(cb) {
            if hit(first, last) {
                out.push((j as u64, first, last));
            }
        }
    }
    Ok(out)
}

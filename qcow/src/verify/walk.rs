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

/// Fills in `kind` and `uses` of every cluster in `bad` (`refblocks`: the refcount table's
/// block offsets). Errors: [`Error::Io`], [`Error::Corrupt`] reading a table.
pub(super) fn name_clusters(
    r: &Reader,
    refblocks: &[u64],
    bad: &mut [BadCluster],
) -> Result<(), Error> {
    let h = r.header().clone();
    let (cb, c) = (h.cluster_bits, r.cluster_size());
    let mut index: BTreeMap<u64, usize> = BTreeMap::new();
    for (i, b) in bad.iter().enumerate() {
        index.insert(b.host_offset >> cb, i);
    }
    let mut mark = |first: u64, len: u64, kind: ClusterKind, u: Option<ClusterUse>| {
        if len == 0 {
            return;
        }
        let last = (first + len - 1) >> cb;
        for (_, &i) in index.range(first >> cb..=last) {
            if bad[i].kind == ClusterKind::Unreferenced || bad[i].kind == kind {
                bad[i].kind = kind;
                if let Some(u) = u {
                    if !bad[i].uses.contains(&u) {
                        bad[i].uses.push(u);
                    }
                }
            }
        }
    };
    let reftable_len = u64::from(h.refcount_table_clusters) * c;
    mark(
        h.refcount_table_offset,
        reftable_len,
        ClusterKind::RefcountTable,
        None,
    );
    for &b in refblocks.iter().filter(|&&b| b != 0) {
        mark(b, c, ClusterKind::RefcountBlock, None);
    }
    if let Some((_, end)) = r
        .snapshots()
        .len()
        .checked_sub(1)
        .and_then(|i| r.snapshot_extent(i))
    {
        mark(
            h.snapshots_offset,
            end - h.snapshots_offset,
            ClusterKind::SnapshotTable,
            None,
        );
    }
    let mut layers = vec![(Layer::Active, h.l1_table_offset, r.active_l1().to_vec())];
    for (i, s) in r.snapshots().iter().enumerate() {
        layers.push((
            Layer::Snapshot(i),
            s.l1_table_offset,
            r.read_l1(s.l1_table_offset, s.l1_size)?,
        ));
    }
    // Per distinct L2 table: its entries that touch a bad cluster, (entry index, first, last).
    let mut hits: HashMap<u64, Vec<(u64, u64, u64)>> = HashMap::new();
    let mut buf = vec![0u8; c as usize];
    let per_l2 = c / 8;
    let span = c * per_l2;
    for (layer, offset, l1) in &layers {
        let l1_use = ClusterUse {
            layer: *layer,
            guest_offset: None,
        };
        mark(*offset, l1.len() as u64 * 8, ClusterKind::L1, Some(l1_use));
        for (i, &e) in l1.iter().enumerate() {
            let l2 = l1_entry_table(e);
            if l2 == 0 {
                continue;
            }
            let guest = i as u64 * span;
            let u = ClusterUse {
                layer: *layer,
                guest_offset: Some(guest),
            };
            mark(l2, c, ClusterKind::L2, Some(u));
            let found = match hits.entry(l2) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(v) => v.insert(table_hits(r, l2, &mut buf, |a, b| {
                    index.range(a..=b).next().is_some()
                })?),
            };
            for &(j, first, last) in found.iter() {
                let u = ClusterUse {
                    layer: *layer,
                    guest_offset: Some(guest + j * c),
                };
                let len = ((last - first) + 1) << cb;
                mark(first << cb, len, ClusterKind::Data, Some(u));
            }
        }
    }
    Ok(())
}

/// The entries of the L2 table at `l2` whose host clusters `hit(first, last)` says are bad:
/// (entry index, first cluster, last cluster).
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

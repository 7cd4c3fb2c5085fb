//! The refcount structures of a commit (spec "Cluster refcounts"): refcount blocks copied on
//! write, and a new refcount table.
//!
//! Design: a block whose counts are those committed stays where it is and keeps its table
//! entry. A changed block gets a new cluster (its old one is freed), or no block at all when
//! every count it holds is 0 now; the old refcount table is freed and a new one written. New
//! blocks and the new table need clusters, whose counts change more blocks, and a growing
//! image needs more blocks and a larger table: this is repeated until nothing changes (each
//! round only adds decisions, so it ends, usually after two or three). Every new cluster is
//! free in the committed image, so the committed refcount structures stay intact until the
//! header points at the new table.

use std::collections::BTreeMap;

use crate::bytes::encode_be;
use crate::error::Error;
use crate::geometry::MAX_REFTABLE_BYTES;
use crate::writer::Writer;

/// Where a commit put the refcount table.
pub(super) struct NewRefcounts {
    /// Byte offset of the new refcount table.
    pub(super) table_offset: u64,
    /// Its length in clusters.
    pub(super) table_clusters: u32,
    /// Refcount blocks written.
    pub(super) blocks_written: u64,
}

/// Writes the changed refcount blocks and a new refcount table, given the committed table
/// (`old_blocks`: block offsets, 0 = none; `old_table`: byte offset and clusters). Returns
/// `None`, writing nothing, when no refcount changed.
///
/// Errors: [`Error::Limit`] for a refcount table over 8 MiB or allocation limits; [`Error::Io`].
pub(super) fn write_refcounts(
    w: &mut Writer,
    old_blocks: &[u64],
    old_table: (u64, u32),
) -> Result<Option<NewRefcounts>, Error> {
    let rc = w.refcounts();
    if !rc.touched_blocks().into_iter().any(|k| rc.block_changed(k)) {
        return Ok(None);
    }
    let (c, cb) = (w.cluster_size(), w.cluster_size().trailing_zeros());
    let first = old_table.0 >> cb;
    for cluster in first..first + u64::from(old_table.1) {
        w.refcounts_mut().decrement(cluster, 1)?;
    }
    let (fate, (table_first, table_clusters)) = place(w, old_blocks)?;
    let mut bytes = Vec::with_capacity(c as usize);
    for (&k, &cluster) in &fate {
        if let Some(cluster) = cluster {
            bytes.clear();
            w.refcounts().encode_block(k, &mut bytes);
            w.out_mut().append(cluster << cb, &bytes)?;
        }
    }
    let entries: Vec<u64> = (0..table_clusters * c / 8)
        .map(|k| match fate.get(&k) {
            Some(new) => new.map_or(0, |cluster| cluster << cb),
            None => old_blocks.get(k as usize).copied().unwrap_or(0),
        })
        .collect();
    bytes.clear();
    encode_be(&entries, &mut bytes);
    w.out_mut().append(table_first << cb, &bytes)?;
    Ok(Some(NewRefcounts {
        table_offset: table_first << cb,
        table_clusters: u32::try_from(table_clusters)
            .map_err(|_| Error::Limit(format!("{table_clusters} refcount table clusters")))?,
        blocks_written: fate.values().flatten().count() as u64,
    }))
}

/// Decides the fate of every changed block and places the new refcount table, until the
/// allocations they need change nothing more. Returns (block k → new cluster or none, the
/// table's (first cluster, clusters)).
fn place(w: &mut Writer, old_blocks: &[u64]) -> Result<(Fates, (u64, u64)), Error> {
    let c = w.cluster_size();
    let mut fate = Fates::new();
    let mut table: Option<(u64, u64)> = None;
    loop {
        let mut changed = settle_blocks(w, old_blocks, &mut fate)?;
        let entries = w.refcounts().blocks_needed().max(old_blocks.len() as u64);
        let need = (entries * 8).div_ceil(c);
        if need * c > MAX_REFTABLE_BYTES {
            return Err(Error::Limit(format!(
                "a refcount table of {need} clusters exceeds {MAX_REFTABLE_BYTES} bytes"
            )));
        }
        if table.is_none_or(|(_, n)| n < need) {
            if let Some((f, n)) = table {
                (f..f + n).try_for_each(|t| w.refcounts_mut().decrement(t, 1).map(drop))?;
            }
            table = Some((w.refcounts_mut().allocate(need)?, need));
            changed = true;
        }
        if !changed {
            return Ok((fate, table.unwrap_or_default()));
        }
    }
}

/// Refcount block index → its new cluster, or `None` for no block (all counts 0).
type Fates = BTreeMap<u64, Option<u64>>;

/// One round: every block whose counts changed and has no fate yet frees its old block and
/// gets a new cluster (or none if all its counts are 0); a block decided "none" that holds
/// counts again gets a cluster. Returns whether anything was decided.
fn settle_blocks(w: &mut Writer, old_blocks: &[u64], fate: &mut Fates) -> Result<bool, Error> {
    let cb = w.cluster_size().trailing_zeros();
    let mut changed = false;
    for k in w.refcounts().touched_blocks() {
        match fate.get(&k) {
            Some(Some(_)) => continue,
            Some(None) if w.refcounts().block_is_zero(k) => continue,
            Some(None) => {}
            None if !w.refcounts().block_changed(k) => continue,
            None => {
                let old = old_blocks.get(k as usize).copied().unwrap_or(0);
                if old != 0 {
                    w.refcounts_mut().decrement(old >> cb, 1)?;
                }
            }
        }
        let cluster = if w.refcounts().block_is_zero(k) {
            None
        } else {
            Some(w.refcounts_mut().allocate(1)?)
        };
        fate.insert(k, cluster);
        changed = true;
    }
    Ok(changed)
}

//! The census of [`Editor::open`](super::Editor::open): every reference the committed image
//! holds, counted from its tables (notes §2.1, as `qemu-img check` counts them), compared with
//! the stored refcount of every cluster, before the editor changes anything.
//!
//! Why: the editor hands out clusters whose refcount is 0 and frees clusters whose refcount
//! drops to 0. A refcount too low (a data cluster an old state maps with refcount 0, or 1
//! where four L1 tables share it) would let an append overwrite that cluster or a prune punch
//! it while a kept state still maps it; a refcount too high (a leak) would never be freed. So
//! any disagreement refuses the edit ([`Error::Corrupt`] naming the cluster, its stored
//! refcount and the references counted, and pointing at `qemu-img check -r all`, or `-r
//! leaks` when every disagreement is a leak); nothing is repaired, nothing is written.
//!
//! What is counted: one reference to the header cluster, to each cluster of the refcount table,
//! to each refcount block, to each cluster of the snapshot table and of every L1 table (the
//! active one and each snapshot's); for each L1 entry, one reference to its L2 table and one to
//! every host cluster that table maps: normal clusters, zero clusters with a host offset, and
//! every cluster a compressed payload touches. An L2 table referenced by k L1 entries over all
//! L1 tables is read once and counts k for itself and k for each cluster it maps.
//!
//! Design: counts are kept like the refcounts, in chunks of one refcount block's range
//! (`C/2` clusters of 16 bits), only for the blocks the image has (a cluster outside them has
//! refcount 0, so any reference to it disagrees: the first such cluster is counted on its own
//! and reported). L1 references to L2 tables go to a second set of chunks, made only where a
//! table lies; those chunks are then walked in cluster order, so the L2 tables are read in
//! offset order, each once. Clusters past the committed end (the leftovers of an interrupted
//! edit, which `open` truncates next) have refcount 0 and no references: they agree.
//!
//! Cost: every L1 table and every distinct L2 table is read once (one cluster each); for an
//! archive that is the tables of all its states, shared tables once (a fully mapped 1 TiB disk
//! with 64 KiB clusters has 2048 L2 tables, 128 MiB). Memory: 2 bytes per cluster covered by a
//! refcount block (the size of the refcounts already loaded), 2 more per cluster of the blocks
//! holding L2 tables, and one cluster of buffer. Measured (`tests/scale.rs`,
//! `editor_on_1000_states`, file in the page cache): 2.3 s to open a 1000-state, 900 MB
//! archive with 4 KiB clusters, where `qemu-img check` takes 72 s.

use super::{clusters_of, Blocks};
use crate::error::Error;
use crate::format::table::{l1_entry_l2_offset, l1_entry_table};
use crate::reader::Reader;
use crate::types::HostCluster;

/// Counts every reference of the image `r` (its refcount table `refblocks`, loaded as
/// `blocks`), validating every L1 table on the way, and compares them with the stored
/// refcounts; also refuses refcount blocks with a refcount other than 1. Returns the first
/// snapshot whose L1 table maps through the active layer's L2 tables.
///
/// Errors: [`Error::Corrupt`] for a disagreement, an invalid L1 or L2 entry, an L2 table past
/// the end of the file; [`Error::Limit`], [`Error::Io`] reading an L1 table.
pub(crate) fn check_refcounts(
    r: &Reader,
    refblocks: &[u64],
    blocks: &Blocks,
) -> Result<Option<usize>, Error> {
    let h = r.header();
    let (cb, c) = (h.cluster_bits, r.cluster_size());
    let mut counts = Counts::new(blocks, cb);
    counts.add_bytes(0, 1, 1)?;
    let reftable_len = u64::from(h.refcount_table_clusters) * c;
    counts.add_bytes(h.refcount_table_offset, reftable_len, 1)?;
    for &b in refblocks.iter().filter(|&&b| b != 0) {
        counts.add_bytes(b, 1, 1)?;
    }
    if let Some((_, end)) = r
        .snapshots()
        .len()
        .checked_sub(1)
        .and_then(|i| r.snapshot_extent(i))
    {
        counts.add_bytes(h.snapshots_offset, end - h.snapshots_offset, 1)?;
    }
    let active = r.active_l1();
    counts.add_l1(r, h.l1_table_offset, active)?;
    let mut matching = None;
    for (i, s) in r.snapshots().iter().enumerate() {
        if !s.l1_table_offset.is_multiple_of(c) || (s.l1_size > 0 && s.l1_table_offset == 0) {
            let what = format!("snapshot {i} ({}) L1 table is not cluster aligned", s.name);
            return Err(Error::corrupt(what, s.l1_table_offset));
        }
        let l1 = r.read_l1(s.l1_table_offset, s.l1_size)?;
        counts.add_l1(r, s.l1_table_offset, &l1)?;
        if matching.is_none() && same_tables(active, &l1) {
            matching = Some(i);
        }
    }
    counts.add_l2_tables(r)?;
    counts.compare(blocks)?;
    check_refblocks(refblocks, blocks, cb)?;
    Ok(matching)
}

/// Whether two L1 tables reference the same L2 tables (flags and missing tail entries aside).
fn same_tables(a: &[u64], b: &[u64]) -> bool {
    let at = |l1: &[u64], i: usize| l1.get(i).map_or(0, |&e| l1_entry_table(e));
    (0..a.len().max(b.len())).all(|i| at(a, i) == at(b, i))
}

/// Refuses refcount blocks whose refcount is not exactly 1 (the copy-on-write of blocks frees
/// the old ones). After [`Counts::compare`], a refcount of 1 also means no other use.
fn check_refblocks(refblocks: &[u64], blocks: &Blocks, cluster_bits: u32) -> Result<(), Error> {
    for &b in refblocks.iter().filter(|&&b| b != 0) {
        let cluster = HostCluster::of_offset(b, cluster_bits);
        let stored = stored(blocks, cluster, cluster_bits);
        if stored != 1 {
            let what = format!("refcount block at {cluster} has refcount {stored} (must be 1)");
            return Err(Error::corrupt(what, b));
        }
    }
    Ok(())
}

/// The stored refcount of `cluster` (0 where no block covers it).
fn stored(blocks: &Blocks, cluster: HostCluster, cluster_bits: u32) -> u16 {
    let (k, i) = split(cluster, cluster_bits - 1);
    blocks
        .get(k)
        .and_then(Option::as_ref)
        .map_or(0, |block| block[i])
}

/// (chunk index, index within it) of `cluster`, with `1 << block_bits` clusters per chunk.
fn split(cluster: HostCluster, block_bits: u32) -> (usize, usize) {
    let k = usize::try_from(cluster.0 >> block_bits).unwrap_or(usize::MAX);
    (k, (cluster.0 & ((1u64 << block_bits) - 1)) as usize)
}

/// References counted per host cluster.
struct Counts {
    cluster_bits: u32,
    /// log2 of the clusters per chunk (one refcount block's range: `cluster_bits − 1`).
    block_bits: u32,
    /// All references, chunk k for clusters `[k·E, (k+1)·E)`; `None` where the image has no
    /// refcount block (every stored refcount there is 0).
    refs: Vec<Option<Box<[u16]>>>,
    /// L1 references to the cluster as an L2 table, chunks made where a table lies.
    tables: Vec<Option<Box<[u16]>>>,
    /// The first cluster referenced outside `refs` (stored refcount 0), and its references.
    unbacked: Option<(HostCluster, u64)>,
    /// The first cluster whose references exceed 65 535 (no 16-bit refcount can match).
    overflow: Option<HostCluster>,
}

impl Counts {
    fn new(blocks: &Blocks, cluster_bits: u32) -> Counts {
        let block_bits = cluster_bits - 1;
        let zeros = || vec![0u16; 1 << block_bits].into_boxed_slice();
        Counts {
            cluster_bits,
            block_bits,
            refs: blocks.iter().map(|b| b.as_ref().map(|_| zeros())).collect(),
            tables: vec![None; blocks.len()],
            unbacked: None,
            overflow: None,
        }
    }

    /// `n` more references to `cluster`.
    fn add(&mut self, cluster: HostCluster, n: u64) {
        let (k, i) = split(cluster, self.block_bits);
        match self.refs.get_mut(k).and_then(Option::as_mut) {
            Some(chunk) => {
                let sum = u64::from(chunk[i]) + n;
                if sum > u64::from(u16::MAX) {
                    self.overflow.get_or_insert(cluster);
                }
                chunk[i] = sum.min(u64::from(u16::MAX)) as u16;
            }
            None => match &mut self.unbacked {
                None => self.unbacked = Some((cluster, n)),
                Some((first, m)) if *first == cluster => *m += n,
                Some(_) => {}
            },
        }
    }

    /// `n` more references to every cluster that bytes `[offset, offset + len)` touch.
    fn add_bytes(&mut self, offset: u64, len: u64, n: u64) -> Result<(), Error> {
        for c in clusters_of(offset, len, self.cluster_bits)? {
            self.add(HostCluster(c), n);
        }
        Ok(())
    }

    /// The L1 table `l1` at `offset`: one reference to each of its clusters, one L1 reference
    /// to the L2 table of each entry, after validating the entry (reserved bits, alignment,
    /// inside the file).
    fn add_l1(&mut self, r: &Reader, offset: u64, l1: &[u64]) -> Result<(), Error> {
        self.add_bytes(offset, l1.len() as u64 * 8, 1)?;
        for (i, &e) in l1.iter().enumerate() {
            let at = offset + 8 * i as u64;
            let l2 = l1_entry_l2_offset(e, at)?;
            if !l2.is_multiple_of(r.cluster_size()) || (l2 != 0 && l2 >= r.file_len()) {
                let what = format!(
                    "L1 entry {e:#018x}: L2 table not cluster aligned or past the end of the file"
                );
                return Err(Error::corrupt(what, at));
            }
            if l2 != 0 {
                self.add_table(HostCluster::of_offset(l2, self.cluster_bits));
            }
        }
        Ok(())
    }

    /// One more L1 reference to the L2 table in `cluster`. A table where no refcount is stored
    /// disagrees whatever it maps: it is counted as a reference and not read.
    fn add_table(&mut self, cluster: HostCluster) {
        let (k, i) = split(cluster, self.block_bits);
        if self.refs.get(k).is_none_or(Option::is_none) {
            self.add(cluster, 1);
            return;
        }
        let zeros = || vec![0u16; 1 << self.block_bits].into_boxed_slice();
        let chunk = self.tables[k].get_or_insert_with(zeros);
        match chunk[i].checked_add(1) {
            Some(v) => chunk[i] = v,
            None => {
                self.overflow.get_or_insert(cluster);
            }
        }
    }

    /// Reads every L2 table once, in offset order: a table with k L1 references counts k for
    /// itself and k for every cluster it maps.
    fn add_l2_tables(&mut self, r: &Reader) -> Result<(), Error> {
        let tables = std::mem::take(&mut self.tables);
        let mut buf = vec![0u8; r.cluster_size() as usize];
        for (k, chunk) in tables.iter().enumerate() {
            let Some(chunk) = chunk else { continue };
            for (i, &n) in chunk.iter().enumerate().filter(|(_, &n)| n != 0) {
                let cluster = HostCluster(((k as u64) << self.block_bits) + i as u64);
                let offset = cluster.offset(self.cluster_bits);
                r.visit_l2_table(offset, &mut buf, |c| self.add(HostCluster(c), u64::from(n)))?;
            }
        }
        Ok(())
    }

    /// Compares the counts with the stored refcounts `blocks`.
    ///
    /// Errors: [`Error::Corrupt`] for the first cluster (by offset) whose refcount is too low,
    /// or, when none is, the first leaked one.
    fn compare(&self, blocks: &Blocks) -> Result<(), Error> {
        let cb = self.cluster_bits;
        if let Some(c) = self.overflow {
            return Err(disagreement(c, stored(blocks, c, cb), None, cb));
        }
        let mut leak = None;
        let mut low = self.unbacked.map(|(c, n)| (c, 0u16, n));
        for (k, (block, chunk)) in blocks.iter().zip(&self.refs).enumerate() {
            let (Some(block), Some(chunk)) = (block, chunk) else {
                continue;
            };
            let first = (k as u64) << self.block_bits;
            let mut pairs = block.iter().zip(chunk.iter()).enumerate();
            if let Some((i, (&s, &n))) = pairs.find(|(_, (&s, &n))| s < n) {
                let c = HostCluster(first + i as u64);
                if low.is_none_or(|(l, _, _)| c < l) {
                    low = Some((c, s, u64::from(n)));
                }
            }
            if leak.is_none() {
                let mut pairs = block.iter().zip(chunk.iter()).enumerate();
                if let Some((i, (&s, &n))) = pairs.find(|(_, (&s, &n))| s > n) {
                    leak = Some((HostCluster(first + i as u64), s, u64::from(n)));
                }
            }
        }
        match low.or(leak) {
            Some((c, s, n)) => Err(disagreement(c, s, Some(n), cb)),
            None => Ok(()),
        }
    }
}

/// The refusal for `cluster`, whose stored refcount `stored` disagrees with the `counted`
/// references (`None`: more than 65 535).
fn disagreement(
    cluster: HostCluster,
    stored: u16,
    counted: Option<u64>,
    cluster_bits: u32,
) -> Error {
    let refs = match counted {
        Some(1) => "1 reference".to_string(),
        Some(n) => format!("{n} references"),
        None => "more than 65535 references".to_string(),
    };
    let what = if counted.is_none_or(|n| u64::from(stored) < n) {
        format!(
            "{cluster} has refcount {stored} but {refs} in the image's tables: with refcounts \
             too low, appending or pruning could overwrite or free data a state still uses; \
             repair the image with `qemu-img check -r all` first"
        )
    } else {
        format!(
            "{cluster} has refcount {stored} but {refs} in the image's tables (a leaked \
             cluster); repair the image with `qemu-img check -r leaks` first"
        )
    };
    Error::corrupt(what, cluster.offset(cluster_bits))
}

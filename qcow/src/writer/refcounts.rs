//! The writer's host cluster allocator and refcounts (spec "Cluster refcounts"), always 16 bits
//! wide (`refcount_order` 4).
//!
//! Design: for a new image, host clusters are bump-allocated, so "allocated" is simply
//! `cluster < allocated()`. Refcounts are kept in chunks, one per refcount block's range
//! (E = C/2 clusters). A chunk that was never touched by anything but allocation is not
//! materialized: every allocated cluster in it has refcount 1. Only when a cluster's refcount
//! changes is its chunk expanded into a `u16` array. A single-state export therefore needs no
//! refcount memory at all, and the worst case is one cluster of memory per refcount block,
//! i.e. exactly the size of the refcount blocks. The refcount structures' own size is found by
//! fixed point ([`refcount_structure_clusters`](crate::format::refcount::refcount_structure_clusters)).
//!
//! Over an existing image ([`RefcountChunks::over_image`], for the editor) the committed
//! refcount blocks are the base: an unmaterialized chunk reads the committed counts below the
//! committed end, and 1 for clusters allocated past it. Allocation takes clusters free in the
//! committed counts first ([`FreeRuns`], each handed out at most once, so a cluster freed by
//! this edit is never reused before the edit is committed), then bumps past the end.

use super::free_runs::FreeRuns;
use crate::bytes::{encode_be, push_be};
use crate::error::Error;
use crate::format::refcount::MAX_REFCOUNT;
use crate::geometry::MAX_HOST_OFFSET;

/// Refcounts of all allocated host clusters, by refcount-block-sized chunks.
#[derive(Debug)]
pub(crate) struct RefcountChunks {
    cluster_bits: u32,
    /// log2 of the refcount entries per block (C/2 → cluster_bits − 1).
    block_bits: u32,
    /// Host clusters `[0, allocated)` are allocated (or, over an image, inside it).
    allocated: u64,
    /// Chunk k covers clusters `[k·E, (k+1)·E)`; `None` = the lazy rule of [`Self::lazy`].
    chunks: Vec<Option<Box<[u16]>>>,
    /// The committed refcounts of the image being edited (`None` for a new image).
    base: Option<Committed>,
}

/// The refcounts of an existing image as committed on disk.
#[derive(Debug)]
struct Committed {
    /// Refcount block k's entries (`None`: no block, all 0).
    blocks: Vec<Option<Box<[u16]>>>,
    /// Clusters `[0, end)` are the committed image (the last non-zero refcount is at end − 1).
    end: u64,
    /// Clusters free in the committed counts not yet handed out.
    free: FreeRuns,
    /// Clusters `[end, reserved)` hold data of the committed image without a refcount (its
    /// cluster checksum table): never handed out, refcount 0.
    reserved: u64,
}

impl RefcountChunks {
    /// An empty allocator for clusters of `1 << cluster_bits` bytes (nothing allocated).
    pub(super) fn new(cluster_bits: u32) -> RefcountChunks {
        RefcountChunks {
            cluster_bits,
            block_bits: cluster_bits - 1,
            allocated: 0,
            chunks: Vec::new(),
            base: None,
        }
    }

    /// The refcounts of an existing image: `blocks[k]` holds refcount block k's C/2 entries
    /// (`None` where the refcount table has no block). The committed end is the last cluster
    /// with a non-zero refcount, + 1; clusters with refcount 0 below it are free.
    ///
    /// Errors: [`Error::Corrupt`] if a block does not have C/2 entries or cluster 0 (the header)
    /// has refcount 0.
    pub(crate) fn over_image(
        cluster_bits: u32,
        blocks: Vec<Option<Box<[u16]>>>,
    ) -> Result<RefcountChunks, Error> {
        let epb = 1usize << (cluster_bits - 1);
        if blocks.iter().flatten().any(|b| b.len() != epb) {
            return Err(Error::corrupt("refcount block of the wrong size", 0));
        }
        if blocks
            .first()
            .and_then(|b| b.as_ref())
            .is_none_or(|b| b[0] == 0)
        {
            return Err(Error::corrupt("the header cluster has refcount 0", 0));
        }
        let end = last_nonzero(&blocks, epb).map_or(0, |c| c + 1);
        let free = FreeRuns::of_zero_counts(&blocks, epb, end);
        let mut rc = RefcountChunks::new(cluster_bits);
        rc.allocated = end;
        rc.chunks.resize(blocks.len(), None);
        rc.base = Some(Committed {
            blocks,
            end,
            free,
            reserved: end,
        });
        Ok(rc)
    }

    /// Keeps clusters below `end` (past the committed image: its cluster checksum table, which
    /// has no refcount) from being handed out by this edit: the next bump allocation starts at
    /// `end`, and they keep refcount 0. Does nothing for a new image or below the committed end.
    pub(crate) fn reserve_to(&mut self, end: u64) {
        let Some(b) = &mut self.base else { return };
        if end <= self.allocated {
            return;
        }
        b.reserved = end;
        self.allocated = end;
        let chunks = usize::try_from(end.div_ceil(self.entries_per_block())).unwrap_or(0);
        if self.chunks.len() < chunks {
            self.chunks.resize(chunks, None);
        }
    }

    /// The committed image's end: its last cluster with a non-zero refcount, + 1 (0 for a
    /// new image).
    pub(crate) fn committed_end(&self) -> u64 {
        self.base.as_ref().map_or(0, |b| b.end)
    }

    /// Number of host clusters allocated so far (the next bump allocation's cluster number).
    pub(crate) fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Number of refcount entries in one refcount block: `C / 2`.
    pub(crate) fn entries_per_block(&self) -> u64 {
        1u64 << self.block_bits
    }

    /// Number of chunks expanded into arrays (each costs one cluster of memory).
    #[cfg(test)]
    pub(super) fn materialized_chunks(&self) -> usize {
        self.chunks.iter().filter(|c| c.is_some()).count()
    }

    /// Allocates `n` consecutive clusters with refcount 1 and returns the first cluster number:
    /// over an image, the first run of `n` clusters free in the committed counts, else past
    /// the end. Errors: [`Error::Limit`] when the file would reach 2^56 bytes.
    pub(crate) fn allocate(&mut self, n: u64) -> Result<u64, Error> {
        let reused = self.base.as_mut().and_then(|b| b.free.take_contiguous(n));
        match reused {
            Some(first) => {
                self.set_allocated(first, n)?;
                Ok(first)
            }
            None => self.bump(n),
        }
    }

    /// Allocates up to `n` (≥ 1) consecutive clusters with refcount 1, as many as the first
    /// free run holds over an image (exactly `n` for a new image); returns (first, count).
    /// Errors: those of [`RefcountChunks::allocate`].
    pub(super) fn allocate_up_to(&mut self, n: u64) -> Result<(u64, u64), Error> {
        let reused = self.base.as_mut().and_then(|b| b.free.take_up_to(n));
        match reused {
            Some((first, count)) => {
                self.set_allocated(first, count)?;
                Ok((first, count))
            }
            None => Ok((self.bump(n)?, n)),
        }
    }

    /// Refcount 1 for the free clusters `first..first + n` inside the committed image.
    fn set_allocated(&mut self, first: u64, n: u64) -> Result<(), Error> {
        for c in first..first + n {
            let (chunk, i) = self.chunk_mut(c)?;
            chunk[i] = 1;
        }
        Ok(())
    }

    /// Allocates `n` clusters at the end (bump allocation).
    fn bump(&mut self, n: u64) -> Result<u64, Error> {
        let first = self.allocated;
        let max_clusters = MAX_HOST_OFFSET >> self.cluster_bits;
        let end = first.checked_add(n).filter(|&e| e <= max_clusters);
        let end = end.ok_or_else(|| Error::Limit(format!("allocating {n} clusters after cluster {first} exceeds the 2^56-byte host offset limit")))?;
        let chunks_needed = usize::try_from(end.div_ceil(self.entries_per_block()))
            .map_err(|_| Error::Limit(format!("{end} host clusters")))?;
        if self.chunks.len() < chunks_needed {
            self.chunks.resize(chunks_needed, None);
        }
        self.allocated = end;
        let mut c = first;
        while c < end {
            let (k, i) = self.split(c);
            let run = (self.entries_per_block() - i as u64).min(end - c);
            if let Some(chunk) = &mut self.chunks[k] {
                chunk[i..i + run as usize].fill(1);
            }
            c += run;
        }
        Ok(first)
    }

    fn split(&self, cluster: u64) -> (usize, usize) {
        let mask = self.entries_per_block() - 1;
        (
            (cluster >> self.block_bits) as usize,
            (cluster & mask) as usize,
        )
    }

    /// Refcount of `cluster` in an unmaterialized chunk: the committed count inside the
    /// committed image, 1 for clusters allocated past it, 0 beyond.
    fn lazy(&self, cluster: u64) -> u16 {
        match &self.base {
            Some(b) if cluster < b.end => b.get(cluster, self.block_bits),
            Some(b) if cluster < b.reserved => 0,
            _ => u16::from(cluster < self.allocated),
        }
    }

    /// Refcount of host cluster `cluster` (0 if not allocated).
    pub(crate) fn get(&self, cluster: u64) -> u16 {
        if cluster >= self.allocated {
            return 0;
        }
        let (k, i) = self.split(cluster);
        match &self.chunks[k] {
            Some(chunk) => chunk[i],
            None => self.lazy(cluster),
        }
    }

    /// Refcount of `cluster` in the committed image (0 for a new image or past its end).
    pub(crate) fn committed(&self, cluster: u64) -> u16 {
        match &self.base {
            Some(b) if cluster < b.end => b.get(cluster, self.block_bits),
            _ => 0,
        }
    }

    /// Whether `cluster` lies past the committed image (never written by it: a hole, since
    /// the editor truncates leftovers at open). Always true for a new image.
    pub(super) fn is_fresh(&self, cluster: u64) -> bool {
        self.base.as_ref().is_none_or(|b| cluster >= b.reserved)
    }

    fn chunk_mut(&mut self, cluster: u64) -> Result<(&mut [u16], usize), Error> {
        if cluster >= self.allocated {
            return Err(Error::InvalidArgument(format!(
                "host cluster {cluster} is not allocated (only {} are)",
                self.allocated
            )));
        }
        let (k, i) = self.split(cluster);
        if self.chunks[k].is_none() {
            let base = (k as u64) << self.block_bits;
            let chunk: Box<[u16]> = (base..base + self.entries_per_block())
                .map(|c| self.lazy(c))
                .collect();
            self.chunks[k] = Some(chunk);
        }
        match &mut self.chunks[k] {
            Some(chunk) => Ok((chunk, i)),
            None => unreachable!("chunk {k} was just materialized"),
        }
    }

    /// Adds `by` to the refcount of allocated host cluster `cluster` and returns the new value.
    /// Errors: [`Error::Limit`] if it would reach 65 535 (refcount overflow);
    /// [`Error::InvalidArgument`] if the cluster is not allocated.
    pub(crate) fn increment(&mut self, cluster: u64, by: u16) -> Result<u16, Error> {
        let (chunk, i) = self.chunk_mut(cluster)?;
        let new = chunk[i]
            .checked_add(by)
            .filter(|&v| v < MAX_REFCOUNT)
            .ok_or_else(|| {
                Error::Limit(format!(
                    "refcount of host cluster {cluster} would exceed {}",
                    MAX_REFCOUNT - 1
                ))
            })?;
        chunk[i] = new;
        Ok(new)
    }

    /// Subtracts `by` from the refcount of host cluster `cluster` and returns the new value.
    /// Errors: [`Error::InvalidArgument`] if the cluster is not allocated or the refcount would
    /// drop below 0 (an internal bookkeeping bug, or an image whose refcounts are too low).
    pub(crate) fn decrement(&mut self, cluster: u64, by: u16) -> Result<u16, Error> {
        let (chunk, i) = self.chunk_mut(cluster)?;
        let new = chunk[i].checked_sub(by).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "refcount of host cluster {cluster} would drop below 0"
            ))
        })?;
        chunk[i] = new;
        Ok(new)
    }

    /// Appends refcount block `k` (one cluster: C/2 big-endian `u16`s covering clusters
    /// `[k·E, (k+1)·E)`) to `out`.
    pub(crate) fn encode_block(&self, k: u64, out: &mut Vec<u8>) {
        let epb = self.entries_per_block();
        let base = k << self.block_bits;
        match usize::try_from(k).ok().and_then(|k| self.chunks.get(k)) {
            Some(Some(chunk)) => encode_be(chunk, out),
            _ if self.base.is_some() => {
                for c in base..base + epb {
                    push_be(out, self.lazy(c));
                }
            }
            _ => {
                let ones = self.allocated.saturating_sub(base).min(epb);
                for _ in 0..ones {
                    push_be(out, 1u16);
                }
                out.resize(out.len() + ((epb - ones) * 2) as usize, 0);
            }
        }
    }

    /// Number of refcount blocks needed to cover every allocated cluster.
    pub(crate) fn blocks_needed(&self) -> u64 {
        self.allocated.div_ceil(self.entries_per_block())
    }

    /// Whether refcount block `k`'s counts differ from the committed ones (always true for a
    /// block holding clusters allocated past the committed end).
    pub(crate) fn block_changed(&self, k: u64) -> bool {
        let epb = self.entries_per_block();
        let first = k << self.block_bits;
        let committed_end = self.base.as_ref().map_or(0, |b| b.reserved);
        match usize::try_from(k).ok().and_then(|k| self.chunks.get(k)) {
            Some(Some(chunk)) => (0..epb).any(|i| chunk[i as usize] != self.committed(first + i)),
            // Lazy: changed iff it holds clusters allocated past the committed end.
            _ => first.max(committed_end) < (first + epb).min(self.allocated),
        }
    }

    /// Whether every count of refcount block `k` is 0 now.
    pub(crate) fn block_is_zero(&self, k: u64) -> bool {
        let first = k << self.block_bits;
        (first..first + self.entries_per_block()).all(|c| self.get(c) == 0)
    }

    /// Indices of the blocks whose counts may have changed: materialized chunks and blocks
    /// past the committed end (a superset of the changed ones), in increasing order.
    pub(crate) fn touched_blocks(&self) -> Vec<u64> {
        let committed_end = self.base.as_ref().map_or(0, |b| b.end);
        let past = committed_end >> self.block_bits;
        (0..self.chunks.len() as u64)
            .filter(|&k| k >= past || self.chunks[k as usize].is_some())
            .collect()
    }

    /// Whether some cluster referenced both in the committed image and now had refcount 1 in
    /// one and not in the other (its COPIED bit, wherever the active layer maps it, changes).
    pub(crate) fn any_crossed_one(&self) -> bool {
        self.changed_clusters()
            .any(|(_, was, now)| was > 0 && now > 0 && (was == 1) != (now == 1))
    }

    /// Runs `(first, count)` of clusters whose refcount dropped from non-zero to 0.
    pub(crate) fn freed_runs(&self) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (c, was, now) in self.changed_clusters() {
            if was == 0 || now != 0 {
                continue;
            }
            match runs.last_mut() {
                Some((first, n)) if *first + *n == c => *n += 1,
                _ => runs.push((c, 1)),
            }
        }
        runs
    }

    /// (cluster, committed count, current count) of every cluster in a materialized chunk
    /// whose count differs from the committed one, in increasing order.
    fn changed_clusters(&self) -> impl Iterator<Item = (u64, u16, u16)> + '_ {
        self.chunks.iter().enumerate().flat_map(move |(k, chunk)| {
            let first = (k as u64) << self.block_bits;
            chunk.iter().flat_map(move |chunk| {
                chunk.iter().enumerate().filter_map(move |(i, &now)| {
                    let c = first + i as u64;
                    let was = self.committed(c);
                    (was != now).then_some((c, was, now))
                })
            })
        })
    }

    /// The last cluster with a non-zero refcount, + 1 (the image's end after this edit).
    pub(crate) fn used_end(&self) -> u64 {
        let mut end = self.allocated;
        while end > 0 && self.get(end - 1) == 0 {
            end -= 1;
        }
        end
    }

    /// Clusters handed out from the committed image's free clusters so far.
    pub(crate) fn reused_clusters(&self) -> u64 {
        self.base.as_ref().map_or(0, |b| b.free.taken())
    }
}

impl Committed {
    /// The committed refcount of `cluster` (below `end`).
    fn get(&self, cluster: u64, block_bits: u32) -> u16 {
        let k = (cluster >> block_bits) as usize;
        let i = (cluster & ((1u64 << block_bits) - 1)) as usize;
        self.blocks
            .get(k)
            .and_then(|b| b.as_ref())
            .map_or(0, |b| b[i])
    }
}

/// The last cluster with a non-zero count in `blocks` (`epb` entries each).
fn last_nonzero(blocks: &[Option<Box<[u16]>>], epb: usize) -> Option<u64> {
    blocks.iter().enumerate().rev().find_map(|(k, b)| {
        let i = b.as_ref()?.iter().rposition(|&v| v != 0)?;
        Some((k * epb + i) as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazy_chunks() {
        let mut rc = RefcountChunks::new(9); // 256 entries per block
        assert_eq!(rc.allocate(1).unwrap(), 0);
        assert_eq!(rc.allocate(300).unwrap(), 1);
        assert_eq!(rc.materialized_chunks(), 0);
        assert_eq!(rc.get(300), 1);
        assert_eq!(rc.get(301), 0);
        assert_eq!(rc.increment(299, 2).unwrap(), 3);
        assert_eq!(rc.materialized_chunks(), 1);
        assert_eq!(rc.get(299), 3);
        assert_eq!(rc.get(300), 1);
        assert_eq!(rc.allocate(1).unwrap(), 301);
        assert_eq!(rc.get(301), 1);
        assert_eq!(rc.decrement(299, 3).unwrap(), 0);
        assert!(rc.decrement(299, 1).is_err());
        assert!(rc.increment(400, 1).is_err());
        let mut block = Vec::new();
        rc.encode_block(1, &mut block);
        assert_eq!(block.len(), 512);
        assert_eq!(&block[..4], &[0, 1, 0, 1]);
        assert_eq!(&block[2 * 43..2 * 46], &[0, 0, 0, 1, 0, 1]);
        assert_eq!(&block[2 * 46..2 * 47], &[0, 0]);
        block.clear();
        rc.encode_block(0, &mut block);
        assert!(block.chunks(2).all(|c| c == [0, 1]));
    }

    #[test]
    fn over_an_image() {
        // 512-byte clusters: 256 entries per block. Block 0: clusters 0..=9 used except 3 and
        // 4; cluster 7 shared twice. No block 1; block 2 holds cluster 520.
        let mut b0 = vec![0u16; 256];
        b0[..10].copy_from_slice(&[1, 1, 1, 0, 0, 1, 1, 2, 1, 1]);
        let mut b2 = vec![0u16; 256];
        b2[8] = 1;
        let blocks = vec![
            Some(b0.into_boxed_slice()),
            None,
            Some(b2.into_boxed_slice()),
        ];
        let mut rc = RefcountChunks::over_image(9, blocks).unwrap();
        assert_eq!(rc.allocated(), 521);
        assert_eq!((rc.get(7), rc.committed(7), rc.get(300)), (2, 2, 0));
        assert!(rc
            .touched_blocks()
            .into_iter()
            .all(|k| !rc.block_changed(k)));
        // Free clusters first (3, 4, then 10..=519), each once; contiguous runs by first fit.
        assert_eq!(rc.allocate_up_to(5).unwrap(), (3, 2));
        assert!(rc.block_changed(0) && !rc.block_changed(1) && !rc.block_changed(2));
        assert_eq!(rc.allocate(300).unwrap(), 10);
        assert_eq!(rc.allocate(300).unwrap(), 521);
        assert!((0..4).all(|k| rc.block_changed(k)));
        assert_eq!(rc.reused_clusters(), 302);
        // Cluster 7: 2 → 1 crosses 1; cluster 9: 1 → 0 is freed.
        assert!(!rc.any_crossed_one());
        rc.decrement(7, 1).unwrap();
        rc.decrement(9, 1).unwrap();
        assert!(rc.any_crossed_one());
        assert_eq!(rc.freed_runs(), vec![(9, 1)]);
        rc.decrement(520, 1).unwrap();
        for c in 521..821 {
            rc.decrement(c, 1).unwrap();
        }
        assert_eq!(rc.used_end(), 310);
        let mut block = Vec::new();
        rc.encode_block(0, &mut block);
        assert_eq!(&block[6..12], &[0, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn reserved_clusters_are_never_handed_out() {
        // 512-byte clusters; the image uses clusters 0..=4 except 2; 5..8 hold its checksum
        // table (refcount 0, reserved).
        let mut b0 = vec![0u16; 256];
        b0[..5].copy_from_slice(&[1, 1, 0, 1, 1]);
        let mut rc = RefcountChunks::over_image(9, vec![Some(b0.into_boxed_slice())]).unwrap();
        rc.reserve_to(8);
        assert_eq!(rc.allocated(), 8);
        assert!((5..8).all(|c| rc.get(c) == 0 && !rc.is_fresh(c)));
        assert!(rc.is_fresh(8));
        assert_eq!(rc.allocate(1).unwrap(), 2);
        assert_eq!(rc.allocate(2).unwrap(), 8);
        assert_eq!(rc.used_end(), 10);
        assert!(rc.block_changed(0));
        let mut block = Vec::new();
        rc.encode_block(0, &mut block);
        let counts: Vec<u16> = crate::bytes::decode_be(&block[..20]);
        assert_eq!(counts, [1, 1, 1, 1, 1, 0, 0, 0, 1, 1]);
    }

    #[test]
    fn overflow_is_a_limit() {
        let mut rc = RefcountChunks::new(12);
        rc.allocate(2).unwrap();
        assert!(rc.increment(1, MAX_REFCOUNT - 2).is_ok());
        assert!(matches!(rc.increment(1, 1), Err(Error::Limit(_))));
    }
}

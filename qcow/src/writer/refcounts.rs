//! The writer's host cluster allocator and refcounts (spec "Cluster refcounts"), always 16 bits
//! wide (`refcount_order` 4).
//!
//! Design: host clusters are bump-allocated, so "allocated" is simply `cluster < allocated()`.
//! Refcounts are kept in chunks, one per refcount block's range (E = C/2 clusters). A chunk that
//! was never touched by anything but allocation is not materialized: every allocated cluster in
//! it has refcount 1. Only when a cluster's refcount changes is its chunk expanded into a `u16`
//! array. A single-state export therefore needs no refcount memory at all, and the worst case is
//! one cluster of memory per refcount block, i.e. exactly the size of the refcount blocks.
//! The refcount structures' own size is found by fixed point
//! ([`refcount_structure_clusters`](crate::format::refcount::refcount_structure_clusters)).

use crate::bytes::{encode_be, push_be};
use crate::error::Error;
use crate::format::refcount::MAX_REFCOUNT;
use crate::geometry::MAX_HOST_OFFSET;

/// Refcounts of all allocated host clusters, by refcount-block-sized chunks.
#[derive(Debug)]
pub(super) struct RefcountChunks {
    cluster_bits: u32,
    /// log2 of the refcount entries per block (C/2 → cluster_bits − 1).
    block_bits: u32,
    /// Host clusters `[0, allocated)` are allocated.
    allocated: u64,
    /// Chunk k covers clusters `[k·E, (k+1)·E)`; `None` = every allocated cluster has refcount 1.
    chunks: Vec<Option<Box<[u16]>>>,
}

impl RefcountChunks {
    /// An empty allocator for clusters of `1 << cluster_bits` bytes (nothing allocated).
    pub(super) fn new(cluster_bits: u32) -> RefcountChunks {
        RefcountChunks {
            cluster_bits,
            block_bits: cluster_bits - 1,
            allocated: 0,
            chunks: Vec::new(),
        }
    }

    /// Number of host clusters allocated so far (the next allocation's cluster number).
    pub(super) fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Number of refcount entries in one refcount block: `C / 2`.
    pub(super) fn entries_per_block(&self) -> u64 {
        1u64 << self.block_bits
    }

    /// Number of chunks expanded into arrays (each costs one cluster of memory).
    #[cfg(test)]
    pub(super) fn materialized_chunks(&self) -> usize {
        self.chunks.iter().filter(|c| c.is_some()).count()
    }

    /// Allocates `n` consecutive clusters with refcount 1 and returns the first cluster number.
    /// Errors: [`Error::Limit`] when the file would reach 2^56 bytes.
    pub(super) fn allocate(&mut self, n: u64) -> Result<u64, Error> {
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

    /// Refcount of host cluster `cluster` (0 if not allocated).
    pub(super) fn get(&self, cluster: u64) -> u16 {
        if cluster >= self.allocated {
            return 0;
        }
        let (k, i) = self.split(cluster);
        match &self.chunks[k] {
            Some(chunk) => chunk[i],
            None => 1,
        }
    }

    fn chunk_mut(&mut self, cluster: u64) -> Result<(&mut [u16], usize), Error> {
        if cluster >= self.allocated {
            return Err(Error::InvalidArgument(format!(
                "host cluster {cluster} is not allocated (only {} are)",
                self.allocated
            )));
        }
        let (k, i) = self.split(cluster);
        let epb = self.entries_per_block();
        let base = (k as u64) << self.block_bits;
        let allocated_here = (self.allocated - base).min(epb) as usize;
        let chunk = self.chunks[k].get_or_insert_with(|| {
            let mut v = vec![0u16; epb as usize].into_boxed_slice();
            v[..allocated_here].fill(1);
            v
        });
        Ok((chunk, i))
    }

    /// Adds `by` to the refcount of allocated host cluster `cluster` and returns the new value.
    /// Errors: [`Error::Limit`] if it would reach 65 535 (refcount overflow);
    /// [`Error::InvalidArgument`] if the cluster is not allocated.
    pub(super) fn increment(&mut self, cluster: u64, by: u16) -> Result<u16, Error> {
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
    /// drop below 0 (an internal bookkeeping bug).
    pub(super) fn decrement(&mut self, cluster: u64, by: u16) -> Result<u16, Error> {
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
    pub(super) fn encode_block(&self, k: u64, out: &mut Vec<u8>) {
        let epb = self.entries_per_block();
        let base = k << self.block_bits;
        match usize::try_from(k).ok().and_then(|k| self.chunks.get(k)) {
            Some(Some(chunk)) => encode_be(chunk, out),
            _ => {
                let ones = self.allocated.saturating_sub(base).min(epb);
                for _ in 0..ones {
                    push_be(out, 1u16);
                }
                out.resize(out.len() + ((epb - ones) * 2) as usize, 0);
            }
        }
    }
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
    fn overflow_is_a_limit() {
        let mut rc = RefcountChunks::new(12);
        rc.allocate(2).unwrap();
        assert!(rc.increment(1, MAX_REFCOUNT - 2).is_ok());
        assert!(matches!(rc.increment(1, 1), Err(Error::Limit(_))));
    }
}

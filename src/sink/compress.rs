//! The compressing stage of the QCOW2 sinks (`-c`): whole guest clusters of a state are queued
//! in guest order with the zero clusters and the shares between them, and every few MiB the
//! queue is written: first, with a base state, each cluster's stored bytes are read back
//! (sequentially, through the writer); then, on all cores (rayon), each cluster is compared
//! with them by guest bytes (a compressed base cluster is decoded first) and, unless equal,
//! compressed ([`qcow::Compression::compress_cluster`]); last, in guest order, each cluster is
//! shared with the base, written compressed, or written plain when it does not compress. So a
//! cluster equal to the base's is compressed never, stays one copy in the file, and the output
//! is the same whatever the number of cores.

use super::state_target::StateTarget;
use anyhow::{Context, Result};
use qcow::{CompressedCluster, Compression, StoredCluster};
use rayon::prelude::*;

/// Bytes of queued clusters that start a write of the queue: 4 MiB, enough work for every
/// core while memory stays a few MiB (the queue, the base's stored bytes, the payloads).
const QUEUE_BYTES: usize = 4 << 20;
/// Fewest queued clusters that start a write of the queue (large clusters).
const QUEUE_CLUSTERS: usize = 8;

/// One queued step, in guest order.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// A whole cluster of data: guest cluster, index of its bytes in the queue.
    Data(u64, usize),
    /// `count` all-zero clusters from `first` (zero clusters, never compressed).
    Zero(u64, u64),
    /// A cluster mapped to the base's without its bytes (an append's quick check): guest
    /// cluster, and whether it holds copied blocks.
    Share(u64, bool),
}

/// What a queued data cluster becomes.
enum Outcome {
    /// Equal to the base's cluster by guest bytes: shared.
    Same,
    /// Compressed: its payload.
    Payload(Vec<u8>),
    /// Does not compress: stored plain.
    Plain,
}

/// Counts for the summary.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Clusters written compressed.
    pub compressed: u64,
    /// Clusters that did not compress, stored plain.
    pub plain: u64,
}

/// The queue of one state's clusters and how they are compressed.
pub struct Compressing {
    compression: Compression,
    cluster: usize,
    steps: Vec<Step>,
    bytes: Vec<u8>,
    counts: Counts,
}

impl Compressing {
    /// An empty queue for clusters of `cluster` bytes compressed with `compression`.
    pub fn new(compression: Compression, cluster: usize) -> Compressing {
        Compressing {
            compression,
            cluster,
            steps: Vec::new(),
            bytes: Vec::new(),
            counts: Counts::default(),
        }
    }

    /// How clusters are compressed.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The counts so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Queues whole clusters of data from guest cluster `first` (a multiple of the cluster
    /// size, none all-zero); writes the queue when it is full.
    ///
    /// # Errors
    /// Those of [`Compressing::drain`].
    pub fn data(&mut self, t: &mut StateTarget<'_>, first: u64, data: &[u8]) -> Result<()> {
        for (k, cluster) in data.chunks(self.cluster).enumerate() {
            let at = self.bytes.len() / self.cluster;
            self.bytes.extend_from_slice(cluster);
            self.steps.push(Step::Data(first + k as u64, at));
        }
        if self.bytes.len() >= QUEUE_BYTES.max(QUEUE_CLUSTERS * self.cluster) {
            self.drain(t)?;
        }
        Ok(())
    }

    /// Queues `count` zero clusters from `first`.
    pub fn zero(&mut self, first: u64, count: u64) {
        self.steps.push(Step::Zero(first, count));
    }

    /// Queues a share of guest cluster `guest` with the base (`copied`: it holds copied
    /// blocks, so a base without data there gives a zero cluster).
    pub fn share(&mut self, guest: u64, copied: bool) {
        self.steps.push(Step::Share(guest, copied));
    }

    /// Writes every queued step, in guest order (see the module comment).
    ///
    /// # Errors
    /// Those of the writer; a base cluster that does not decode.
    pub fn drain(&mut self, t: &mut StateTarget<'_>) -> Result<()> {
        let c = self.cluster;
        let data: Vec<(u64, usize)> = self
            .steps
            .iter()
            .filter_map(|s| match *s {
                Step::Data(g, at) => Some((g, at)),
                _ => None,
            })
            .collect();
        let mut stored: Vec<Option<StoredCluster>> = Vec::with_capacity(data.len());
        for &(g, _) in &data {
            stored.push(t.stored_in_base(g)?);
        }
        let compression = self.compression;
        let bytes = &self.bytes;
        let outcomes: Vec<Outcome> = data
            .par_iter()
            .zip(stored.par_iter())
            .map(|(&(g, at), base)| {
                let cluster = &bytes[at * c..(at + 1) * c];
                outcome(&compression, cluster, base.as_ref())
                    .with_context(|| format!("guest cluster {g}"))
            })
            .collect::<Result<_>>()?;
        let mut outcomes = outcomes.into_iter();
        for step in std::mem::take(&mut self.steps) {
            match step {
                Step::Data(g, at) => {
                    let cluster = &self.bytes[at * c..(at + 1) * c];
                    match outcomes
                        .next()
                        .context("a queued cluster without its outcome")?
                    {
                        Outcome::Same => t.share_with_base(g)?,
                        Outcome::Payload(p) => {
                            t.put_compressed(g, &p)?;
                            self.counts.compressed += 1;
                        }
                        Outcome::Plain => {
                            t.put_plain(g, cluster)?;
                            self.counts.plain += 1;
                        }
                    }
                }
                Step::Zero(first, count) => t.put_zero(first, count)?,
                Step::Share(g, copied) => t.share_base(g, copied)?,
            }
        }
        self.bytes.clear();
        Ok(())
    }
}

/// What one cluster becomes: shared when the base stores the same guest bytes, else its
/// payload, or plain when it does not compress.
fn outcome(
    compression: &Compression,
    cluster: &[u8],
    base: Option<&StoredCluster>,
) -> Result<Outcome> {
    if let Some(b) = base {
        if b.holds(cluster)? {
            return Ok(Outcome::Same);
        }
    }
    Ok(match compression.compress_cluster(cluster)? {
        CompressedCluster::Payload(p) => Outcome::Payload(p),
        CompressedCluster::Plain => Outcome::Plain,
    })
}

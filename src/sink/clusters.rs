//! Guest clusters for the QCOW2 sinks: runs of bytes at disk offsets are cut into whole guest
//! clusters; a cluster only partly covered is assembled in a buffer (the rest stays zero)
//! until the next cluster starts. All-zero clusters are recorded as zero clusters in v3 and
//! left unallocated in v2; other clusters are written, or shared with the base state's cluster
//! when their bytes are equal (older states of an inverted chain, or the newest state of an
//! archive being appended to).

use super::is_zero;
use anyhow::{Context, Result};
use qcow::{StateId, Version, Writer};

/// Where whole clusters of one state go: the writer, the state and its dedup base.
pub struct StateTarget<'w> {
    writer: &'w mut Writer,
    state: StateId,
    base: Option<StateId>,
    zero_flag: bool,
}

impl<'w> StateTarget<'w> {
    /// Maps `guest_cluster` to the base state's cluster at the same place, without its bytes
    /// (they are known equal): shared when the base has a host cluster there, a zero cluster
    /// when the base holds zeros there (`copied`: the cluster holds copied blocks), nothing
    /// otherwise.
    ///
    /// # Errors
    /// No base state; those of the writer.
    pub fn share_base(&mut self, guest_cluster: u64, copied: bool) -> Result<()> {
        let base = self.base.context("no base state to share with")?;
        let host = self.writer.lookup(base, guest_cluster)?;
        match host {
            Some(h) => self.writer.share_cluster(self.state, guest_cluster, h)?,
            None if copied => self.put_zero(guest_cluster, 1)?,
            None => {}
        }
        Ok(())
    }

    /// Clusters of `state`, deduplicated against `base` when given.
    pub fn new(writer: &'w mut Writer, state: StateId, base: Option<StateId>) -> StateTarget<'w> {
        let zero_flag = writer.version() == Version::V3;
        StateTarget {
            writer,
            state,
            base,
            zero_flag,
        }
    }

    fn put(&mut self, guest_cluster: u64, data: &[u8]) -> Result<()> {
        let r = match self.base {
            Some(base) => self
                .writer
                .write_clusters_dedup(self.state, guest_cluster, data, base),
            None => self.writer.write_clusters(self.state, guest_cluster, data),
        };
        r.with_context(|| format!("cannot write guest cluster {guest_cluster} of the QCOW2 image"))
    }

    /// Records `count` all-zero guest clusters from `first`: zero clusters in v3, nothing
    /// (unallocated) in v2.
    fn put_zero(&mut self, first: u64, count: u64) -> Result<()> {
        if !self.zero_flag {
            return Ok(());
        }
        self.writer
            .write_zero_clusters(self.state, first, count)
            .with_context(|| {
                format!("cannot record zero guest clusters {first}+{count} of the QCOW2 image")
            })
    }
}

/// The partial cluster being assembled.
#[derive(Debug)]
pub struct Clusters {
    cluster: usize,
    pending: Option<(u64, Vec<u8>)>,
}

impl Clusters {
    /// Assembly for the writer's cluster size.
    pub fn new(writer: &Writer) -> Clusters {
        Clusters {
            cluster: writer.cluster_size() as usize,
            pending: None,
        }
    }

    /// Writes `data` at disk byte `offset` (offsets strictly increasing within a state).
    ///
    /// # Errors
    /// Those of the writer.
    pub fn write(
        &mut self,
        t: &mut StateTarget<'_>,
        mut offset: u64,
        mut data: &[u8],
    ) -> Result<()> {
        let c = self.cluster as u64;
        while !data.is_empty() {
            let idx = offset / c;
            let within = (offset % c) as usize;
            if self.pending.as_ref().is_some_and(|(p, _)| *p != idx) {
                self.flush(t)?;
            }
            if within == 0 && data.len() >= self.cluster && self.pending.is_none() {
                let n = data.len() / self.cluster * self.cluster;
                self.put_full(t, idx, &data[..n])?;
                offset += n as u64;
                data = &data[n..];
                continue;
            }
            let take = (self.cluster - within).min(data.len());
            let cluster = self.cluster;
            let (_, buf) = self
                .pending
                .get_or_insert_with(|| (idx, vec![0u8; cluster]));
            buf[within..within + take].copy_from_slice(&data[..take]);
            offset += take as u64;
            data = &data[take..];
        }
        Ok(())
    }

    /// The guest cluster being assembled, if any.
    pub fn pending_index(&self) -> Option<u64> {
        self.pending.as_ref().map(|(i, _)| *i)
    }

    /// Writes the partial cluster being assembled, if any (at the end of a state).
    ///
    /// # Errors
    /// Those of the writer.
    pub fn flush(&mut self, t: &mut StateTarget<'_>) -> Result<()> {
        if let Some((idx, buf)) = self.pending.take() {
            if is_zero(&buf) {
                t.put_zero(idx, 1)?;
            } else {
                t.put(idx, &buf)?;
            }
        }
        Ok(())
    }

    /// Writes full clusters, batching runs of non-zero ones and runs of all-zero ones.
    fn put_full(&mut self, t: &mut StateTarget<'_>, first: u64, data: &[u8]) -> Result<()> {
        let c = self.cluster;
        let mut i = 0;
        let n = data.len() / c;
        while i < n {
            let zero = is_zero(&data[i * c..(i + 1) * c]);
            let j = (i + 1..n)
                .find(|&j| is_zero(&data[j * c..(j + 1) * c]) != zero)
                .unwrap_or(n);
            if zero {
                t.put_zero(first + i as u64, (j - i) as u64)?;
            } else {
                t.put(first + i as u64, &data[i * c..j * c])?;
            }
            i = j;
        }
        Ok(())
    }
}

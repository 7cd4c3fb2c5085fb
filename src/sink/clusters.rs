//! Guest clusters for the QCOW2 sinks: runs of bytes at disk offsets are cut into whole guest
//! clusters; a cluster only partly covered is assembled in a buffer (the rest stays zero)
//! until the next cluster starts. All-zero clusters are recorded as zero clusters in v3 and
//! left unallocated in v2; other clusters are written, or shared with the base state's cluster
//! when their guest bytes are equal (older states of an inverted chain, or the newest state of
//! an archive being appended to), whether the base stores it plain or compressed. With `-c`
//! the clusters go through the compressing stage (`super::compress`) in guest order.

use super::compress::{Compressing, Counts};
use super::is_zero;
use anyhow::{Context, Result};
use qcow::{Compression, StateId, StoredCluster, Version, Writer};

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
        let shared = self
            .writer
            .share_base_cluster(self.state, guest_cluster, base)?;
        if !shared && copied {
            self.put_zero(guest_cluster, 1)?;
        }
        Ok(())
    }

    /// What the base stores at `guest_cluster` (plain or compressed), for comparing guest
    /// bytes; `None` without a base or where it holds no data.
    ///
    /// # Errors
    /// Those of the writer.
    pub fn stored_in_base(&mut self, guest_cluster: u64) -> Result<Option<StoredCluster>> {
        match self.base {
            Some(base) => Ok(self.writer.stored_cluster(base, guest_cluster)?),
            None => Ok(None),
        }
    }

    /// Maps `guest_cluster` to the base's cluster, known to hold the same guest bytes.
    ///
    /// # Errors
    /// No base, or no data there; those of the writer.
    pub fn share_with_base(&mut self, guest_cluster: u64) -> Result<()> {
        let base = self.base.context("no base state to share with")?;
        let shared = self
            .writer
            .share_base_cluster(self.state, guest_cluster, base)?;
        anyhow::ensure!(
            shared,
            "guest cluster {guest_cluster}: the base holds no data there"
        );
        Ok(())
    }

    /// Records `guest_cluster` as a compressed cluster with `payload`.
    ///
    /// # Errors
    /// Those of the writer.
    pub fn put_compressed(&mut self, guest_cluster: u64, payload: &[u8]) -> Result<()> {
        self.writer
            .write_compressed_cluster(self.state, guest_cluster, payload)
            .with_context(|| {
                format!("cannot write compressed guest cluster {guest_cluster} of the QCOW2 image")
            })
    }

    /// Writes `data` at `guest_cluster..` uncompressed, without comparing it with the base.
    ///
    /// # Errors
    /// Those of the writer.
    pub fn put_plain(&mut self, guest_cluster: u64, data: &[u8]) -> Result<()> {
        self.writer
            .write_clusters(self.state, guest_cluster, data)
            .with_context(|| {
                format!("cannot write guest cluster {guest_cluster} of the QCOW2 image")
            })
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
    pub fn put_zero(&mut self, first: u64, count: u64) -> Result<()> {
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

/// The partial cluster being assembled, and the compressing stage with `-c`.
pub struct Clusters {
    cluster: usize,
    pending: Option<(u64, Vec<u8>)>,
    compress: Option<Compressing>,
}

impl Clusters {
    /// Assembly for the writer's cluster size; clusters compressed with `compression`.
    pub fn new(writer: &Writer, compression: Option<Compression>) -> Clusters {
        let cluster = writer.cluster_size() as usize;
        Clusters {
            cluster,
            pending: None,
            compress: compression.map(|c| Compressing::new(c, cluster)),
        }
    }

    /// How clusters are compressed and what was compressed so far (`None` without `-c`).
    pub fn compression(&self) -> Option<(Compression, Counts)> {
        self.compress
            .as_ref()
            .map(|c| (c.compression(), c.counts()))
    }

    /// Maps `guest` to the base's cluster without its bytes (see
    /// [`StateTarget::share_base`]), after the cluster being assembled if that comes first.
    ///
    /// # Errors
    /// Those of the writer.
    pub fn share(&mut self, t: &mut StateTarget<'_>, guest: u64, copied: bool) -> Result<()> {
        if self.pending_index().is_some_and(|p| p < guest) {
            self.write_pending(t)?;
        }
        match &mut self.compress {
            Some(c) => {
                c.share(guest, copied);
                Ok(())
            }
            None => t.share_base(guest, copied),
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
                self.write_pending(t)?;
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

    /// Writes the partial cluster being assembled, if any, and everything queued for
    /// compression (at the end of a state).
    ///
    /// # Errors
    /// Those of the writer.
    pub fn flush(&mut self, t: &mut StateTarget<'_>) -> Result<()> {
        self.write_pending(t)?;
        match &mut self.compress {
            Some(c) => c.drain(t),
            None => Ok(()),
        }
    }

    /// Writes (or queues) the partial cluster being assembled, if any.
    fn write_pending(&mut self, t: &mut StateTarget<'_>) -> Result<()> {
        if let Some((idx, buf)) = self.pending.take() {
            if is_zero(&buf) {
                self.zero(t, idx, 1)?;
            } else {
                self.data(t, idx, &buf)?;
            }
        }
        Ok(())
    }

    /// Records (or queues) `count` zero clusters from `first`.
    fn zero(&mut self, t: &mut StateTarget<'_>, first: u64, count: u64) -> Result<()> {
        match &mut self.compress {
            Some(c) => {
                c.zero(first, count);
                Ok(())
            }
            None => t.put_zero(first, count),
        }
    }

    /// Writes (or queues for compression) whole non-zero clusters from `first`.
    fn data(&mut self, t: &mut StateTarget<'_>, first: u64, data: &[u8]) -> Result<()> {
        match &mut self.compress {
            Some(c) => c.data(t, first, data),
            None => t.put(first, data),
        }
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
                self.zero(t, first + i as u64, (j - i) as u64)?;
            } else {
                self.data(t, first + i as u64, &data[i * c..j * c])?;
            }
            i = j;
        }
        Ok(())
    }
}

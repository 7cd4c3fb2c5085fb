//! Guest clusters for the QCOW2 sinks: runs of bytes at disk offsets are cut into whole guest
//! clusters; a cluster only partly covered is assembled in a buffer (the rest stays zero)
//! until the next cluster starts. All-zero clusters are recorded as zero clusters in v3 and
//! left unallocated in v2; other clusters are written, or shared with the base state's cluster
//! when their guest bytes are equal (older states of an inverted chain, or the newest state of
//! an archive being appended to), whether the base stores it plain or compressed. With `-c`
//! the clusters go through the compressing stage (`super::compress`) in guest order.

use super::compress::{Compressing, Counts};
use super::is_zero;
use super::state_target::StateTarget;
use anyhow::Result;
use qcow::{Compression, Writer};

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

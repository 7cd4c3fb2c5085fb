//! Image writers behind one interface: the copy engine hands over runs of bytes at device
//! offsets, in increasing order, and the sink lays them out.
//!
//! Both sinks leave all-zero data out (a hole in raw, an unallocated cluster in QCOW2), as
//! e2image does; a hole reads back as zeros, so the image content is unchanged.

use anyhow::{Context, Result};
use qcow::{StateId, Writer};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Granularity of zero detection in raw output, in bytes.
const RAW_ZERO_GRANULE: usize = 4096;

/// Where copied bytes go.
pub trait Sink {
    /// Writes `data` at byte `offset` of the image. Calls come in strictly increasing,
    /// non-overlapping offset order.
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()>;
}

/// True if every byte is zero (16 bytes at a time, which the compiler vectorises).
pub fn is_zero(b: &[u8]) -> bool {
    let (words, rest) = b.as_chunks::<16>();
    words.iter().all(|w| u128::from_ne_bytes(*w) == 0) && rest.iter().all(|&x| x == 0)
}

/// A sparse raw image: the file has the filesystem's size and holds only the copied,
/// non-zero bytes at their own offsets.
pub struct RawSink {
    file: File,
    size: u64,
}

impl RawSink {
    /// Sizes the (new, empty) file to `size` bytes.
    pub fn new(file: File, size: u64) -> Result<RawSink> {
        file.set_len(size).context("cannot size the raw image")?;
        Ok(RawSink { file, size })
    }

    /// Finishes the image, flushing it to stable storage when `sync` is set.
    pub fn finish(self, sync: bool) -> Result<File> {
        if sync {
            self.file.sync_all().context("cannot sync the raw image")?;
        }
        Ok(self.file)
    }
}

impl Sink for RawSink {
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        // Never extend the image past its size (a last QCOW2 cluster may overhang it).
        let keep = self.size.saturating_sub(offset).min(data.len() as u64) as usize;
        let data = &data[..keep];
        let mut pos = 0;
        while pos < data.len() {
            let skip = data[pos..]
                .chunks(RAW_ZERO_GRANULE)
                .take_while(|c| is_zero(c))
                .count();
            pos = (pos + skip * RAW_ZERO_GRANULE).min(data.len());
            let run = data[pos..]
                .chunks(RAW_ZERO_GRANULE)
                .take_while(|c| !is_zero(c))
                .count();
            let end = (pos + run * RAW_ZERO_GRANULE).min(data.len());
            if end > pos {
                self.file
                    .write_all_at(&data[pos..end], offset + pos as u64)
                    .with_context(|| {
                        format!(
                            "write error at byte {} of the raw image",
                            offset + pos as u64
                        )
                    })?;
            }
            pos = end;
        }
        Ok(())
    }
}

/// A QCOW2 state being written: runs are cut into guest clusters; a cluster only partly
/// covered is assembled in a buffer (the rest stays zero) until the next cluster starts.
pub struct QcowSink<'w> {
    writer: &'w mut Writer,
    state: StateId,
    base: Option<StateId>,
    cluster: usize,
    pending: Option<(u64, Vec<u8>)>,
}

impl<'w> QcowSink<'w> {
    /// A sink writing `state`; with `base`, clusters equal to `base`'s are shared, not written.
    pub fn new(writer: &'w mut Writer, state: StateId, base: Option<StateId>) -> QcowSink<'w> {
        let cluster = writer.cluster_size() as usize;
        QcowSink {
            writer,
            state,
            base,
            cluster,
            pending: None,
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

    /// Writes full clusters, skipping all-zero ones and batching runs of non-zero ones.
    fn put_full(&mut self, first: u64, data: &[u8]) -> Result<()> {
        let c = self.cluster;
        let mut i = 0;
        let n = data.len() / c;
        while i < n {
            if is_zero(&data[i * c..(i + 1) * c]) {
                i += 1;
                continue;
            }
            let j = (i..n)
                .find(|&j| is_zero(&data[j * c..(j + 1) * c]))
                .unwrap_or(n);
            self.put(first + i as u64, &data[i * c..j * c])?;
            i = j;
        }
        Ok(())
    }

    fn flush_pending(&mut self) -> Result<()> {
        if let Some((idx, buf)) = self.pending.take() {
            if !is_zero(&buf) {
                self.put(idx, &buf)?;
            }
        }
        Ok(())
    }

    /// Writes the last partial cluster.
    pub fn finish(mut self) -> Result<()> {
        self.flush_pending()
    }
}

impl Sink for QcowSink<'_> {
    fn write(&mut self, mut offset: u64, mut data: &[u8]) -> Result<()> {
        let c = self.cluster as u64;
        while !data.is_empty() {
            let idx = offset / c;
            let within = (offset % c) as usize;
            if self.pending.as_ref().is_some_and(|(p, _)| *p != idx) {
                self.flush_pending()?;
            }
            if within == 0 && data.len() >= self.cluster && self.pending.is_none() {
                let n = data.len() / self.cluster * self.cluster;
                self.put_full(idx, &data[..n])?;
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
}

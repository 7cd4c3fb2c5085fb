//! Image writers behind one interface: the copy engine hands over runs of bytes at device
//! offsets, in increasing order, and the sink lays them out.
//!
//! All-zero data is never written out. The raw sink leaves a hole, as e2image does (a hole
//! reads back as zeros). The QCOW2 sink records an all-zero copied cluster as a zero cluster
//! (v3 zero flag, no host cluster), so the image says which blocks it holds: a zero cluster was
//! copied and is zero, an unallocated one was not copied. Version 2 has no zero flag, so there
//! all-zero clusters stay unallocated and the two cases cannot be told apart.

use anyhow::{Context, Result};
use qcow::{StateId, Version, Writer};
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
/// All-zero clusters become zero clusters in v3 and stay unallocated in v2.
pub struct QcowSink<'w> {
    writer: &'w mut Writer,
    state: StateId,
    base: Option<StateId>,
    cluster: usize,
    /// The image is v3: record all-zero clusters with the zero flag instead of skipping them.
    zero_flag: bool,
    pending: Option<(u64, Vec<u8>)>,
}

impl<'w> QcowSink<'w> {
    /// A sink writing `state`; with `base`, clusters equal to `base`'s are shared, not written.
    pub fn new(writer: &'w mut Writer, state: StateId, base: Option<StateId>) -> QcowSink<'w> {
        let cluster = writer.cluster_size() as usize;
        let zero_flag = writer.version() == Version::V3;
        QcowSink {
            writer,
            state,
            base,
            cluster,
            zero_flag,
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

    /// Writes full clusters, batching runs of non-zero ones and runs of all-zero ones.
    fn put_full(&mut self, first: u64, data: &[u8]) -> Result<()> {
        let c = self.cluster;
        let mut i = 0;
        let n = data.len() / c;
        while i < n {
            let zero = is_zero(&data[i * c..(i + 1) * c]);
            let j = (i + 1..n)
                .find(|&j| is_zero(&data[j * c..(j + 1) * c]) != zero)
                .unwrap_or(n);
            if zero {
                self.put_zero(first + i as u64, (j - i) as u64)?;
            } else {
                self.put(first + i as u64, &data[i * c..j * c])?;
            }
            i = j;
        }
        Ok(())
    }

    fn flush_pending(&mut self) -> Result<()> {
        if let Some((idx, buf)) = self.pending.take() {
            if is_zero(&buf) {
                self.put_zero(idx, 1)?;
            } else {
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

#[cfg(test)]
mod tests {
    use super::*;
    use qcow::{ClusterMapping, Layer, Reader, WriterOptions};
    use std::fs::OpenOptions;

    /// Writes, through a `QcowSink` with 4 KiB clusters: clusters 0-1 data, 2-4 zero (one
    /// run), 5 data, then a partial zero cluster 8 and a partial non-zero cluster 9; returns
    /// the mapping of guest clusters 0..12.
    fn sink_mappings(version: Version) -> Vec<ClusterMapping> {
        let path = std::env::temp_dir().join(format!(
            "e2i-sink-{}-{}.qcow2",
            std::process::id(),
            version.number()
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let opts = WriterOptions {
            cluster_bits: 12,
            virtual_size: 1 << 20,
            version,
        };
        let mut w = Writer::create(file, opts).unwrap();
        w.set_sync(false);
        let s = w.new_state();
        let mut sink = QcowSink::new(&mut w, s, None);
        let mut run = vec![0u8; 6 * 4096];
        run[..2 * 4096].fill(7);
        run[5 * 4096..].fill(9);
        sink.write(0, &run).unwrap();
        sink.write(8 * 4096 + 1024, &[0u8; 1024]).unwrap();
        sink.write(9 * 4096 + 2048, &[3u8; 1024]).unwrap();
        sink.finish().unwrap();
        w.finish(s, &[]).unwrap();
        let r = Reader::open(File::open(&path).unwrap()).unwrap();
        let lr = r.layer(Layer::Active).unwrap();
        let m = (0..12).map(|g| lr.mapping(g).unwrap()).collect();
        let _ = std::fs::remove_file(&path);
        m
    }

    #[test]
    fn qcow_sink_records_zero_clusters_in_v3_only() {
        let v3 = [
            "data", "data", "zero", "zero", "zero", "data", "none", "none", "zero", "data", "none",
            "none",
        ];
        for version in [Version::V3, Version::V2] {
            let kinds: Vec<&str> = sink_mappings(version)
                .iter()
                .map(|m| match m {
                    ClusterMapping::Normal { .. } => "data",
                    ClusterMapping::Zero => "zero",
                    ClusterMapping::Unallocated => "none",
                    ClusterMapping::Compressed { .. } => "compressed",
                })
                .collect();
            let want: Vec<&str> = v3
                .iter()
                .map(|&k| match (version, k) {
                    (Version::V2, "zero") => "none",
                    _ => k,
                })
                .collect();
            assert_eq!(kinds, want, "{version:?}");
        }
    }
}

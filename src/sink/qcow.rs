//! QCOW2 output: any number of states, each an L1 table; every state after the first shares
//! each cluster equal to the previous (next newer) state's (an inverted chain of internal
//! snapshots).
//!
//! All-zero data is never written out. A copied all-zero cluster is recorded as a zero cluster
//! (v3 zero flag, no host cluster), so the image says which blocks it holds: a zero cluster
//! was copied and is zero, an unallocated one was not copied. Version 2 has no zero flag, so
//! there all-zero clusters stay unallocated and the two cases cannot be told apart.

use super::{is_zero, Sink, Table};
use anyhow::{Context, Result};
use qcow::{SnapshotSpec, StateId, Version, Writer, WriterOptions};
use std::fs::File;

/// How to write the QCOW2 image (the default: 64 KiB clusters, v3, no extension).
#[derive(Clone, Debug)]
pub struct QcowOptions {
    /// log2 of the cluster size in bytes.
    pub cluster_bits: u32,
    /// QCOW2 version.
    pub version: Version,
    /// Private header extensions to add: (type, data).
    pub extensions: Vec<(u32, Vec<u8>)>,
}

impl Default for QcowOptions {
    fn default() -> QcowOptions {
        QcowOptions {
            cluster_bits: 16,
            version: Version::V3,
            extensions: Vec::new(),
        }
    }
}

/// The QCOW2 sink. Runs are cut into guest clusters; a cluster only partly covered is
/// assembled in a buffer (the rest stays zero) until the next cluster starts.
pub struct QcowSink {
    writer: Writer,
    /// The states written so far, in order; the last is being written.
    states: Vec<StateId>,
    cluster: usize,
    /// The image is v3: record all-zero clusters with the zero flag instead of skipping them.
    zero_flag: bool,
    pending: Option<(u64, Vec<u8>)>,
}

impl QcowSink {
    /// A QCOW2 image of a `size`-byte disk in the new, empty `file`.
    ///
    /// # Errors
    /// Invalid options; write errors.
    pub fn create(file: File, size: u64, o: &QcowOptions) -> Result<QcowSink> {
        let opts = WriterOptions {
            cluster_bits: o.cluster_bits,
            virtual_size: size,
            version: o.version,
        };
        let mut writer = Writer::create(file, opts).context("cannot start the QCOW2 image")?;
        for (t, data) in &o.extensions {
            writer.add_header_extension(*t, data)?;
        }
        Ok(QcowSink::new(writer))
    }

    fn new(writer: Writer) -> QcowSink {
        let cluster = writer.cluster_size() as usize;
        let zero_flag = writer.version() == Version::V3;
        QcowSink {
            writer,
            states: Vec::new(),
            cluster,
            zero_flag,
            pending: None,
        }
    }

    fn state(&self) -> Result<StateId> {
        self.states.last().copied().context("no state begun")
    }

    fn put(&mut self, guest_cluster: u64, data: &[u8]) -> Result<()> {
        let state = self.state()?;
        let base = self.states.len().checked_sub(2).map(|i| self.states[i]);
        let r = match base {
            Some(base) => self
                .writer
                .write_clusters_dedup(state, guest_cluster, data, base),
            None => self.writer.write_clusters(state, guest_cluster, data),
        };
        r.with_context(|| format!("cannot write guest cluster {guest_cluster} of the QCOW2 image"))
    }

    /// Records `count` all-zero guest clusters from `first`: zero clusters in v3, nothing
    /// (unallocated) in v2.
    fn put_zero(&mut self, first: u64, count: u64) -> Result<()> {
        if !self.zero_flag {
            return Ok(());
        }
        let state = self.state()?;
        self.writer
            .write_zero_clusters(state, first, count)
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
}

impl Sink for QcowSink {
    fn begin_state(&mut self) -> Result<()> {
        let id = self.writer.new_state();
        self.states.push(id);
        Ok(())
    }

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

    fn end_state(&mut self) -> Result<()> {
        self.flush_pending()
    }

    fn finish(self: Box<Self>, table: &Table, sync: bool) -> Result<Option<u64>> {
        let QcowSink {
            mut writer, states, ..
        } = *self;
        let at = |i: usize| {
            states
                .get(i)
                .copied()
                .with_context(|| format!("state {i} was not written"))
        };
        let mut specs = Vec::with_capacity(table.entries.len());
        for e in &table.entries {
            specs.push(SnapshotSpec {
                state: at(e.state)?,
                id: e.id.clone(),
                name: e.name.clone(),
                date_sec: e.date.0,
                date_nsec: e.date.1,
            });
        }
        let cluster = writer.cluster_size();
        writer.set_sync(sync);
        writer
            .finish(at(table.active)?, &specs)
            .context("cannot finish the QCOW2 image")?;
        Ok(Some(cluster))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qcow::{ClusterMapping, Layer, Reader};
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
        let w = Writer::create(file, opts).unwrap();
        let mut sink = Box::new(QcowSink::new(w));
        sink.begin_state().unwrap();
        let mut run = vec![0u8; 6 * 4096];
        run[..2 * 4096].fill(7);
        run[5 * 4096..].fill(9);
        sink.write(0, &run).unwrap();
        sink.write(8 * 4096 + 1024, &[0u8; 1024]).unwrap();
        sink.write(9 * 4096 + 2048, &[3u8; 1024]).unwrap();
        sink.end_state().unwrap();
        sink.finish(&Table::default(), false).unwrap();
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

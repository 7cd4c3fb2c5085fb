//! QCOW2 output: any number of states, each an L1 table; every state after the first shares
//! each cluster equal to the previous (next newer) state's (an inverted chain of internal
//! snapshots).
//!
//! All-zero data is never written out. A copied all-zero cluster is recorded as a zero cluster
//! (v3 zero flag, no host cluster), so the image says which blocks it holds: a zero cluster
//! was copied and is zero, an unallocated one was not copied. Version 2 has no zero flag, so
//! there all-zero clusters stay unallocated and the two cases cannot be told apart.

use super::clusters::Clusters;
use super::state_target::StateTarget;
use super::{Finished, Sink, Table};
use anyhow::{Context, Result};
use qcow::{StateId, Version, Writer, WriterOptions};
use std::fs::File;

/// How to write the QCOW2 image (the default: 64 KiB clusters, v3, no extension, not
/// compressed).
#[derive(Clone, Debug)]
pub struct QcowOptions {
    /// log2 of the cluster size in bytes.
    pub cluster_bits: u32,
    /// QCOW2 version.
    pub version: Version,
    /// Private header extensions to add: (type, data).
    pub extensions: Vec<(u32, Vec<u8>)>,
    /// Backing file name (as stored: relative to the image) and format ("raw" or "qcow2").
    pub backing: Option<(String, String)>,
    /// `-c`: how clusters are compressed (`None`: stored plain).
    pub compression: Option<qcow::Compression>,
}

impl Default for QcowOptions {
    fn default() -> QcowOptions {
        QcowOptions {
            cluster_bits: 16,
            version: Version::V3,
            extensions: Vec::new(),
            backing: None,
            compression: None,
        }
    }
}

/// The QCOW2 sink: a new image with any number of states; each state after the first is
/// deduplicated against the one before it.
pub struct QcowSink {
    writer: Writer,
    /// The states written so far, in order; the last is being written.
    states: Vec<StateId>,
    clusters: Clusters,
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
        if o.version == Version::V3 {
            // The cluster checksum table of `e2image-rs verify` (docs/verify.md).
            writer.set_cluster_checksums()?;
        }
        for (t, data) in &o.extensions {
            writer.add_header_extension(*t, data)?;
        }
        if let Some((name, format)) = &o.backing {
            writer.set_backing_file(name, format)?;
        }
        if let Some(c) = &o.compression {
            writer.set_compression_type(c.kind())?;
        }
        Ok(QcowSink::new(writer, o.compression))
    }

    fn new(writer: Writer, compression: Option<qcow::Compression>) -> QcowSink {
        let clusters = Clusters::new(&writer, compression);
        QcowSink {
            writer,
            states: Vec::new(),
            clusters,
        }
    }

    /// The state being written and the one it is deduplicated against (the one before).
    fn state_and_base(&self) -> Result<(StateId, Option<StateId>)> {
        let state = self.states.last().copied().context("no state begun")?;
        Ok((
            state,
            self.states.len().checked_sub(2).map(|i| self.states[i]),
        ))
    }
}

impl Sink for QcowSink {
    fn begin_state(&mut self) -> Result<()> {
        let id = self.writer.new_state();
        self.states.push(id);
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let (state, base) = self.state_and_base()?;
        let mut t = StateTarget::new(&mut self.writer, state, base);
        self.clusters.write(&mut t, offset, data)
    }

    fn end_state(&mut self) -> Result<()> {
        let (state, base) = self.state_and_base()?;
        let mut t = StateTarget::new(&mut self.writer, state, base);
        self.clusters.flush(&mut t)
    }

    fn finish(self: Box<Self>, table: &Table, sync: bool) -> Result<Finished> {
        let QcowSink {
            mut writer,
            states,
            clusters,
        } = *self;
        let (active, specs) = table.resolve(&states, "written")?;
        for (t, data) in &table.extensions {
            writer.add_header_extension(*t, data)?;
        }
        let cluster = writer.cluster_size();
        writer.set_sync(sync);
        writer
            .finish(active, &specs)
            .context("cannot finish the QCOW2 image")?;
        let mut f = Finished::with_cluster_size(Some(cluster));
        report_compression(&clusters, &mut f);
        Ok(f)
    }
}

/// With `-c`: a note and a JSON member (`compression`: type, level, clusters compressed and
/// clusters stored plain because they did not compress).
pub(super) fn report_compression(clusters: &Clusters, f: &mut Finished) {
    let Some((c, counts)) = clusters.compression() else {
        return;
    };
    let (kind, level) = (c.kind().name(), c.level());
    f.notes.push(format!(
        "{} clusters compressed ({kind}, level {level}); {} did not get smaller and are stored plain",
        counts.compressed, counts.plain
    ));
    f.json.push((
        "compression".into(),
        serde_json::json!({
            "type": kind,
            "level": level,
            "compressed_clusters": counts.compressed,
            "plain_clusters": counts.plain,
        }),
    ));
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
        let mut sink = Box::new(QcowSink::new(w, None));
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

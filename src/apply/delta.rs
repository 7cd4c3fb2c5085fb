//! A delta image, opened for replaying: its record, and the map of the guest clusters it
//! replaces, found through its L1/L2 tables (so the cost follows the delta's size, not the
//! filesystem's), in guest order.
//!
//! An allocated cluster (data or compressed) holds new bytes; a zero cluster (QCOW2 v3) is a
//! discard, new bytes all zero; an unallocated cluster keeps the target's bytes. Consecutive
//! data clusters stored consecutively in the file are one run, read with one `pread`.
//!
//! A delta on standard input (`apply - TARGET`) laid out for one pass is read from the stream
//! as the pass asks for it, in increasing guest order, which is its host order
//! ([`Delta::streamed`], `stdin.rs`): nothing of it is kept but the tables and the last
//! cluster read; what the pass needs again afterwards (TO's metadata) is read back from the
//! patch it wrote.

use crate::delta_record::{cluster_hash, ClusterDigest, DeltaRecord};
use crate::ranges::push;
use anyhow::{bail, Context, Result};
use qcow::{ClusterMapping, Layer, Reader};
use rayon::prelude::*;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The data of a delta read from a stream: the rest of the stream, and the last cluster read
/// (guest cluster, bytes).
pub struct Streamed {
    data: qcow::StreamData<crate::qcow_stdin::Input>,
    last: Option<(u64, Vec<u8>)>,
    /// SHA-256 of the stream's first cluster.
    head_sha256: [u8; 32],
}

/// Bytes of the delta hashed per piece when its `to_digest` is checked.
const DIGEST_PIECE_BYTES: u64 = 4 << 20;

/// How a run of guest clusters is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Uncompressed, the run's clusters one after the other from this host byte offset.
    Data {
        /// Host byte offset of the run's first cluster.
        host: u64,
    },
    /// One compressed cluster (read through the QCOW2 reader).
    Compressed,
    /// Zero clusters: a discard.
    Zero,
}

/// A run of replaced guest clusters, stored alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterRun {
    /// First guest cluster.
    pub first: u64,
    /// Number of clusters.
    pub count: u64,
    /// How they are stored.
    pub stored: Stored,
}

impl ClusterRun {
    fn end(&self) -> u64 {
        self.first + self.count
    }
}

/// An opened delta.
pub struct Delta {
    /// Its path.
    pub path: PathBuf,
    /// The QCOW2 reader (for compressed clusters and the first cluster's bytes).
    pub reader: Reader,
    /// Its own handle, for the data reads (`None` for a stream).
    file: Option<File>,
    /// The stream its data comes from (`apply -`), else `None`.
    stream: Option<Mutex<Streamed>>,
    /// The delta record, if it has one.
    pub record: Option<DeltaRecord>,
    /// The replaced clusters, in guest order.
    pub runs: Vec<ClusterRun>,
    /// Cluster size in bytes.
    pub cluster: u64,
    /// Guest disk size in bytes.
    pub size: u64,
}

impl Delta {
    /// Opens `path` and maps its replaced clusters. A backing file (`-x … --backing FULL`,
    /// for QEMU) is not read: apply needs only the clusters the delta itself maps, and an
    /// unallocated cluster keeps TARGET's bytes.
    ///
    /// # Errors
    /// Not a usable QCOW2 image; corrupt L1/L2 tables; I/O errors.
    pub fn open(path: &Path) -> Result<Delta> {
        let open = || File::open(path).with_context(|| format!("cannot open {}", path.display()));
        let reader = Reader::open_with_backing(open()?)
            .with_context(|| format!("{}: not a usable QCOW2 image", path.display()))?;
        let record = DeltaRecord::of(&reader);
        let cluster = reader.cluster_size();
        let runs =
            map_runs(&reader).with_context(|| format!("delta {} is corrupt", path.display()))?;
        Ok(Delta {
            path: path.to_path_buf(),
            file: Some(open()?),
            stream: None,
            size: reader.virtual_size(),
            record,
            runs,
            cluster,
            reader,
        })
    }

    /// The delta in `file` (standard input itself, or the file it was spooled to), named
    /// `path` in messages.
    ///
    /// # Errors
    /// Not a usable QCOW2 image; corrupt L1/L2 tables; I/O errors.
    pub fn from_file(file: File, path: &Path) -> Result<Delta> {
        let reader = Reader::open_with_backing(file.try_clone()?)
            .with_context(|| format!("{}: not a usable QCOW2 image", path.display()))?;
        let runs =
            map_runs(&reader).with_context(|| format!("delta {} is corrupt", path.display()))?;
        Ok(Delta {
            path: path.to_path_buf(),
            file: Some(file),
            stream: None,
            size: reader.virtual_size(),
            record: DeltaRecord::of(&reader),
            runs,
            cluster: reader.cluster_size(),
            reader,
        })
    }

    /// The delta whose tables `img` read from a stream; its data follows on the stream.
    ///
    /// # Errors
    /// Corrupt L1/L2 tables.
    pub fn streamed(
        img: qcow::StreamImage<crate::qcow_stdin::Input>,
        path: &Path,
    ) -> Result<Delta> {
        let head_sha256 = crate::patching::sha256(img.head(img.reader().cluster_size() as usize));
        let (reader, data) = img.into_parts();
        let runs =
            map_runs(&reader).with_context(|| format!("delta {} is corrupt", path.display()))?;
        Ok(Delta {
            path: path.to_path_buf(),
            file: None,
            stream: Some(Mutex::new(Streamed {
                data,
                last: None,
                head_sha256,
            })),
            size: reader.virtual_size(),
            record: DeltaRecord::of(&reader),
            runs,
            cluster: reader.cluster_size(),
            reader,
        })
    }

    /// True if the delta's data comes from a stream (read once, forward).
    pub fn is_streamed(&self) -> bool {
        self.stream.is_some()
    }

    /// Reads the rest of a streamed delta: every byte must have arrived before the target is
    /// touched. Returns the stream's length (a file's length otherwise).
    ///
    /// # Errors
    /// The stream ends before its last data cluster (the message says after how many bytes).
    pub fn finish_stream(&self) -> Result<u64> {
        let Some(m) = &self.stream else {
            return Ok(self.reader.file_len());
        };
        let mut st = m.lock().unwrap_or_else(|e| e.into_inner());
        st.data
            .drain()
            .with_context(|| format!("delta {} is incomplete", self.path.display()))
    }

    /// The delta's size in bytes: its file's, or the bytes its stream held.
    pub fn image_size(&self) -> u64 {
        match &self.stream {
            Some(m) => m
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .data
                .bytes_read(),
            None => self.reader.file_len(),
        }
    }

    /// Number of replaced clusters (allocated or zero).
    pub fn replaced_clusters(&self) -> u64 {
        self.runs.iter().map(|r| r.count).sum()
    }

    /// Number of zero clusters.
    pub fn zero_clusters(&self) -> u64 {
        let zero = self.runs.iter().filter(|r| r.stored == Stored::Zero);
        zero.map(|r| r.count).sum()
    }

    /// The filesystem blocks (of `bs` bytes) the replaced clusters touch, as sorted ranges.
    pub fn blocks(&self, bs: u64) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        for r in &self.runs {
            let (start, end) = self.byte_span(r.first..r.end());
            push(&mut out, start / bs..end.div_ceil(bs));
        }
        out
    }

    /// Bytes `[start, end)` of guest clusters `c`, clipped to the disk.
    fn byte_span(&self, c: Range<u64>) -> (u64, u64) {
        let end = c.end.saturating_mul(self.cluster).min(self.size);
        (c.start * self.cluster, end)
    }

    /// Number of replaced clusters touching bytes `[start, end)`.
    pub fn clusters_touching(&self, start: u64, end: u64) -> u64 {
        let (first, last) = (start / self.cluster, end.div_ceil(self.cluster));
        let i = self.runs.partition_point(|r| r.end() <= first);
        self.runs[i..]
            .iter()
            .take_while(|r| r.first < last)
            .map(|r| r.end().min(last) - r.first.max(first))
            .sum()
    }

    /// Lays the delta's bytes over `buf`, which holds the target's bytes at guest byte
    /// `offset`: data where clusters are allocated, zeros where they are zero clusters.
    ///
    /// # Errors
    /// Read errors of the delta (a cluster past its end included).
    pub fn overlay(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset + buf.len() as u64;
        let first = offset / self.cluster;
        let i = self.runs.partition_point(|r| r.end() <= first);
        for r in self.runs[i..]
            .iter()
            .take_while(|r| r.first * self.cluster < end)
        {
            let (s, e) = self.byte_span(r.first..r.end());
            let (s, e) = (s.max(offset), e.min(end));
            if s >= e {
                continue;
            }
            let part = &mut buf[(s - offset) as usize..(e - offset) as usize];
            match r.stored {
                Stored::Zero => part.fill(0),
                _ if self.stream.is_some() => self.read_streamed(s, part)?,
                Stored::Data { host } => {
                    let at = host + (s - r.first * self.cluster);
                    let file = self.file.as_ref().context("a delta file")?;
                    file.read_exact_at(part, at).with_context(|| {
                        format!("cannot read {} at byte {at}", self.path.display())
                    })?;
                }
                Stored::Compressed => self.read_compressed(r.first, s, part)?,
            }
        }
        Ok(())
    }

    /// Reads guest bytes from `at` (of allocated clusters) into `part` from the stream, cluster
    /// by cluster, keeping the last one (a piece may end inside a cluster).
    fn read_streamed(&self, at: u64, part: &mut [u8]) -> Result<()> {
        let m = self.stream.as_ref().context("a streamed delta")?;
        let mut st = m.lock().unwrap_or_else(|e| e.into_inner());
        let layer = self.reader.layer(Layer::Active)?;
        let mut done = 0usize;
        while done < part.len() {
            let pos = at + done as u64;
            let k = pos / self.cluster;
            if st.last.as_ref().is_none_or(|(g, _)| *g != k) {
                let mut buf = st.last.take().map(|l| l.1).unwrap_or_default();
                buf.resize(self.cluster as usize, 0);
                st.data.read_cluster(&layer, k, &mut buf).with_context(|| {
                    format!("delta {} (guest cluster {k})", self.path.display())
                })?;
                st.last = Some((k, buf));
            }
            let within = (pos % self.cluster) as usize;
            let n = (self.cluster as usize - within).min(part.len() - done);
            if let Some((_, buf)) = &st.last {
                part[done..done + n].copy_from_slice(&buf[within..within + n]);
            }
            done += n;
        }
        Ok(())
    }

    /// Reads guest bytes from `at` of compressed cluster `c` into `part`.
    fn read_compressed(&self, c: u64, at: u64, part: &mut [u8]) -> Result<()> {
        let mut whole = vec![0u8; self.cluster as usize];
        self.reader
            .layer(Layer::Active)?
            .read_cluster(c, &mut whole)
            .with_context(|| format!("delta {} is corrupt", self.path.display()))?;
        let within = (at - c * self.cluster) as usize;
        part.copy_from_slice(&whole[within..within + part.len()]);
        Ok(())
    }

    /// Refuses a delta whose replaced clusters do not hash to its record's `to_digest` (damaged
    /// in transit or storage); a version-1 record has none to check. `hashed` is what the
    /// comparison pass computed; when it could not hash every replaced cluster (clusters
    /// smaller than a block), the delta is read once more, in guest order, in pieces of at
    /// most [`DIGEST_PIECE_BYTES`].
    ///
    /// # Errors
    /// The digest differs; read errors.
    pub fn check_to_digest(&self, r: &DeltaRecord, hashed: ToHashes) -> Result<()> {
        let Some(want) = r.to_digest else {
            return Ok(());
        };
        let got = if hashed.clusters == self.replaced_clusters() {
            hashed.finish()
        } else if self.is_streamed() {
            bail!(
                "delta {}: {} of its {} clusters were hashed in the pass, and a stream cannot be read again",
                self.path.display(),
                hashed.clusters,
                self.replaced_clusters()
            );
        } else {
            self.to_digest()?
        };
        if got != want {
            bail!(
                "delta {} is corrupt: the bytes of the clusters it replaces are not those its record was made with (damaged in transit or storage?)",
                self.path.display()
            );
        }
        Ok(())
    }

    /// The `to_digest` of the delta's replaced clusters, read in guest order.
    fn to_digest(&self) -> Result<[u8; 32]> {
        let mut digest = ClusterDigest::default();
        let per = (DIGEST_PIECE_BYTES / self.cluster).max(1);
        let mut buf = Vec::new();
        for run in &self.runs {
            let mut c = run.first;
            while c < run.end() {
                let n = per.min(run.end() - c);
                let (s, e) = self.byte_span(c..c + n);
                buf.clear();
                buf.resize((e - s) as usize, 0);
                self.overlay(s, &mut buf)?;
                let hashes: Vec<[u8; 32]> = buf
                    .par_chunks(self.cluster as usize)
                    .map(cluster_hash)
                    .collect();
                for (k, h) in (c..).zip(&hashes) {
                    digest.add_hashed(k, h);
                }
                c += n;
            }
        }
        Ok(digest.finish())
    }

    /// SHA-256 of the delta's first cluster (or of the whole file when shorter), for the
    /// patch header.
    ///
    /// # Errors
    /// Read errors.
    pub fn first_cluster_sha256(&self) -> Result<[u8; 32]> {
        if let Some(m) = &self.stream {
            return Ok(m.lock().unwrap_or_else(|e| e.into_inner()).head_sha256);
        }
        let mut first = vec![0u8; self.cluster.min(self.reader.file_len()) as usize];
        let file = self.file.as_ref().context("a delta file")?;
        file.read_exact_at(&mut first, 0)
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        Ok(crate::patching::sha256(&first))
    }
}

/// The replaced clusters of the active layer, as runs.
fn map_runs(reader: &Reader) -> Result<Vec<ClusterRun>> {
    let layer = reader.layer(Layer::Active)?;
    let cluster = reader.cluster_size();
    let mut runs: Vec<ClusterRun> = Vec::new();
    layer.for_each_allocated(|g, m| {
        let stored = match m {
            ClusterMapping::Normal { host_offset } => Stored::Data { host: host_offset },
            ClusterMapping::Compressed { .. } => Stored::Compressed,
            ClusterMapping::Zero => Stored::Zero,
            ClusterMapping::Unallocated => return Ok(()),
        };
        if let Some(last) = runs.last_mut().filter(|l| l.end() == g) {
            let follows = match (last.stored, stored) {
                (Stored::Zero, Stored::Zero) => true,
                (Stored::Data { host: a }, Stored::Data { host: b }) => {
                    a + last.count * cluster == b
                }
                _ => false,
            };
            if follows {
                last.count += 1;
                return Ok(());
            }
        }
        runs.push(ClusterRun {
            first: g,
            count: 1,
            stored,
        });
        Ok(())
    })?;
    Ok(runs)
}

/// The delta record's `to_digest` computed during the pass, from the delta's bytes laid over
/// the target: every replaced cluster lying whole in a piece, in guest order.
#[derive(Default)]
pub struct ToHashes {
    digest: ClusterDigest,
    /// Clusters hashed.
    pub clusters: u64,
}

impl ToHashes {
    /// Hashes the replaced clusters lying whole in `buf` (guest bytes from `offset`, the
    /// delta laid over them), in parallel.
    pub fn feed(&mut self, offset: u64, buf: &[u8], d: &Delta) {
        let (cs, end) = (d.cluster, offset + buf.len() as u64);
        let whole: Vec<(u64, &[u8])> = (offset.div_ceil(cs)..end.div_ceil(cs))
            .filter_map(|k| {
                let (s, e) = (k * cs, ((k + 1) * cs).min(d.size));
                let inside = s >= offset && e <= end && s < e;
                (inside && d.clusters_touching(s, s + 1) > 0)
                    .then(|| (k, &buf[(s - offset) as usize..(e - offset) as usize]))
            })
            .collect();
        let hashes: Vec<[u8; 32]> = whole.par_iter().map(|(_, b)| cluster_hash(b)).collect();
        for ((k, _), h) in whole.iter().zip(&hashes) {
            self.digest.add_hashed(*k, h);
        }
        self.clusters += whole.len() as u64;
    }

    /// The digest of the clusters hashed.
    pub fn finish(self) -> [u8; 32] {
        self.digest.finish()
    }
}

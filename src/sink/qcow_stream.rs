//! QCOW2 on standard output (`e2image-rs -Q SOURCE - | ...`), written in one pass through
//! `qcow::StreamPlan` and `qcow::StreamWriter`: every table first, then the data clusters in
//! host order, nothing sought, no temporary file.
//!
//! The tables must be known before the first data byte, so the pipeline hands every state over
//! twice ([`Sink::two_passes`]). The first pass plans: each guest cluster is assembled as the
//! file sink does (copied blocks, zeros elsewhere), an all-zero one is a zero cluster (v3) or
//! left unallocated (v2), and with several states each older state shares a cluster when its
//! SHA-256 equals the next newer state's at the same place (the file sink compares the bytes;
//! a SHA-256 match stands for equal bytes); every other cluster is a new data cluster, and its
//! CRC32C is kept. [`Sink::plan`] then writes all the tables and returns, per state, the guest
//! clusters whose bytes are to come; the second pass hands exactly those over again, and each
//! must have its first-pass CRC32C (a source that changed in between stops the export). With a
//! single state no SHA-256 is computed. Memory: the plan's tables, 12 bytes per data cluster,
//! 48 per cluster of the two states being compared, a 1 MiB output buffer.
//!
//! With `-c`, the planning pass also compresses: clusters are queued a few MiB at a time, the
//! new data clusters among them compressed on all cores, and their payloads (whose lengths
//! the tables need) kept in a [`Spool`] until the writing pass writes them in their place; a
//! compressed cluster is not read again. A cluster whose payload would not be smaller is
//! stored plain and read again, like any uncompressed one.
//!
//! A reader that goes away (a closed pipe) is a write error saying how far the stream got.

use super::spool::Spool;
use super::{is_zero, Finished, QcowOptions, Sink, Table};
use anyhow::{bail, Context, Result};
use qcow::{DataKind, DataRef, StateId, StreamPlan, StreamWriter, Version, WriterOptions};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::io::{BufWriter, ErrorKind, Stdout, Write};
use std::ops::Range;

/// Output buffer, in bytes.
const BUFFER_BYTES: usize = 1 << 20;
/// Bytes of clusters queued for compression before the queue is planned: enough work for
/// every core, a few MiB of memory.
const QUEUE_BYTES: usize = 4 << 20;

/// One planned data cluster, in writing order: its state, guest cluster, the CRC32C of its
/// bytes (checked when a plain cluster is read again), and where its compressed payload is
/// in the spool (`None`: stored plain, read again in the writing pass).
#[derive(Clone, Copy, Debug)]
struct Entry {
    state: u32,
    guest: u64,
    crc: u32,
    payload: Option<(u64, u32)>,
}

type Out = BufWriter<Stdout>;

/// A cluster of the previous state: guest cluster, SHA-256, data cluster.
type Seen = (u64, [u8; 32], DataRef);

/// The planning pass's state.
struct Planning {
    plan: StreamPlan,
    ids: Vec<StateId>,
    /// Number of states the pipeline will hand over.
    states: usize,
    /// Data clusters of the previous state and of the current one (for sharing).
    prev: Vec<Seen>,
    cur: Vec<Seen>,
}

/// What the writing pass checks against.
struct Writing {
    writer: StreamWriter<Out>,
}

enum Phase {
    /// Made, the plan started (its options checked), not asked for two passes yet.
    Idle(Box<StreamPlan>),
    Planning(Box<Planning>),
    Writing(Box<Writing>),
    Done,
}

/// See the module comment.
pub struct QcowStreamSink {
    phase: Phase,
    cluster: usize,
    /// The state being handed over (index in order), in either pass.
    state: Option<usize>,
    /// The cluster being assembled: (guest cluster, bytes).
    pending: Option<(u64, Vec<u8>)>,
    /// Every planned data cluster, in writing order.
    data: Vec<Entry>,
    /// `-c`: how clusters are compressed.
    compression: Option<qcow::Compression>,
    /// Whole clusters of the current state waiting to be compressed and planned, in guest
    /// order: (guest cluster, bytes).
    queue: Vec<(u64, Vec<u8>)>,
    /// The compressed payloads between the two passes.
    spool: Spool,
    /// Clusters compressed, and stored plain because they did not get smaller.
    counts: (u64, u64),
}

impl QcowStreamSink {
    /// A QCOW2 stream of a `size`-byte disk on standard output, written as `qcow` says.
    ///
    /// # Errors
    /// Invalid options, extensions or backing file.
    pub fn new(size: u64, qcow: &QcowOptions) -> Result<QcowStreamSink> {
        let opts = WriterOptions {
            cluster_bits: qcow.cluster_bits,
            virtual_size: size,
            version: qcow.version,
        };
        let mut plan = StreamPlan::new(opts).context("cannot plan the QCOW2 stream")?;
        for (t, d) in &qcow.extensions {
            plan.add_header_extension(*t, d)?;
        }
        if let Some((name, format)) = &qcow.backing {
            plan.set_backing_file(name, format)?;
        }
        if let Some(c) = &qcow.compression {
            plan.set_compression_type(c.kind())?;
        }
        if qcow.version == qcow::Version::V3 {
            // docs/verify.md: the table follows the image, computed as it is written.
            plan.set_cluster_checksums()?;
        }
        Ok(QcowStreamSink {
            phase: Phase::Idle(Box::new(plan)),
            cluster: 1usize << qcow.cluster_bits,
            state: None,
            pending: None,
            data: Vec::new(),
            compression: qcow.compression,
            queue: Vec::new(),
            spool: Spool::default(),
            counts: (0, 0),
        })
    }

    /// One whole guest cluster of the current state, in either pass.
    fn cluster_done(&mut self, g: u64, bytes: &[u8]) -> Result<()> {
        let s = self.state.context("no state begun")?;
        match &mut self.phase {
            Phase::Planning(_) if self.compression.is_some() => {
                self.queue.push((g, bytes.to_vec()));
                if self.queue.len() * self.cluster >= QUEUE_BYTES {
                    self.flush_queue()?;
                }
                Ok(())
            }
            Phase::Planning(p) => plan_cluster(p, &mut self.data, s, g, bytes, None),
            Phase::Writing(w) => write_cluster(w, &self.data, &self.spool, s, g, bytes),
            _ => bail!("the QCOW2 stream was handed a cluster outside its two passes"),
        }
    }

    /// Compresses the queued clusters' new data on all cores and plans them all, in guest
    /// order; payloads go to the spool.
    fn flush_queue(&mut self) -> Result<()> {
        let (Phase::Planning(p), Some(s), Some(c)) =
            (&mut self.phase, self.state, self.compression)
        else {
            return Ok(());
        };
        let queue = std::mem::take(&mut self.queue);
        let new: Vec<bool> = queue.iter().map(|(g, b)| is_new(p, *g, b)).collect();
        let payloads: Vec<Option<qcow::CompressedCluster>> = queue
            .par_iter()
            .zip(&new)
            .map(|((_, b), &n)| n.then(|| c.compress_cluster(b)).transpose())
            .collect::<std::result::Result<_, _>>()?;
        for ((g, bytes), payload) in queue.iter().zip(payloads) {
            let at = match payload {
                Some(qcow::CompressedCluster::Payload(v)) => {
                    self.counts.0 += 1;
                    Some((self.spool.push(&v)?, v.len() as u32))
                }
                Some(qcow::CompressedCluster::Plain) => {
                    self.counts.1 += 1;
                    None
                }
                None => None,
            };
            plan_cluster(p, &mut self.data, s, *g, bytes, at)?;
        }
        Ok(())
    }

    /// Hands over the cluster being assembled.
    fn flush_pending(&mut self) -> Result<()> {
        if let Some((g, buf)) = self.pending.take() {
            self.cluster_done(g, &buf)?;
        }
        Ok(())
    }
}

/// True if guest cluster `g` (`bytes`) becomes a new data cluster: not all zeros, and not
/// shared with the previous state's cluster at the same place.
fn is_new(p: &Planning, g: u64, bytes: &[u8]) -> bool {
    if is_zero(bytes) {
        return false;
    }
    if p.states <= 1 {
        return true;
    }
    let d: [u8; 32] = Sha256::digest(bytes).into();
    p.prev
        .binary_search_by_key(&g, |x| x.0)
        .map_or(true, |i| p.prev[i].1 != d)
}

/// Plans guest cluster `g` of state `s`; a new data cluster is a compressed payload at
/// `payload` in the spool (offset, length), or plain.
fn plan_cluster(
    p: &mut Planning,
    data: &mut Vec<Entry>,
    s: usize,
    g: u64,
    bytes: &[u8],
    payload: Option<(u64, u32)>,
) -> Result<()> {
    let id = p.ids[s];
    if is_zero(bytes) {
        if p.plan.version() == Version::V3 {
            p.plan.add_zero(id, g, 1)?;
        }
        return Ok(());
    }
    let digest: Option<[u8; 32]> = (p.states > 1).then(|| Sha256::digest(bytes).into());
    let same = digest.and_then(|d| {
        let i = p.prev.binary_search_by_key(&g, |x| x.0).ok()?;
        (p.prev[i].1 == d).then_some(p.prev[i].2)
    });
    let r = match same {
        Some(r) => {
            p.plan.add_shared(id, g, r)?;
            r
        }
        None => {
            let kind = match payload {
                Some((_, len)) => DataKind::Payload { len },
                None => DataKind::Plain,
            };
            let r = p.plan.add_data(id, g, kind)?;
            data.push(Entry {
                state: s as u32,
                guest: g,
                crc: crc32c::crc32c(bytes),
                payload,
            });
            r
        }
    };
    if let Some(d) = digest {
        p.cur.push((g, d, r));
    }
    Ok(())
}

/// Writes the compressed payloads that come next in writing order, from the spool, up to the
/// next plain cluster (which the second pass hands over).
fn write_payloads(w: &mut Writing, data: &[Entry], spool: &Spool) -> Result<()> {
    while let Some(next) = w.writer.next_data() {
        let Some((at, len)) = data[next as usize].payload else {
            return Ok(());
        };
        let bytes = spool.read(at, len)?;
        w.writer.write_data(&bytes).map_err(stream_error)?;
    }
    Ok(())
}

/// Writes guest cluster `g` of state `s` if it is the next data cluster (after the payloads
/// before it); a cluster the plan holds no bytes for (shared, zero, compressed, or beside a
/// needed one in a block) is passed over.
fn write_cluster(
    w: &mut Writing,
    data: &[Entry],
    spool: &Spool,
    s: usize,
    g: u64,
    bytes: &[u8],
) -> Result<()> {
    write_payloads(w, data, spool)?;
    let Some(next) = w.writer.next_data() else {
        return Ok(());
    };
    let e = data[next as usize];
    let (ns, ng, crc) = (e.state, e.guest, e.crc);
    if (ns as usize, ng) != (s, g) {
        if (ns as usize, ng) < (s, g) {
            bail!(changed(ns as usize, ng));
        }
        return Ok(());
    }
    if crc32c::crc32c(bytes) != crc {
        bail!(changed(s, g));
    }
    w.writer.write_data(bytes).map_err(stream_error)
}

/// The error of a source whose bytes differ between the two passes.
fn changed(s: usize, g: u64) -> String {
    format!(
        "the source changed while it was exported: guest cluster {g} of state {} holds other bytes than when the stream's tables were written (a QCOW2 stream reads its source twice; is it mounted?)",
        s + 1
    )
}

/// A write error of the stream as a message: a closed pipe says so and how far it got.
fn stream_error(e: qcow::Error) -> anyhow::Error {
    if let qcow::Error::Io { offset, source, .. } = &e {
        if source.kind() == ErrorKind::BrokenPipe {
            return anyhow::anyhow!(
                "standard output was closed at byte {offset} of the QCOW2 stream (the reader went away): the stream is incomplete"
            );
        }
        return anyhow::anyhow!(
            "cannot write byte {offset} of the QCOW2 stream to standard output: {source}"
        );
    }
    anyhow::Error::new(e).context("cannot write the QCOW2 stream")
}

impl Sink for QcowStreamSink {
    fn two_passes(&mut self, states: usize) -> bool {
        let Phase::Idle(plan) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return true; // asked twice: the state machine refuses what follows
        };
        self.phase = Phase::Planning(Box::new(Planning {
            plan: *plan,
            ids: Vec::new(),
            states,
            prev: Vec::new(),
            cur: Vec::new(),
        }));
        true
    }

    fn begin_state(&mut self) -> Result<()> {
        let next = self.state.map_or(0, |s| s + 1);
        match &mut self.phase {
            Phase::Planning(p) => {
                p.prev = std::mem::take(&mut p.cur);
                let id = p.plan.new_state();
                p.ids.push(id);
            }
            Phase::Writing(_) => {}
            _ => bail!("a QCOW2 stream is written in two passes (the pipeline did not ask)"),
        }
        self.state = Some(next);
        Ok(())
    }

    fn write(&mut self, mut offset: u64, mut data: &[u8]) -> Result<()> {
        let c = self.cluster as u64;
        while !data.is_empty() {
            let (g, within) = (offset / c, (offset % c) as usize);
            if self.pending.as_ref().is_some_and(|(p, _)| *p != g) {
                self.flush_pending()?;
            }
            if within == 0 && data.len() >= self.cluster && self.pending.is_none() {
                self.cluster_done(g, &data[..self.cluster])?;
                offset += c;
                data = &data[self.cluster..];
                continue;
            }
            let take = (self.cluster - within).min(data.len());
            let cluster = self.cluster;
            let (_, buf) = self.pending.get_or_insert_with(|| (g, vec![0u8; cluster]));
            buf[within..within + take].copy_from_slice(&data[..take]);
            offset += take as u64;
            data = &data[take..];
        }
        Ok(())
    }

    fn end_state(&mut self) -> Result<()> {
        self.flush_pending()?;
        self.flush_queue()?;
        let (Phase::Writing(w), Some(s)) = (&mut self.phase, self.state) else {
            return Ok(());
        };
        write_payloads(w, &self.data, &self.spool)?;
        if let Some(next) = w.writer.next_data() {
            let e = self.data[next as usize];
            if e.state as usize <= s {
                bail!(changed(e.state as usize, e.guest));
            }
        }
        Ok(())
    }

    fn plan(&mut self, table: &Table) -> Result<Vec<Vec<Range<u64>>>> {
        self.flush_pending()?;
        self.flush_queue()?;
        let Phase::Planning(p) = std::mem::replace(&mut self.phase, Phase::Done) else {
            bail!("the QCOW2 stream was not planned");
        };
        let Planning { mut plan, ids, .. } = *p;
        for (t, d) in &table.extensions {
            plan.add_header_extension(*t, d)?;
        }
        let (active, specs) = table.resolve(&ids, "planned")?;
        let layout = plan
            .finish(active, &specs)
            .context("cannot lay out the QCOW2 stream")?;
        let out = BufWriter::with_capacity(BUFFER_BYTES, std::io::stdout());
        let writer = StreamWriter::start(layout, out).map_err(stream_error)?;
        self.phase = Phase::Writing(Box::new(Writing { writer }));
        self.state = None;
        let c = self.cluster as u64;
        let mut needs: Vec<Vec<Range<u64>>> = vec![Vec::new(); ids.len()];
        for e in self.data.iter().filter(|e| e.payload.is_none()) {
            let g = e.guest;
            crate::ranges::push(&mut needs[e.state as usize], g * c..(g + 1) * c);
        }
        Ok(needs)
    }

    fn finish(self: Box<Self>, _table: &Table, _sync: bool) -> Result<Finished> {
        let me = *self;
        let Phase::Writing(mut w) = me.phase else {
            bail!("the QCOW2 stream was not written (no planning pass)");
        };
        write_payloads(&mut w, &me.data, &me.spool)?;
        if let Some(next) = w.writer.next_data() {
            let e = me.data[next as usize];
            bail!(changed(e.state as usize, e.guest));
        }
        let (mut out, _) = w.writer.finish().map_err(stream_error)?;
        out.flush().map_err(|e| {
            stream_error(qcow::Error::Io {
                op: "flushing the stream",
                offset: 0,
                source: e,
            })
        })?;
        let mut f = Finished::with_cluster_size(Some(me.cluster as u64));
        if let Some(c) = &me.compression {
            report_compression(c, me.counts, &mut f);
        }
        if me.spool.spilled() > 0 {
            f.notes.push(format!(
                "the compressed stream kept {} of payloads in an unlinked temporary file in $TMPDIR between its passes (more than {} in memory)",
                crate::text::size(me.spool.spilled()),
                crate::text::size(super::spool::MEMORY_BYTES as u64)
            ));
        }
        Ok(f)
    }
}

/// With `-c`: a note and a JSON member (`compression`), as the file sinks give them.
fn report_compression(c: &qcow::Compression, (compressed, plain): (u64, u64), f: &mut Finished) {
    let (kind, level) = (c.kind().name(), c.level());
    f.notes.push(format!(
        "{compressed} clusters compressed ({kind}, level {level}); {plain} did not get smaller and are stored plain"
    ));
    f.json.push((
        "compression".into(),
        serde_json::json!({
            "type": kind,
            "level": level,
            "compressed_clusters": compressed,
            "plain_clusters": plain,
        }),
    ));
}

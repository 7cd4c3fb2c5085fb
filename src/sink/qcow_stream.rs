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
//! A reader that goes away (a closed pipe) is a write error saying how far the stream got.

use super::{is_zero, Finished, QcowOptions, Sink, Table};
use anyhow::{bail, Context, Result};
use qcow::{
    DataKind, DataRef, SnapshotSpec, StateId, StreamPlan, StreamWriter, Version, WriterOptions,
};
use sha2::{Digest, Sha256};
use std::io::{BufWriter, ErrorKind, Stdout, Write};
use std::ops::Range;

/// Output buffer, in bytes.
const BUFFER_BYTES: usize = 1 << 20;

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
    /// Per data cluster (in writing order): its state, guest cluster and CRC32C.
    data: Vec<(u32, u64, u32)>,
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
        Ok(QcowStreamSink {
            phase: Phase::Idle(Box::new(plan)),
            cluster: 1usize << qcow.cluster_bits,
            state: None,
            pending: None,
            data: Vec::new(),
        })
    }

    /// One whole guest cluster of the current state, in either pass.
    fn cluster_done(&mut self, g: u64, bytes: &[u8]) -> Result<()> {
        let s = self.state.context("no state begun")?;
        match &mut self.phase {
            Phase::Planning(p) => plan_cluster(p, &mut self.data, s, g, bytes),
            Phase::Writing(w) => write_cluster(w, &self.data, s, g, bytes),
            _ => bail!("the QCOW2 stream was handed a cluster outside its two passes"),
        }
    }

    /// Hands over the cluster being assembled.
    fn flush_pending(&mut self) -> Result<()> {
        if let Some((g, buf)) = self.pending.take() {
            self.cluster_done(g, &buf)?;
        }
        Ok(())
    }
}

/// Plans guest cluster `g` of state `s`.
fn plan_cluster(
    p: &mut Planning,
    data: &mut Vec<(u32, u64, u32)>,
    s: usize,
    g: u64,
    bytes: &[u8],
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
            let r = p.plan.add_data(id, g, DataKind::Plain)?;
            data.push((s as u32, g, crc32c::crc32c(bytes)));
            r
        }
    };
    if let Some(d) = digest {
        p.cur.push((g, d, r));
    }
    Ok(())
}

/// Writes guest cluster `g` of state `s` if it is the next data cluster; a cluster the plan
/// holds no bytes for (shared, zero, or beside a needed one in a block) is passed over.
fn write_cluster(
    w: &mut Writing,
    data: &[(u32, u64, u32)],
    s: usize,
    g: u64,
    bytes: &[u8],
) -> Result<()> {
    let Some(next) = w.writer.next_data() else {
        return Ok(());
    };
    let (ns, ng, crc) = data[next as usize];
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
        let (Phase::Writing(w), Some(s)) = (&self.phase, self.state) else {
            return Ok(());
        };
        if let Some(next) = w.writer.next_data() {
            let (ns, ng, _) = self.data[next as usize];
            if ns as usize <= s {
                bail!(changed(ns as usize, ng));
            }
        }
        Ok(())
    }

    fn plan(&mut self, table: &Table) -> Result<Vec<Vec<Range<u64>>>> {
        self.flush_pending()?;
        let Phase::Planning(p) = std::mem::replace(&mut self.phase, Phase::Done) else {
            bail!("the QCOW2 stream was not planned");
        };
        let Planning { mut plan, ids, .. } = *p;
        for (t, d) in &table.extensions {
            plan.add_header_extension(*t, d)?;
        }
        let at = |i: usize| {
            ids.get(i)
                .copied()
                .with_context(|| format!("state {i} was not planned"))
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
        let layout = plan
            .finish(at(table.active)?, &specs)
            .context("cannot lay out the QCOW2 stream")?;
        let out = BufWriter::with_capacity(BUFFER_BYTES, std::io::stdout());
        let writer = StreamWriter::start(layout, out).map_err(stream_error)?;
        self.phase = Phase::Writing(Box::new(Writing { writer }));
        self.state = None;
        let c = self.cluster as u64;
        let mut needs: Vec<Vec<Range<u64>>> = vec![Vec::new(); ids.len()];
        for &(s, g, _) in &self.data {
            crate::ranges::push(&mut needs[s as usize], g * c..(g + 1) * c);
        }
        Ok(needs)
    }

    fn finish(self: Box<Self>, _table: &Table, _sync: bool) -> Result<Finished> {
        let Phase::Writing(w) = self.phase else {
            bail!("the QCOW2 stream was not written (no planning pass)");
        };
        if let Some(next) = w.writer.next_data() {
            let (s, g, _) = self.data[next as usize];
            bail!(changed(s as usize, g));
        }
        let (mut out, _) = w.writer.finish().map_err(stream_error)?;
        out.flush().map_err(|e| {
            stream_error(qcow::Error::Io {
                op: "flushing the stream",
                offset: 0,
                source: e,
            })
        })?;
        Ok(Finished::with_cluster_size(Some(self.cluster as u64)))
    }
}

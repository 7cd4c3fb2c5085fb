//! The copy engine: reads runs from a block view in parallel and hands them to a sink in order.
//!
//! Runs are coalesced into reads of up to [`MAX_READ_BYTES`], grouped into batches of about
//! [`BATCH_BYTES`]. While one batch is written (sequentially, in offset order), the next is
//! read by the rayon pool, so reading and writing overlap and memory stays at about two
//! batches. A failed read is retried unit by unit; units that still fail are reported and
//! left out (they read as zeros in the image).

use crate::sink::Sink;
use anyhow::Result;
use ext::{BlockNr, BlockView, Warning};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::io::IsTerminal;

/// Largest single read, in bytes.
const MAX_READ_BYTES: u64 = 4 << 20;
/// Bytes read per batch (two batches are in memory at once).
const BATCH_BYTES: u64 = 32 << 20;

/// A progress bar on stderr, shown only when asked for and stderr is a terminal.
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A bar counting `total` bytes, or a silent one.
    pub fn new(wanted: bool, total: u64, what: &str) -> Progress {
        if !wanted || !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = ProgressBar::new(total);
        let style = ProgressStyle::with_template("{msg} {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(what.to_string());
        Progress(Some(bar))
    }

    fn inc(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

/// Counts from one copy.
#[derive(Clone, Copy, Debug, Default)]
pub struct CopyStats {
    /// Bytes read from the source and handed to the sink.
    pub bytes_copied: u64,
    /// Units that could not be read.
    pub unreadable_units: u64,
}

/// One read: `len` units at unit `start`.
#[derive(Clone, Copy)]
struct Request {
    start: u64,
    len: u64,
}

/// A readable piece: bytes at a byte offset.
struct Piece {
    offset: u64,
    data: Vec<u8>,
}

/// Copies `runs` (unit start, unit count; sorted and disjoint) of `unit`-byte units from
/// `view` to `sink`; unreadable units are appended to `warnings`.
pub fn copy_runs(
    view: &dyn BlockView,
    unit: u32,
    runs: impl Iterator<Item = (u64, u64)>,
    sink: &mut (dyn Sink + Send),
    progress: &Progress,
    warnings: &mut Vec<Warning>,
) -> Result<CopyStats> {
    let unit64 = u64::from(unit);
    let requests = split_requests(runs, (MAX_READ_BYTES / unit64).max(1));
    let mut stats = CopyStats::default();
    let mut pending: Vec<(Vec<Piece>, Vec<Warning>)> = Vec::new();
    let mut i = 0;
    while i < requests.len() || !pending.is_empty() {
        let j = batch_end(&requests, i, (BATCH_BYTES / unit64).max(1));
        let batch = &requests[i..j];
        let to_write = std::mem::take(&mut pending);
        let (read, written) = rayon::join(
            || batch.par_iter().map(|r| read_request(view, unit, *r)).collect::<Vec<_>>(),
            || write_pieces(sink, to_write, progress, unit64),
        );
        let (bytes, failed, mut warns) = written?;
        stats.bytes_copied += bytes;
        stats.unreadable_units += failed;
        warnings.append(&mut warns);
        pending = read;
        i = j;
    }
    Ok(stats)
}

/// Coalesces adjacent runs and cuts them into requests of at most `max` units.
fn split_requests(runs: impl Iterator<Item = (u64, u64)>, max: u64) -> Vec<Request> {
    let mut merged: Vec<Request> = Vec::new();
    for (start, len) in runs.filter(|r| r.1 > 0) {
        match merged.last_mut() {
            Some(last) if last.start + last.len == start => last.len += len,
            _ => merged.push(Request { start, len }),
        }
    }
    let mut out = Vec::with_capacity(merged.len());
    for r in merged {
        let mut s = r.start;
        let end = r.start + r.len;
        while s < end {
            let n = max.min(end - s);
            out.push(Request { start: s, len: n });
            s += n;
        }
    }
    out
}

fn batch_end(requests: &[Request], from: usize, budget: u64) -> usize {
    let mut used = 0;
    let mut j = from;
    while j < requests.len() && (j == from || used + requests[j].len <= budget) {
        used += requests[j].len;
        j += 1;
    }
    j
}

/// Reads one request; on failure retries unit by unit and reports the units that fail.
fn read_request(view: &dyn BlockView, unit: u32, r: Request) -> (Vec<Piece>, Vec<Warning>) {
    let u = u64::from(unit);
    let mut data = vec![0u8; (r.len * u) as usize];
    if view.read_blocks(unit, r.start, &mut data).is_ok() {
        return (vec![Piece { offset: r.start * u, data }], Vec::new());
    }
    let mut pieces: Vec<Piece> = Vec::new();
    let mut warnings = Vec::new();
    for b in r.start..r.start + r.len {
        let mut one = vec![0u8; unit as usize];
        match view.read_blocks(unit, b, &mut one) {
            Ok(()) => match pieces.last_mut() {
                Some(p) if p.offset + p.data.len() as u64 == b * u => p.data.extend_from_slice(&one),
                _ => pieces.push(Piece { offset: b * u, data: one }),
            },
            Err(e) => warnings.push(Warning {
                inode: None,
                block: Some(BlockNr(b * u / u64::from(unit.max(1)))),
                offset: None,
                reason: format!("unreadable source block (byte {}): {e}; left out of the image", b * u),
            }),
        }
    }
    (pieces, warnings)
}

fn write_pieces(
    sink: &mut (dyn Sink + Send),
    batch: Vec<(Vec<Piece>, Vec<Warning>)>,
    progress: &Progress,
    unit: u64,
) -> Result<(u64, u64, Vec<Warning>)> {
    let mut bytes = 0;
    let mut all_warnings = Vec::new();
    for (pieces, mut warnings) in batch {
        for p in pieces {
            sink.write(p.offset, &p.data)?;
            bytes += p.data.len() as u64;
            progress.inc(p.data.len() as u64);
        }
        progress.inc(warnings.len() as u64 * unit);
        all_warnings.append(&mut warnings);
    }
    let failed = all_warnings.len() as u64;
    Ok((bytes, failed, all_warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_merge_and_split() {
        let r = split_requests([(0, 3), (3, 2), (10, 7)].into_iter(), 4);
        let v: Vec<(u64, u64)> = r.iter().map(|r| (r.start, r.len)).collect();
        assert_eq!(v, vec![(0, 4), (4, 1), (10, 4), (14, 3)]);
    }

    #[test]
    fn batches_respect_budget_but_take_at_least_one() {
        let r = split_requests([(0, 10), (20, 10), (40, 10)].into_iter(), 100);
        assert_eq!(batch_end(&r, 0, 25), 2);
        assert_eq!(batch_end(&r, 0, 5), 1);
        assert_eq!(batch_end(&r, 2, 5), 3);
    }
}

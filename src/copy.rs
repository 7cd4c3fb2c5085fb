//! The copy engine: reads runs from a block view in parallel and hands them to a sink in order.
//!
//! Runs are coalesced into reads of up to [`MAX_READ_BYTES`], grouped into batches of about
//! [`BATCH_BYTES`]. While one batch is written (sequentially, in offset order), the next is
//! read by the rayon pool, so reading and writing overlap and memory stays at about two
//! batches. A failed read is retried unit by unit; units that still fail are reported and
//! left out (they read as zeros in the image). [`copy_runs_checking`] also verifies the
//! checksums a walk left pending ([`PendingChecks`]) as the readers read the blocks, so an
//! export verifies its directory blocks and inode records without reading them twice.

use crate::sink::Sink;
use anyhow::Result;
use ext::{BlockNr, BlockView, PendingChecks, PendingTally, Warning};
use rayon::prelude::*;

/// Largest single read, in bytes.
const MAX_READ_BYTES: u64 = 2 << 20;
/// Unreadable units listed as warnings by one copy; the rest are only counted
/// ([`CopyStats::unreadable_units`]), so a failing disk cannot fill memory with warnings.
pub const MAX_UNREADABLE_LISTED: usize = 16;
/// Bytes read per batch (two batches are in memory at once).
const BATCH_BYTES: u64 = 2 << 20;

pub use crate::sys::report::Progress;

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

/// A batch of requests read into one buffer (request k at the sum of the lengths before it),
/// with the units that could not be read.
#[derive(Default)]
struct Batch {
    requests: Vec<Request>,
    buf: Vec<u8>,
    unreadable: Vec<u64>,
    warnings: Vec<Warning>,
    /// What the pending checks of the batch's requests found, in request order.
    checked: PendingTally,
}

/// Copies `runs` (unit start, unit count; sorted and disjoint) of `unit`-byte units from
/// `view` to `sink`; the first [`MAX_UNREADABLE_LISTED`] unreadable units are appended to
/// `warnings`, all of them are counted.
pub fn copy_runs(
    view: &dyn BlockView,
    unit: u32,
    runs: impl Iterator<Item = (u64, u64)>,
    sink: &mut dyn Sink,
    progress: &Progress,
    warnings: &mut Vec<Warning>,
) -> Result<CopyStats> {
    let none = PendingChecks::default();
    let copy = copy_runs_checking(view, unit, runs, sink, progress, warnings, &none)?;
    Ok(copy.0)
}

/// [`copy_runs`] of filesystem blocks (`unit` is the block size) that also verifies the
/// `pending` checksums of the blocks it reads (those of requests read whole); returns what
/// they found, for [`ext::WalkResult::finish_checks`].
pub fn copy_runs_checking(
    view: &dyn BlockView,
    unit: u32,
    runs: impl Iterator<Item = (u64, u64)>,
    sink: &mut dyn Sink,
    progress: &Progress,
    warnings: &mut Vec<Warning>,
    pending: &PendingChecks,
) -> Result<(CopyStats, PendingTally)> {
    let unit64 = u64::from(unit);
    let mut checked = PendingTally::default();
    let requests = split_requests(runs, (MAX_READ_BYTES / unit64).max(1));
    let mut stats = CopyStats::default();
    // Two batches alternate: one is written while the other is read; their buffers are
    // reused, so steady-state copying allocates nothing.
    let mut writing = Batch::default();
    let mut reading = Batch::default();
    let mut i = 0;
    while i < requests.len() || !writing.requests.is_empty() {
        let j = batch_end(&requests, i, (BATCH_BYTES / unit64).max(1));
        reading.requests.clear();
        reading.requests.extend_from_slice(&requests[i..j]);
        crate::sys::faults::stall();
        let (_, written) = rayon::join(
            || read_batch(view, unit, &mut reading, pending),
            || write_batch(sink, &mut writing, unit64, progress),
        );
        stats.bytes_copied += written?;
        stats.unreadable_units += writing.unreadable.len() as u64;
        let room = MAX_UNREADABLE_LISTED.saturating_sub(warnings.len());
        warnings.extend(writing.warnings.drain(..).take(room));
        checked.append(std::mem::take(&mut writing.checked));
        std::mem::swap(&mut reading, &mut writing);
        i = j;
    }
    Ok((stats, checked))
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

/// Units of one request that could not be read, with the error.
type Failures = Vec<(u64, std::io::Error)>;

/// Reads every request of the batch in parallel into the batch buffer, verifying the
/// `pending` checksums of each request read whole.
fn read_batch(view: &dyn BlockView, unit: u32, batch: &mut Batch, pending: &PendingChecks) {
    let u = unit as usize;
    let total: usize = batch.requests.iter().map(|r| r.len as usize * u).sum();
    batch.buf.resize(total, 0);
    let mut slices = Vec::with_capacity(batch.requests.len());
    let mut rest = batch.buf.as_mut_slice();
    for r in &batch.requests {
        let (head, tail) = rest.split_at_mut(r.len as usize * u);
        slices.push(head);
        rest = tail;
    }
    let read: Vec<(Failures, Option<PendingTally>)> = batch
        .requests
        .par_iter()
        .zip(slices.into_par_iter())
        .map(|(r, buf)| {
            let failed = read_request(view, unit, *r, buf);
            let checked = (failed.is_empty() && !pending.is_empty())
                .then(|| pending.verify(BlockNr(r.start), buf));
            (failed, checked)
        })
        .collect();
    let mut failures = Vec::new();
    for (failed, checked) in read {
        failures.extend(failed);
        if let Some(c) = checked {
            batch.checked.append(c);
        }
    }
    batch.unreadable = failures.iter().map(|f| f.0).collect();
    batch.warnings = failures
        .into_iter()
        .map(|(b, e)| Warning {
            inode: None,
            block: Some(BlockNr(b)),
            offset: None,
            reason: format!(
                "unreadable source block (byte {}): {e}; left out of the image",
                b * u64::from(unit)
            ),
        })
        .collect();
}

/// Reads one request into `buf`; on failure retries unit by unit and returns the units that
/// still fail.
fn read_request(
    view: &dyn BlockView,
    unit: u32,
    r: Request,
    buf: &mut [u8],
) -> Vec<(u64, std::io::Error)> {
    if view.read_blocks(unit, r.start, buf).is_ok() {
        return Vec::new();
    }
    let u = unit as usize;
    let mut failed = Vec::new();
    for (k, one) in buf.chunks_mut(u).enumerate() {
        let b = r.start + k as u64;
        if let Err(e) = view.read_blocks(unit, b, one) {
            failed.push((b, e));
        }
    }
    failed
}

/// Hands the batch to the sink in order, leaving out unreadable units; returns bytes written.
fn write_batch(
    sink: &mut dyn Sink,
    batch: &mut Batch,
    unit: u64,
    progress: &Progress,
) -> Result<u64> {
    let mut pos = 0usize;
    let mut bytes = 0;
    for r in &batch.requests {
        let len = (r.len * unit) as usize;
        let data = &batch.buf[pos..pos + len];
        pos += len;
        let mut s = r.start;
        for bad in batch
            .unreadable
            .iter()
            .copied()
            .filter(|b| (r.start..r.start + r.len).contains(b))
        {
            if bad > s {
                sink.write(
                    s * unit,
                    &data[((s - r.start) * unit) as usize..((bad - r.start) * unit) as usize],
                )?;
            }
            s = bad + 1;
        }
        let end = r.start + r.len;
        if s < end {
            sink.write(s * unit, &data[((s - r.start) * unit) as usize..])?;
        }
        bytes += len as u64;
        progress.inc(len as u64);
    }
    batch.requests.clear();
    Ok(bytes)
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

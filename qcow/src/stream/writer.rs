//! [`StreamWriter`]: writes a [`StreamLayout`] strictly in order to any [`Write`]: the tables
//! first (all at once, from the layout), then the data clusters as the caller hands them over,
//! in [`DataRef`](super::DataRef) order. Nothing is ever sought or rewritten, so the output may
//! be a pipe. Memory: the layout's tables until they are written, then only the payload list
//! and a small buffer of zeros.

use std::io::Write;

use super::layout::StreamLayout;
use crate::bytes::encode_be;
use crate::error::Error;

/// What [`StreamWriter::finish`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamSummary {
    /// Bytes written: the image's size.
    pub file_size: u64,
    /// Data clusters written.
    pub data_clusters: u64,
    /// L2 tables written.
    pub l2_tables: u64,
    /// L1 tables written: the active layer plus one per snapshot.
    pub states: u32,
    /// Host byte offset of the first data cluster.
    pub data_start: u64,
}

/// Writes a one-pass image (see the module comment). Errors of the output are
/// [`Error::Io`] with the stream offset of the failed write.
#[derive(Debug)]
pub struct StreamWriter<W: Write> {
    out: W,
    /// Bytes written so far.
    pos: u64,
    /// The next data cluster expected.
    next: u64,
    data_count: u64,
    cluster_bits: u32,
    /// Compressed payloads (data ref, length), in data ref order.
    payloads: Vec<(u64, u32)>,
    next_payload: usize,
    summary: StreamSummary,
    /// Where the image's clusters end and its checksum table, if any, starts (bytes).
    image_end: u64,
    /// With a cluster checksum table: the CRC-32C of each host cluster written so far.
    sums: Option<Vec<u32>>,
    /// The CRC-32C of the host cluster being written, so far.
    crc: u32,
}

/// Bytes of the cluster checksum table after an image of `image_end` bytes (its entries and
/// their CRC-32C, in whole clusters), 0 without one.
fn table_bytes(checksums: bool, image_end: u64, cluster_bits: u32) -> u64 {
    if !checksums {
        return 0;
    }
    let c = 1u64 << cluster_bits;
    ((image_end >> cluster_bits) * 4 + 4).div_ceil(c) * c
}

/// Zeros written at once for padding, in bytes.
const ZEROS: usize = 64 << 10;

impl<W: Write> StreamWriter<W> {
    /// Writes cluster 0, the refcount table and blocks, the L1 tables, the snapshot table and
    /// the L2 tables of `layout` to `out`; the data clusters follow through
    /// [`StreamWriter::write_data`].
    ///
    /// Errors: [`Error::Io`]; [`Error::Limit`] or [`Error::InvalidArgument`] for an entry that
    /// cannot be encoded (a payload past what a descriptor addresses).
    pub fn start(layout: StreamLayout, out: W) -> Result<StreamWriter<W>, Error> {
        let p = &layout.plan;
        let c = p.cluster_size() as usize;
        let image_end = layout.file_size;
        let table = table_bytes(p.cluster_checksums, image_end, p.cluster_bits);
        let mut w = StreamWriter {
            image_end,
            sums: p.cluster_checksums.then(Vec::new),
            crc: 0,
            out,
            pos: 0,
            next: 0,
            data_count: p.data_count,
            cluster_bits: p.cluster_bits,
            payloads: Vec::new(),
            next_payload: 0,
            summary: StreamSummary {
                file_size: image_end + table,
                data_clusters: p.data_count,
                l2_tables: layout.l2_order.len() as u64,
                states: layout.l1_states.len() as u32,
                data_start: layout.data_start,
            },
        };
        w.put_padded(&layout.cluster0, c)?;
        let table: Vec<u64> = (0..layout.refblocks)
            .map(|k| (1 + layout.reftable_clusters + k) << p.cluster_bits)
            .collect();
        let mut bytes = Vec::with_capacity(c);
        encode_be(&table, &mut bytes);
        w.put_padded(&bytes, layout.reftable_clusters as usize * c)?;
        for block in layout.refcounts.chunks(c / 2) {
            bytes.clear();
            encode_be(block, &mut bytes);
            w.put_padded(&bytes, c)?;
        }
        for &s in &layout.l1_states {
            w.put(&layout.l1_bytes(s))?;
        }
        let snap = layout.snapshot_table.len().next_multiple_of(c);
        w.put_padded(&layout.snapshot_table, snap)?;
        for &t in &layout.l2_order {
            let entries: Vec<u64> = layout.plan.tables[t]
                .entries
                .iter()
                .map(|&e| layout.l2_entry(e))
                .collect::<Result<_, _>>()?;
            bytes.clear();
            encode_be(&entries, &mut bytes);
            w.put(&bytes)?;
        }
        debug_assert_eq!(w.pos, layout.data_start);
        w.payloads = layout.plan.payloads;
        Ok(w)
    }

    /// The number of the data cluster [`StreamWriter::write_data`] expects next, or `None`
    /// once all were written.
    pub fn next_data(&self) -> Option<u64> {
        (self.next < self.data_count).then_some(self.next)
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.pos
    }

    /// The image's total size in bytes.
    pub fn file_size(&self) -> u64 {
        self.summary.file_size
    }

    /// Writes the next data cluster: `data` is a whole cluster for a plain one, the payload for
    /// a compressed one ([`DataKind`](super::DataKind) as planned).
    ///
    /// Errors: [`Error::InvalidArgument`] when every data cluster was written or `data` has not
    /// the planned length; [`Error::Io`].
    pub fn write_data(&mut self, data: &[u8]) -> Result<(), Error> {
        let c = 1u64 << self.cluster_bits;
        let Some(r) = self.next_data() else {
            return Err(Error::InvalidArgument(
                "every planned data cluster was already written".into(),
            ));
        };
        let payload = self
            .payloads
            .get(self.next_payload)
            .filter(|p| p.0 == r)
            .map(|p| u64::from(p.1));
        let want = payload.unwrap_or(c);
        if data.len() as u64 != want {
            return Err(Error::InvalidArgument(format!(
                "data cluster {r}: {} bytes given, {want} planned",
                data.len()
            )));
        }
        if payload.is_some() {
            self.next_payload += 1;
        } else {
            self.pad_to(self.pos.next_multiple_of(c))?;
        }
        self.put(data)?;
        self.next += 1;
        Ok(())
    }

    /// Pads the image to its size and flushes the output; returns it with the summary.
    ///
    /// Errors: [`Error::InvalidArgument`] when data clusters are missing; [`Error::Io`].
    pub fn finish(mut self) -> Result<(W, StreamSummary), Error> {
        if self.next < self.data_count {
            return Err(Error::InvalidArgument(format!(
                "{} of {} data clusters were written",
                self.next, self.data_count
            )));
        }
        self.pad_to(self.image_end)?;
        if let Some(sums) = self.sums.take() {
            self.put_table(sums)?;
        }
        let pos = self.pos;
        self.out
            .flush()
            .map_err(Error::io("flushing the stream", pos))?;
        Ok((self.out, self.summary))
    }

    /// Writes the cluster checksum table after the image: the entries (cluster 0's is 0, the
    /// header is not covered), their CRC-32C, zeros to a whole cluster.
    fn put_table(&mut self, mut sums: Vec<u32>) -> Result<(), Error> {
        if let Some(first) = sums.first_mut() {
            *first = 0;
        }
        let mut bytes = Vec::with_capacity(sums.len() * 4 + 4);
        encode_be(&sums, &mut bytes);
        let crc = crate::format::checksums::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_be_bytes());
        let len = self.summary.file_size - self.image_end;
        self.put_padded(&bytes, len as usize)
    }

    /// Adds `bytes`, about to be written at `self.pos`, to the checksums of their host clusters.
    fn sum(&mut self, mut bytes: &[u8]) {
        let Some(sums) = self.sums.as_mut() else {
            return;
        };
        let c = 1u64 << self.cluster_bits;
        let mut pos = self.pos;
        while !bytes.is_empty() {
            let room = (c - pos % c) as usize;
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.crc = crc32c::crc32c_append(self.crc, now);
            pos += now.len() as u64;
            if pos.is_multiple_of(c) {
                sums.push(self.crc);
                self.crc = 0;
            }
            bytes = rest;
        }
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.sum(bytes);
        self.out
            .write_all(bytes)
            .map_err(Error::io("writing the stream", self.pos))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Writes `bytes` followed by zeros up to `len` bytes in all.
    fn put_padded(&mut self, bytes: &[u8], len: usize) -> Result<(), Error> {
        self.put(bytes)?;
        let end = self.pos + len.saturating_sub(bytes.len()) as u64;
        self.pad_to(end)
    }

    fn pad_to(&mut self, end: u64) -> Result<(), Error> {
        let zeros = [0u8; ZEROS];
        while self.pos < end {
            let n = (end - self.pos).min(ZEROS as u64) as usize;
            self.put(&zeros[..n])?;
        }
        Ok(())
    }
}

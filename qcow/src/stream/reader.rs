//! [`StreamImage`]: an image read in one pass from a stream (a pipe): its tables first, held in
//! memory and served by a [`Reader`] over them, then its data clusters, read forward in host
//! order as the caller asks for them. [`StreamImage::open`] hands the bytes back
//! ([`StreamOpen::Spool`]) when the image is not laid out for one pass, so that the caller
//! can spool it to a file and read it at random.

use std::io::Read;

use super::prefix::{Prefix, StreamOptions};
use crate::error::Error;
use crate::format::table::compressed_len;
use crate::reader::{ClusterMapping, Layer, LayerReader, Reader};

/// The outcome of [`StreamImage::open`].
#[derive(Debug)]
pub enum StreamOpen<R: Read> {
    /// Tables read: the data can be read in one pass.
    OnePass(Box<StreamImage<R>>),
    /// Not laid out for one pass: `consumed` are the bytes read so far (the image's first
    /// bytes), `input` the rest of the stream, `reason` why.
    Spool {
        /// The bytes read from the start of the stream.
        consumed: Vec<u8>,
        /// The rest of the stream.
        input: R,
        /// Why the image cannot be read in one pass.
        reason: String,
    },
}

/// An image on a stream, its tables read (see the module comment).
#[derive(Debug)]
pub struct StreamImage<R: Read> {
    reader: Reader,
    data: StreamData<R>,
}

/// The data part of a [`StreamImage`]: the rest of the stream, read forward only.
#[derive(Debug)]
pub struct StreamData<R: Read> {
    input: R,
    /// Bytes of the stream consumed so far (the tables included).
    pos: u64,
    /// Bytes held in memory (the tables), served by the reader.
    prefix_len: u64,
    /// End of the last data cluster of any layer: the stream is at least this long.
    data_end: u64,
    cluster: u64,
    scratch: Vec<u8>,
}

impl<R: Read> StreamImage<R> {
    /// Reads the header and every table from `input` and checks that the data can follow in
    /// one pass: no data cluster straddles the end of the tables held in memory.
    ///
    /// Errors: those of [`Reader::open_with_backing`] for the tables; [`Error::Corrupt`] for a
    /// stream that ends inside its tables (the message says after how many bytes);
    /// [`Error::Io`].
    pub fn open(input: R, opts: StreamOptions) -> Result<StreamOpen<R>, Error> {
        let mut prefix = Prefix::new(input, opts);
        if let Err(reason) = prefix.read_tables()? {
            return Ok(spool(prefix, reason));
        }
        let reader = Reader::from_bytes(std::mem::take(&mut prefix.buf))?;
        let prefix_len = reader.file_len();
        let mut data_end = prefix_len;
        let mut straddles = None;
        for layer in layers(&reader) {
            layer?.for_each_allocated(|g, m| {
                if let Some((start, end)) = extent(m, reader.cluster_size()) {
                    if start < prefix_len && end > prefix_len && straddles.is_none() {
                        straddles = Some(g);
                    }
                    data_end = data_end.max(end);
                }
                Ok(())
            })?;
        }
        // A cluster checksum table follows the image (docs/verify.md): the stream ends after it.
        data_end = data_end.max(checksum_table_end(&reader));
        if let Some(g) = straddles {
            let reason = format!("guest cluster {g}'s data straddles the end of its tables");
            return Ok(StreamOpen::Spool {
                consumed: reader.into_bytes(),
                input: prefix.input,
                reason,
            });
        }
        let cluster = reader.cluster_size();
        Ok(StreamOpen::OnePass(Box::new(StreamImage {
            reader,
            data: StreamData {
                input: prefix.input,
                pos: prefix_len,
                prefix_len,
                data_end,
                cluster,
                scratch: Vec::new(),
            },
        })))
    }

    /// The reader over the tables: header, extensions, snapshots, layers and mappings.
    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// The reader and the data, to read a layer's clusters (`data.read_cluster(&layer, ..)`).
    pub fn parts(&mut self) -> (&Reader, &mut StreamData<R>) {
        (&self.reader, &mut self.data)
    }

    /// True if `layer`'s data clusters lie in increasing host order as its guest clusters
    /// increase, so that it can be read in guest order in one pass.
    ///
    /// Errors: those of the layer's tables.
    pub fn in_guest_order(&self, layer: &LayerReader<'_>) -> Result<bool, Error> {
        let (mut last, mut ordered) = (0u64, true);
        let c = self.reader.cluster_size();
        layer.for_each_allocated(|_, m| {
            if let Some((start, end)) = extent(m, c) {
                if start >= self.data.prefix_len {
                    ordered &= start >= last;
                    last = end;
                }
            }
            Ok(())
        })?;
        Ok(ordered)
    }

    /// The reader over the tables and the data, apart (the reader's layers borrow only it).
    pub fn into_parts(self) -> (Reader, StreamData<R>) {
        (self.reader, self.data)
    }

    /// The stream's first `n` bytes (at most the tables held in memory).
    pub fn head(&self, n: usize) -> &[u8] {
        let b = self.reader.bytes();
        &b[..n.min(b.len())]
    }

    /// Gives up the one-pass read before any data was read: the stream's first bytes and the
    /// rest of it, for spooling.
    pub fn into_spool(self) -> (Vec<u8>, R) {
        (self.reader.into_bytes(), self.data.input)
    }
}

impl<R: Read> StreamData<R> {
    /// Reads guest cluster `guest_cluster` of `layer` (a layer of this image's reader) into
    /// `buf` (one cluster): data held with the tables from memory, the rest from the stream,
    /// forward only; compressed clusters are inflated, zero and unallocated ones zero-filled.
    ///
    /// Errors: [`Error::InvalidArgument`] for data the stream has already passed (clusters
    /// must be asked for in host order) or a wrong buffer length; [`Error::Corrupt`] for a
    /// stream that ends first (the message says after how many bytes) or bad compressed data;
    /// [`Error::Io`].
    pub fn read_cluster(
        &mut self,
        layer: &LayerReader<'_>,
        guest_cluster: u64,
        buf: &mut [u8],
    ) -> Result<(), Error> {
        if buf.len() as u64 != self.cluster {
            return Err(Error::InvalidArgument(format!(
                "buffer of {} bytes, cluster size {}",
                buf.len(),
                self.cluster
            )));
        }
        let m = layer.mapping(guest_cluster)?;
        let Some((start, end)) = extent(m, self.cluster) else {
            buf.fill(0);
            return Ok(());
        };
        if end <= self.prefix_len {
            return layer.read_cluster(guest_cluster, buf);
        }
        match m {
            ClusterMapping::Compressed { host_offset, .. } => {
                let mut input = std::mem::take(&mut self.scratch);
                input.resize((end - start) as usize, 0);
                let got = self.read_forward(start, &mut input, true)?;
                let r = layer.inflate(host_offset, &input[..got], buf);
                self.scratch = input;
                r
            }
            _ => self.read_forward(start, buf, false).map(|_| ()),
        }
    }

    /// Bytes of the stream consumed so far.
    pub fn bytes_read(&self) -> u64 {
        self.pos
    }

    /// The least number of bytes the stream holds: the end of its last data cluster.
    pub fn data_end(&self) -> u64 {
        self.data_end
    }

    /// Reads the rest of the stream (after the last data cluster); returns the total number of
    /// bytes the stream held.
    ///
    /// Errors: [`Error::Corrupt`] if it ends before [`StreamData::data_end`]; [`Error::Io`].
    pub fn drain(&mut self) -> Result<u64, Error> {
        let n = std::io::copy(&mut self.input, &mut std::io::sink())
            .map_err(Error::io("reading the stream", self.pos))?;
        self.pos += n;
        if self.pos < self.data_end {
            return Err(self.ended(self.pos));
        }
        Ok(self.pos)
    }

    /// Reads `buf.len()` bytes at host byte `offset` (at or after the bytes consumed), skipping
    /// what lies before; returns the bytes read (`partial`: the stream may end first, after at
    /// least one byte, as the sector-rounded end of the last compressed payload may).
    fn read_forward(&mut self, offset: u64, buf: &mut [u8], partial: bool) -> Result<usize, Error> {
        if offset < self.pos {
            return Err(Error::InvalidArgument(format!(
                "host byte {offset} was already passed (the stream is at byte {}): data must be read in host order",
                self.pos
            )));
        }
        let skip = offset - self.pos;
        let skipped = std::io::copy(&mut (&mut self.input).take(skip), &mut std::io::sink())
            .map_err(Error::io("reading the stream", self.pos))?;
        self.pos += skipped;
        if skipped < skip {
            return Err(self.ended(offset));
        }
        let mut at = 0usize;
        while at < buf.len() {
            match self.input.read(&mut buf[at..]) {
                Ok(0) if partial && at > 0 => break,
                Ok(0) => return Err(self.ended(offset)),
                Ok(n) => {
                    at += n;
                    self.pos += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("reading the stream", self.pos)(e)),
            }
        }
        Ok(at)
    }

    fn ended(&self, at: u64) -> Error {
        Error::corrupt(
            format!(
                "the stream ended after {} bytes, before its data ends (byte {})",
                self.pos, self.data_end
            ),
            at,
        )
    }
}

/// Every layer of `reader`: the active one, then each snapshot's.
fn layers(reader: &Reader) -> impl Iterator<Item = Result<LayerReader<'_>, Error>> {
    std::iter::once(Layer::Active)
        .chain((0..reader.snapshots().len()).map(Layer::Snapshot))
        .map(|l| reader.layer(l))
}

/// The end of the cluster checksum table a current extension names (bytes, its clusters
/// whole: the writers pad it with zeros), 0 without one or
/// for an extension that does not parse (the table is then not the reader's concern).
fn checksum_table_end(reader: &Reader) -> u64 {
    let h = reader.header();
    if h.autoclear_features & crate::format::checksums::AUTOCLEAR_CLUSTER_CHECKSUMS == 0 {
        return 0;
    }
    reader
        .header_extension(crate::format::checksums::EXT_CLUSTER_CHECKSUMS)
        .and_then(|d| {
            crate::format::checksums::ChecksumExtension::parse(d, h.cluster_bits, u64::MAX).ok()
        })
        .and_then(|e| {
            let bytes = e.table_clusters(h.cluster_bits) << h.cluster_bits;
            e.table_offset.checked_add(bytes)
        })
        .unwrap_or(0)
}

/// The host bytes `[start, end)` a mapping reads, if any.
fn extent(m: ClusterMapping, cluster: u64) -> Option<(u64, u64)> {
    match m {
        ClusterMapping::Normal { host_offset } => Some((host_offset, host_offset + cluster)),
        ClusterMapping::Compressed {
            host_offset,
            additional_sectors,
        } => Some((
            host_offset,
            host_offset + compressed_len(host_offset, additional_sectors),
        )),
        ClusterMapping::Zero | ClusterMapping::Unallocated => None,
    }
}

fn spool<R: Read>(prefix: Prefix<R>, reason: String) -> StreamOpen<R> {
    StreamOpen::Spool {
        consumed: prefix.buf,
        input: prefix.input,
        reason,
    }
}

//! Compressed clusters (spec "Compressed Clusters Descriptor", header field
//! `compression_type`): the codecs that turn one guest cluster into its payload and back, and
//! the packing of payloads into host clusters. Pure functions and small types, no file I/O:
//! the writer, the reader and any other writer (a streaming one) use them alike.
//!
//! What QEMU does (block/qcow2-threads.c, block/qcow2.c, block/qcow2-refcount.c; facts only),
//! and this module does too:
//! - deflate ("zlib" in QEMU, `compression_type` 0): a raw deflate stream (no zlib header)
//!   with a 4 KiB window (window bits −12), level 6 (`Z_DEFAULT_COMPRESSION`); decoding
//!   inflates until exactly one cluster came out, the bytes after the stream ignored (the
//!   descriptor gives the length only to the sector);
//! - zstd (`compression_type` 1, incompatible bit 3): one zstd frame per cluster, level 3
//!   (zstd's default, which QEMU leaves in place); decoding runs frame after frame until one
//!   full cluster came out, and the last frame must end there;
//! - a cluster whose payload does not fit in `cluster_size − 1` bytes is stored plain
//!   (QEMU compresses into a buffer of `cluster_size − 1` bytes and writes a normal cluster
//!   when it is too small);
//! - payloads are packed back to back from a byte cursor; one that does not fit in the rest of
//!   the current host cluster continues into the next host cluster if that one is the next
//!   allocated, else starts a new one ([`PayloadPacker`], QEMU's `qcow2_alloc_bytes`); every
//!   host cluster a payload touches gains one reference per descriptor.
//!
//! Contexts (a deflate state, a zstd context) are kept per thread and reused, so compressing
//! on many threads allocates once per thread, not once per cluster.
//!
//! Files: `deflate.rs`, `zstd.rs` (the two codecs), `packer.rs` ([`PayloadPacker`]).

mod deflate;
mod packer;
mod zstd;

use std::ops::RangeInclusive;

pub use packer::{PayloadPacker, Placement, MAX_PAYLOADS_PER_CLUSTER};

use crate::error::Error;
use crate::format::table::{compressed_sectors, encode_compressed};
use crate::geometry::{MAX_CLUSTER_BITS, MIN_CLUSTER_BITS};

/// The compression method of an image's compressed clusters (spec "Header",
/// `compression_type`, byte 104). All compressed clusters of an image use the same one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CompressionType {
    /// `compression_type` 0: raw deflate (RFC 1951), which QEMU calls "zlib".
    #[default]
    Deflate,
    /// `compression_type` 1: zstd frames; needs a v3 header of at least 112 bytes and
    /// incompatible feature bit 3.
    Zstd,
}

impl CompressionType {
    /// The type of header value `value` (0 deflate, 1 zstd), `None` for any other.
    pub fn from_header(value: u8) -> Option<CompressionType> {
        match value {
            0 => Some(CompressionType::Deflate),
            1 => Some(CompressionType::Zstd),
            _ => None,
        }
    }

    /// The header's `compression_type` value.
    pub fn header_value(self) -> u8 {
        match self {
            CompressionType::Deflate => 0,
            CompressionType::Zstd => 1,
        }
    }

    /// QEMU's name (`-o compression_type=zlib|zstd`).
    pub fn name(self) -> &'static str {
        match self {
            CompressionType::Deflate => "zlib",
            CompressionType::Zstd => "zstd",
        }
    }

    /// The level QEMU compresses with: 6 for deflate (`Z_DEFAULT_COMPRESSION`), 3 for zstd
    /// (`ZSTD_CLEVEL_DEFAULT`).
    pub fn default_level(self) -> u32 {
        match self {
            CompressionType::Deflate => 6,
            CompressionType::Zstd => 3,
        }
    }

    /// The levels [`Compression::new`] accepts: 1..=9 for deflate, 1..=19 for zstd (the
    /// levels above 19 need far more memory per thread and gain little on one cluster).
    pub fn levels(self) -> RangeInclusive<u32> {
        match self {
            CompressionType::Deflate => 1..=9,
            CompressionType::Zstd => 1..=19,
        }
    }
}

/// How guest clusters are compressed: a [`CompressionType`] and a level, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Compression {
    kind: CompressionType,
    level: u32,
}

impl Compression {
    /// `kind` at `level` (`None`: QEMU's level, [`CompressionType::default_level`]).
    ///
    /// Errors: [`Error::InvalidArgument`] for a level outside [`CompressionType::levels`].
    pub fn new(kind: CompressionType, level: Option<u32>) -> Result<Compression, Error> {
        let level = level.unwrap_or(kind.default_level());
        if !kind.levels().contains(&level) {
            let r = kind.levels();
            return Err(Error::InvalidArgument(format!(
                "{} compression level {level}: the levels are {} to {}",
                kind.name(),
                r.start(),
                r.end()
            )));
        }
        Ok(Compression { kind, level })
    }

    /// The compression type.
    pub fn kind(&self) -> CompressionType {
        self.kind
    }

    /// The level.
    pub fn level(&self) -> u32 {
        self.level
    }

    /// Compresses one guest cluster (`cluster`: exactly one cluster of 512 B to 2 MiB, a
    /// partial last cluster of the disk zero-padded): its payload when that fits in
    /// `cluster.len() − 1` bytes, else [`CompressedCluster::Plain`] (QEMU's rule). The payload
    /// decodes with [`decompress_cluster`] to exactly `cluster`. Needs no `&mut` and keeps
    /// its context per thread, so clusters may be compressed on many threads at once. The
    /// caller leaves all-zero clusters out (they are zero clusters, never compressed).
    ///
    /// Errors: [`Error::InvalidArgument`] for a length that is no cluster size.
    pub fn compress_cluster(&self, cluster: &[u8]) -> Result<CompressedCluster, Error> {
        check_cluster_len(cluster.len())?;
        let limit = cluster.len() - 1;
        let payload = match self.kind {
            CompressionType::Deflate => deflate::compress(cluster, self.level, limit),
            CompressionType::Zstd => zstd::compress(cluster, self.level, limit),
        }
        .map_err(Error::InvalidArgument)?;
        Ok(match payload {
            Some(p) => CompressedCluster::Payload(p),
            None => CompressedCluster::Plain,
        })
    }
}

/// What one guest cluster becomes ([`Compression::compress_cluster`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompressedCluster {
    /// The compressed payload, 1 to `cluster_size − 1` bytes, for a compressed descriptor.
    Payload(Vec<u8>),
    /// The payload would not fit in `cluster_size − 1` bytes: store the cluster as a normal
    /// (uncompressed) cluster.
    Plain,
}

/// Decodes the payload of one compressed cluster (`input`: the bytes from the descriptor's
/// host offset to the end of its last sector, or less at the end of the file) into `out`
/// (exactly one cluster), as QEMU decodes `kind`: exactly one cluster must come out; bytes
/// after the payload (the next payload's) are ignored. `host_offset` only names the payload
/// in the error.
///
/// Errors: [`Error::Corrupt`] when the payload does not decode to exactly one cluster;
/// [`Error::InvalidArgument`] for an `out` that is no cluster size.
pub fn decompress_cluster(
    kind: CompressionType,
    input: &[u8],
    out: &mut [u8],
    host_offset: u64,
) -> Result<(), Error> {
    check_cluster_len(out.len())?;
    match kind {
        CompressionType::Deflate => deflate::decompress(input, out),
        CompressionType::Zstd => zstd::decompress(input, out),
    }
    .map_err(|what| Error::corrupt(format!("{} {what}", kind.name()), host_offset))
}

/// The L2 entry of a compressed cluster whose `len`-byte payload (1 to C − 1 bytes) starts at
/// host byte `host_offset` (spec "Compressed Clusters Descriptor": bit 62, the offset in bits
/// 0..x−1 and the number of 512-byte sectors after the one holding the first byte in bits
/// x..61, x = 62 − (cluster_bits − 8)). COPIED is never set on it.
///
/// Errors: [`Error::InvalidArgument`] for offset 0, a `len` of 0 or over C − 1, or
/// `cluster_bits` outside 9..=21; [`Error::Limit`] for an offset the descriptor cannot hold at
/// this cluster size.
pub fn compressed_descriptor(host_offset: u64, len: u64, cluster_bits: u32) -> Result<u64, Error> {
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        return Err(Error::InvalidArgument(format!(
            "cluster_bits {cluster_bits} outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"
        )));
    }
    if len == 0 || len >= 1u64 << cluster_bits {
        return Err(Error::InvalidArgument(format!(
            "a compressed payload of {len} bytes (1 to cluster size − 1)"
        )));
    }
    let end = host_offset.checked_add(len).ok_or_else(|| {
        Error::Limit(format!(
            "payload of {len} bytes at {host_offset:#x} overflows"
        ))
    })?;
    encode_compressed(
        host_offset,
        compressed_sectors(host_offset, end - host_offset),
        cluster_bits,
    )
}

/// Refuses a buffer that is no cluster size (a power of two from 512 B to 2 MiB).
fn check_cluster_len(len: usize) -> Result<(), Error> {
    let ok = len.is_power_of_two()
        && (1usize << MIN_CLUSTER_BITS..=1usize << MAX_CLUSTER_BITS).contains(&len);
    if !ok {
        return Err(Error::InvalidArgument(format!(
            "a buffer of {len} bytes is no cluster (a power of two from 512 B to 2 MiB)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;

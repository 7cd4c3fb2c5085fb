//! The on-disk codecs (spec sections "Header", "Header extensions", "Cluster mapping",
//! "Snapshots", "Cluster refcounts"): raw big-endian records with their layout asserted at
//! compile time, and the validated structs made from them. No I/O: the reader and the writer
//! move the bytes.

pub(crate) mod checksums;
pub(crate) mod extension;
pub(crate) mod header;
pub(crate) mod refcount;
pub(crate) mod snapshot;
pub(crate) mod table;

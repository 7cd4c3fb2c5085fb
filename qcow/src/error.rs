//! The crate's single error type.
//!
//! Design: one flat enum, classified by what the caller can do about it: I/O failures (with the
//! operation and byte offset), corrupt on-disk structures (with what was wrong and where), valid
//! images using features this crate does not implement, configured limits exceeded, and caller
//! mistakes. Every message names the offset or cluster involved, so a failure on a multi-TiB
//! image can be located with `xxd -s`.

use std::io;

/// Errors returned by the reader and the writer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system I/O call failed. `op` says what was being done, `offset` is the host
    /// file byte offset involved (0 when not applicable).
    #[error("I/O error while {op} at host byte offset {offset:#x}: {source}")]
    Io {
        /// What was being done ("reading L2 table", "writing data clusters", ...).
        op: &'static str,
        /// Host file byte offset of the failed operation.
        offset: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// An on-disk structure violates the QCOW2 spec (or points outside the file).
    #[error("corrupt QCOW2 image: {what} (at byte offset {offset:#x})")]
    Corrupt {
        /// Description of the violation, naming the structure and the offending value.
        what: String,
        /// Host file byte offset of the offending structure or field.
        offset: u64,
    },

    /// A valid image that uses a feature this crate does not implement (encryption, backing
    /// file, external data file, extended L2 entries, unknown incompatible feature bits, ...).
    #[error("unsupported QCOW2 feature: {0}")]
    Unsupported(String),

    /// A size or count exceeds a limit of this crate or of QEMU (L1 table size, snapshot count,
    /// refcount overflow, ...). The message gives the value and the limit.
    #[error("QCOW2 limit exceeded: {0}")]
    Limit(String),

    /// The caller passed an invalid argument (out-of-range guest cluster, wrong buffer length,
    /// unknown state, writes out of order, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// Builds an [`Error::Corrupt`].
    pub(crate) fn corrupt(what: impl Into<String>, offset: u64) -> Error {
        Error::Corrupt {
            what: what.into(),
            offset,
        }
    }

    /// Returns a closure wrapping an [`io::Error`] into [`Error::Io`] (for `map_err`).
    pub(crate) fn io(op: &'static str, offset: u64) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { op, offset, source }
    }
}

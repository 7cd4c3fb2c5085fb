//! Errors of the ext crate.
//!
//! Fatal problems (the filesystem cannot be opened at all) are an [`Error`]. Corruption found
//! inside the filesystem is a [`Corrupt`] value that names the inode, block and byte offset
//! where it was found; the walker turns those into warnings and skips the damaged part.

use crate::types::{BlockNr, InodeNr};
use std::fmt;
use std::io;

/// A fatal error opening or reading a filesystem, or a value refused by a
/// [`SuperblockBytes`](crate::SuperblockBytes) setter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the source failed.
    #[error("read error at byte {offset}: {source}")]
    Io {
        /// Byte offset of the failed read.
        offset: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The filesystem is corrupt in a way that prevents opening it.
    #[error("{0}")]
    Corrupt(Corrupt),
    /// The filesystem uses a feature this reader cannot handle safely.
    #[error("unsupported filesystem: {0}")]
    Unsupported(String),
    /// No ext2/3/4 superblock where one was expected.
    #[error("{0}")]
    NotExt(String),
    /// The primary superblock is unusable; `suggestion` is a backup superblock that parses,
    /// as (its block number, the block size in bytes to read it with) for `-b`/`-B`.
    #[error("primary superblock is unusable: {reason}{}", match suggestion {
        Some((b, bs)) => format!("; a backup superblock was found: try -b {b} -B {bs}"),
        None => "; no backup superblock was found at the usual places (try -b BLOCK -B SIZE)".to_string(),
    })]
    BadPrimary {
        /// Why the primary superblock was refused.
        reason: String,
        /// A backup superblock that parses: (block number, block size in bytes).
        suggestion: Option<(BlockNr, u32)>,
    },
    /// A value does not fit the superblock field it was given for (nothing was changed).
    #[error("{field}: {reason}")]
    BadValue {
        /// The field, by its kernel name (`s_last_mounted`).
        field: &'static str,
        /// Why the value does not fit.
        reason: String,
    },
}

impl Error {
    /// A superblock field is impossible or contradicts another: [`Error::Corrupt`] with the
    /// message `bad superblock: {msg}`.
    pub(crate) fn bad_superblock(msg: &str) -> Error {
        Error::Corrupt(Corrupt::new(CorruptKind::Superblock(msg.to_string())))
    }
}

/// A corrupt on-disk structure, located as precisely as possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupt {
    /// The inode the structure belongs to, if any.
    pub inode: Option<InodeNr>,
    /// The block holding the structure, if known.
    pub block: Option<BlockNr>,
    /// Byte offset within that block (or within the inode for in-inode structures).
    pub offset: Option<u32>,
    kind: CorruptKind,
    note: Option<String>,
}

/// What exactly is wrong. Private so that new kinds can be added freely; the message is the
/// stable interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CorruptKind {
    Superblock(String),
    ExtentHeader(String),
    ExtentEntry(String),
    ExtentLoop,
    IndirectPointer {
        value: u64,
    },
    OutOfRange {
        value: u64,
        limit: u64,
    },
    Inode(String),
    /// A group's bitmap or inode table pointer outside the filesystem (message as is).
    GroupMetadata(String),
    /// Another block pointer (xattr block, MMP block, translator) outside the filesystem.
    Pointer(String),
    /// A block that could not be read (message as is).
    Unreadable(String),
    /// Groups that start past the end of the source and were not walked.
    PastSource(String),
}

impl CorruptKind {
    /// Short stable label of the kind, for counting warnings per kind.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            CorruptKind::Superblock(_) => "superblock",
            CorruptKind::ExtentHeader(_) => "extent header",
            CorruptKind::ExtentEntry(_) => "extent entry",
            CorruptKind::ExtentLoop => "extent loop",
            CorruptKind::IndirectPointer { .. } => "indirect block pointer",
            CorruptKind::OutOfRange { .. } => "block outside the filesystem",
            CorruptKind::Inode(_) => "inode",
            CorruptKind::GroupMetadata(_) => "group metadata outside the filesystem",
            CorruptKind::Pointer(_) => "block pointer outside the filesystem",
            CorruptKind::Unreadable(_) => "unreadable block",
            CorruptKind::PastSource(_) => "groups past the end of the source",
        }
    }
}

impl Corrupt {
    pub(crate) fn new(kind: CorruptKind) -> Corrupt {
        Corrupt {
            inode: None,
            block: None,
            offset: None,
            kind,
            note: None,
        }
    }

    pub(crate) fn with_note(mut self, note: String) -> Corrupt {
        self.note = Some(note);
        self
    }

    pub(crate) fn at_inode(mut self, ino: InodeNr) -> Corrupt {
        self.inode = Some(ino);
        self
    }

    pub(crate) fn at_block(mut self, block: u64, offset: u32) -> Corrupt {
        self.block = Some(BlockNr(block));
        self.offset = Some(offset);
        self
    }

    pub(crate) fn at_offset(mut self, offset: u32) -> Corrupt {
        self.offset = Some(offset);
        self
    }

    /// A short stable label of what kind of problem this is ("extent header", "inode",
    /// "unreadable block", ...): warnings are counted per label once there are many.
    pub fn kind_label(&self) -> &'static str {
        self.kind.label()
    }

    /// A one-line description of what is wrong, without the location.
    pub fn reason(&self) -> String {
        let base = self.kind_text();
        match &self.note {
            Some(n) => format!("{base} ({n})"),
            None => base,
        }
    }

    fn kind_text(&self) -> String {
        match &self.kind {
            CorruptKind::Superblock(s) => format!("bad superblock: {s}"),
            CorruptKind::ExtentHeader(s) => format!("bad extent header: {s}"),
            CorruptKind::ExtentEntry(s) => format!("bad extent entry: {s}"),
            CorruptKind::ExtentLoop => "extent tree block visited twice (loop)".to_string(),
            CorruptKind::IndirectPointer { value } => {
                format!("indirect block pointer {value} is outside the filesystem")
            }
            CorruptKind::OutOfRange { value, limit } => {
                format!("block {value} is outside the filesystem (blocks_count {limit})")
            }
            CorruptKind::Inode(s) => format!("bad inode: {s}"),
            CorruptKind::GroupMetadata(s)
            | CorruptKind::Pointer(s)
            | CorruptKind::Unreadable(s)
            | CorruptKind::PastSource(s) => s.clone(),
        }
    }
}

impl fmt::Display for Corrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(ino) = self.inode {
            write!(f, "inode {ino}")?;
            sep = ", ";
        }
        if let Some(b) = self.block {
            write!(f, "{sep}block {b}")?;
            sep = ", ";
        }
        if let Some(o) = self.offset {
            write!(f, "{sep}offset {o}")?;
            sep = ", ";
        }
        if !sep.is_empty() {
            write!(f, ": ")?;
        }
        write!(f, "{}", self.reason())
    }
}

impl From<Corrupt> for Error {
    fn from(c: Corrupt) -> Error {
        Error::Corrupt(c)
    }
}

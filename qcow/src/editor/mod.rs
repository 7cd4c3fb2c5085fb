//! [`Editor`]: changes an existing QCOW2 image in place, crash-safely: adds states (new L1
//! tables, written by a [`Writer`] that shares the image's clusters and tables), makes one of
//! them the active layer, and removes internal snapshots.
//!
//! Design (notes §2.1–§2.3): nothing the committed image uses is written before the commit.
//! The editor loads the committed refcounts (`RefcountChunks::over_image`); new clusters go
//! to clusters free in them (each handed out once) or past the end; refcount blocks are
//! copied on write, so the old refcount table and blocks stay valid until the header points
//! elsewhere. The commit is one 512-byte header write between two `fsync`s; a crash before
//! it leaves the old image with unreferenced clusters (refcount 0, which `qemu-img check`
//! accepts), which the next [`Editor::open`] truncates at the end or reuses inside.
//!
//! Files: `open.rs` (validation and loading), `census.rs` (every reference counted and
//! compared with the refcounts at open), `references.rs` (the net reference changes of L1
//! tables added and removed), `copied.rs` (COPIED in the new active layer), `refblocks.rs`
//! (copy-on-write refcount blocks and the new refcount table), `checksums.rs` (the cluster
//! checksum table kept current), `commit.rs` (the order of the writes).

mod census;
pub(crate) use census::check_refcounts;
pub(crate) use open::load_refcounts;
mod checksums;
mod commit;
mod copied;
mod open;
mod refblocks;
mod references;

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;

use crate::error::Error;
use crate::format::snapshot::SnapshotInfo;
use crate::io::WriteEvent;
use crate::reader::Reader;
use crate::types::StateId;
use crate::writer::Writer;

/// What [`Editor::commit`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitSummary {
    /// False when nothing changed: the header was not written.
    pub committed: bool,
    /// File size after the commit, in bytes.
    pub file_size: u64,
    /// Bytes physically written by the whole edit (data, tables, refcounts, header).
    pub bytes_written: u64,
    /// Entries of the new snapshot table.
    pub snapshots: u32,
    /// Snapshot entries removed.
    pub removed_snapshots: u32,
    /// Data clusters written by the writer.
    pub data_clusters: u64,
    /// L2 tables written by the writer.
    pub l2_tables: u64,
    /// Existing L2 tables copied so that COPIED is right in the active layer (notes §2.2).
    pub l2_tables_copied: u64,
    /// Distinct L2 tables read to change references (tables gaining or losing L1 references
    /// on balance: new tables, and those of replaced or removed layers not shared by new ones).
    pub l2_tables_read: u64,
    /// Refcount blocks written (copies of changed blocks, and new ones).
    pub refcount_blocks: u64,
    /// Clusters allocated from free clusters inside the image rather than past its end.
    pub reused_clusters: u64,
    /// Clusters whose refcount dropped to 0 (holes punched in them).
    pub freed_clusters: u64,
}

/// Changes an existing QCOW2 image in place (notes §2): adds guest states written with a
/// [`Writer`], makes one the active layer, adds and removes internal snapshots, all in one
/// crash-safe [`Editor::commit`].
///
/// Requirements: 16-bit refcounts (`refcount_order` 4), no backing file, no external data
/// file, no encryption, no extended L2 entries, no persistent bitmaps, no dirty or corrupt
/// bit (deflate and zstd compressed clusters are fine: new ones use the image's type), and refcounts that agree with the image (`qemu-img check` clean:
/// [`Editor::open`] counts every reference through every L1 and L2 table and compares).
pub struct Editor {
    reader: Reader,
    writer: Writer,
    /// The first 512 bytes of the file, patched and rewritten by the commit.
    sector: Vec<u8>,
    /// The committed refcount table: refcount block offsets (0 = no block).
    refblocks: Vec<u64>,
    /// The first snapshot whose L1 table maps through the same L2 tables as the active one.
    matching: Option<usize>,
    /// Snapshots loaded as writer states.
    loaded: HashMap<usize, StateId>,
    /// Snapshots to remove at commit.
    removed: BTreeSet<usize>,
    leftover_bytes: u64,
    /// The image's current cluster checksum table, kept current by the commit.
    checksums: Option<checksums::LiveTable>,
}

impl std::fmt::Debug for Editor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Editor")
            .field("snapshots", &self.reader.snapshots().len())
            .field("removed", &self.removed)
            .field("leftover_bytes", &self.leftover_bytes)
            .finish_non_exhaustive()
    }
}

impl Editor {
    /// Whether the image has a current cluster checksum table, which the commit keeps current.
    pub fn keeps_checksums(&self) -> bool {
        self.checksums.is_some()
    }

    /// Bytes past the committed end that [`Editor::open`] truncated (0 after a clean commit).
    pub fn leftover_bytes(&self) -> u64 {
        self.leftover_bytes
    }

    /// The committed image, for reading its states (snapshots and active layer as they were
    /// when the editor was opened; the edit does not change them).
    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// The committed snapshot table, in on-disk order (indices for [`Editor::load_snapshot`]
    /// and [`Editor::remove_snapshot`]).
    pub fn snapshots(&self) -> &[SnapshotInfo] {
        self.reader.snapshots()
    }

    /// Index of the first snapshot whose L1 table references the same L2 tables as the active
    /// L1 table (the active layer is that snapshot's state, unmodified since), if any.
    pub fn snapshot_matching_active(&self) -> Option<usize> {
        self.matching
    }

    /// Makes snapshot `i` a state of [`Editor::writer`], usable as the base of
    /// [`Writer::write_clusters_dedup`] and [`Writer::lookup`], by [`Writer::clone_state`],
    /// and in [`Editor::commit`] (as the active layer or a new snapshot entry: a copy of its L1
    /// table is written). It cannot be written to. Loading the same snapshot again returns the
    /// same state. Reads the snapshot's L1 table.
    ///
    /// Errors: [`Error::InvalidArgument`] for an index out of range; [`Error::Corrupt`],
    /// [`Error::Io`] reading its L1 table.
    pub fn load_snapshot(&mut self, i: usize) -> Result<StateId, Error> {
        if let Some(&s) = self.loaded.get(&i) {
            return Ok(s);
        }
        let l1 = self.snapshot_l1(i)?;
        let s = self.writer.load_state(&l1);
        self.loaded.insert(i, s);
        Ok(s)
    }

    /// The writer of new states: [`Writer::new_state`], [`Writer::write_clusters`],
    /// [`Writer::write_zero_clusters`] (v3), [`Writer::share_cluster`],
    /// [`Writer::write_clusters_dedup`], [`Writer::clone_state`], [`Writer::lookup`]. Host
    /// clusters come from clusters free in the committed refcounts first, then past the end
    /// of the image; nothing the committed image uses is written. [`Writer::finish`] is
    /// refused: [`Editor::commit`] completes the edit.
    pub fn writer(&mut self) -> &mut Writer {
        &mut self.writer
    }

    /// Marks snapshot `i` for removal at [`Editor::commit`] (its entry leaves the table, its
    /// L1 table's references are dropped: notes §2.3 "delete"). Marking it again does nothing.
    ///
    /// Errors: [`Error::InvalidArgument`] for an index out of range.
    pub fn remove_snapshot(&mut self, i: usize) -> Result<(), Error> {
        let n = self.reader.snapshots().len();
        if i >= n {
            return Err(Error::InvalidArgument(format!(
                "snapshot index {i} out of range ({n} snapshots)"
            )));
        }
        self.removed.insert(i);
        Ok(())
    }

    /// Installs `hook`, called before every physical write, `fsync`, truncation and hole punch
    /// of the edit (writer and commit alike). An `Err` from it stops the edit at that point,
    /// as a crash would (tests inject faults this way); the error is returned to the caller.
    pub fn set_write_hook(&mut self, hook: Box<dyn FnMut(WriteEvent) -> Result<(), Error> + Send>) {
        self.writer.set_write_hook(hook);
    }

    /// The L1 table of snapshot `i`, as read (entries with flags).
    fn snapshot_l1(&self, i: usize) -> Result<Vec<u64>, Error> {
        let s = self.reader.snapshots().get(i).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "snapshot index {i} out of range ({} snapshots)",
                self.reader.snapshots().len()
            ))
        })?;
        self.reader.read_l1(s.l1_table_offset, s.l1_size)
    }
}

/// Refcount blocks as loaded by `open` for `RefcountChunks::over_image`.
pub(crate) type Blocks = Vec<Option<Box<[u16]>>>;

/// The host clusters that bytes `[offset, offset + len)` touch (none when `len` is 0).
///
/// Errors: [`Error::Corrupt`] if the range passes 2^64 (an on-disk offset or length out of
/// range).
fn clusters_of(offset: u64, len: u64, cluster_bits: u32) -> Result<Range<u64>, Error> {
    if len == 0 {
        return Ok(0..0);
    }
    let last = offset
        .checked_add(len - 1)
        .ok_or_else(|| Error::corrupt(format!("a range of {len} bytes overflows"), offset))?;
    Ok(offset >> cluster_bits..(last >> cluster_bits) + 1)
}

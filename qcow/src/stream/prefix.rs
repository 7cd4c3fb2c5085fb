//! Reading the tables of an image arriving on a stream: the bytes from the start are kept in
//! memory until every table the image uses is among them (header, refcount table and blocks,
//! every L1 table, the snapshot table, every L2 table), found in the order the tables name
//! each other. The bytes kept that are no table are bounded ([`SLACK_BYTES`], plus, before
//! the snapshot table is read, room for the snapshot L1 tables it will name), and so is the
//! whole ([`StreamOptions::max_prefix_bytes`]): an image whose tables are spread through its
//! data (QEMU interleaves L2 tables with data) is not read in one pass, and what was read is
//! handed back for spooling.

use std::io::Read;

use crate::bytes::decode_be;
use crate::error::Error;
use crate::format::header::{Header, V3_HEADER_LENGTH};
use crate::format::snapshot::{RawSnapshotEntry, SnapshotInfo};
use crate::format::table::l1_entry_l2_offset;
use crate::geometry::{MAX_L1_ENTRIES, MAX_SNAPSHOT_TABLE_BYTES};

/// Bytes kept in memory that belong to no table, at most: 4 MiB (data clusters before the
/// last table, padding).
pub const SLACK_BYTES: u64 = 4 << 20;

/// Default bound of the bytes held in memory before the first data cluster: 256 MiB.
pub const DEFAULT_MAX_PREFIX_BYTES: u64 = 256 << 20;

/// How a stream is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamOptions {
    /// Most bytes held in memory before the data: the tables and what lies between them.
    pub max_prefix_bytes: u64,
}

impl Default for StreamOptions {
    fn default() -> StreamOptions {
        StreamOptions {
            max_prefix_bytes: DEFAULT_MAX_PREFIX_BYTES,
        }
    }
}

/// The first bytes of a stream as they are read, with the table extents known so far.
pub(super) struct Prefix<R: Read> {
    pub(super) input: R,
    pub(super) buf: Vec<u8>,
    /// Table extents known so far: [start, end) in bytes, cluster rounded.
    known: Vec<(u64, u64)>,
    /// The largest exact end of a table known so far (a file may end inside the last
    /// cluster of its last table).
    exact_end: u64,
    /// Bytes allowed beyond [`SLACK_BYTES`] for tables not known yet (snapshot L1 tables).
    allowance: u64,
    max: u64,
    cluster: u64,
}

/// Why a stream cannot be read in one pass.
pub(super) type Spread = String;

impl<R: Read> Prefix<R> {
    pub(super) fn new(input: R, opts: StreamOptions) -> Prefix<R> {
        Prefix {
            input,
            buf: Vec::new(),
            known: Vec::new(),
            exact_end: 0,
            allowance: 0,
            max: opts.max_prefix_bytes,
            cluster: 512,
        }
    }

    /// Reads the header and every table; `Ok(Err(why))` when the tables are too spread out
    /// to be held in memory (what was read stays in `buf`).
    pub(super) fn read_tables(&mut self) -> Result<Result<Header, Spread>, Error> {
        self.read_to(u64::from(V3_HEADER_LENGTH), "the header", true)?;
        if self.buf.len() < 72 {
            return Err(Error::corrupt(
                format!(
                    "the stream ended after {} bytes, inside the header",
                    self.buf.len()
                ),
                0,
            ));
        }
        let header = Header::parse(&self.buf)?;
        self.cluster = header.cluster_size();
        let c = self.cluster;
        self.known.push((0, c));
        let l1_bytes = (u64::from(header.l1_size) * 8).next_multiple_of(c);
        self.allowance = u64::from(header.nb_snapshots).saturating_mul(l1_bytes);
        let reftable_len = u64::from(header.refcount_table_clusters) * c;
        let steps = [
            (header.refcount_table_offset, reftable_len),
            (header.l1_table_offset, u64::from(header.l1_size) * 8),
        ];
        let mut l1s = vec![(header.l1_table_offset, header.l1_size)];
        for (start, len) in steps {
            self.add(start, len)?;
            if let Err(why) = self.fill_to(start + len, "a table")? {
                return Ok(Err(why));
            }
        }
        let reftable = self.slice(header.refcount_table_offset, reftable_len);
        for e in decode_be::<u64>(&reftable) {
            if e & !0x1ff != 0 {
                self.add(e & !0x1ff, c)?;
            }
        }
        match self.snapshot_l1s(&header)? {
            Ok(v) => l1s.extend(v),
            Err(why) => return Ok(Err(why)),
        }
        self.allowance = 0;
        for (offset, size) in l1s {
            let table = self.slice(offset, u64::from(size) * 8);
            for (i, e) in decode_be::<u64>(&table).into_iter().enumerate() {
                let l2 = l1_entry_l2_offset(e, offset + i as u64 * 8)?;
                if l2 != 0 {
                    self.add(l2, c)?;
                }
            }
        }
        let end = self.exact_end;
        if let Err(why) = self.fill_to(end, "an L2 or refcount table")? {
            return Ok(Err(why));
        }
        Ok(Ok(header))
    }

    /// The snapshot table's entries' L1 tables (offset, entries), parsed as they arrive.
    fn snapshot_l1s(&mut self, h: &Header) -> Result<Result<Vec<(u64, u32)>, Spread>, Error> {
        let mut out = Vec::new();
        let start = h.snapshots_offset;
        let mut at = start;
        for i in 0..h.nb_snapshots {
            at = at.next_multiple_of(8);
            let fixed = RawSnapshotEntry::LEN as u64;
            if let Err(why) = self.fill_snapshot_bytes(at + fixed)? {
                return Ok(Err(why));
            }
            let mut head = [0u8; RawSnapshotEntry::LEN];
            head.copy_from_slice(&self.slice(at, fixed));
            let raw = RawSnapshotEntry::decode(&head);
            let var = raw.var_len(i, at)? as u64;
            if at + fixed + var - start > MAX_SNAPSHOT_TABLE_BYTES {
                return Err(Error::Limit(format!(
                    "snapshot table at {start:#x} exceeds {MAX_SNAPSHOT_TABLE_BYTES} bytes"
                )));
            }
            if let Err(why) = self.fill_snapshot_bytes(at + fixed + var)? {
                return Ok(Err(why));
            }
            let info = SnapshotInfo::decode(&raw, &self.slice(at + fixed, var));
            if u64::from(info.l1_size) > MAX_L1_ENTRIES {
                return Err(Error::Limit(format!(
                    "snapshot {i} L1 table has {} entries (> {MAX_L1_ENTRIES})",
                    info.l1_size
                )));
            }
            self.add(info.l1_table_offset, u64::from(info.l1_size) * 8)?;
            out.push((info.l1_table_offset, info.l1_size));
            at += fixed + var;
        }
        if h.nb_snapshots > 0 {
            self.add(start, at - start)?;
        }
        self.allowance = 0;
        let end = self.exact_end;
        if let Err(why) = self.fill_to(end, "a snapshot L1 table")? {
            return Ok(Err(why));
        }
        Ok(Ok(out))
    }

    /// Fills to `end` inside the snapshot table, reading on to the end of its cluster (the
    /// table's clusters hold nothing else).
    fn fill_snapshot_bytes(&mut self, end: u64) -> Result<Result<(), Spread>, Error> {
        if end <= self.buf.len() as u64 {
            return Ok(Ok(()));
        }
        self.add(end.saturating_sub(1), 1)?;
        self.fill_to(end, "the snapshot table")
    }

    /// Records the table extent `[start, start + len)` (rounded to clusters).
    fn add(&mut self, start: u64, len: u64) -> Result<(), Error> {
        if len == 0 {
            return Ok(());
        }
        let end = start
            .checked_add(len)
            .ok_or_else(|| Error::corrupt(format!("a table of {len} bytes overflows"), start))?;
        let c = self.cluster;
        self.known
            .push((start - start % c, end.next_multiple_of(c).max(end)));
        self.exact_end = self.exact_end.max(end);
        Ok(())
    }

    /// Bytes `[start, start + len)` of the prefix, which are read.
    fn slice(&self, start: u64, len: u64) -> Vec<u8> {
        self.buf[start as usize..(start + len) as usize].to_vec()
    }

    /// Reads up to byte `end` unless that holds too many bytes of no table or too many bytes
    /// in all (`Ok(Err(why))`). `what` names the table in the message of an early end.
    fn fill_to(&mut self, end: u64, what: &str) -> Result<Result<(), Spread>, Error> {
        if end <= self.buf.len() as u64 {
            return Ok(Ok(()));
        }
        if let Err(why) = self.room_for(end) {
            return Ok(Err(why));
        }
        self.read_to(end, what, false)?;
        // On to the end of the cluster, which belongs to the table (known extents are whole
        // clusters), so that the bytes held never end inside a data cluster.
        let rounded = end.next_multiple_of(self.cluster).min(self.max);
        self.read_to(rounded, what, true)?;
        Ok(Ok(()))
    }

    /// Whether bytes up to `end` may be held: not too many in all, not too many of no table.
    fn room_for(&self, end: u64) -> Result<(), Spread> {
        if end > self.max {
            return Err(format!(
                "its tables reach byte {end}, past the {} bytes held in memory before the data",
                self.max
            ));
        }
        let unknown = end - covered(&self.known, end);
        if unknown > SLACK_BYTES + self.allowance {
            return Err(format!(
                "its tables are spread out: {unknown} of its first {end} bytes belong to no table (data between tables)"
            ));
        }
        Ok(())
    }

    /// Reads from the input until `end` bytes are held (`lenient`: or the stream ends).
    /// Errors: [`Error::Corrupt`] naming the bytes that arrived when the stream ends first
    /// (unless `lenient`); [`Error::Io`].
    fn read_to(&mut self, end: u64, what: &str, lenient: bool) -> Result<(), Error> {
        let have = self.buf.len();
        self.buf.resize(end as usize, 0);
        let mut at = have;
        while at < self.buf.len() {
            match self.input.read(&mut self.buf[at..]) {
                Ok(0) => {
                    self.buf.truncate(at);
                    if lenient {
                        return Ok(());
                    }
                    return Err(Error::corrupt(
                        format!(
                            "the stream ended after {at} bytes, inside {what} (byte {end} needed)"
                        ),
                        at as u64,
                    ));
                }
                Ok(n) => at += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.buf.truncate(at);
                    return Err(Error::Io {
                        op: "reading the stream",
                        offset: at as u64,
                        source: e,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Bytes of `[0, end)` covered by the extents `known`.
fn covered(known: &[(u64, u64)], end: u64) -> u64 {
    let mut v: Vec<(u64, u64)> = known
        .iter()
        .map(|&(s, e)| (s.min(end), e.min(end)))
        .filter(|(s, e)| s < e)
        .collect();
    v.sort_unstable();
    let (mut total, mut reach) = (0u64, 0u64);
    for (s, e) in v {
        let s = s.max(reach);
        if e > s {
            total += e - s;
            reach = e;
        }
    }
    total
}

//! [`Editor::commit`]: the order of the writes.
//!
//! Design: (1) final references (`references.rs`): the writer's open windows are written,
//! each state's references become its number of uses (active layer + new snapshot entries),
//! the replaced active layer's and the removed snapshots' references are dropped; (2) the new
//! active L1 table, with COPIED right (`copied.rs`: copies of committed tables where needed);
//! (3) an L1 table per new snapshot entry and the new snapshot table; (4) changed refcount
//! blocks (copies) and a new refcount table (`refblocks.rs`); the cluster checksum table, if
//! the image keeps one (`checksums.rs`). Everything so far went to clusters free in the
//! committed image or past its end. (5) `fsync`, one 512-byte header
//! write (the table fields, and the checksum extension and its auto-clear bit, patched into
//! the sector as read), `fsync`: the commit. (6) Holes punched in the clusters this commit
//! freed, free clusters at the end truncated (the checksum table kept).

use std::collections::HashSet;

use super::copied::fix_active_copied;
use super::refblocks::write_refcounts;
use super::references::TableDeltas;
use super::{clusters_of, CommitSummary, Editor};
use crate::error::Error;
use crate::format::checksums::ChecksumExtension;
use crate::format::header::{patch_table_fields, TableFields};
use crate::format::snapshot::{encode_entry, validate_new_specs, SnapshotSpec};
use crate::format::table::l1_entry_table;
use crate::geometry::MAX_SNAPSHOT_TABLE_BYTES;
use crate::types::StateId;

impl Editor {
    /// Commits the edit. `active` = `Some(state)` makes that state the active layer (the old
    /// active layer's references are dropped: content it alone held is gone); `None` keeps the
    /// active layer. `new_snapshots` become the first entries of the new snapshot table (each
    /// gets its own copy of its state's L1 table; 24 bytes of extra data with disk_size = the
    /// virtual size), followed by every existing entry not removed, byte for byte (extra data,
    /// VM state size, icount... preserved). A state may be used several times or not at all
    /// (then what it wrote is freed).
    ///
    /// Crash safety: nothing the committed image uses is written before the single header
    /// write; a crash at any point leaves either the old image or the new one, both consistent
    /// (`qemu-img check` clean), with unreferenced clusters that the next [`Editor::open`]
    /// truncates or reuses. When nothing changed, the header is not written.
    ///
    /// Errors: [`Error::InvalidArgument`] for unknown states, empty or duplicate snapshot ids,
    /// duplicate names, a new id or name equal to a kept snapshot's id or name; [`Error::Limit`]
    /// for over 65 536 snapshots, a snapshot table over 64 MiB, refcount overflow, a refcount
    /// table over 8 MiB; [`Error::Io`], or the write hook's error.
    pub fn commit(
        mut self,
        active: Option<StateId>,
        new_snapshots: &[SnapshotSpec],
    ) -> Result<CommitSummary, Error> {
        let uses = self.plan_uses(active, new_snapshots)?;
        self.writer.close_windows()?;
        let l2_tables_read = self.change_references(&uses, active.is_some())?;
        let (l1_table_offset, l2_tables_copied) = self.write_active_l1(active)?;
        let (nb_snapshots, snapshots_offset) = self.write_snapshot_table(new_snapshots)?;
        let h = self.reader.header();
        let old_table = (h.refcount_table_offset, h.refcount_table_clusters);
        let new = write_refcounts(&mut self.writer, &self.refblocks, old_table)?;
        let ws = self.writer.summary();
        let mut summary = CommitSummary {
            snapshots: nb_snapshots,
            removed_snapshots: self.removed.len() as u32,
            data_clusters: ws.data_clusters,
            l2_tables: ws.l2_tables,
            l2_tables_copied,
            l2_tables_read,
            reused_clusters: self.writer.refcounts().reused_clusters(),
            ..CommitSummary::default()
        };
        let mut keep_end = self.checksums.as_ref().map_or(0, |t| t.end);
        if let Some(new) = new {
            let checksums = self.write_checksums()?;
            if let Some((_, end)) = checksums {
                keep_end = end;
            }
            self.write_header(
                &TableFields {
                    l1_table_offset,
                    refcount_table_offset: new.table_offset,
                    refcount_table_clusters: new.table_clusters,
                    nb_snapshots,
                    snapshots_offset,
                },
                checksums.map(|(ext, _)| ext),
            )?;
            summary.committed = true;
            summary.refcount_blocks = new.blocks_written;
        }
        summary.freed_clusters = self.release(keep_end)?;
        summary.file_size = self.writer.out_mut().len()?;
        summary.bytes_written = self.writer.out_mut().bytes_written();
        Ok(summary)
    }

    /// Checks the arguments; returns each state's number of uses.
    fn plan_uses(
        &self,
        active: Option<StateId>,
        specs: &[SnapshotSpec],
    ) -> Result<Vec<u32>, Error> {
        let mut uses = vec![0u32; self.writer.state_count()];
        for s in active.iter().chain(specs.iter().map(|spec| &spec.state)) {
            uses[self.writer.state_index(*s)?] += 1;
        }
        let snapshots = self.reader.snapshots();
        let kept = (0..snapshots.len()).filter(|i| !self.removed.contains(i));
        validate_new_specs(specs, kept.map(|i| &snapshots[i]))?;
        Ok(uses)
    }

    /// Step (1): every state's references become its number of uses (`uses[s]`), the
    /// replaced active L1 table's (if `replace_active`) and every removed snapshot's are
    /// dropped. Returns the number of distinct L2 tables read.
    fn change_references(&mut self, uses: &[u32], replace_active: bool) -> Result<u64, Error> {
        let mut deltas = TableDeltas::default();
        for (s, &n) in uses.iter().enumerate() {
            let (tables, counted) = self.writer.state_tables(s);
            for t in tables {
                deltas.add(t, i64::from(n) - i64::from(counted));
            }
        }
        if replace_active {
            let offset = self.reader.header().l1_table_offset;
            deltas.drop_l1(&mut self.writer, offset, self.reader.active_l1())?;
        }
        for &i in &self.removed {
            let l1 = self.snapshot_l1(i)?;
            let offset = self.reader.snapshots()[i].l1_table_offset;
            deltas.drop_l1(&mut self.writer, offset, &l1)?;
        }
        deltas.apply(&mut self.writer, self.reader.header().version)
    }

    /// Step (2): the active L1 table with COPIED right: the new active state's, or the kept
    /// one, rewritten elsewhere only if its entries change. Returns (its offset, tables copied).
    fn write_active_l1(&mut self, active: Option<StateId>) -> Result<(u64, u64), Error> {
        let committed = self.reader.active_l1();
        let tables: HashSet<u64> = committed.iter().map(|&e| l1_entry_table(e)).collect();
        let mut l1 = match active {
            Some(s) => self.writer.l1_entries(self.writer.state_index(s)?),
            None => committed.to_vec(),
        };
        let copies = fix_active_copied(&mut self.writer, &mut l1, &tables)?;
        let old_offset = self.reader.header().l1_table_offset;
        if active.is_none() {
            if l1 == self.reader.active_l1() {
                return Ok((old_offset, copies));
            }
            let cb = self.reader.header().cluster_bits;
            for cluster in clusters_of(old_offset, l1.len() as u64 * 8, cb)? {
                self.writer.refcounts_mut().decrement(cluster, 1)?;
            }
        }
        Ok((self.writer.write_l1_entries(&l1)?, copies))
    }

    /// Step (3): an L1 table for each new entry, then the new snapshot table (new entries,
    /// then the kept ones verbatim); the old table is freed. Unchanged when no entry is added
    /// or removed. Returns (nb_snapshots, snapshots_offset).
    fn write_snapshot_table(&mut self, specs: &[SnapshotSpec]) -> Result<(u32, u64), Error> {
        let h = self.reader.header().clone();
        let old = self.reader.snapshots().len();
        if specs.is_empty() && self.removed.is_empty() {
            return Ok((old as u32, h.snapshots_offset));
        }
        let mut table = Vec::new();
        for spec in specs {
            let l1 = self.writer.l1_entries(self.writer.state_index(spec.state)?);
            let offset = self.writer.write_l1_entries(&l1)?;
            encode_entry(&mut table, spec, offset, h.l1_size, h.size)?;
        }
        for i in (0..old).filter(|i| !self.removed.contains(i)) {
            let (start, end) = self.entry_extent(i)?;
            table.extend(
                self.reader
                    .read_bytes(start, end - start, "snapshot table entry")?,
            );
            table.resize(table.len().next_multiple_of(8), 0);
        }
        if table.len() as u64 > MAX_SNAPSHOT_TABLE_BYTES {
            return Err(Error::Limit(format!(
                "a snapshot table of {} bytes exceeds {MAX_SNAPSHOT_TABLE_BYTES}",
                table.len()
            )));
        }
        if let Some((_, end)) = old
            .checked_sub(1)
            .map(|i| self.entry_extent(i))
            .transpose()?
        {
            let len = end - h.snapshots_offset;
            for cluster in clusters_of(h.snapshots_offset, len, h.cluster_bits)? {
                self.writer.refcounts_mut().decrement(cluster, 1)?;
            }
        }
        let nb = specs.len() + old - self.removed.len();
        let offset = if nb == 0 {
            0
        } else {
            self.writer.append_padded(&table)?
        };
        Ok((nb as u32, offset))
    }

    fn entry_extent(&self, i: usize) -> Result<(u64, u64), Error> {
        self.reader
            .snapshot_extent(i)
            .ok_or_else(|| Error::InvalidArgument(format!("snapshot index {i} out of range")))
    }

    /// Step (5): makes everything written so far durable, then points the header at it.
    fn write_header(
        &mut self,
        fields: &TableFields,
        checksums: Option<ChecksumExtension>,
    ) -> Result<(), Error> {
        let mut sector = self.sector.clone();
        patch_table_fields(&mut sector, fields, self.reader.header().version);
        if let Some(ext) = checksums {
            self.patch_checksums(&mut sector, &ext);
        }
        let out = self.writer.out_mut();
        out.sync()?;
        out.write_now(0, &sector)?;
        out.sync()
    }

    /// Step (6): punches holes in the clusters this commit freed and truncates the free
    /// clusters at the end (also what an edit without changes wrote past the end). Returns the
    /// number of clusters freed.
    fn release(&mut self, keep_end: u64) -> Result<u64, Error> {
        let runs = self.writer.refcounts().freed_runs();
        let end = self.writer.refcounts().used_end();
        let c = self.writer.cluster_size();
        let out = self.writer.out_mut();
        let mut freed = 0;
        for (first, n) in runs {
            freed += n;
            let run_end = (first + n).min(end);
            if first < run_end {
                out.punch_hole(first * c, (run_end - first) * c)?;
            }
        }
        let keep = end.max(keep_end) * c;
        if out.len()? > keep {
            out.set_len(keep)?;
        }
        Ok(freed)
    }
}

//! An archive grown in place (`-Q --append SOURCE ARCHIVE`): the new state is written against
//! the archive's newest state (the base). A guest cluster the pipeline hands over as
//! unchanged ([`Sink::share`]) is mapped to the base's cluster without its bytes; every other
//! cluster is written, or shared when its bytes equal the base's (past the end, or in clusters
//! freed by an earlier prune). Then one commit (`qcow::Editor`) removes the states retention
//! let go, writes the L1 tables, the snapshot table and the changed refcount blocks, flushes,
//! and rewrites the header sector last. A kill at any point leaves the archive as it was; the
//! next append removes the leftovers and says so.
//!
//! What the archive is, which state is the base, the new state's name and id and which states
//! go are decided before (`crate::archive`, the export pipeline); this sink only writes.

use super::clusters::Clusters;
use super::state_target::StateTarget;
use super::{Finished, SharedCluster, Sink, Table};
use crate::archive::{NewState, OpenArchive};
use anyhow::{Context, Result};
use qcow::{SnapshotSpec, StateId};

/// What an append writes: its base, the new state, the snapshots retention removes.
pub struct Append {
    /// Index of the base (newest) state in the snapshot table.
    pub base_index: usize,
    /// The new state's name, date and id.
    pub new: NewState,
    /// Indices of the snapshots removed in the same commit.
    pub remove: Vec<usize>,
    /// `-c`: how new clusters are compressed (resolved against the archive's type).
    pub compression: Option<qcow::Compression>,
}

/// The archive sink (see the module comment).
pub struct ArchiveSink {
    archive: OpenArchive,
    base: StateId,
    /// Guest clusters to map to the base's without their bytes (sorted); the next one to
    /// emit is `shares[next_share]`.
    shares: Vec<SharedCluster>,
    next_share: usize,
    state: Option<StateId>,
    clusters: Clusters,
    new: NewState,
    remove: Vec<usize>,
}

impl ArchiveSink {
    /// The sink writing `append` into `archive`.
    ///
    /// # Errors
    /// The base state's L1 table cannot be loaded.
    pub fn new(mut archive: OpenArchive, append: Append) -> Result<ArchiveSink> {
        let base = archive.editor.load_snapshot(append.base_index)?;
        let clusters = Clusters::new(archive.editor.writer(), append.compression);
        Ok(ArchiveSink {
            archive,
            base,
            shares: Vec::new(),
            next_share: 0,
            state: None,
            clusters,
            new: append.new,
            remove: append.remove,
        })
    }

    /// Emits the shared clusters below `limit`, flushing the cluster being assembled first
    /// when it comes before them, so guest clusters stay in order.
    fn emit_shares(&mut self, limit: Option<u64>) -> Result<()> {
        let state = self.state.context("no state begun")?;
        while let Some(&s) = self.shares.get(self.next_share) {
            if limit.is_some_and(|l| s.guest >= l) {
                break;
            }
            let mut t = StateTarget::new(self.archive.editor.writer(), state, Some(self.base));
            self.clusters.share(&mut t, s.guest, s.copied)?;
            self.next_share += 1;
        }
        Ok(())
    }
}

impl Sink for ArchiveSink {
    fn begin_state(&mut self) -> Result<()> {
        anyhow::ensure!(self.state.is_none(), "an append adds one state");
        self.state = Some(self.archive.editor.writer().new_state());
        Ok(())
    }

    fn share(&mut self, clusters: Vec<SharedCluster>) -> Result<()> {
        anyhow::ensure!(
            self.state.is_some() && self.shares.is_empty(),
            "shared clusters are handed over once, after the state begins"
        );
        anyhow::ensure!(
            clusters.windows(2).all(|w| w[0].guest < w[1].guest),
            "shared clusters out of order"
        );
        self.shares = clusters;
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let cluster = self.archive.editor.reader().cluster_size();
        self.emit_shares(Some(offset / cluster))?;
        let state = self.state.context("no state begun")?;
        let mut t = StateTarget::new(self.archive.editor.writer(), state, Some(self.base));
        self.clusters.write(&mut t, offset, data)
    }

    fn end_state(&mut self) -> Result<()> {
        self.emit_shares(None)?;
        let state = self.state.context("no state begun")?;
        let mut t = StateTarget::new(self.archive.editor.writer(), state, Some(self.base));
        self.clusters.flush(&mut t)
    }

    fn finish(self: Box<Self>, _table: &Table, _sync: bool) -> Result<Finished> {
        let mut me = *self;
        let state = me.state.context("no state was written")?;
        for &i in &me.remove {
            me.archive.editor.remove_snapshot(i)?;
        }
        let spec = SnapshotSpec {
            state,
            id: me.new.id.to_string(),
            name: me.new.name.clone(),
            date_sec: me.new.date.0,
            date_nsec: me.new.date.1,
        };
        let cluster = me.archive.editor.reader().cluster_size();
        let path = me.archive.path.clone();
        let summary = me
            .archive
            .editor
            .commit(Some(state), &[spec])
            .with_context(|| format!("cannot commit the new state to {}", path.display()))?;
        let mut f = Finished::with_cluster_size(Some(cluster));
        f.notes = me.archive.notes;
        f.notes.push(format!(
            "appended state {:?} to {}: archive now {}",
            me.new.name,
            path.display(),
            crate::text::size(summary.file_size)
        ));
        f.json
            .push(("state_name".into(), serde_json::json!(me.new.name)));
        super::qcow::report_compression(&me.clusters, &mut f);
        Ok(f)
    }
}

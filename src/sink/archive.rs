//! An archive grown in place (`-Q --append SOURCE ARCHIVE`): one QCOW2 image keeping a
//! filesystem's history as an inverted chain of internal snapshots, whose active layer is the
//! newest state. The new state is written against the archive's newest state: a cluster whose
//! bytes are equal is shared, only the others are written (past the end, or in clusters freed
//! by an earlier prune); then one commit (`qcow::Editor`) writes the L1 tables, the snapshot
//! table and the changed refcount blocks, flushes, and rewrites the header sector last. A kill
//! at any point leaves the archive as it was; the next append removes the leftovers and says
//! so. A retention policy given with the append is applied in the same commit.
//!
//! Before anything is written the archive is locked (flock), must be one of ours (export
//! record) with the same mode (`-d` or not, snapshot files or not), and its newest state must
//! hold the same filesystem (UUID, block size, block count) as SOURCE.

use super::clusters::{Clusters, StateTarget};
use super::unchanged;
use super::{Finished, Sink, Table, Target};
use crate::plan::ExportPlan;
use crate::qcow_view::QcowView;
use crate::record::ExportRecord;
use crate::retention::{self, Policy, Reasons};
use crate::text::uuid;
use anyhow::{bail, Context, Result};
use qcow::{Editor, Layer, SnapshotSpec, StateId};
use std::path::{Path, PathBuf};

/// An archive opened for change: locked, checked, leftovers of an interrupted edit removed.
pub struct OpenArchive {
    /// The editor over the archive.
    pub editor: Editor,
    /// Where it is.
    pub path: PathBuf,
    /// Notes for the summary (leftovers removed).
    pub notes: Vec<String>,
}

/// Opens `path` for an in-place change: exclusive lock, [`Editor::open`] (which validates the
/// image and truncates the leftovers of an interrupted edit), and the fault-injection hook of
/// test builds.
///
/// # Errors
/// Not openable, locked by another run, not a usable QCOW2 image.
pub fn open_archive(path: &Path) -> Result<OpenArchive> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open the archive {}", path.display()))?;
    crate::sys::lock::exclusive(&file, path, "the archive")?;
    let mut editor = Editor::open(file).with_context(|| {
        format!(
            "{}: not a usable QCOW2 archive; nothing was written",
            path.display()
        )
    })?;
    hook_faults(&mut editor);
    let mut notes = Vec::new();
    if editor.leftover_bytes() > 0 {
        notes.push(format!(
            "{}: removed {} bytes left past the end of the archive by an interrupted append or prune",
            path.display(),
            editor.leftover_bytes()
        ));
    }
    Ok(OpenArchive {
        editor,
        path: path.to_path_buf(),
        notes,
    })
}

/// With the `fault-injection` feature: `E2IMAGE_RS_FAULT_AFTER_WRITES=k` aborts the process
/// right after the k-th write, flush, truncation or hole punch of the edit (a crash at that
/// point). Release builds read nothing.
fn hook_faults(editor: &mut Editor) {
    if !cfg!(feature = "fault-injection") {
        return;
    }
    let Some(k) = std::env::var("E2IMAGE_RS_FAULT_AFTER_WRITES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let mut count = 0u64;
    editor.set_write_hook(Box::new(move |_event| {
        count += 1;
        if count > k {
            std::process::abort();
        }
        Ok(())
    }));
}

/// What retention decides for one state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Index in the snapshot table (`None`: the state being appended).
    pub snapshot: Option<usize>,
    /// Its name.
    pub name: String,
    /// Its date, seconds since the epoch.
    pub date: i64,
    /// Nanoseconds of its date.
    pub date_nsec: u32,
    /// Why it is kept (`None`: it goes): rule names ("last", "daily", "oldest weekly"; see
    /// [`reason_names`]) or "active".
    pub kept: Option<Vec<String>>,
}

/// Applies `policy` to the archive's states plus, when appending, the new one (`new`: name,
/// date in seconds and nanoseconds). The state the active layer shows (`active`) is always
/// kept.
pub fn retention(
    editor: &Editor,
    policy: &Policy,
    new: Option<(&str, i64, u32)>,
    active: Option<usize>,
) -> Vec<Decision> {
    let mut states: Vec<(Option<usize>, String, i64, u32)> = editor
        .snapshots()
        .iter()
        .enumerate()
        .map(|(i, s)| (Some(i), s.name.clone(), i64::from(s.date_sec), s.date_nsec))
        .collect();
    if let Some((name, date, nsec)) = new {
        states.push((None, name.to_string(), date, nsec));
    }
    let dates: Vec<i64> = states.iter().map(|s| s.2).collect();
    let reasons = retention::apply(policy, &dates);
    states
        .into_iter()
        .zip(reasons)
        .map(|((snapshot, name, date, date_nsec), r)| {
            let mut kept = r.as_ref().map(reason_names);
            let shows_active = new.is_none() && snapshot.is_some() && snapshot == active;
            if kept.is_none() && shows_active {
                kept = Some(vec!["active".into()]);
            }
            Decision {
                snapshot,
                name,
                date,
                date_nsec,
                kept,
            }
        })
        .collect()
}

/// The rules that keep a state, by name: "last", "hourly", "daily", "weekly", "monthly",
/// "yearly", or "oldest RULE" for the oldest state kept by a rule that found fewer periods
/// than it may keep (the words of [`Reasons::text`], one per rule).
fn reason_names(r: &Reasons) -> Vec<String> {
    r.text().split(", ").map(str::to_string).collect()
}

/// The archive sink (see the module comment).
pub struct ArchiveSink {
    archive: OpenArchive,
    base: StateId,
    /// The base state's index in the snapshot table.
    base_index: usize,
    /// Guest clusters known equal to the base's, to map without their bytes (sorted), with
    /// whether each holds copied blocks; the next one to emit is `shares[next_share]`.
    shares: Vec<(u64, bool)>,
    next_share: usize,
    state: Option<StateId>,
    clusters: Clusters,
    name: String,
    date: (u32, u32),
    policy: Policy,
    /// The archive holds file data (`-d`): unchanged files' clusters are shared unread.
    data: bool,
    /// The archive leaves snapshot files out (`--no-snapshots`).
    no_snapshots: bool,
}

impl ArchiveSink {
    /// Opens the archive at `path` for the append the plan describes.
    ///
    /// # Errors
    /// See the module comment: locked, not an archive of ours, another mode or filesystem, a
    /// name already used.
    pub fn open(path: &Path, plan: &ExportPlan, target: &Target) -> Result<ArchiveSink> {
        let mut archive = open_archive(path)?;
        check_mode(&archive, plan)?;
        let base_index = newest_state(&archive)?;
        check_same_fs(&archive, base_index, target)?;
        let base = archive.editor.load_snapshot(base_index)?;
        let data = plan.data;
        let (date, default_name) = crate::text::now_and_name();
        let a = plan.archive.as_ref().context("no archive plan")?;
        let name = unique_name(&archive.editor, a.name.as_deref(), &default_name)?;
        let clusters = Clusters::new(archive.editor.writer());
        Ok(ArchiveSink {
            archive,
            base,
            base_index,
            shares: Vec::new(),
            next_share: 0,
            state: None,
            clusters,
            name,
            date,
            policy: a.policy,
            data,
            no_snapshots: plan.no_snapshots,
        })
    }

    /// Emits the known-equal clusters below `limit` (all with `None`), flushing the cluster
    /// being assembled first when it comes before them, so guest clusters stay in order.
    fn emit_shares(&mut self, limit: Option<u64>) -> Result<()> {
        let state = self.state.context("no state begun")?;
        while let Some(&(c, copied)) = self.shares.get(self.next_share) {
            if limit.is_some_and(|l| c >= l) {
                break;
            }
            let mut t = StateTarget::new(self.archive.editor.writer(), state, Some(self.base));
            if self.clusters.pending_index().is_some_and(|p| p < c) {
                self.clusters.flush(&mut t)?;
            }
            t.share_base(c, copied)?;
            self.next_share += 1;
        }
        Ok(())
    }

    /// The base state's filesystem, walked with file data, and its owners.
    fn unchanged(
        &mut self,
        fs: &ext::Filesystem<&dyn ext::BlockView>,
        walked: &ext::WalkResult,
    ) -> Result<Vec<(u64, bool)>> {
        let reader = self.archive.editor.reader();
        let layer = reader.layer(Layer::Snapshot(self.base_index))?;
        let view = QcowView::new(&layer, reader.virtual_size());
        let base_fs = ext::Filesystem::open(&view, &ext::OpenOptions::default())?;
        let opts = ext::WalkOptions {
            data: true,
            no_snapshot_files: self.no_snapshots,
        };
        let base_walk = ext::walk(&base_fs, &opts);
        let all = |_: u64, _: u64| true;
        let keep = |_: ext::InodeNr, _: &[ext::FileRun]| true;
        let b = ext::file_runs_and_inodes(&base_fs, &all, &keep);
        let n = ext::file_runs_and_inodes(fs, &all, &keep);
        let same = unchanged::unchanged_data(&n.runs, &n.inodes, &b.runs, &b.inodes);
        let cluster = reader.cluster_size();
        let bs = u64::from(fs.sb.block_size);
        let clusters =
            unchanged::equal_clusters(cluster, bs, &walked.blocks, &base_walk.blocks, &same);
        let mut out = Vec::new();
        for r in clusters {
            for c in r {
                let first = c * cluster / bs;
                let last = ((c + 1) * cluster).div_ceil(bs);
                let copied = (first..last).any(|b| walked.blocks.contains(b));
                out.push((c, copied));
            }
        }
        Ok(out)
    }

    /// The next snapshot id: one more than the largest numeric id (QEMU's rule).
    fn next_id(&self) -> String {
        let max = self
            .archive
            .editor
            .snapshots()
            .iter()
            .filter_map(|s| s.id.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        (max + 1).to_string()
    }
}

impl Sink for ArchiveSink {
    fn begin_state(&mut self) -> Result<()> {
        anyhow::ensure!(self.state.is_none(), "an append adds one state");
        self.state = Some(self.archive.editor.writer().new_state());
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

    fn skip_unchanged(
        &mut self,
        fs: &ext::Filesystem<&dyn ext::BlockView>,
        walked: &ext::WalkResult,
    ) -> Result<Vec<std::ops::Range<u64>>> {
        if !self.data {
            return Ok(Vec::new());
        }
        self.shares = self.unchanged(fs, walked)?;
        let cluster = self.archive.editor.reader().cluster_size();
        let bs = u64::from(fs.sb.block_size);
        let mut skip: Vec<std::ops::Range<u64>> = Vec::new();
        for &(c, _) in &self.shares {
            let r = c * cluster / bs..((c + 1) * cluster).div_ceil(bs);
            match skip.last_mut() {
                Some(l) if l.end >= r.start => l.end = l.end.max(r.end),
                _ => skip.push(r),
            }
        }
        Ok(skip)
    }

    fn finish(self: Box<Self>, _table: &Table, _sync: bool) -> Result<Finished> {
        let mut me = *self;
        let state = me.state.context("no state was written")?;
        let decisions = if me.policy.is_empty() {
            Vec::new()
        } else {
            retention(
                &me.archive.editor,
                &me.policy,
                Some((&me.name, i64::from(me.date.0), me.date.1)),
                None,
            )
        };
        for d in decisions.iter().filter(|d| d.kept.is_none()) {
            if let Some(i) = d.snapshot {
                me.archive.editor.remove_snapshot(i)?;
            }
        }
        let spec = SnapshotSpec {
            state,
            id: me.next_id(),
            name: me.name.clone(),
            date_sec: me.date.0,
            date_nsec: me.date.1,
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
            "appended state {:?} to {}: archive now {} bytes",
            me.name,
            path.display(),
            summary.file_size
        ));
        f.notes.extend(
            decisions
                .iter()
                .filter(|d| d.kept.is_none())
                .map(|d| format!("pruned state {:?} (no --keep-* rule keeps it)", d.name)),
        );
        f.json
            .push(("state_name".into(), serde_json::json!(me.name)));
        f.json.push(("pruned".into(), decisions_json(&decisions)));
        Ok(f)
    }
}

/// One state of the JSON lists of retention decisions (prune's `states`, an append's
/// `pruned`).
#[derive(Debug, serde::Serialize)]
pub struct DecisionDoc {
    /// The state's name.
    pub name: String,
    /// Its date (`date`, `date_sec`, `date_nsec`).
    #[serde(flatten)]
    pub date: crate::text::Date,
    /// Whether it stays.
    pub kept: bool,
    /// Why it stays (see [`Decision::kept`]); empty when it goes.
    pub reasons: Vec<String>,
}

impl From<&Decision> for DecisionDoc {
    fn from(d: &Decision) -> DecisionDoc {
        DecisionDoc {
            name: d.name.clone(),
            date: crate::text::Date::new(d.date, d.date_nsec),
            kept: d.kept.is_some(),
            reasons: d.kept.clone().unwrap_or_default(),
        }
    }
}

/// The decisions as JSON: an array of [`DecisionDoc`].
pub fn decisions_json(decisions: &[Decision]) -> serde_json::Value {
    let docs: Vec<DecisionDoc> = decisions.iter().map(DecisionDoc::from).collect();
    serde_json::to_value(docs).unwrap_or_default()
}

/// Refuses an archive that is not ours or was made in another mode.
fn check_mode(a: &OpenArchive, plan: &ExportPlan) -> Result<()> {
    let Some(r) = ExportRecord::of(a.editor.reader()) else {
        bail!(
            "{} was not written by e2image-rs (no export record); nothing was written",
            a.path.display()
        );
    };
    if r.file_data != plan.data {
        bail!(
            "{} {} file data, but this export {}: append with{} -d; nothing was written",
            a.path.display(),
            if r.file_data { "holds" } else { "holds no" },
            if plan.data {
                "copies it (-d)"
            } else {
                "does not (no -d)"
            },
            if r.file_data { "" } else { "out" }
        );
    }
    if r.snapshot_files == plan.no_snapshots {
        bail!(
            "{} was made {} --no-snapshots; append the same way; nothing was written",
            a.path.display(),
            if r.snapshot_files { "without" } else { "with" }
        );
    }
    if let crate::plan::Format::Qcow2 {
        cluster_size: Some(c),
        ..
    } = plan.format
    {
        let have = a.editor.reader().cluster_size();
        anyhow::ensure!(
            c == have,
            "--cluster-size {c}: {} has {have}-byte clusters; nothing was written",
            a.path.display()
        );
    }
    Ok(())
}

/// The snapshot holding the newest state: the one the active layer shows, else the newest by
/// date.
fn newest_state(a: &OpenArchive) -> Result<usize> {
    if let Some(i) = a.editor.snapshot_matching_active() {
        return Ok(i);
    }
    let snaps = a.editor.snapshots();
    (0..snaps.len())
        .max_by_key(|&i| (snaps[i].date_sec, snaps[i].date_nsec))
        .with_context(|| {
            format!(
                "{} has no states (it is a plain export, not an archive): create an archive with `-Q --name NAME`; nothing was written",
                a.path.display()
            )
        })
}

/// Refuses unless the archive's newest state holds the filesystem of `target`.
fn check_same_fs(a: &OpenArchive, base: usize, target: &Target) -> Result<()> {
    let reader = a.editor.reader();
    let layer = reader.layer(Layer::Snapshot(base))?;
    let size = reader.snapshots()[base]
        .disk_size
        .unwrap_or(reader.virtual_size());
    let view = QcowView::new(&layer, size);
    let fs = ext::Filesystem::open(&view, &ext::OpenOptions::default()).with_context(|| {
        format!(
            "{}: the newest state holds no readable filesystem; nothing was written",
            a.path.display()
        )
    })?;
    let sb = &fs.sb;
    let mut diffs = Vec::new();
    if sb.s_uuid != target.uuid {
        diffs.push(format!(
            "UUID {} vs {}",
            uuid(&sb.s_uuid),
            uuid(&target.uuid)
        ));
    }
    if sb.block_size != target.block_size {
        diffs.push(format!(
            "block size {} vs {}",
            sb.block_size, target.block_size
        ));
    }
    if sb.s_blocks_count != target.blocks_count || reader.virtual_size() != target.size {
        diffs.push(format!(
            "block count {} vs {}",
            sb.s_blocks_count, target.blocks_count
        ));
    }
    if !diffs.is_empty() {
        bail!(
            "{} holds another filesystem than SOURCE ({}); nothing was written",
            a.path.display(),
            diffs.join(", ")
        );
    }
    Ok(())
}

/// The name for the new state: `wanted` (refused if taken), else `default` made unique.
fn unique_name(editor: &Editor, wanted: Option<&str>, default: &str) -> Result<String> {
    let taken = |n: &str| editor.snapshots().iter().any(|s| s.name == n || s.id == n);
    if let Some(n) = wanted {
        if taken(n) {
            return Err(crate::exit::UsageError(format!(
                "--name {n:?}: the archive already has a state with that name or id"
            ))
            .into());
        }
        return Ok(n.to_string());
    }
    let mut name = default.to_string();
    let mut k = 2;
    while taken(&name) {
        name = format!("{default}-{k}");
        k += 1;
    }
    Ok(name)
}

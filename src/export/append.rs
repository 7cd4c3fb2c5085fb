//! The append's preparation (`-Q --append SOURCE ARCHIVE`), before anything is written: the
//! archive opened for change (`crate::archive`: locked, refcounts checked), checked (ours, the
//! same mode, its newest state holds SOURCE's filesystem on a disk of the right size), the new
//! state named, numbered and dated, retention decided, and — with `-d` — the base state's user
//! files read for the quick check (`unchanged`), unless a journal needs recovery.

use super::unchanged::BaseFiles;
use crate::archive::{decide, open_archive, Decision, NewState, OpenArchive};
use crate::plan::{ExportPlan, Format, Mode};
use crate::qcow_view::{check_state_size, QcowView};
use crate::record::ExportRecord;
use crate::sink::{self, Append, Opened, SharedCluster, Target};
use crate::text::uuid;
use anyhow::{bail, Context, Result};
use ext::{BlockView, Filesystem, WalkOptions};
use qcow::Layer;
use std::ops::Range;
use std::path::Path;

/// An append ready to copy: its output, the quick check (if on), the retention decisions.
pub(super) struct Prepared {
    /// The archive sink.
    pub(super) out: Opened,
    /// What the quick check compares against (`None`: off, every cluster is read).
    pub(super) quick: Option<QuickCheck>,
    /// What retention decided (empty without `--keep-*`).
    pub(super) decisions: Vec<Decision>,
    /// Notes for the summary.
    pub(super) notes: Vec<String>,
}

/// The base state's user files and the archive's cluster size in bytes.
pub(super) struct QuickCheck {
    base: BaseFiles,
    cluster: u64,
}

impl QuickCheck {
    /// The clusters of the new state (`fs`, copy set `blocks`) known equal to the base's.
    pub(super) fn shared(
        &self,
        fs: &Filesystem<&dyn BlockView>,
        blocks: &ext::BlockSet,
    ) -> Vec<SharedCluster> {
        self.base.shared_clusters(fs, blocks, self.cluster)
    }

    /// The filesystem blocks (of `block` bytes) of the clusters `shared`, as sorted ranges:
    /// what the copy leaves out.
    pub(super) fn blocks_of(&self, shared: &[SharedCluster], block: u64) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        for s in shared {
            let start = s.guest * self.cluster / block;
            let end = ((s.guest + 1) * self.cluster).div_ceil(block);
            crate::ranges::push(&mut out, start..end);
        }
        out
    }
}

/// What retention did, for the summary: a note per state removed, and the decisions as JSON
/// (`pruned`: one object per state).
pub(super) fn report_retention(
    decisions: &[Decision],
    notes: &mut Vec<String>,
    json: &mut Vec<(String, serde_json::Value)>,
) {
    notes.extend(
        decisions
            .iter()
            .filter(|d| d.kept.is_none())
            .map(|d| format!("pruned state {:?} (no --keep-* rule keeps it)", d.name)),
    );
    let docs: Vec<crate::archive::DecisionDoc> = decisions.iter().map(Into::into).collect();
    json.push((
        "pruned".into(),
        serde_json::to_value(docs).unwrap_or_default(),
    ));
}

/// Prepares the append of SOURCE's current state, whose filesystem is `fs` on a disk of
/// `target.size` bytes. `dirty` says why the quick check is off for SOURCE (its journal
/// needs recovery or is external), if it is.
///
/// # Errors
/// The archive cannot be opened or is locked; it is not an archive of ours, was made in
/// another mode, holds another filesystem or a state of the wrong size; the name is taken.
pub(super) fn prepare(
    plan: &ExportPlan,
    fs: &Filesystem<&dyn BlockView>,
    target: &Target,
    dirty: Option<&str>,
) -> Result<Prepared> {
    let Mode::ArchiveAppend { name, policy } = plan.mode() else {
        bail!("not an append");
    };
    let path = match plan.output() {
        crate::plan::Output::Archive(p) => p.clone(),
        o => bail!("{}: not an archive", o.display()),
    };
    let archive = open_archive(&path)?;
    let record = archive.record()?;
    check_mode(&archive, &record, plan)?;
    let base_index = archive.newest_state()?;
    let (base_dirty, quick) = read_base(&archive, base_index, plan, fs, target)?;
    let mut notes = archive.notes.clone();
    let off = dirty.map(str::to_string).or(base_dirty);
    let quick = match (plan.data(), off) {
        (true, Some(why)) => {
            notes.push(format!(
                "every file's data was read and compared with the archive's newest state: {why}"
            ));
            None
        }
        (true, None) => quick,
        (false, _) => None,
    };
    let (date, default_name) = crate::text::now_and_name();
    let new = NewState {
        name: archive.unique_name(name.as_deref(), &default_name)?,
        date,
        id: archive.next_id(),
    };
    let decisions = match policy.is_empty() {
        true => Vec::new(),
        false => decide(&archive.editor, policy, Some(&new), None),
    };
    let remove = decisions
        .iter()
        .filter(|d| d.kept.is_none())
        .filter_map(|d| d.snapshot)
        .collect();
    let compression = match plan.compress() {
        Some(c) => Some(c.for_image(
            archive.editor.reader().compression_type(),
            &path.display().to_string(),
        )?),
        None => None,
    };
    let append = Append {
        base_index,
        new,
        remove,
        compression,
    };
    Ok(Prepared {
        out: sink::open_append(archive, append)?,
        quick,
        decisions,
        notes,
    })
}

/// Opens the base state and checks it holds SOURCE's filesystem; returns why the quick check
/// is off for it (its journal needs recovery), else what the quick check needs (with `-d`).
fn read_base(
    archive: &OpenArchive,
    base: usize,
    plan: &ExportPlan,
    fs: &Filesystem<&dyn BlockView>,
    target: &Target,
) -> Result<(Option<String>, Option<QuickCheck>)> {
    let reader = archive.editor.reader();
    let layer = reader.layer(Layer::Snapshot(base))?;
    let snap = &reader.snapshots()[base];
    let size = snap.disk_size.unwrap_or(reader.virtual_size());
    let label = format!("{}: state {:?}", archive.path.display(), snap.name);
    check_state_size(reader, &layer, size, &label, true)?;
    let view = QcowView::new(&layer, size);
    let (base_fs, _) = Filesystem::open_with_fallback(&view as &dyn BlockView, plan.source().open_options())
        .with_context(|| {
            format!(
                "{}: the newest state holds no readable filesystem (give the -b/-B it was made with); nothing was written",
                archive.path.display()
            )
        })?;
    check_same_fs(&archive.path, &base_fs.sb, size, fs, target)?;
    if base_fs.sb.needs_recovery() {
        let why = format!(
            "the archive's newest state {:?} needs journal recovery",
            snap.name
        );
        return Ok((Some(why), None));
    }
    if !plan.data() {
        return Ok((None, None));
    }
    let opts = WalkOptions {
        data: true,
        no_snapshot_files: plan.no_snapshots(),
    };
    let walked = ext::walk(&base_fs, &opts);
    let quick = QuickCheck {
        base: BaseFiles::read(&base_fs, walked.blocks),
        cluster: reader.cluster_size(),
    };
    Ok((None, Some(quick)))
}

/// Refuses an archive made in another mode (`-d` or not, snapshot files or not, cluster size).
fn check_mode(a: &OpenArchive, r: &ExportRecord, plan: &ExportPlan) -> Result<()> {
    let p = a.path.display();
    if r.file_data != plan.data() {
        bail!(
            "{p} {} file data, but this export {}: append with{} -d; nothing was written",
            if r.file_data { "holds" } else { "holds no" },
            if plan.data() {
                "copies it (-d)"
            } else {
                "does not (no -d)"
            },
            if r.file_data { "" } else { "out" }
        );
    }
    if r.snapshot_files == plan.no_snapshots() {
        bail!(
            "{p} was made {} --no-snapshots; append the same way; nothing was written",
            if r.snapshot_files { "without" } else { "with" }
        );
    }
    if let Format::Qcow2 {
        cluster_size: Some(c),
        ..
    } = plan.format()
    {
        let have = a.editor.reader().cluster_size();
        anyhow::ensure!(
            c == have,
            "--cluster-size {c}: {p} has {have}-byte clusters; nothing was written"
        );
    }
    Ok(())
}

/// Refuses unless the base state (superblock `base`, disk of `base_size` bytes) holds the
/// filesystem `fs` of SOURCE, on a disk of `target.size` bytes.
fn check_same_fs(
    path: &Path,
    base: &ext::Superblock,
    base_size: u64,
    fs: &Filesystem<&dyn BlockView>,
    target: &Target,
) -> Result<()> {
    let sb = &fs.sb;
    let mut diffs = Vec::new();
    if base.s_uuid != sb.s_uuid {
        diffs.push(format!(
            "UUID {} vs {}",
            uuid(&base.s_uuid),
            uuid(&sb.s_uuid)
        ));
    }
    if base.block_size != sb.block_size {
        diffs.push(format!(
            "block size {} vs {}",
            base.block_size, sb.block_size
        ));
    }
    if base.s_blocks_count != sb.s_blocks_count || base_size != target.size {
        diffs.push(format!(
            "block count {} vs {}",
            base.s_blocks_count, sb.s_blocks_count
        ));
    }
    if !diffs.is_empty() {
        bail!(
            "{} holds another filesystem than SOURCE ({}); nothing was written",
            path.display(),
            diffs.join(", ")
        );
    }
    Ok(())
}

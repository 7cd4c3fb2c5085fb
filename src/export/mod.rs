//! The export pipeline: source → states (the current filesystem and any older ones) → walk
//! each state (what to copy) → parallel copy → sink (QCOW2, raw file, device or stream).
//!
//! The source is opened read-only. With several states, the current one is written in full
//! and becomes the active layer; each older state is written after it, newest first, sharing
//! every cluster equal to the next newer state's (an inverted chain of QCOW2 internal
//! snapshots). A QCOW2 source keeps its internal snapshots: each is walked and written as a
//! state under its own id, name and date. Corrupt parts found by a walk, states that cannot be
//! opened and unreadable blocks are reported and counted; they make the exit status 3.

mod cluster;
mod convert;
mod delta;
mod journal;
mod qcow_source;
mod states;
mod summary;

pub use summary::Summary;

use crate::copy::{copy_runs, CopyStats, Progress};
use crate::plan::{ExportPlan, Format, Older};
use crate::probe::is_qcow2;
use crate::record::{ExportRecord, EXT_EXPORT_RECORD};
use crate::sink::{self, QcowOptions, Sink, Table, TableEntry, Target};
use anyhow::{bail, Context, Result};
use cluster::choose_cluster_bits;
use ext::{BlockView, FileView, Filesystem, OpenOptions, WalkOptions, Warning};
use qcow::Version;
use states::{plan as plan_states, Next3, Older as OlderStates};
use std::ops::Range;
use summary::{ExportFacts, StateReport};

/// Runs the export (or QCOW2 → raw conversion) the plan describes.
///
/// # Errors
/// Anything that stops the run; nothing is left under OUT (a file) then.
pub fn run(plan: &ExportPlan) -> Result<Summary> {
    if let Some(d) = &plan.delta {
        return delta::run(plan, d);
    }
    if is_qcow2(&plan.source)? {
        return qcow_source::from_qcow2(plan);
    }
    if !plan.force {
        if let Some(mnt) = crate::sys::mounted::mounted_rw(&plan.source) {
            bail!(
                "{} is mounted read-write on {}; the image could be inconsistent. Use -f to image it anyway",
                plan.source.display(),
                mnt.display()
            );
        }
    }
    let view = FileView::open(&plan.source)
        .with_context(|| format!("cannot open {} read-only", plan.source.display()))?;
    export_fs(&view, plan)
}

/// Opens the filesystem on `view`, plans its states and writes the image. With `--replay`
/// the source's journal is replayed first, so that its states (next3 snapshots included) are
/// planned on the replayed filesystem.
pub(super) fn export_fs(view: &dyn BlockView, plan: &ExportPlan) -> Result<Summary> {
    let external = match &plan.journal_dev {
        Some(p) if plan.replay => Some(journal::open_journal_dev(p)?),
        _ => None,
    };
    let ext_view = external.as_ref().map(|v| v as &dyn BlockView);
    let replayed = match plan.replay {
        true => Some(journal::recover(view, ext_view, &plan.open, plan)?),
        false => None,
    };
    let mut early = Early::default();
    if let Some(j) = &replayed {
        early.journal_done = true;
        early.warnings.extend(j.warnings.iter().cloned());
        early.notes.extend(j.notes.iter().cloned());
    }
    let view: &dyn BlockView = match replayed.as_ref().and_then(|j| j.view.as_ref()) {
        Some(v) => v,
        None => view,
    };
    let (fs, _) = open_with_fallback(view, plan)?;
    if let Some(name) = &plan.from_snapshot {
        return export_fs_snapshot(&fs, name, plan, early);
    }
    let images = match &plan.older {
        Older::Images(v) => v.as_slice(),
        _ => &[],
    };
    let sp = plan_states(&fs, plan.older == Older::FsSnapshots, images, plan.force)?;
    let snap_views: Vec<_> = match &sp.older {
        OlderStates::Next3(n) => n.exported.iter().map(|&i| n.view(&fs, i)).collect(),
        _ => Vec::new(),
    };
    let mut views: Vec<&dyn BlockView> = vec![view];
    match &sp.older {
        OlderStates::Next3(n) => {
            views.extend(snap_views.iter().map(|v| v as &dyn BlockView));
            early.warnings.extend(n.warnings.iter().cloned());
        }
        OlderStates::Images(images) => {
            views.extend(images.iter().map(|(_, v)| v as &dyn BlockView))
        }
        OlderStates::None => {}
    }
    let states: Vec<StateInput<'_>> = views
        .into_iter()
        .enumerate()
        .map(|(k, v)| StateInput {
            name: sp.names[k].clone(),
            date: sp.dates[k],
            view: v,
        })
        .collect();
    write_states(&states, plan, early, None)
}

/// `--from-snapshot NAME` of a filesystem with next3 snapshots: that snapshot alone.
fn export_fs_snapshot(
    fs: &Filesystem<&dyn BlockView>,
    name: &str,
    plan: &ExportPlan,
    mut early: Early,
) -> Result<Summary> {
    let next3 = Next3::read(fs);
    let i = next3.find(fs, name).with_context(|| {
        format!(
            "{}: no filesystem snapshot with name or id {name:?}",
            plan.source.display()
        )
    })?;
    let snap = next3.view(fs, i);
    let states = [StateInput {
        name: name.to_string(),
        date: (0, 0),
        view: &snap,
    }];
    early.warnings.extend(next3.warnings.iter().cloned());
    write_states(&states, plan, early, None)
}

/// Opens the source's filesystem with `-b`/`-B`, or through the first backup superblock that
/// validates when the primary one is unusable (the caller warns: see `open_states`).
fn open_with_fallback<'v>(
    view: &'v dyn BlockView,
    plan: &ExportPlan,
) -> Result<(Filesystem<&'v dyn BlockView>, Option<ext::BackupUsed>)> {
    Filesystem::open_with_fallback(view, &plan.open)
        .with_context(|| format!("{}: cannot open the filesystem", plan.source.display()))
}

/// What the caller found before the states were written: warnings and notes of the current
/// state, and whether its journal was already recovered (`--replay`).
#[derive(Default)]
pub(super) struct Early {
    pub(super) warnings: Vec<Warning>,
    pub(super) notes: Vec<String>,
    pub(super) journal_done: bool,
}

/// One state to write: its view, name and date.
pub(super) struct StateInput<'a> {
    pub(super) name: String,
    pub(super) date: (u32, u32),
    pub(super) view: &'a dyn BlockView,
}

/// Writes the states (the first is the active layer unless `table` says otherwise) to OUT.
/// Without a `table`, several states make the inverted chain: one snapshot per state, ids
/// 1..n in writing order.
pub(super) fn write_states(
    states: &[StateInput<'_>],
    plan: &ExportPlan,
    early: Early,
    table: Option<Table>,
) -> Result<Summary> {
    let external = match &plan.journal_dev {
        Some(p) if !early.journal_done => Some(journal::open_journal_dev(p)?),
        _ => None,
    };
    let views: Vec<&dyn BlockView> = states.iter().map(|s| s.view).collect();
    let ext_view = external.as_ref().map(|v| v as &dyn BlockView);
    let journals = journal::recover_states(&views, ext_view, plan, early.journal_done)?;
    let replayed = replayed_inputs(states, &journals, plan);
    let states = &replayed[..];
    let (opened, reports, mut warnings) = open_states(states, plan)?;
    let first = states[0].name.clone();
    warnings.splice(0..0, early.warnings.into_iter().map(|w| (first.clone(), w)));
    let mut out = sink::open(plan, &target_of(&opened, plan)?)?;
    let mut notes = early.notes;
    notes.extend(out.notes());
    for (s, j) in states.iter().zip(&journals) {
        warnings.extend(j.warnings.iter().map(|w| (s.name.clone(), w.clone())));
        notes.extend(j.notes.iter().cloned());
    }
    let mut tally = Tally {
        reports,
        warnings,
        ..Tally::default()
    };
    let sink = out.sink.as_mut();
    copy_states(sink, states, &opened, &journals, plan, &mut tally)?;
    let written: Vec<bool> = opened.iter().map(Option::is_some).collect();
    let table = match (table, plan.archive.as_ref().and_then(|a| a.name.as_ref())) {
        (Some(t), _) => remap_table(t, &written),
        (None, Some(name)) => archive_table(name),
        (None, None) => chain_table(states, &written),
    };
    let mut finished = out.complete(&table, plan.sync)?;
    notes.append(&mut finished.notes);
    summarize(plan, states, tally, notes, finished)
}

/// The states as exported: with `--replay`, each through its replayed view.
fn replayed_inputs<'a>(
    states: &[StateInput<'a>],
    journals: &'a [journal::StateJournal<'a>],
    plan: &ExportPlan,
) -> Vec<StateInput<'a>> {
    states
        .iter()
        .zip(journals)
        .map(|(s, j)| StateInput {
            name: s.name.clone(),
            date: s.date,
            view: match (&j.view, plan.replay) {
                (Some(v), true) => v,
                _ => s.view,
            },
        })
        .collect()
}

/// The export's summary from what was copied and how the output was finished.
fn summarize(
    plan: &ExportPlan,
    states: &[StateInput<'_>],
    tally: Tally,
    notes: Vec<String>,
    finished: sink::Finished,
) -> Result<Summary> {
    let (walked, sb) = tally.main.context("the current state was not written")?;
    let mut reports = tally.reports;
    reports.sort_by_key(|r| states.iter().position(|s| s.name == r.name));
    Ok(Summary::export(
        plan,
        ExportFacts {
            sb: &sb,
            walked: &walked,
            warnings: tally.warnings,
            stats: tally.stats,
            cluster_size: finished.cluster_size,
            states: reports,
            notes,
            omitted: tally.omitted,
            extra: finished.json,
        },
    ))
}

/// What the output is for: the largest state's size, the first state's filesystem.
fn target_of(opened: &[Option<Filesystem<&dyn BlockView>>], plan: &ExportPlan) -> Result<Target> {
    let first = opened[0]
        .as_ref()
        .context("the current state cannot be opened")?;
    let size = opened
        .iter()
        .flatten()
        .map(|f| f.sb.size_bytes())
        .max()
        .unwrap_or(0);
    Ok(Target {
        size,
        qcow: qcow_options(plan, size, first.sb.block_size)?,
        uuid: first.sb.s_uuid,
        block_size: first.sb.block_size,
        blocks_count: first.sb.s_blocks_count,
    })
}

/// What the copies of the states found, gathered for the summary.
#[derive(Default)]
struct Tally {
    stats: CopyStats,
    /// Warnings not listed: (state, kind, number).
    omitted: Vec<(String, String, u64)>,
    warnings: Vec<(String, Warning)>,
    reports: Vec<StateReport>,
    /// The first written state's walk and superblock.
    main: Option<(ext::WalkResult, ext::Superblock)>,
}

impl Tally {
    /// Adds one copied state.
    fn add(
        &mut self,
        state: &StateInput<'_>,
        sb: &ext::Superblock,
        walked: ext::WalkResult,
        stats: CopyStats,
        copy_warnings: Vec<Warning>,
    ) {
        self.stats.bytes_copied += stats.bytes_copied;
        self.stats.unreadable_units += stats.unreadable_units;
        let unreadable = summary::unreadable_omitted(stats, copy_warnings.len());
        let kinds = walked.omitted.iter().cloned().chain(unreadable);
        self.omitted
            .extend(kinds.map(|(kind, n)| (state.name.clone(), kind, n)));
        let all: Vec<Warning> = walked
            .warnings
            .iter()
            .cloned()
            .chain(copy_warnings)
            .collect();
        self.reports.push(StateReport::walked(
            &state.name,
            state.date,
            &walked,
            all.len(),
        ));
        self.warnings
            .extend(all.into_iter().map(|w| (state.name.clone(), w)));
        if self.main.is_none() {
            self.main = Some((walked, sb.clone()));
        }
    }
}

/// Walks and copies every opened state into the sink, in order.
fn copy_states(
    sink: &mut dyn Sink,
    states: &[StateInput<'_>],
    opened: &[Option<Filesystem<&dyn BlockView>>],
    journals: &[journal::StateJournal<'_>],
    plan: &ExportPlan,
    tally: &mut Tally,
) -> Result<()> {
    let walk_opts = WalkOptions {
        data: plan.data,
        no_snapshot_files: plan.no_snapshots,
    };
    let count = opened.iter().flatten().count();
    let written = states
        .iter()
        .zip(opened)
        .zip(journals)
        .filter_map(|((s, f), j)| Some((s, f.as_ref()?, j)));
    for (k, (state, fs, j)) in written.enumerate() {
        let label = match count {
            1 => state.name.clone(),
            n => format!("state {}/{n}: {}", k + 1, state.name),
        };
        let mut walked = ext::walk(fs, &walk_opts);
        journal::complete(&mut walked, &fs.sb, j, &walk_opts, plan.replay);
        let (stats, copy_warnings) = copy_state(sink, state, fs, &walked, plan.progress, &label)?;
        tally.add(state, &fs.sb, walked, stats, copy_warnings);
    }
    Ok(())
}

/// How to write QCOW2: the cluster size for a `size`-byte disk and the export record.
fn qcow_options(plan: &ExportPlan, size: u64, block_size: u32) -> Result<QcowOptions> {
    let Format::Qcow2 {
        version,
        cluster_size,
    } = plan.format
    else {
        return Ok(QcowOptions::default());
    };
    let record = ExportRecord {
        file_data: plan.data,
        snapshot_files: !plan.no_snapshots,
        zeros_recorded: version == Version::V3,
        replayed: plan.replay,
    };
    Ok(QcowOptions {
        cluster_bits: choose_cluster_bits(size, block_size, plan.data, cluster_size)?,
        version,
        extensions: vec![(EXT_EXPORT_RECORD, record.encode().to_vec())],
        backing: None,
    })
}

/// The inverted chain's table: with several written states, one snapshot per state (ids
/// 1..n in order, the current state first); the first written state is active.
fn chain_table(states: &[StateInput<'_>], written: &[bool]) -> Table {
    let names: Vec<&StateInput<'_>> = states
        .iter()
        .zip(written)
        .filter(|(_, w)| **w)
        .map(|(s, _)| s)
        .collect();
    let entries = if names.len() > 1 {
        names
            .iter()
            .enumerate()
            .map(|(k, s)| TableEntry {
                state: k,
                id: (k + 1).to_string(),
                name: s.name.clone(),
                date: s.date,
            })
            .collect()
    } else {
        Vec::new()
    };
    Table {
        active: 0,
        entries,
        extensions: Vec::new(),
    }
}

/// A new archive's table: its only state, named `name`, dated now, id 1.
fn archive_table(name: &str) -> Table {
    let (date, _) = crate::text::now_and_name();
    Table {
        active: 0,
        entries: vec![TableEntry {
            state: 0,
            id: "1".into(),
            name: name.to_string(),
            date,
        }],
        extensions: Vec::new(),
    }
}

/// A table given over the input states, moved onto the written ones: entries of states that
/// were left out (and already reported) are dropped.
fn remap_table(t: Table, written: &[bool]) -> Table {
    let index: Vec<Option<usize>> = written
        .iter()
        .scan(0usize, |n, &w| {
            let i = w.then_some(*n);
            *n += usize::from(w);
            Some(i)
        })
        .collect();
    Table {
        active: index[t.active].unwrap_or(0),
        entries: t
            .entries
            .into_iter()
            .filter_map(|e| index[e.state].map(|s| TableEntry { state: s, ..e }))
            .collect(),
        extensions: t.extensions,
    }
}

/// Opened filesystems of the states (`None` for an older state that cannot be opened), the
/// reports of those left out and a warning for each.
type Opened<'a> = (
    Vec<Option<Filesystem<&'a dyn BlockView>>>,
    Vec<StateReport>,
    Vec<(String, Warning)>,
);

/// Opens every state's filesystem. The first state must open (it uses `-b`/`-B`, or falls
/// back to a backup superblock that validates, with a warning); another one that does not is
/// reported and left out.
fn open_states<'a>(states: &[StateInput<'a>], plan: &ExportPlan) -> Result<Opened<'a>> {
    let (mut opened, mut reports, mut warnings) = (Vec::new(), Vec::new(), Vec::new());
    for (k, s) in states.iter().enumerate() {
        if k == 0 {
            let (fs, backup) = open_with_fallback(s.view, plan)?;
            if let Some(b) = backup {
                warnings.push((s.name.clone(), fallback_warning(&b)));
            }
            opened.push(Some(fs));
            continue;
        }
        match Filesystem::open(s.view, &OpenOptions::default()) {
            Ok(fs) => opened.push(Some(fs)),
            Err(e) => {
                let report = StateReport::unopenable(&s.name, &e.to_string());
                let reason = report.error.clone().unwrap_or_default();
                warnings.push((
                    s.name.clone(),
                    Warning {
                        inode: None,
                        block: None,
                        offset: None,
                        reason,
                    },
                ));
                reports.push(report);
                opened.push(None);
            }
        }
    }
    Ok((opened, reports, warnings))
}

/// The warning for an export through a backup superblock chosen automatically.
fn fallback_warning(b: &ext::BackupUsed) -> Warning {
    Warning {
        inode: None,
        block: None,
        offset: None,
        reason: format!(
            "the primary superblock (byte 1024) is unusable ({}); exported through the backup superblock at block {} (block size {}, as e2fsck does); the primary's bytes are copied as they are",
            b.primary_error, b.block.0, b.block_size
        ),
    }
}

/// Copies one walked state into the sink as its next state. Returns the counts and the
/// unreadable blocks.
fn copy_state(
    sink: &mut dyn Sink,
    state: &StateInput<'_>,
    fs: &Filesystem<&dyn BlockView>,
    walked: &ext::WalkResult,
    progress: bool,
    label: &str,
) -> Result<(CopyStats, Vec<Warning>)> {
    let bs = fs.sb.block_size;
    sink.begin_state()?;
    let skip = sink.skip_unchanged(fs, walked)?;
    let runs = without(
        walked.blocks.extents().iter().map(|e| e.start..e.end()),
        &skip,
    );
    let bytes = runs.iter().map(|r| r.end - r.start).sum::<u64>() * u64::from(bs);
    let progress = Progress::new(progress, bytes, label);
    let mut warnings = Vec::new();
    let runs = runs.into_iter().map(|r| (r.start, r.end - r.start));
    let stats = copy_runs(state.view, bs, runs, sink, &progress, &mut warnings)?;
    sink.end_state()?;
    progress.finish();
    Ok((stats, warnings))
}

/// The sorted ranges `runs` minus the sorted ranges `skip`.
fn without(runs: impl Iterator<Item = Range<u64>>, skip: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut k = 0;
    for r in runs {
        let mut b = r.start;
        while k < skip.len() && skip[k].end <= b {
            k += 1;
        }
        let mut j = k;
        while b < r.end {
            match skip.get(j).filter(|s| s.start < r.end) {
                Some(s) if s.start <= b => b = b.max(s.end),
                Some(s) => {
                    out.push(b..s.start);
                    b = s.end;
                }
                None => {
                    out.push(b..r.end);
                    b = r.end;
                }
            }
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_without_skipped_ranges() {
        let runs = vec![0..10, 20..30, 40..50];
        let skip = vec![5..8, 9..25, 45..60];
        assert_eq!(
            without(runs.into_iter(), &skip),
            vec![0..5, 8..9, 25..30, 40..45]
        );
        assert_eq!(without(std::iter::once(0..4), &[]), vec![0..4]);
    }

    #[test]
    fn tables_follow_the_written_states() {
        let t = Table {
            extensions: Vec::new(),
            active: 0,
            entries: (0..3)
                .map(|s| TableEntry {
                    state: s,
                    id: s.to_string(),
                    name: format!("n{s}"),
                    date: (0, 0),
                })
                .collect(),
        };
        let r = remap_table(t, &[true, false, true]);
        let got: Vec<(usize, &str)> = r.entries.iter().map(|e| (e.state, e.id.as_str())).collect();
        assert_eq!(got, vec![(0, "0"), (1, "2")]);
    }
}

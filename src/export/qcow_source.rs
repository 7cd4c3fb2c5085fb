//! A QCOW2 SOURCE: converted to raw (`-r`), one internal snapshot exported
//! (`--from-snapshot`), or every state carried across into the new image with its id, name
//! and date (the default); layers that share their L2 tables are written once.

use super::states::CURRENT;
use super::summary::Summary;
use super::{export_fs, write_states, Early, StateInput};
use crate::plan::{ExportPlan, Format, Mode, Older};
use crate::qcow_view::{check_state_size, choose_layer, QcowView};
use crate::record::ExportRecord;
use crate::sink::{Table, TableEntry};
use anyhow::{bail, Context, Result};
use qcow::{Layer, LayerReader, Reader};

/// A QCOW2 source: converted to raw, one state exported, or every state carried across.
pub(super) fn from_qcow2(plan: &ExportPlan) -> Result<Summary> {
    let reader = plan.source().qcow_reader()?;
    let path = plan.source().path();
    let ours = ExportRecord::of(&reader).is_some();
    if let Some(name) = plan.source().view().snapshot() {
        let chosen =
            choose_layer(&reader, Some(name)).with_context(|| path.display().to_string())?;
        let layer = reader.layer(chosen.layer)?;
        let label = format!("{}: {}", path.display(), chosen.label);
        check_state_size(&reader, &layer, chosen.size, &label, ours)?;
        let view = QcowView::new(&layer, chosen.size);
        let states = [StateInput {
            name: name.to_string(),
            date: chosen.date,
            view: &view,
        }];
        return write_states(&states, plan, Early::default(), None);
    }
    if reader.snapshots().is_empty() || plan.format() == Format::Raw {
        let layer = reader.layer(Layer::Active)?;
        let label = format!("{}: the active state", path.display());
        check_state_size(&reader, &layer, reader.virtual_size(), &label, ours)?;
        return export_fs(&QcowView::new(&layer, reader.virtual_size()), plan);
    }
    if !matches!(plan.mode(), Mode::Export { older: Older::None }) {
        bail!(
            "{} has {} internal snapshots, which the export keeps as its older states; --snapshot, --fs-snapshots, --name and --append cannot add others to them (export one state with --from-snapshot)",
            path.display(),
            reader.snapshots().len()
        );
    }
    carry_states(&reader, plan)
}

/// Which layers to write, in writing order (the active layer, then the snapshots newest first;
/// a layer over the same L2 tables as one already listed is not listed again), and for every
/// layer the index of the written state that holds its content. Layer 0 is the active one,
/// layer k > 0 snapshot k − 1.
fn distinct_layers(reader: &Reader, layers: &[LayerReader<'_>]) -> (Vec<usize>, Vec<usize>) {
    let snaps = reader.snapshots();
    let mut order: Vec<usize> = (1..layers.len()).collect();
    order.sort_by_key(|&k| std::cmp::Reverse((snaps[k - 1].date_sec, snaps[k - 1].date_nsec)));
    order.insert(0, 0);
    let (mut written, mut state_of) = (Vec::new(), vec![0; layers.len()]);
    for &k in &order {
        match written
            .iter()
            .position(|&w: &usize| layers[w].same_tables(&layers[k]))
        {
            Some(j) => state_of[k] = j,
            None => {
                state_of[k] = written.len();
                written.push(k);
            }
        }
    }
    (written, state_of)
}

/// Every state of a QCOW2 source with internal snapshots: the active layer, then the snapshots
/// newest first; layers with the same L2 tables are written once and shared. The snapshot
/// table keeps the source's ids, names and dates.
fn carry_states(reader: &Reader, plan: &ExportPlan) -> Result<Summary> {
    let snaps = reader.snapshots();
    let mut layers: Vec<LayerReader<'_>> = vec![reader.layer(Layer::Active)?];
    for (i, s) in snaps.iter().enumerate() {
        layers.push(
            reader
                .layer(Layer::Snapshot(i))
                .with_context(|| format!("snapshot {} ({})", s.id, s.name))?,
        );
    }
    let (written, state_of) = distinct_layers(reader, &layers);
    let size_of = |k: usize| match k {
        0 => reader.virtual_size(),
        _ => snaps[k - 1].disk_size.unwrap_or(reader.virtual_size()),
    };
    let ours = ExportRecord::of(reader).is_some();
    for &k in &written {
        let label = match k {
            0 => format!("{}: the active state", plan.source().path().display()),
            _ => format!(
                "{}: snapshot {:?}",
                plan.source().path().display(),
                snaps[k - 1].name
            ),
        };
        check_state_size(reader, &layers[k], size_of(k), &label, ours)?;
    }
    let views: Vec<QcowView<'_>> = written
        .iter()
        .map(|&k| QcowView::new(&layers[k], size_of(k)))
        .collect();
    let states: Vec<StateInput<'_>> = written
        .iter()
        .zip(&views)
        .map(|(&k, v)| StateInput {
            name: match k {
                0 => CURRENT.to_string(),
                _ => snaps[k - 1].name.clone(),
            },
            date: match k {
                0 => (0, 0),
                _ => (snaps[k - 1].date_sec, snaps[k - 1].date_nsec),
            },
            view: v,
        })
        .collect();
    let table = Table {
        active: state_of[0],
        entries: snaps
            .iter()
            .enumerate()
            .map(|(i, s)| TableEntry {
                state: state_of[i + 1],
                id: s.id.clone(),
                name: s.name.clone(),
                date: (s.date_sec, s.date_nsec),
            })
            .collect(),
        extensions: Vec::new(),
    };
    write_states(&states, plan, Early::default(), Some(table))
}

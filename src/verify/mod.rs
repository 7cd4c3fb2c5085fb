//! `e2image-rs verify IMAGE [--json]`: an image's structure checked as `qemu-img check`
//! checks it, then every cluster against the image's cluster checksum table (docs/verify.md).
//! Exit 0 clean, 3 bad clusters or structure damage found, 1 unreadable. The filesystem
//! objects that bad data clusters hold are named in `objects.rs`.

mod objects;

use crate::exit::{EXIT_OK, EXIT_WARNINGS};
use crate::sys::report;
use anyhow::{Context, Result};
use qcow::{BadCluster, Layer, Reader, TableStatus, VerifyReport};
use serde::Serialize;
use std::fs::File;
use std::path::Path;

/// The `--json` document of `verify`.
#[derive(Debug, Serialize)]
struct Doc {
    /// Clusters read and compared with their checksum.
    clusters_checked: u64,
    /// `current`, `absent`, `stale` or `damaged`.
    table: &'static str,
    bad: Vec<BadDoc>,
    structure: StructureDoc,
    notes: Vec<String>,
    exit_status: i32,
}

/// One bad cluster.
#[derive(Debug, Serialize)]
struct BadDoc {
    /// Host byte offset.
    host_offset: u64,
    /// `data`, `l2`, `l1`, `refcount_block`, `refcount_table`, `snapshot_table`, `table`,
    /// `unreferenced`.
    kind: &'static str,
    /// The states using it: `active`, or a snapshot's name (its id when it has no name).
    states: Vec<String>,
    /// The guest byte offset it holds (the first state's), if it holds guest data or maps it.
    guest_offset: Option<u64>,
    /// The filesystem objects it holds (data clusters; in the first state using it), when
    /// known: "inode table of group 0", "directory block of inode 12", "data of inode 13
    /// (file block 4)", "journal", ...
    ext_object: Option<String>,
}

/// Structure findings.
#[derive(Debug, Serialize)]
struct StructureDoc {
    errors: Vec<String>,
    leaks: Vec<String>,
}

/// Runs `verify` on `image`, prints the report; returns the exit status.
///
/// # Errors
/// The image cannot be opened or read (exit status 1).
pub fn run(image: &Path, json: bool) -> Result<i32> {
    let file = File::open(image).with_context(|| format!("cannot open {}", image.display()))?;
    let (names, cluster_size) = state_names(image)?;
    let r = qcow::verify(file).with_context(|| format!("cannot verify {}", image.display()))?;
    let mut doc = document(&r, &names);
    name_ext_objects(image, &r, cluster_size, &mut doc);
    if json {
        report::json(&doc);
    } else {
        print_text(image, &doc);
    }
    Ok(doc.exit_status)
}

/// The names of the image's snapshots, by index (name, else id), and its cluster size.
fn state_names(image: &Path) -> Result<(Vec<String>, u64)> {
    let file = File::open(image).with_context(|| format!("cannot open {}", image.display()))?;
    let r = Reader::open_with_backing(file)
        .with_context(|| format!("cannot read {}", image.display()))?;
    let names = r
        .snapshots()
        .iter()
        .map(|s| {
            if s.name.is_empty() {
                s.id.clone()
            } else {
                s.name.clone()
            }
        })
        .collect();
    Ok((names, r.cluster_size()))
}

/// Fills in `ext_object` of the bad data clusters: the objects their guest blocks hold in the
/// filesystem of the first state using them (one walk per state involved).
fn name_ext_objects(image: &Path, r: &VerifyReport, cluster_size: u64, doc: &mut Doc) {
    let mut by_layer: Vec<(Layer, Vec<usize>)> = Vec::new();
    for (i, b) in r.bad.iter().enumerate() {
        if b.kind != qcow::ClusterKind::Data {
            continue;
        }
        let Some(u) = b.uses.iter().find(|u| u.guest_offset.is_some()) else {
            continue;
        };
        match by_layer.iter_mut().find(|(l, _)| *l == u.layer) {
            Some((_, v)) => v.push(i),
            None => by_layer.push((u.layer, vec![i])),
        }
    }
    for (layer, idx) in by_layer {
        let ranges: Vec<(u64, u64)> = idx
            .iter()
            .map(|&i| {
                let u = r.bad[i].uses.iter().find(|u| u.layer == layer);
                (u.and_then(|u| u.guest_offset).unwrap_or(0), cluster_size)
            })
            .collect();
        for (&i, name) in idx.iter().zip(objects::name_objects(image, layer, &ranges)) {
            doc.bad[i].ext_object = name;
        }
    }
}

fn document(r: &VerifyReport, names: &[String]) -> Doc {
    let mut notes = Vec::new();
    let table = match &r.table {
        TableStatus::Current => "current",
        TableStatus::Absent => {
            notes.push("no cluster checksum table (an image QEMU wrote, a v2 image, or one written before e2image-rs kept tables): structure checked only".into());
            "absent"
        }
        TableStatus::Stale => {
            notes.push("the cluster checksum table is stale (another program opened the image read-write and cleared auto-clear bit 40): structure checked only".into());
            "stale"
        }
        TableStatus::Damaged(why) => {
            notes.push(format!(
                "the cluster checksum table is damaged ({why}): structure checked only"
            ));
            "damaged"
        }
    };
    let bad: Vec<BadDoc> = r.bad.iter().map(|b| bad_doc(b, names)).collect();
    let damaged = !bad.is_empty() || !r.structure_errors.is_empty() || !r.leaks.is_empty();
    Doc {
        clusters_checked: r.clusters_checked,
        table,
        bad,
        structure: StructureDoc {
            errors: r.structure_errors.clone(),
            leaks: r.leaks.clone(),
        },
        notes,
        exit_status: if damaged { EXIT_WARNINGS } else { EXIT_OK },
    }
}

fn bad_doc(b: &BadCluster, names: &[String]) -> BadDoc {
    let mut states: Vec<String> = Vec::new();
    for u in &b.uses {
        let name = match u.layer {
            Layer::Active => "active".to_string(),
            Layer::Snapshot(i) => names.get(i).cloned().unwrap_or_else(|| format!("#{i}")),
        };
        if !states.contains(&name) {
            states.push(name);
        }
    }
    BadDoc {
        host_offset: b.host_offset,
        kind: b.kind.name(),
        states,
        guest_offset: b.uses.iter().find_map(|u| u.guest_offset),
        ext_object: None,
    }
}

fn print_text(image: &Path, d: &Doc) {
    for n in &d.notes {
        report::note(n);
    }
    for e in &d.structure.errors {
        report::line(&format!("structure: {e}"));
    }
    for e in &d.structure.leaks {
        report::line(&format!("leak: {e}"));
    }
    for b in &d.bad {
        let guest = b
            .guest_offset
            .map(|g| format!(", guest offset {g:#x}"))
            .unwrap_or_default();
        let states = if b.states.is_empty() {
            String::new()
        } else {
            format!(", used by {}", b.states.join(", "))
        };
        let object = b
            .ext_object
            .as_ref()
            .map(|o| format!(", holds {o}"))
            .unwrap_or_default();
        report::line(&format!(
            "bad cluster at host offset {:#x}: {}{states}{guest}{object}",
            b.host_offset, b.kind
        ));
    }
    let verdict = match (d.exit_status == EXIT_OK, d.table) {
        (false, _) => "damaged",
        (true, "current") => "clean",
        (true, _) => "structure clean, content not checked",
    };
    report::line(&format!(
        "{}: {verdict}: {} clusters checked, {} bad, {} structure errors, {} leaks (checksum table {})",
        image.display(),
        d.clusters_checked,
        d.bad.len(),
        d.structure.errors.len(),
        d.structure.leaks.len(),
        d.table
    ));
}

//! `e2image-rs snapshots IMAGE [--json]`: the states stored in a QCOW2 image, with the
//! clusters each shares with other states and the clusters it owns alone.

use crate::delta_record::DeltaRecord;
use crate::record::ExportRecord;
use anyhow::{bail, Context, Result};
use qcow::{Layer, Reader};
use serde_json::{json, Value};
use std::path::Path;

/// Prints the snapshot table of `image` with per-state cluster counts.
///
/// # Errors
/// Not a QCOW2 image (the message says when it is an ext filesystem), corrupt tables.
pub fn list(image: &Path, as_json: bool) -> Result<()> {
    let reader = open(image)?;
    let stats = reader
        .cluster_stats()
        .with_context(|| format!("{}: cannot count clusters", image.display()))?;
    let count = |layer: Layer| {
        stats
            .iter()
            .find(|s| s.layer == layer)
            .map_or((0, 0), |s| (s.shared_clusters, s.exclusive_clusters))
    };
    let rows: Vec<Value> = reader
        .snapshots()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (shared, own) = count(Layer::Snapshot(i));
            json!({
                "id": s.id, "name": s.name, "date_sec": s.date_sec, "date_nsec": s.date_nsec,
                "date": crate::text::format_date(i64::from(s.date_sec)),
                "shared_clusters": shared, "own_clusters": own,
            })
        })
        .collect();
    let active = count(Layer::Active);
    let record = ExportRecord::of(&reader);
    let (delta, backing) = (DeltaRecord::of(&reader), reader.backing_file()?);
    if as_json {
        let record = record.map(|r| {
            json!({ "file_data": r.file_data, "snapshot_files": r.snapshot_files,
                    "zeros_recorded": r.zeros_recorded })
        });
        let delta = delta.map(|d| {
            json!({ "from": d.from_name, "to": d.to_name,
                    "replaced_clusters": d.replaced_clusters })
        });
        let active = json!({ "shared_clusters": active.0, "own_clusters": active.1 });
        let doc = json!({ "cluster_size": reader.cluster_size(), "export_record": record,
                          "delta": delta, "backing_file": backing,
                          "snapshots": rows, "active": active });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("cluster size {} bytes", reader.cluster_size());
    match record {
        Some(r) => println!("written by e2image-rs: {}", r.summary()),
        None => println!("no export record (not written by e2image-rs)"),
    }
    if let Some(d) = delta {
        println!(
            "delta {}..{}: {} clusters replaced (`e2image-rs apply` replays it onto FROM)",
            d.from_name, d.to_name, d.replaced_clusters
        );
    }
    if let Some(b) = backing {
        println!("backing file {b}");
    }
    print_table(&rows, active);
    Ok(())
}

/// Opens `image`, which must be a QCOW2 image.
fn open(image: &Path) -> Result<Reader> {
    if !crate::probe::is_qcow2(image)? {
        bail!(
            "{} is not a QCOW2 image{}",
            image.display(),
            match crate::probe::ext_family(image) {
                Some(f) => format!(" (it looks like an {f} filesystem; export it with -Q)"),
                None => String::new(),
            }
        );
    }
    crate::qcow_view::open_image(image, false)
}

/// The text table: one row per snapshot, then the active layer's (shared, own) counts.
fn print_table(rows: &[Value], active: (u64, u64)) {
    println!(
        "{:<4} {:<24} {:<20} {:>14} {:>14}",
        "ID", "NAME", "DATE", "SHARED", "OWN"
    );
    for r in rows {
        println!(
            "{:<4} {:<24} {:<20} {:>14} {:>14}",
            r["id"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap_or(""),
            r["date"].as_str().unwrap_or(""),
            r["shared_clusters"].as_u64().unwrap_or(0),
            r["own_clusters"].as_u64().unwrap_or(0)
        );
    }
    println!(
        "{:<4} {:<24} {:<20} {:>14} {:>14}",
        "-", "(active layer)", "", active.0, active.1
    );
}

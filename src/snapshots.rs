//! `e2image-rs snapshots IMAGE [--json]`: the states stored in a QCOW2 image, with the
//! clusters each shares with other states and the clusters it owns alone.

use crate::delta_record::DeltaRecord;
use crate::record::ExportRecord;
use crate::sys::report;
use crate::text::{size, Date};
use anyhow::{bail, Context, Result};
use qcow::{Layer, Reader};
use serde::Serialize;
use std::fmt::Write;
use std::path::Path;

/// The `--json` document of `snapshots`.
#[derive(Debug, Serialize)]
struct Listing {
    /// Cluster size, bytes.
    cluster_size: u64,
    /// The guest disk's size, bytes.
    virtual_size: u64,
    export_record: Option<RecordDoc>,
    /// The export record itself, for the text report.
    #[serde(skip)]
    record: Option<ExportRecord>,
    delta: Option<DeltaDoc>,
    backing_file: Option<String>,
    snapshots: Vec<Row>,
    active: Clusters,
    exit_status: i32,
}

/// What the export record says.
#[derive(Debug, Serialize)]
struct RecordDoc {
    file_data: bool,
    snapshot_files: bool,
    zeros_recorded: bool,
    replayed: bool,
}

/// What the delta record says.
#[derive(Debug, Serialize)]
struct DeltaDoc {
    from: String,
    to: String,
    replaced_clusters: u64,
    replaced_bytes: u64,
}

/// One snapshot.
#[derive(Debug, Serialize)]
struct Row {
    id: String,
    name: String,
    #[serde(flatten)]
    date: Date,
    #[serde(flatten)]
    clusters: Clusters,
}

/// Clusters a layer shares with others and owns alone, in clusters and bytes.
#[derive(Debug, Serialize)]
struct Clusters {
    shared_clusters: u64,
    shared_bytes: u64,
    own_clusters: u64,
    own_bytes: u64,
}

impl Clusters {
    fn new((shared, own): (u64, u64), cluster: u64) -> Clusters {
        Clusters {
            shared_clusters: shared,
            shared_bytes: shared.saturating_mul(cluster),
            own_clusters: own,
            own_bytes: own.saturating_mul(cluster),
        }
    }
}

/// Prints the snapshot table of `image` with per-state cluster counts (all of it is read
/// first: the report is printed in one go).
///
/// # Errors
/// Not a QCOW2 image (the message says when it is an ext filesystem), corrupt tables.
pub fn list(image: &Path, as_json: bool) -> Result<()> {
    let listing = read(image)?;
    if as_json {
        report::json(&listing);
    } else {
        report::text(&render(&listing));
    }
    Ok(())
}

/// Reads everything the listing says.
fn read(image: &Path) -> Result<Listing> {
    let reader = open(image)?;
    let stats = reader
        .cluster_stats()
        .with_context(|| format!("{}: cannot count clusters", image.display()))?;
    let cluster = reader.cluster_size();
    let count = |layer: Layer| {
        let c = stats
            .iter()
            .find(|s| s.layer == layer)
            .map_or((0, 0), |s| (s.shared_clusters, s.exclusive_clusters));
        Clusters::new(c, cluster)
    };
    let snapshots = reader
        .snapshots()
        .iter()
        .enumerate()
        .map(|(i, s)| Row {
            id: s.id.clone(),
            name: s.name.clone(),
            date: Date::new(i64::from(s.date_sec), s.date_nsec),
            clusters: count(Layer::Snapshot(i)),
        })
        .collect();
    let record = ExportRecord::of(&reader);
    let export_record = record.map(|r| RecordDoc {
        file_data: r.file_data,
        snapshot_files: r.snapshot_files,
        zeros_recorded: r.zeros_recorded,
        replayed: r.replayed,
    });
    let delta = DeltaRecord::of(&reader).map(|d| DeltaDoc {
        replaced_bytes: d.replaced_clusters.saturating_mul(cluster),
        from: d.from_name,
        to: d.to_name,
        replaced_clusters: d.replaced_clusters,
    });
    Ok(Listing {
        cluster_size: cluster,
        virtual_size: reader.virtual_size(),
        export_record,
        record,
        delta,
        backing_file: reader.backing_file()?,
        snapshots,
        active: count(Layer::Active),
        exit_status: crate::exit::EXIT_OK,
    })
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

/// The text report: what the image is, then one row per snapshot and the active layer's
/// (shared, own) counts.
fn render(l: &Listing) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "cluster size {}", size(l.cluster_size));
    let _ = match &l.record {
        Some(r) => writeln!(s, "written by e2image-rs: {}", r.summary()),
        None => writeln!(s, "no export record (not written by e2image-rs)"),
    };
    if let Some(d) = &l.delta {
        let _ = writeln!(
            s,
            "delta {}..{}: {} clusters ({}) replaced (`e2image-rs apply` replays it onto FROM)",
            d.from,
            d.to,
            d.replaced_clusters,
            size(d.replaced_bytes)
        );
    }
    if let Some(b) = &l.backing_file {
        let _ = writeln!(s, "backing file {b}");
    }
    let row = |s: &mut String, id: &str, name: &str, date: &str, c: &Clusters| {
        let _ = writeln!(
            s,
            "{id:<4} {name:<24} {date:<20} {:>14} {:>14}",
            c.shared_clusters, c.own_clusters
        );
    };
    let _ = writeln!(
        s,
        "{:<4} {:<24} {:<20} {:>14} {:>14}",
        "ID", "NAME", "DATE", "SHARED", "OWN"
    );
    for r in &l.snapshots {
        let date = crate::text::format_date(r.date.date_sec);
        row(&mut s, &r.id, &r.name, &date, &r.clusters);
    }
    row(&mut s, "-", "(active layer)", "", &l.active);
    s
}

//! `e2image-rs snapshots IMAGE [--json]`: the states stored in a QCOW2 image, with the
//! clusters each shares with other states and the clusters it owns alone.

use crate::export_record::ExportRecord;
use anyhow::{bail, Context, Result};
use qcow::{Layer, Reader};
use serde_json::json;
use std::path::Path;

/// Prints the snapshot table of `image` with per-state cluster counts.
pub fn list(image: &Path, as_json: bool) -> Result<()> {
    if !crate::export::is_qcow2(image)? {
        bail!(
            "{} is not a QCOW2 image{}",
            image.display(),
            match ext_family(image) {
                Some(f) => format!(" (it looks like an {f} filesystem; export it with -Q)"),
                None => String::new(),
            }
        );
    }
    let file =
        std::fs::File::open(image).with_context(|| format!("cannot open {}", image.display()))?;
    let reader =
        Reader::open(file).with_context(|| format!("{}: invalid QCOW2 image", image.display()))?;
    let stats = reader
        .cluster_stats()
        .with_context(|| format!("{}: cannot count clusters", image.display()))?;
    let count = |layer: Layer| {
        stats
            .iter()
            .find(|s| s.layer == layer)
            .map_or((0, 0), |s| (s.shared_clusters, s.exclusive_clusters))
    };
    let mut rows = Vec::new();
    for (i, s) in reader.snapshots().iter().enumerate() {
        let (shared, own) = count(Layer::Snapshot(i));
        rows.push(json!({
            "id": s.id, "name": s.name, "date_sec": s.date_sec, "date_nsec": s.date_nsec,
            "date": format_date(i64::from(s.date_sec)),
            "shared_clusters": shared, "own_clusters": own,
        }));
    }
    let (shared, own) = count(Layer::Active);
    let active = json!({ "shared_clusters": shared, "own_clusters": own });
    let record = ExportRecord::of(&reader);
    if as_json {
        let record = record.map(|r| {
            json!({ "file_data": r.file_data, "snapshot_files": r.snapshot_files,
                    "zeros_recorded": r.zeros_recorded })
        });
        let doc = json!({ "cluster_size": reader.cluster_size(), "export_record": record,
                          "snapshots": rows, "active": active });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("cluster size {} bytes", reader.cluster_size());
    match record {
        Some(r) => println!("written by e2image-rs: {}", r.summary()),
        None => println!("no export record (not written by e2image-rs)"),
    }
    println!(
        "{:<4} {:<24} {:<20} {:>14} {:>14}",
        "ID", "NAME", "DATE", "SHARED", "OWN"
    );
    for r in &rows {
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
        "-", "(active layer)", "", shared, own
    );
    Ok(())
}

/// "ext2", "ext3" or "ext4" when `path` holds an ext filesystem's primary superblock.
fn ext_family(path: &Path) -> Option<&'static str> {
    use ext::superblock::{compat, incompat};
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).ok()?;
    let mut raw = vec![0u8; ext::superblock::SUPERBLOCK_SIZE];
    f.read_exact_at(&mut raw, ext::superblock::SUPERBLOCK_OFFSET)
        .ok()?;
    let sb = ext::Superblock::parse(&raw).ok()?;
    Some(
        if sb.has_incompat(incompat::EXTENTS | incompat::BIT64 | incompat::FLEX_BG) {
            "ext4"
        } else if sb.has_compat(compat::HAS_JOURNAL) {
            "ext3"
        } else {
            "ext2"
        },
    )
}

/// `YYYY-MM-DD hh:mm:ss` (UTC) for seconds since the epoch (negative: before 1970).
pub fn format_date(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil-from-days (proleptic Gregorian), after Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(format_date(0), "1970-01-01 00:00:00");
        assert_eq!(format_date(1_704_067_200), "2024-01-01 00:00:00");
        assert_eq!(format_date(951_782_400 + 3661), "2000-02-29 01:01:01");
        assert_eq!(format_date(-1), "1969-12-31 23:59:59");
        assert_eq!(format_date((3 << 32) - 1), "2378-04-22 19:24:47");
    }
}

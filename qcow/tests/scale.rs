//! Scale: peak memory of a sparse multi-state 15 TiB export (must stay far below the 64 MiB
//! budget), and ignored benchmarks: writer throughput (3 GiB of data) and the editor on a
//! 1000-state archive (run with `cargo test -p qcow --release --test scale -- --ignored
//! --nocapture`).
#![allow(clippy::print_stdout, clippy::print_stderr)] // tests report what they measured

mod common;

use std::fs::File;
use std::time::Instant;

use common::*;
use qcow::{Layer, Reader, SnapshotSpec, Version, WriterOptions};

/// Peak resident set size of this process in KiB (Linux `VmHWM`), if available.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// 15 TiB, 8 KiB clusters (a 15 MiB L1 per state), three states with a cluster every 16 GiB
/// plus the last cluster. The only test in this binary, so `VmHWM` measures it alone.
#[test]
fn sparse_15tib_three_states_memory() {
    let dir = scratch("scale-15t");
    let img = dir.join("big.qcow2");
    let (cb, c) = (13u32, 8192u64);
    let size = 15u64 << 40;
    let last = size / c - 1;
    let step = (16u64 << 30) / c;
    let mut w = new_writer(
        &img,
        WriterOptions {
            cluster_bits: cb,
            virtual_size: size,
            version: Version::V3,
        },
    );
    let s0 = w.new_state();
    let gs: Vec<u64> = (0..size / c).step_by(step as usize).chain([last]).collect();
    for &g in &gs {
        w.write_clusters(s0, g, &cluster_data(g, c)).unwrap();
    }
    let s1 = w.new_state();
    for &g in &gs {
        let tag = if g % (7 * step) == 0 { g + 1 } else { g };
        w.write_clusters_dedup(s1, g, &cluster_data(tag, c), s0)
            .unwrap();
    }
    let s2 = w.clone_state(s1).unwrap();
    let spec = |state, id: &str, name: &str| SnapshotSpec {
        state,
        id: id.into(),
        name: name.into(),
        date_sec: 0,
        date_nsec: 0,
    };
    let summary = w
        .finish(s0, &[spec(s1, "1", "s1"), spec(s2, "2", "s2")])
        .unwrap();
    assert_eq!(
        summary.l2_tables as usize,
        gs.len() + gs.iter().filter(|&&g| g % (7 * step) == 0).count()
    );
    let peak = peak_rss_kib();
    eprintln!("15 TiB, 3 states: {summary:?}, peak RSS {peak:?} KiB");
    if let Some(kib) = peak {
        assert!(kib < 48 << 10, "peak RSS {kib} KiB");
    }
    let r = Reader::open(File::open(&img).unwrap()).unwrap();
    let mut n = 0;
    r.layer(Layer::Snapshot(1))
        .unwrap()
        .for_each_allocated(|_, _| {
            n += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(n, gs.len());
    if require_for("the qemu-img check", &QEMU) {
        check_clean(&img);
    }
}

/// 3 GiB of data at 64 KiB and 4 KiB clusters: prints MB/s of `write_clusters` + `finish`.
#[test]
#[ignore]
fn throughput_3gib() {
    let dir = scratch("scale-throughput");
    for cb in [16u32, 12] {
        let img = dir.join(format!("t{cb}.qcow2"));
        let c = 1u64 << cb;
        let total = 3u64 << 30;
        let chunk = 4u64 << 20; // the caller hands over 4 MiB at a time
        let mut data = vec![0u8; chunk as usize];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i * 31 % 251) as u8;
        }
        let start = Instant::now();
        let mut w = new_writer(
            &img,
            WriterOptions {
                cluster_bits: cb,
                virtual_size: 4 << 30,
                version: Version::V3,
            },
        );
        let s = w.new_state();
        for k in 0..total / chunk {
            w.write_clusters(s, k * chunk / c, &data).unwrap();
        }
        let written = start.elapsed().as_secs_f64();
        let summary = w.finish(s, &[]).unwrap();
        let secs = start.elapsed().as_secs_f64();
        eprintln!("cluster_bits {cb}: {:.0} MB/s ({secs:.2} s, {written:.2} s before finish), {summary:?}", total as f64 / secs / 1e6);
        let _ = std::fs::remove_file(&img);
    }
}

/// Cost of the editor on a 1000-state archive (8 GiB disk, 4 KiB clusters, ~2 Ki data
/// clusters per state, 5 % changed per state): prints the time and bytes written to append a
/// state, then to remove the 100 oldest. Run with
/// `cargo test -p qcow --release --test scale -- --ignored --nocapture editor`.
#[test]
#[ignore]
fn editor_on_1000_states() {
    use common::archive::*;
    let dir = scratch("scale-editor");
    let img = dir.join("archive.qcow2");
    let geo = Geo {
        cluster_bits: 12,
        size: 8 << 30,
        version: Version::V3,
    };
    let mut e = first_state(geo, 2048, 5);
    let mut states = Vec::new();
    for i in 0..1001 {
        states.push(Named {
            name: format!("s{i}"),
            expect: e.clone(),
        });
        e = evolve(geo, &e, 5, 1000 + i);
    }
    let next = states.pop().unwrap();
    states.reverse();
    let start = Instant::now();
    write_archive(&img, geo, &states);
    let size = std::fs::metadata(&img).unwrap().len();
    eprintln!(
        "1000 states written in {:.1} s: {size} bytes",
        start.elapsed().as_secs_f64()
    );

    let start = Instant::now();
    let mut ed = open_editor(&img);
    let opened = start.elapsed().as_secs_f64();
    let s = append_state(&mut ed, geo, &next).unwrap();
    let written = start.elapsed().as_secs_f64();
    let summary = ed.commit(Some(s), &[spec(s, "1001", "s1000")]).unwrap();
    let total = start.elapsed().as_secs_f64();
    eprintln!("append: open {opened:.3} s, states written {written:.3} s, total {total:.3} s, {summary:?}");
    eprintln!(
        "file {} -> {} bytes",
        size,
        std::fs::metadata(&img).unwrap().len()
    );

    let start = Instant::now();
    let mut ed = open_editor(&img);
    (901..1001).for_each(|i| ed.remove_snapshot(i).unwrap());
    let summary = ed.commit(None, &[]).unwrap();
    eprintln!(
        "remove 100 oldest: {:.3} s, {summary:?}",
        start.elapsed().as_secs_f64()
    );

    let size = std::fs::metadata(&img).unwrap().len();
    let next = Named {
        name: "s1001".into(),
        expect: evolve(geo, &next.expect, 5, 7),
    };
    let start = Instant::now();
    let mut ed = open_editor(&img);
    let s = append_state(&mut ed, geo, &next).unwrap();
    let summary = ed.commit(Some(s), &[spec(s, "1002", "s1001")]).unwrap();
    let after = std::fs::metadata(&img).unwrap().len();
    let secs = start.elapsed().as_secs_f64();
    eprintln!("append after the removal: {secs:.3} s, file {size} -> {after} bytes, {summary:?}");
    require_qemu!();
    let start = Instant::now();
    check_clean(&img);
    eprintln!("qemu-img check: {:.1} s", start.elapsed().as_secs_f64());
}

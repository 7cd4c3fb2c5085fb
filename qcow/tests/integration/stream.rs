//! One-pass images (`qcow::stream`): written strictly in order into a `Vec` (as into a pipe)
//! and saved, they check clean with `qemu-img check` and the independent verifier and hold
//! every state exactly (the same archives as the file writer's, of the same size); read back in
//! one pass from a reader that cannot seek, every cluster comes out in host order; compressed
//! payloads, backing files, extensions, v2, 512-byte clusters; a cut stream and a QEMU layout.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;

use crate::common::archive::{
    assert_archive, evolve, first_state, spec, write_archive, Cl, Geo, Named,
};
use crate::common::{cluster_data, run_ok, scratch};
use qcow::{
    DataKind, DataRef, Layer, SnapshotSpec, StateId, StreamImage, StreamOpen, StreamOptions,
    StreamPlan, StreamWriter, Version,
};

/// What the data clusters of a plan hold, in data ref order.
type Payloads = Vec<Vec<u8>>;

/// Plans `states` (newest first) as the file writer's archives are written: each older state
/// shares every data cluster equal to the next newer state's; returns the plan, the states'
/// ids and the bytes of every data cluster in writing order.
fn plan_archive(geo: Geo, states: &[Named]) -> (StreamPlan, Vec<StateId>, Payloads) {
    let mut p = StreamPlan::new(geo.opts()).unwrap();
    let (mut ids, mut data) = (Vec::new(), Vec::new());
    let mut prev: BTreeMap<u64, (u64, DataRef)> = BTreeMap::new();
    for st in states {
        let s = p.new_state();
        let mut now = BTreeMap::new();
        for (&g, &cl) in &st.expect {
            match cl {
                Cl::Zero => p.add_zero(s, g, 1).unwrap(),
                Cl::Data(tag) => {
                    let r = match prev.get(&g) {
                        Some(&(t, r)) if t == tag => {
                            p.add_shared(s, g, r).unwrap();
                            r
                        }
                        _ => {
                            data.push(cluster_data(tag, geo.c()));
                            p.add_data(s, g, DataKind::Plain).unwrap()
                        }
                    };
                    now.insert(g, (tag, r));
                }
            }
        }
        prev = now;
        ids.push(s);
    }
    (p, ids, data)
}

fn specs(states: &[Named], ids: &[StateId]) -> Vec<SnapshotSpec> {
    states
        .iter()
        .zip(ids)
        .enumerate()
        .map(|(i, (st, &s))| spec(s, &(i + 1).to_string(), &st.name))
        .collect()
}

/// Writes a finished plan into a `Vec`, data clusters from `data`.
fn write_stream(
    p: StreamPlan,
    active: StateId,
    specs: &[SnapshotSpec],
    data: &Payloads,
) -> Vec<u8> {
    let layout = p.finish(active, specs).unwrap();
    let size = layout.file_size();
    let mut w = StreamWriter::start(layout, Vec::new()).unwrap();
    for d in data {
        w.write_data(d).unwrap();
    }
    assert_eq!(w.next_data(), None);
    let (out, summary) = w.finish().unwrap();
    assert_eq!(out.len() as u64, size);
    assert_eq!(summary.file_size, size);
    out
}

fn chain(geo: Geo, n: usize) -> Vec<Named> {
    let mut states = vec![Named {
        name: "s0".into(),
        expect: first_state(geo, 60, 7),
    }];
    for k in 1..n {
        let e = evolve(geo, &states[k - 1].expect, 30, 11 + k as u64);
        states.push(Named {
            name: format!("s{k}"),
            expect: e,
        });
    }
    states
}

#[test]
fn streamed_archives_check_clean_and_equal_the_file_writers() {
    require_qemu!();
    let dir = scratch("stream-archives");
    for (cb, size, version) in [
        (16, 1u64 << 30, Version::V3),
        (12, 64 << 20, Version::V3),
        (9, 8 << 20, Version::V3),
        (16, 1 << 30, Version::V2),
    ] {
        let geo = Geo {
            cluster_bits: cb,
            size,
            version,
        };
        let states = chain(geo, 4);
        let (p, ids, data) = plan_archive(geo, &states);
        let bytes = write_stream(p, ids[0], &specs(&states, &ids), &data);
        let img = dir.join(format!("s-{cb}-{}.qcow2", version.number()));
        fs::write(&img, &bytes).unwrap();
        assert_archive(&img, geo, &states);
        let file = dir.join(format!("f-{cb}-{}.qcow2", version.number()));
        let summary = write_archive(&file, geo, &states);
        assert_eq!(bytes.len() as u64, summary.file_size, "cluster_bits {cb}");
        // Read back in one pass, from a reader that cannot seek.
        read_back(&bytes, geo, &states);
    }
}

/// Reads `bytes` in one pass: every state's mappings, the active layer's clusters in guest
/// order; a snapshot sharing older clusters is out of host order.
fn read_back(bytes: &[u8], geo: Geo, states: &[Named]) {
    let mut s = match StreamImage::open(bytes, StreamOptions::default()).unwrap() {
        StreamOpen::OnePass(s) => s,
        StreamOpen::Spool { reason, .. } => {
            panic!("a stream of ours is read in one pass: {reason}")
        }
    };
    let (reader, data) = s.parts();
    assert_eq!(reader.snapshots().len(), states.len());
    let active = reader.layer(Layer::Active).unwrap();
    let mut buf = vec![0u8; geo.c() as usize];
    for (&g, &cl) in &states[0].expect {
        data.read_cluster(&active, g, &mut buf).unwrap();
        match cl {
            Cl::Data(tag) => assert!(buf == cluster_data(tag, geo.c()), "cluster {g}"),
            Cl::Zero => assert!(buf.iter().all(|&b| b == 0)),
        }
    }
    let end = data.drain().unwrap();
    assert_eq!(end, bytes.len() as u64);
    let StreamOpen::OnePass(s) = StreamImage::open(bytes, StreamOptions::default()).unwrap() else {
        unreachable!()
    };
    let r = s.reader();
    assert!(s.in_guest_order(&r.layer(Layer::Active).unwrap()).unwrap());
}

#[test]
fn payloads_backing_and_extensions_stream_clean() {
    require_qemu!();
    let dir = scratch("stream-payloads");
    let geo = Geo {
        cluster_bits: 16,
        size: 256 << 20,
        version: Version::V3,
    };
    let c = geo.c() as usize;
    let mut p = StreamPlan::new(geo.opts()).unwrap();
    p.add_header_extension(0x1234_5678, b"record").unwrap();
    let s = p.new_state();
    let mut data = Vec::new();
    let mut want: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for g in [0u64, 1, 2, 5, 9, 100, 4095] {
        let plain = cluster_data(g, geo.c());
        let text: Vec<u8> = (0..c)
            .map(|i| b"abcdefgh"[(i / 97 + g as usize) % 8])
            .collect();
        if g % 2 == 0 {
            let z = deflate(&text);
            let len = z.len() as u32;
            p.add_data(s, g, DataKind::Payload { len }).unwrap();
            data.push(z);
            want.insert(g, text);
        } else {
            p.add_data(s, g, DataKind::Plain).unwrap();
            data.push(plain.clone());
            want.insert(g, plain);
        }
    }
    let bytes = write_stream(p, s, &[], &data);
    let img = dir.join("p.qcow2");
    fs::write(&img, &bytes).unwrap();
    crate::common::check_clean(&img);
    crate::common::verify::verify_image(&img);
    crate::common::assert_active_equals(&img, geo.size, geo.c(), &want);
    let info = run_ok("qemu-img", &["info", img.to_str().unwrap()]);
    assert!(info.contains("compat: 1.1"), "{info}");
    // The same bytes read in one pass, payloads inflated.
    let StreamOpen::OnePass(mut si) =
        StreamImage::open(&bytes[..], StreamOptions::default()).unwrap()
    else {
        panic!("one pass");
    };
    assert_eq!(
        si.reader().header_extension(0x1234_5678),
        Some(&b"record"[..])
    );
    let (reader, d) = si.parts();
    let layer = reader.layer(Layer::Active).unwrap();
    let mut buf = vec![0u8; c];
    for (&g, w) in &want {
        d.read_cluster(&layer, g, &mut buf).unwrap();
        assert!(buf == *w, "cluster {g}");
    }
    // A backing file: QEMU reads the unallocated clusters from it.
    let base = dir.join("base.raw");
    fs::write(&base, vec![0x5au8; geo.size as usize / 64]).unwrap();
    run_ok(
        "truncate",
        &["-s", &geo.size.to_string(), base.to_str().unwrap()],
    );
    let mut p = StreamPlan::new(geo.opts()).unwrap();
    p.set_backing_file("base.raw", "raw").unwrap();
    let s = p.new_state();
    p.add_data(s, 3, DataKind::Plain).unwrap();
    p.add_zero(s, 4, 1).unwrap();
    let bytes = write_stream(p, s, &[], &vec![cluster_data(3, geo.c())]);
    let img = dir.join("over.qcow2");
    fs::write(&img, &bytes).unwrap();
    crate::common::check_clean(&img);
    let info = run_ok("qemu-img", &["info", img.to_str().unwrap()]);
    assert!(info.contains("backing file: base.raw"), "{info}");
    let raw = dir.join("over.raw");
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            img.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
    let got = fs::read(&raw).unwrap();
    assert!(
        got[..c].iter().all(|&b| b == 0x5a),
        "cluster 0 from the backing file"
    );
    assert!(got[3 * c..4 * c] == cluster_data(3, geo.c())[..]);
    assert!(
        got[4 * c..5 * c].iter().all(|&b| b == 0),
        "a zero cluster hides the backing file"
    );
}

/// Raw deflate with window bits 12, as QEMU inflates it.
fn deflate(data: &[u8]) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    let mut z = Compress::new_with_window_bits(Compression::new(6), false, 12);
    let mut out = Vec::with_capacity(data.len() + 64);
    z.compress_vec(data, &mut out, FlushCompress::Finish)
        .unwrap();
    out
}

/// A reader handing out at most 777 bytes per call and counting them, as a pipe may.
struct Trickle<'a> {
    data: &'a [u8],
    at: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(777).min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[test]
fn cut_streams_say_where_they_ended_and_order_is_enforced() {
    let geo = Geo {
        cluster_bits: 12,
        size: 64 << 20,
        version: Version::V3,
    };
    let states = chain(geo, 3);
    let (p, ids, data) = plan_archive(geo, &states);
    let bytes = write_stream(p, ids[0], &specs(&states, &ids), &data);
    let (StreamOpen::OnePass(head), _) = (
        StreamImage::open(&bytes[..], StreamOptions::default()).unwrap(),
        (),
    ) else {
        panic!("one pass");
    };
    let data_start = head.reader().file_len();
    for cut in [
        50usize,
        4096,
        data_start as usize - 10,
        data_start as usize + 5000,
    ] {
        let t = Trickle {
            data: &bytes[..cut],
            at: 0,
        };
        let e = match StreamImage::open(t, StreamOptions::default()) {
            Err(e) => e.to_string(),
            Ok(StreamOpen::OnePass(mut s)) => {
                let (reader, d) = s.parts();
                let layer = reader.layer(Layer::Active).unwrap();
                let mut buf = vec![0u8; geo.c() as usize];
                let mut err = None;
                for &g in states[0].expect.keys() {
                    if let Err(e) = d.read_cluster(&layer, g, &mut buf) {
                        err = Some(e.to_string());
                        break;
                    }
                }
                err.unwrap_or_else(|| d.drain().unwrap_err().to_string())
            }
            Ok(StreamOpen::Spool { reason, .. }) => panic!("spooled: {reason}"),
        };
        assert!(
            e.contains(&format!("ended after {cut} bytes")),
            "cut {cut}: {e}"
        );
    }
    // Clusters asked for out of host order: the stream cannot go back.
    let StreamOpen::OnePass(mut s) =
        StreamImage::open(&bytes[..], StreamOptions::default()).unwrap()
    else {
        panic!("one pass");
    };
    let (reader, d) = s.parts();
    let layer = reader.layer(Layer::Active).unwrap();
    let keys: Vec<u64> = states[0]
        .expect
        .iter()
        .filter(|(_, c)| matches!(c, Cl::Data(_)))
        .map(|(g, _)| *g)
        .collect();
    let mut buf = vec![0u8; geo.c() as usize];
    d.read_cluster(&layer, keys[5], &mut buf).unwrap();
    let e = d.read_cluster(&layer, keys[1], &mut buf).unwrap_err();
    assert!(e.to_string().contains("already passed"), "{e}");
}

#[test]
fn a_qemu_layout_is_handed_back_for_spooling() {
    require_qemu!();
    let dir = scratch("stream-qemu");
    let img = dir.join("q.qcow2");
    let i = img.to_str().unwrap();
    run_ok("qemu-img", &["create", "-q", "-f", "qcow2", i, "1G"]);
    run_ok(
        "qemu-io",
        &[
            "-c",
            "write -P 0x11 0 6M",
            "-c",
            "write -P 0x22 700M 64k",
            i,
        ],
    );
    run_ok("qemu-img", &["snapshot", "-c", "snap", i]);
    let bytes = fs::read(&img).unwrap();
    match StreamImage::open(&bytes[..], StreamOptions::default()).unwrap() {
        StreamOpen::Spool {
            consumed,
            mut input,
            reason,
        } => {
            assert!(
                reason.contains("spread") || reason.contains("straddles"),
                "{reason}"
            );
            let mut rest = Vec::new();
            input.read_to_end(&mut rest).unwrap();
            assert_eq!(consumed.len() + rest.len(), bytes.len());
            assert!(
                consumed == bytes[..consumed.len()],
                "the bytes read come back as they were"
            );
        }
        StreamOpen::OnePass(_) => panic!("QEMU interleaves its L2 tables with data"),
    }
}

//! Zero clusters (v3 L2 entries with only the zero flag, `Writer::write_zero_clusters`): mixed
//! with data and unallocated clusters in the active layer and in snapshots, with L2 tables
//! shared between states (identical tables, deduplicated data, a cloned state). Checked by the
//! independent refcount/COPIED verifier, by this crate's reader (zero mappings, zeros read), and
//! by QEMU: `qemu-img check` clean and `qemu-img map` reporting `"zero": true, "data": false`.
//! Version 2 refuses zero clusters.

use crate::common::*;
use qcow::{
    ClusterMapping, Error, Layer, Reader, SnapshotSpec, StateId, Version, Writer, WriterOptions,
};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

const CLUSTER_BITS: u32 = 12;
const C: u64 = 1 << CLUSTER_BITS;
/// Entries per L2 table at 4 KiB clusters.
const EPL: u64 = C / 8;
/// 4 L2 windows of 512 clusters.
const SIZE: u64 = 4 * EPL * C;

/// How a guest cluster is expected to be stored.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Want {
    Data(Vec<u8>),
    Zero,
}

/// Expected state: guest cluster → data or zero (absent = unallocated).
type Expect = BTreeMap<u64, Want>;

fn data(tag: u64) -> Vec<u8> {
    cluster_data(tag, C)
}

fn opts(version: Version) -> WriterOptions {
    WriterOptions {
        cluster_bits: CLUSTER_BITS,
        virtual_size: SIZE,
        version,
    }
}

/// Writes `e` into `state` in guest order, zero runs with `write_zero_clusters` and data runs
/// with `write_clusters` (or `write_clusters_dedup` against `base`, as the exporter does).
fn write_expect(w: &mut Writer, state: StateId, e: &Expect, base: Option<StateId>) {
    let items: Vec<(u64, &Want)> = e.iter().map(|(&g, v)| (g, v)).collect();
    let mut i = 0;
    while i < items.len() {
        let (g, first) = items[i];
        let mut j = i + 1;
        while j < items.len()
            && items[j].0 == g + (j - i) as u64
            && matches!(items[j].1, Want::Zero) == matches!(first, Want::Zero)
        {
            j += 1;
        }
        if matches!(first, Want::Zero) {
            w.write_zero_clusters(state, g, (j - i) as u64).unwrap();
        } else {
            let mut bytes = Vec::new();
            for (_, v) in &items[i..j] {
                if let Want::Data(d) = v {
                    bytes.extend_from_slice(d);
                }
            }
            match base {
                Some(b) => w.write_clusters_dedup(state, g, &bytes, b).unwrap(),
                None => w.write_clusters(state, g, &bytes).unwrap(),
            }
        }
        i = j;
    }
}

/// The content model of an expectation (zero clusters read as zeros, like holes).
fn model(e: &Expect) -> Model {
    e.iter()
        .filter_map(|(&g, v)| match v {
            Want::Data(d) => Some((g, d.clone())),
            Want::Zero => None,
        })
        .collect()
}

/// The newest state: data, zero and unallocated clusters in every window; window 1 holds only
/// zero clusters.
fn newest() -> Expect {
    let mut e = Expect::new();
    for g in 0..3 {
        e.insert(g, Want::Data(data(g + 1)));
    }
    for g in 3..6 {
        e.insert(g, Want::Zero);
    }
    e.insert(10, Want::Data(data(11)));
    e.insert(20, Want::Zero);
    for g in 600..610 {
        e.insert(g, Want::Zero);
    }
    e.insert(1030, Want::Data(data(1031)));
    e.insert(1031, Want::Zero);
    e.insert(1799, Want::Zero);
    e.insert(1800, Want::Data(data(1801)));
    e
}

/// An older state written against the newest one: window 0 differs (new data, data over zero,
/// zero over data, same zero, unallocated over zero), windows 1 and 2 are identical (their
/// tables are shared: zero entries only, and deduplicated data plus a zero entry), window 3 is
/// empty.
fn older() -> Expect {
    let mut e = Expect::new();
    e.insert(0, Want::Data(data(100)));
    e.insert(1, Want::Data(data(2))); // deduplicated
    e.insert(2, Want::Zero); // zero where the newest has data
    e.insert(3, Want::Data(data(104))); // data where the newest has zero
    e.insert(4, Want::Zero); // the same zero
                             // 5: unallocated where the newest has zero
    for g in 600..610 {
        e.insert(g, Want::Zero);
    }
    e.insert(1030, Want::Data(data(1031))); // deduplicated
    e.insert(1031, Want::Zero);
    e
}

/// A clone of the newest state, extended in window 3 (whose table it then copies: the zero at
/// 1799 must survive the reload) with a zero and a data cluster.
fn clone_of(newest: &Expect) -> Expect {
    let mut e = newest.clone();
    e.insert(1900, Want::Zero);
    e.insert(1901, Want::Data(data(1902)));
    e
}

fn spec(state: StateId, id: &str, name: &str) -> SnapshotSpec {
    SnapshotSpec {
        state,
        id: id.into(),
        name: name.into(),
        date_sec: 1_700_000_000,
        date_nsec: 0,
    }
}

/// Writes the three states: newest (active layer), older and clone (snapshots 1 and 2).
fn build(img: &Path) -> qcow::WriterSummary {
    let (n, o) = (newest(), older());
    let mut w = new_writer(img, opts(Version::V3));
    assert_eq!(w.version(), Version::V3);
    let a = w.new_state();
    write_expect(&mut w, a, &n, None);
    let b = w.new_state();
    write_expect(&mut w, b, &o, Some(a));
    let c = w.clone_state(a).unwrap();
    let added: Expect = clone_of(&n)
        .into_iter()
        .filter(|(g, _)| !n.contains_key(g))
        .collect();
    write_expect(&mut w, c, &added, None);
    // The writer's own view: zero clusters map no host cluster.
    assert_eq!(w.lookup(a, 3).unwrap(), None);
    assert_eq!(w.lookup(c, 1799).unwrap(), None);
    assert!(w.lookup(a, 0).unwrap().is_some());
    w.finish(a, &[spec(b, "1", "older"), spec(c, "2", "clone")])
        .unwrap()
}

/// Asserts `layer` of `img`, read with this crate's reader, is exactly `e`: zero mappings for
/// the zero clusters, normal ones for data, nothing else allocated; every byte as expected.
fn assert_reader_layer(img: &Path, layer: Layer, e: &Expect) {
    let r = Reader::open(File::open(img).unwrap()).unwrap();
    let lr = r.layer(layer).unwrap();
    let mut seen = Expect::new();
    let mut buf = vec![0u8; C as usize];
    lr.for_each_allocated(|g, m| {
        lr.read_cluster(g, &mut buf).unwrap();
        let got = match m {
            ClusterMapping::Zero => {
                assert!(buf.iter().all(|&b| b == 0), "{layer:?} zero cluster {g}");
                Want::Zero
            }
            ClusterMapping::Normal { .. } => Want::Data(buf.clone()),
            other => panic!("{layer:?} guest cluster {g}: unexpected {other:?}"),
        };
        seen.insert(g, got);
        Ok(())
    })
    .unwrap();
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        e.keys().collect::<Vec<_>>(),
        "{layer:?} allocated clusters"
    );
    assert!(seen == *e, "{layer:?} contents");
    for g in 0..32 {
        let m = lr.mapping(g).unwrap();
        match e.get(&g) {
            None => assert_eq!(m, ClusterMapping::Unallocated, "{layer:?} mapping {g}"),
            Some(Want::Zero) => assert_eq!(m, ClusterMapping::Zero, "{layer:?} mapping {g}"),
            Some(Want::Data(_)) => assert!(matches!(m, ClusterMapping::Normal { .. })),
        }
    }
    let mut all = vec![0u8; (8 * C) as usize];
    lr.read_at(0, &mut all).unwrap();
    for g in 0..8 {
        let part = &all[(g * C) as usize..((g + 1) * C) as usize];
        match e.get(&g) {
            Some(Want::Data(d)) => assert!(part == d.as_slice(), "{layer:?} read_at {g}"),
            _ => assert!(part.iter().all(|&b| b == 0), "{layer:?} read_at {g}"),
        }
    }
}

/// Per guest cluster (from `qemu-img map --output=json` of the active layer): `Some(true)`
/// for data, `Some(false)` for a present zero cluster, absent for unallocated.
fn qemu_map(img: &Path) -> BTreeMap<u64, bool> {
    let out = run_ok(
        "qemu-img",
        &["map", "--output=json", "-f", "qcow2", img.to_str().unwrap()],
    );
    let field = |line: &str, key: &str| -> String {
        let at = line
            .find(&format!("\"{key}\": "))
            .unwrap_or_else(|| panic!("no {key} in {line}"));
        let rest = &line[at + key.len() + 4..];
        rest[..rest.find([',', '}']).unwrap()].trim().to_string()
    };
    let mut map = BTreeMap::new();
    for line in out.lines().filter(|l| l.contains("\"start\"")) {
        let start: u64 = field(line, "start").parse().unwrap();
        let length: u64 = field(line, "length").parse().unwrap();
        let (present, zero, data) = (
            field(line, "present") == "true",
            field(line, "zero") == "true",
            field(line, "data") == "true",
        );
        if !present {
            assert!(zero && !data, "unallocated range: {line}");
            continue;
        }
        assert!(
            zero != data,
            "present range is neither zero nor data: {line}"
        );
        for g in start / C..(start + length).div_ceil(C) {
            map.insert(g, data);
        }
    }
    map
}

fn assert_qemu_map(img: &Path, e: &Expect) {
    let want: BTreeMap<u64, bool> = e
        .iter()
        .map(|(&g, v)| (g, matches!(v, Want::Data(_))))
        .collect();
    assert_eq!(qemu_map(img), want, "qemu-img map of {}", img.display());
}

#[test]
fn zero_clusters_in_active_layer_and_snapshots() {
    let dir = scratch("zero-clusters");
    let img = dir.join("z.qcow2");
    let summary = build(&img);
    let (n, o, cl) = (newest(), older(), clone_of(&newest()));
    // Data clusters only: newest 6, older 2 new (0 and 3; 1 and 1030 shared), clone 1.
    assert_eq!(summary.data_clusters, 6 + 2 + 1);
    assert_eq!(summary.shared_data_refs, 2);
    // Newest 4 tables; older: window 0 own, windows 1 and 2 shared; clone: window 3 own.
    assert_eq!(summary.l2_tables, 4 + 1 + 1);
    let v = verify::verify_image(&img);
    assert_eq!(v.copied_data + v.shared_data, 6, "active data entries");

    assert_reader_layer(&img, Layer::Active, &n);
    assert_reader_layer(&img, Layer::Snapshot(0), &o);
    assert_reader_layer(&img, Layer::Snapshot(1), &cl);

    require_qemu!();
    check_clean(&img);
    assert_active_equals(&img, SIZE, C, &model(&n));
    assert_snapshot_equals(&img, "older", SIZE, C, &model(&o));
    assert_snapshot_equals(&img, "clone", SIZE, C, &model(&cl));
    assert_qemu_map(&img, &n);
    // Applying a snapshot makes its L1 active: QEMU maps it and still finds the image clean.
    for (name, e) in [("older", &o), ("clone", &cl)] {
        let copy = copy_to(&img, &format!("applied-{name}.qcow2"));
        run_ok(
            "qemu-img",
            &["snapshot", "-a", name, copy.to_str().unwrap()],
        );
        check_clean(&copy);
        assert_qemu_map(&copy, e);
        assert_reader_layer(&copy, Layer::Active, e);
    }
}

#[test]
fn zero_clusters_follow_write_order_rules() {
    let dir = scratch("zero-clusters-rules");
    let mut w = new_writer(&dir.join("r.qcow2"), opts(Version::V3));
    let s = w.new_state();
    w.write_clusters(s, 4, &data(5)).unwrap();
    let invalid = |r: Result<(), Error>| matches!(r, Err(Error::InvalidArgument(_)));
    assert!(invalid(w.write_zero_clusters(s, 4, 1)), "not increasing");
    assert!(
        invalid(w.write_zero_clusters(s, 4 * EPL - 1, 2)),
        "past the end"
    );
    let other = w.new_state();
    assert!(invalid(w.write_zero_clusters(other, 4 * EPL, 1)));
    // A run crossing an L2 window boundary, then data right after it.
    w.write_zero_clusters(s, EPL - 3, 6).unwrap();
    assert!(invalid(w.write_clusters(s, EPL + 2, &data(1))));
    w.write_clusters(s, EPL + 3, &data(9)).unwrap();
    let img = dir.join("r.qcow2");
    let summary = w.finish(s, &[]).unwrap();
    assert_eq!(summary.data_clusters, 2);
    verify::verify_image(&img);
    let mut e = Expect::new();
    e.insert(4, Want::Data(data(5)));
    for g in EPL - 3..EPL + 3 {
        e.insert(g, Want::Zero);
    }
    e.insert(EPL + 3, Want::Data(data(9)));
    assert_reader_layer(&img, Layer::Active, &e);
    require_qemu!();
    check_clean(&img);
    assert_qemu_map(&img, &e);
}

#[test]
fn v2_refuses_zero_clusters() {
    let dir = scratch("zero-clusters-v2");
    let img = dir.join("v2.qcow2");
    let mut w = new_writer(&img, opts(Version::V2));
    assert_eq!(w.version(), Version::V2);
    let s = w.new_state();
    assert!(matches!(
        w.write_zero_clusters(s, 0, 1),
        Err(Error::InvalidArgument(_))
    ));
    // The refusal leaves the state writable from the same cluster.
    w.write_clusters(s, 0, &data(1)).unwrap();
    w.finish(s, &[]).unwrap();
    let mut e = Expect::new();
    e.insert(0, Want::Data(data(1)));
    assert_reader_layer(&img, Layer::Active, &e);
    require_qemu!();
    check_clean(&img);
}

//! Archives for the editor tests: an image holding a filesystem's history as an inverted chain
//! (the active layer is the newest state, every state is an internal snapshot, newest first).
//! States are expectation maps (guest cluster → data tag or zero); this module writes them in
//! one go with the `Writer`, appends one with the `Editor`, and checks an image against them
//! with QEMU (`check`, `convert -l`, `snapshot -l`) and the independent verifier.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{cluster_data, new_writer, run_ok, XorShift};
use qcow::{CommitSummary, Editor, SnapshotSpec, StateId, Version, Writer, WriterOptions};

/// How one guest cluster of a state is stored: data (generated from a tag) or a zero cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cl {
    Data(u64),
    Zero,
}

/// A state: guest cluster → content (absent = unallocated).
pub type Expect = BTreeMap<u64, Cl>;

/// A named state of an archive.
#[derive(Clone, Debug)]
pub struct Named {
    pub name: String,
    pub expect: Expect,
}

/// The geometry of a test archive.
#[derive(Clone, Copy, Debug)]
pub struct Geo {
    pub cluster_bits: u32,
    pub size: u64,
    pub version: Version,
}

impl Geo {
    pub fn c(&self) -> u64 {
        1 << self.cluster_bits
    }

    pub fn guest_clusters(&self) -> u64 {
        self.size.div_ceil(self.c())
    }

    pub fn opts(&self) -> WriterOptions {
        WriterOptions {
            cluster_bits: self.cluster_bits,
            virtual_size: self.size,
            version: self.version,
        }
    }
}

/// A first state: about `n` data clusters spread over the disk, in runs.
pub fn first_state(geo: Geo, n: u64, seed: u64) -> Expect {
    let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut e = Expect::new();
    let gc = geo.guest_clusters();
    while (e.len() as u64) < n.min(gc) {
        let g = rng.below(gc);
        for k in 0..=rng.below(8) {
            if g + k < gc {
                e.insert(g + k, Cl::Data(rng.next()));
            }
        }
    }
    e.insert(gc - 1, Cl::Data(rng.next()));
    e
}

/// The next state: about `pct` % of the clusters change (new data, dropped, or zero in v3),
/// and new clusters appear, about as many as were dropped (at least one).
pub fn evolve(geo: Geo, prev: &Expect, pct: u64, seed: u64) -> Expect {
    let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut e = Expect::new();
    let mut dropped = 0;
    for (&g, &v) in prev {
        match (rng.below(100) < pct, rng.below(3)) {
            (false, _) => {
                e.insert(g, v);
            }
            (true, 0) => dropped += 1,
            (true, 1) if geo.version == Version::V3 => {
                e.insert(g, Cl::Zero);
            }
            (true, _) => {
                e.insert(g, Cl::Data(rng.next()));
            }
        }
    }
    for _ in 0..=dropped {
        let g = rng.below(geo.guest_clusters());
        e.insert(g, Cl::Data(rng.next()));
    }
    e
}

/// Writes `e` into `state` in guest order: zero runs with `write_zero_clusters`, data runs
/// with `write_clusters_dedup` against `base` (or `write_clusters` without one).
pub fn write_expect(w: &mut Writer, state: StateId, e: &Expect, base: Option<StateId>, c: u64) {
    try_write_expect(w, state, e, base, c).unwrap()
}

/// [`write_expect`], returning the writer's first error.
pub fn try_write_expect(
    w: &mut Writer,
    state: StateId,
    e: &Expect,
    base: Option<StateId>,
    c: u64,
) -> Result<(), qcow::Error> {
    let items: Vec<(u64, Cl)> = e.iter().map(|(&g, &v)| (g, v)).collect();
    let mut i = 0;
    while i < items.len() {
        let (g, first) = items[i];
        let zero = first == Cl::Zero;
        let mut j = i + 1;
        while j < items.len()
            && items[j].0 == g + (j - i) as u64
            && (items[j].1 == Cl::Zero) == zero
        {
            j += 1;
        }
        if zero {
            w.write_zero_clusters(state, g, (j - i) as u64)?;
        } else {
            let mut bytes = Vec::new();
            for &(_, v) in &items[i..j] {
                if let Cl::Data(tag) = v {
                    bytes.extend_from_slice(&cluster_data(tag, c));
                }
            }
            match base {
                Some(b) => w.write_clusters_dedup(state, g, &bytes, b)?,
                None => w.write_clusters(state, g, &bytes)?,
            }
        }
        i = j;
    }
    Ok(())
}

pub fn spec(state: StateId, id: &str, name: &str) -> SnapshotSpec {
    SnapshotSpec {
        state,
        id: id.into(),
        name: name.into(),
        date_sec: 1_700_000_000,
        date_nsec: 0,
    }
}

/// Writes `states` (newest first) in one go: the newest is the active layer and snapshot "1",
/// each older one is written deduplicated against the next newer one.
pub fn write_archive(path: &Path, geo: Geo, states: &[Named]) -> qcow::WriterSummary {
    let mut w = new_writer(path, geo.opts());
    let mut ids = Vec::new();
    let mut prev = None;
    for st in states {
        let s = w.new_state();
        write_expect(&mut w, s, &st.expect, prev, geo.c());
        ids.push(s);
        prev = Some(s);
    }
    let specs: Vec<SnapshotSpec> = states
        .iter()
        .zip(&ids)
        .enumerate()
        .map(|(i, (st, &s))| spec(s, &(i + 1).to_string(), &st.name))
        .collect();
    w.finish(ids[0], &specs).unwrap()
}

/// Opens `path` read-write for the editor.
pub fn open_editor(path: &Path) -> Editor {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    Editor::open(f).unwrap()
}

/// The next snapshot id: the largest numeric id + 1.
pub fn next_id(ed: &Editor) -> String {
    let max = ed
        .snapshots()
        .iter()
        .filter_map(|s| s.id.parse::<u64>().ok())
        .max();
    (max.unwrap_or(0) + 1).to_string()
}

/// Adds `st` to an open editor as the new active layer and the first snapshot, deduplicated
/// against the snapshot matching the active layer (else the newest snapshot).
pub fn append_state(ed: &mut Editor, geo: Geo, st: &Named) -> Result<StateId, qcow::Error> {
    let base = ed
        .snapshot_matching_active()
        .or((!ed.snapshots().is_empty()).then_some(0));
    let base = base.map(|i| ed.load_snapshot(i)).transpose()?;
    let w = ed.writer();
    let s = w.new_state();
    try_write_expect(w, s, &st.expect, base, geo.c())?;
    Ok(s)
}

/// Appends `st` to an open editor and commits.
pub fn append_with(mut ed: Editor, geo: Geo, st: &Named) -> Result<CommitSummary, qcow::Error> {
    let s = append_state(&mut ed, geo, st)?;
    let id = next_id(&ed);
    ed.commit(Some(s), &[spec(s, &id, &st.name)])
}

/// Opens `path`, appends `st` and commits.
pub fn append(path: &Path, geo: Geo, st: &Named) -> CommitSummary {
    append_with(open_editor(path), geo, st).unwrap()
}

/// SHA-256 of `e` as a raw disk of `geo.size` bytes, computed without writing it.
pub fn expect_digest(geo: Geo, e: &Expect) -> String {
    let c = geo.c();
    let mut h = Sha256::new();
    let zeros = vec![0u8; c as usize];
    for g in 0..geo.guest_clusters() {
        let len = (geo.size - g * c).min(c) as usize;
        match e.get(&g) {
            Some(Cl::Data(tag)) => h.update(&cluster_data(*tag, c)[..len]),
            _ => h.update(&zeros[..len]),
        }
    }
    format!("{:x}", h.finalize())
}

/// SHA-256 of a file.
pub fn file_digest(path: &Path) -> String {
    let mut h = Sha256::new();
    let mut f = File::open(path).unwrap();
    std::io::copy(&mut f, &mut h).unwrap();
    format!("{:x}", h.finalize())
}

/// SHA-256 of each snapshot (by name, via `qemu-img convert -l snapshot.name=X -O raw`) and
/// of the active layer (key ""), as QEMU reads them.
pub fn qemu_digests(img: &Path, names: &[String]) -> BTreeMap<String, String> {
    let dir = img.parent().unwrap();
    let raw = dir.join("digest.raw");
    let mut out = BTreeMap::new();
    for name in names.iter().chain(std::iter::once(&String::new())) {
        let _ = std::fs::remove_file(&raw);
        let (i, r) = (img.to_str().unwrap(), raw.to_str().unwrap());
        if name.is_empty() {
            run_ok("qemu-img", &["convert", "-O", "raw", i, r]);
        } else {
            let sel = format!("snapshot.name={name}");
            run_ok("qemu-img", &["convert", "-l", &sel, "-O", "raw", i, r]);
        }
        out.insert(name.clone(), file_digest(&raw));
    }
    let _ = std::fs::remove_file(&raw);
    out
}

/// Asserts the image holds exactly `states` (newest first, the newest also active): `qemu-img
/// check` clean, the independent verifier's refcounts and COPIED, every state's bytes as QEMU
/// reads them, and the `snapshot -l` listing.
pub fn assert_archive(img: &Path, geo: Geo, states: &[Named]) {
    super::verify::verify_image(img);
    super::check_clean(img);
    let names: Vec<String> = states.iter().map(|s| s.name.clone()).collect();
    let got = qemu_digests(img, &names);
    for st in states {
        assert_eq!(
            got[&st.name],
            expect_digest(geo, &st.expect),
            "state {}",
            st.name
        );
    }
    assert_eq!(
        got[""],
        expect_digest(geo, &states[0].expect),
        "active layer"
    );
    let list = run_ok("qemu-img", &["snapshot", "-l", img.to_str().unwrap()]);
    for n in &names {
        assert!(list.contains(n.as_str()), "{n} not listed:\n{list}");
    }
    assert_eq!(list.lines().count(), 2 + names.len(), "listing:\n{list}");
}

//! Crash safety of the `Editor` (rule: nothing committed changes before the header write):
//! one append and one removal are stopped at every physical event in turn (the write hook
//! returns an error there, or the process aborts there, in a child process). After each stop
//! `qemu-img check` is clean and every state reads as before the edit (or, past the header
//! write, as after it); a fresh open truncates the leftovers, the edit then succeeds, and so
//! does a further append.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use crate::common::archive::*;
use crate::common::*;
use qcow::{CommitSummary, Editor, Error, Version, WriteEvent};

const GEO: Geo = Geo {
    cluster_bits: 12,
    size: 8 << 20,
    version: Version::V3,
};

/// States oldest first: 1..=3 written by the writer, 4 appended by the editor (so the base
/// image has free clusters inside), 5 and 6 appended by the tests.
fn history() -> Vec<Named> {
    let mut e = first_state(GEO, 500, 21);
    let mut out = Vec::new();
    for i in 1..=6 {
        out.push(Named {
            name: format!("s{i}"),
            expect: e.clone(),
        });
        e = evolve(GEO, &e, 10, 300 + i as u64);
    }
    out
}

fn newest_first(s: &[Named]) -> Vec<Named> {
    s.iter().rev().cloned().collect()
}

/// The image before the edit under test: states 1..=4.
fn base_image(dir: &Path) -> PathBuf {
    let all = history();
    let img = dir.join("base.qcow2");
    write_archive(&img, GEO, &newest_first(&all[..3]));
    append(&img, GEO, &all[3]);
    img
}

type Op = fn(Editor) -> Result<CommitSummary, Error>;

fn append_fifth(ed: Editor) -> Result<CommitSummary, Error> {
    append_with(ed, GEO, &history()[4])
}

fn remove_second(mut ed: Editor) -> Result<CommitSummary, Error> {
    ed.remove_snapshot(1)?;
    ed.commit(None, &[])
}

/// Runs `op` on `img` with a hook recording every event, failing at event `fail_at` (1-based).
fn run(
    img: &Path,
    op: Op,
    fail_at: Option<usize>,
) -> (Vec<WriteEvent>, Result<CommitSummary, Error>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&events);
    let mut ed = open_editor(img);
    ed.set_write_hook(Box::new(move |e| {
        let mut seen = seen.lock().unwrap();
        seen.push(e);
        if Some(seen.len()) == fail_at {
            return Err(Error::InvalidArgument(format!("injected fault at {e:?}")));
        }
        Ok(())
    }));
    let r = op(ed);
    let events = events.lock().unwrap().clone();
    (events, r)
}

/// The 1-based index of the header write among `events`.
fn commit_point(events: &[WriteEvent]) -> usize {
    1 + events
        .iter()
        .position(|e| {
            matches!(
                e,
                WriteEvent::Write {
                    offset: 0,
                    len: 512
                }
            )
        })
        .expect("a header write")
}

/// Stops `op` at every event; `before` and `after` are the states (newest first) before and
/// after the edit.
fn every_event(name: &str, op: Op, before: &[Named], after: &[Named]) {
    require_qemu!();
    let dir = scratch(name);
    let base = base_image(&dir);
    let names = |s: &[Named]| s.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
    let old = qemu_digests(&base, &names(before));
    let (events, r) = run(&copy_to(&base, "count.qcow2"), op, None);
    r.unwrap();
    let point = commit_point(&events);
    eprintln!(
        "{name}: {} events, header write at {point}: {events:?}",
        events.len()
    );
    assert!(events.len() >= 6 && point > 2);
    let extra = Named {
        name: "s6".into(),
        expect: history()[5].expect.clone(),
    };
    for k in 1..=events.len() {
        let img = copy_to(&base, "work.qcow2");
        let (_, r) = run(&img, op, Some(k));
        assert!(r.is_err(), "the edit must stop at event {k}");
        check_clean(&img);
        if k <= point {
            assert_eq!(
                qemu_digests(&img, &names(before)),
                old,
                "stopped at event {k}"
            );
            op(open_editor(&img)).unwrap();
        } else {
            assert_archive(&img, GEO, after);
        }
        append(&img, GEO, &extra);
        let mut expected = after.to_vec();
        expected.insert(0, extra.clone());
        assert_archive(&img, GEO, &expected);
    }
}

#[test]
fn append_stopped_at_every_event() {
    let all = history();
    every_event(
        "editor-faults-append",
        append_fifth,
        &newest_first(&all[..4]),
        &newest_first(&all[..5]),
    );
}

#[test]
fn removal_stopped_at_every_event() {
    let all = history();
    let before = newest_first(&all[..4]);
    let mut after = before.clone();
    after.remove(1);
    every_event("editor-faults-remove", remove_second, &before, &after);
}

/// The leftovers of a stopped edit past the end are truncated by the next open.
#[test]
fn open_truncates_leftovers() {
    let dir = scratch("editor-leftovers");
    let base = base_image(&dir);
    let len = std::fs::metadata(&base).unwrap().len();
    let (events, _) = run(&copy_to(&base, "count.qcow2"), append_fifth, None);
    let point = commit_point(&events);
    let img = copy_to(&base, "work.qcow2");
    run(&img, append_fifth, Some(point)).1.unwrap_err();
    let grown = std::fs::metadata(&img).unwrap().len();
    assert!(grown > len, "the stopped append wrote past the end");
    let ed = open_editor(&img);
    assert_eq!(ed.leftover_bytes(), grown - len);
    assert_eq!(std::fs::metadata(&img).unwrap().len(), len);
    verify::verify_image(&img);
    let again = open_editor(&img);
    assert_eq!(again.leftover_bytes(), 0);
}

/// Child half of [`append_aborted_at_every_event`]: appends state 5 to the image named by
/// `QCOW_EDITOR_ABORT_IMG`, aborting the process at event `QCOW_EDITOR_ABORT_AT`.
#[test]
#[ignore = "run in a child process by append_aborted_at_every_event"]
fn abort_child() {
    let (Ok(img), Ok(at)) = (
        std::env::var("QCOW_EDITOR_ABORT_IMG"),
        std::env::var("QCOW_EDITOR_ABORT_AT"),
    ) else {
        return;
    };
    let at: usize = at.parse().unwrap();
    let mut n = 0;
    let mut ed = open_editor(Path::new(&img));
    ed.set_write_hook(Box::new(move |_| {
        n += 1;
        if n == at {
            std::process::abort();
        }
        Ok(())
    }));
    append_fifth(ed).unwrap();
}

/// The process aborts at every event of an append in turn (no error path runs): the image
/// checks clean and holds the states of before (or after) the edit.
#[test]
fn append_aborted_at_every_event() {
    require_qemu!();
    let dir = scratch("editor-abort");
    let base = base_image(&dir);
    let all = history();
    let (before, after) = (newest_first(&all[..4]), newest_first(&all[..5]));
    let (events, _) = run(&copy_to(&base, "count.qcow2"), append_fifth, None);
    let point = commit_point(&events);
    for k in 1..=events.len() {
        let img = copy_to(&base, "work.qcow2");
        let status = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "editor_faults::abort_child"])
            .env("QCOW_EDITOR_ABORT_IMG", &img)
            .env("QCOW_EDITOR_ABORT_AT", k.to_string())
            .output()
            .unwrap()
            .status;
        assert!(!status.success(), "the child must abort at event {k}");
        check_clean(&img);
        let states = if k <= point { &before } else { &after };
        assert_archive(&img, GEO, states);
        open_editor(&img);
    }
}

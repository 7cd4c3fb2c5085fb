//! One JSON convention for every command: dates as RFC 3339 in UTC with nanoseconds beside
//! `date_sec` and `date_nsec`, sizes in bytes beside clusters, lists as arrays (prune's and
//! append's `reasons`), `exit_status` in every document. And `prune` of a QCOW2 image that is
//! not an archive is refused (exit 1), not reported as "keep 0 states".

use crate::common::*;
use serde_json::Value;
use std::path::Path;

/// `e2image-rs ARGS` (which must exit `want`), its stdout parsed as JSON.
fn doc(args: &[&dyn AsRef<std::ffi::OsStr>], want: i32) -> Value {
    let o = expect(args, want);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)))
}

/// `v` holds a date: `date` is RFC 3339 UTC with 9 digits of nanoseconds, and says the same
/// instant as `date_sec` and `date_nsec`.
fn assert_date(v: &Value) {
    let text = v["date"].as_str().unwrap_or_else(|| panic!("no date: {v}"));
    let (sec, nsec) = (
        v["date_sec"].as_i64().unwrap(),
        v["date_nsec"].as_u64().unwrap(),
    );
    assert_eq!(text.len(), "2026-12-07T23:20:41.123456789Z".len(), "{text}");
    assert!(text.ends_with('Z') && text.as_bytes()[10] == b'T', "{text}");
    assert_eq!(text[20..29].parse::<u64>().unwrap(), nsec, "{text}");
    let o = sh(
        "date",
        &[&"-u", &"-d", &format!("@{sec}"), &"+%Y-%m-%dT%H:%M:%S"],
    );
    assert_eq!(stdout(&o).trim(), &text[..19], "{v}");
}

#[test]
fn every_document_follows_one_convention() {
    if !have_oracles() {
        skipped("e2fsprogs or qemu-img missing");
        return;
    }
    let dir = scratch("json-convention");
    let [a, b, c] = chain(&dir);
    let q = dir.join("arch.qcow2");
    expect(&[&"-Q", &"--name", &"a", &a, &q], 0);
    let appended = doc(
        &[
            &"-Q",
            &"--json",
            &"--append",
            &"--name",
            &"b",
            &"--keep-last",
            &"1",
            &b,
            &q,
        ],
        0,
    );
    let pruned = appended["pruned"].as_array().unwrap();
    assert_eq!(pruned.len(), 2, "{appended}");
    for p in pruned {
        assert_date(p);
        assert!(p["reasons"].is_array(), "{p}");
    }
    expect(&[&"-Q", &"--append", &"--name", &"c", &c, &q], 0);
    // snapshots: dates, and bytes beside clusters.
    let l = doc(&[&"snapshots", &"--json", &q], 0);
    let cluster = l["cluster_size"].as_u64().unwrap();
    assert_eq!(l["exit_status"], 0);
    for s in l["snapshots"].as_array().unwrap() {
        assert_date(s);
        for k in ["shared", "own"] {
            let n = s[format!("{k}_clusters")].as_u64().unwrap();
            assert_eq!(s[format!("{k}_bytes")].as_u64(), Some(n * cluster), "{s}");
        }
    }
    assert!(l["active"]["own_bytes"].is_u64(), "{l}");
    // prune: reasons are arrays of rule names.
    let p = doc(
        &[
            &"prune",
            &q,
            &"--keep-last",
            &"1",
            &"--keep-daily",
            &"5",
            &"--dry-run",
            &"--json",
        ],
        0,
    );
    assert_eq!(p["exit_status"], 0);
    // (b and c may carry the same second: which one is "last" is then the table's order.)
    let states = p["states"].as_array().unwrap();
    let mut reasons: Vec<Value> = states.iter().map(|s| s["reasons"].clone()).collect();
    reasons.sort_by_key(|r| r.to_string());
    let want = [
        serde_json::json!(["last", "daily"]),
        serde_json::json!(["oldest daily"]),
    ];
    assert_eq!(reasons, want, "{p}");
    for s in states {
        assert_date(s);
        let r = s["reasons"].as_array().unwrap();
        assert_eq!(s["kept"], !r.is_empty(), "{s}");
    }
    // rollback and apply: bytes beside blocks and clusters.
    let t = sparse_copy(&c, &dir.join("t.img"));
    let r = doc(
        &[
            &"rollback",
            &q,
            &t,
            &"--snapshot",
            &"b",
            &"--dry-run",
            &"--json",
        ],
        0,
    );
    let bs = r["block_size"].as_u64().unwrap();
    assert_eq!(r["dry_run"], true);
    assert_eq!(
        r["bytes_written"].as_u64(),
        Some(r["blocks_written"].as_u64().unwrap() * bs)
    );
    assert!(
        r["files_affected"].is_array() && r["conflicts"].is_array(),
        "{r}"
    );
    assert_eq!(r["exit_status"], 0);
    let d = dir.join("bc.qcow2");
    expect(&[&"-Q", &"--base", &b, &c, &d], 0);
    let tb = sparse_copy(&b, &dir.join("tb.img"));
    let ap = doc(&[&"apply", &d, &tb, &"--dry-run", &"--json"], 0);
    let cs = ap["cluster_size"].as_u64().unwrap();
    assert_eq!(
        ap["replaced_bytes"].as_u64(),
        Some(ap["replaced_clusters"].as_u64().unwrap() * cs)
    );
    assert_eq!(
        ap["zero_bytes"].as_u64(),
        Some(ap["zero_clusters"].as_u64().unwrap() * cs)
    );
    let patch = dir.join("bc.patch");
    let done = doc(&[&"apply", &d, &tb, &"--patch", &patch, &"--json"], 0);
    assert_eq!(
        (done["dry_run"].clone(), done["exit_status"].clone()),
        (false.into(), 0.into())
    );
    let undone = doc(&[&"apply", &"--undo", &patch, &tb, &"--json"], 0);
    assert_eq!(undone["command"], "apply", "{undone}");
    assert_eq!(undone["goal"], "from", "{undone}");
    assert_eq!(undone["patch_state"], "undone", "{undone}");
    // A rollback's --resume and --undo documents.
    let rp = dir.join("r.patch");
    doc(
        &[
            &"rollback",
            &q,
            &t,
            &"--snapshot",
            &"b",
            &"--patch",
            &rp,
            &"--force",
            &"--json",
        ],
        0,
    );
    let u = doc(&[&"rollback", &"--undo", &rp, &t, &"--json"], 0);
    assert_eq!(
        (u["command"].as_str(), u["goal"].as_str()),
        (Some("rollback"), Some("before"))
    );
    assert_eq!(sha256(&t), sha256(&c), "--undo gives the target back");
    // An export with several states: each state dated.
    let multi = doc(
        &[
            &"-Q",
            &"--json",
            &"--snapshot",
            &a,
            &c,
            &dir.join("m.qcow2"),
        ],
        0,
    );
    for s in multi["states"].as_array().unwrap() {
        assert_date(s);
    }
    assert!(multi["fs_bytes"].is_u64(), "{multi}");
}

#[test]
fn prune_refuses_what_is_not_an_archive() {
    if !have_oracles() {
        skipped("e2fsprogs or qemu-img missing");
        return;
    }
    let dir = scratch("json-prune-refusals");
    let img = small_image(&dir);
    let plain = dir.join("plain.qcow2");
    expect(&[&"-Q", &img, &plain], 0);
    let foreign = dir.join("foreign.qcow2");
    assert_eq!(
        code(&sh(
            "qemu-img",
            &[&"create", &"-q", &"-f", &"qcow2", &foreign, &"16M"]
        )),
        0
    );
    assert_eq!(
        code(&sh("qemu-img", &[&"snapshot", &"-c", &"s1", &foreign])),
        0
    );
    for (file, says) in [
        (&plain, "it has no states"),
        (&foreign, "not written by e2image-rs"),
        (&img, "not a QCOW2 image"),
    ] {
        let before = sha256(file);
        let o = expect(&[&"prune", file, &"--keep-last", &"1"], 1);
        let e = stderr(&o);
        assert!(e.contains(says) && e.contains("nothing was changed"), "{e}");
        let v = doc(&[&"prune", file, &"--keep-last", &"1", &"--json"], 1);
        assert_eq!(v["exit_status"], 1, "{v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{v}");
        assert_eq!(sha256(file), before, "{}", Path::new(file).display());
    }
}

#[test]
fn help_lists_a_and_the_new_options() {
    let o = expect(&[&"--help"], 0);
    assert!(stdout(&o).contains("alias: -a"), "{}", stdout(&o));
    for sub in ["rollback", "apply"] {
        let o = expect(&[&sub, &"--help"], 0);
        let h = stdout(&o);
        assert!(h.contains("--json") && h.contains("-p "), "{sub}: {h}");
    }
}

//! `--replay` wherever a state is read, on states the kernel wrote (as root, loop devices):
//! - a delta between two dirty copies (`--base`) or two dirty archive states (`-x`), made
//!   with `--replay`, applied onto a replica holding FROM replayed, gives TO replayed on
//!   every block of TO's copy set, and with `-d` the tree the kernel shows when it mounts TO;
//! - the systemd unit's commands, run in its order with stand-ins for lvcreate and lvremove
//!   (this kernel has no device-mapper): the snapshot of a mounted filesystem is appended
//!   replayed, and removed after the run — also when the append fails.

use crate::common::kernel::{append_synced, can_mount, mkfs, tree, write_synced, Mounted};
use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A 64 MiB ext4 the kernel wrote, and two copies taken while mounted with a long commit
/// interval (journal needs recovery), with changes between them: (FROM, TO).
fn dirty_pair(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let img = dir.join("fs.img");
    mkfs(&img, 64, &[]);
    let m = Mounted::new(&img, &dir.join("m0"), "rw")?;
    for i in 0..10 {
        std::fs::write(
            m.path(&format!("f{i}")),
            vec![b'a' + i as u8; 3000 * (i + 1)],
        )
        .unwrap();
    }
    drop(m);
    let m = Mounted::new(&img, &dir.join("m"), "rw,commit=600")?;
    std::fs::create_dir(m.path("one")).unwrap();
    for i in 0..20 {
        write_synced(&m.path(&format!("one/n{i}")), &vec![7u8; 500 * i]);
    }
    append_synced(&m.path("f1"), &[b'z'; 9000]);
    std::fs::File::open(&m.dir).unwrap().sync_all().unwrap();
    let from = sparse_copy(&img, &dir.join("from.img"));
    std::fs::create_dir(m.path("two")).unwrap();
    for i in 0..30 {
        write_synced(&m.path(&format!("two/t{i}")), &vec![9u8; 700 * i]);
    }
    std::fs::remove_file(m.path("f3")).unwrap();
    append_synced(&m.path("f2"), &[b'y'; 20000]);
    std::fs::File::open(&m.dir).unwrap().sync_all().unwrap();
    std::fs::File::open(m.path("one"))
        .unwrap()
        .sync_all()
        .unwrap();
    let to = sparse_copy(&img, &dir.join("to.img"));
    drop(m);
    Some((img, from, to))
}

/// Applies `delta` onto `replica` (a copy of FROM replayed) and checks it holds `to_raw` (TO
/// replayed) on every block TO's export holds; `e2fsck -fn` clean.
fn apply_and_check(delta: &Path, replica: &Path, to_raw: &Path, dir: &Path) {
    let patch = dir.join(format!(
        "{}.patch",
        delta.file_name().unwrap().to_string_lossy()
    ));
    let _ = std::fs::remove_file(&patch);
    expect_sub("apply", &[&delta, &replica, &"--patch", &patch], 0);
    let differ = blocks_not_in(to_raw, replica, 1024);
    assert!(
        differ.is_empty(),
        "{}: {} blocks of TO differ on the replica (first {:?})",
        delta.display(),
        differ.len(),
        differ.first()
    );
    assert_eq!(fsck(replica), 0, "{}", replica.display());
}

#[test]
fn deltas_between_replayed_kernel_states_apply() {
    if skip() {
        return;
    }
    if !can_mount() {
        return skipped("needs root and loop devices to let the kernel write the states");
    }
    let dir = scratch("replay-deltas");
    let Some((_img, from, to)) = dirty_pair(&dir) else {
        return skipped("mounting a loop device failed");
    };
    for data in [false, true] {
        let d: &dyn AsRef<std::ffi::OsStr> = if data { &"-d" } else { &"--sync" };
        let tag = if data { "d" } else { "m" };
        let (from_raw, to_raw) = (
            dir.join(format!("from-{tag}.raw")),
            dir.join(format!("to-{tag}.raw")),
        );
        expect(&[&"-r", d, &"--replay", &from, &from_raw], 0);
        expect(&[&"-r", d, &"--replay", &to, &to_raw], 0);
        let delta = dir.join(format!("base-{tag}.qcow2"));
        let o = expect(&[&"-Q", d, &"--replay", &"--base", &from, &to, &delta], 0);
        assert!(stderr(&o).contains("replayed in memory"), "{}", stderr(&o));
        assert_qemu_check(&delta);
        let replica = sparse_copy(&from_raw, &dir.join(format!("replica-{tag}.raw")));
        apply_and_check(&delta, &replica, &to_raw, &dir);
        if data {
            // The kernel shows TO's tree on the replica, as on a mount of TO itself.
            let want = tree(&to, &dir, false).unwrap();
            assert!(want.contains_key("two/t29") && !want.contains_key("f3"));
            assert_eq!(tree(&replica, &dir, false).unwrap(), want);
        }
    }
    // -x between two dirty states of an archive (appended as they are on disk).
    let q = dir.join("arch.qcow2");
    expect(&[&"-Q", &"-d", &"--name", &"s1", &from, &q], 0);
    let o = expect(&[&"-Q", &"-d", &"--append", &"--name", &"s2", &to, &q], 0);
    assert!(
        stderr(&o).contains("--replay archives the state"),
        "{}",
        stderr(&o)
    );
    let delta = dir.join("x.qcow2");
    expect(
        &[&"-Q", &"-d", &"--replay", &"-x", &"s1..s2", &q, &delta],
        0,
    );
    let (s1, s2) = (dir.join("s1.raw"), dir.join("s2.raw"));
    expect(
        &[
            &"-r",
            &"-d",
            &"--replay",
            &"--from-snapshot",
            &"s1",
            &q,
            &s1,
        ],
        0,
    );
    expect(
        &[
            &"-r",
            &"-d",
            &"--replay",
            &"--from-snapshot",
            &"s2",
            &q,
            &s2,
        ],
        0,
    );
    apply_and_check(&delta, &s1, &s2, &dir);
}

/// The unit's `KEY=` lines, in order (several ExecStartPre lines stay separate).
fn unit_lines(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

/// Runs one command line of the unit through `sh`, with its variables, tools and `/dev/`
/// (`dev`) replaced;
/// a leading `-` means its failure is ignored (as systemd does). Returns its exit status.
fn run_unit_line(line: &str, vars: &[(&str, String)], tools: &Path, dev: &Path, now: u64) -> i32 {
    let (ignore, line) = match line.strip_prefix('-') {
        Some(l) => (true, l),
        None => (false, line),
    };
    let mut cmd = line.to_string();
    for (k, v) in vars {
        cmd = cmd.replace(&format!("${{{k}}}"), v);
    }
    cmd = cmd
        .replace(
            "/sbin/lvcreate",
            &tools.join("lvcreate").display().to_string(),
        )
        .replace(
            "/sbin/lvremove",
            &tools.join("lvremove").display().to_string(),
        )
        .replace("/usr/local/bin/e2image-rs", &bin().display().to_string())
        .replace(" /dev/", &format!(" {}/", dev.display()));
    let o = Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .env("E2IMAGE_RS_TEST_NOW", now.to_string())
        .output()
        .unwrap();
    let c = code(&o);

    assert!(
        ignore || c == 0 || c == 3 || line.contains("e2image-rs"),
        "{cmd}: {}",
        stderr(&o)
    );
    c
}

/// Stand-ins for lvcreate (copies ORIGIN, the mounted filesystem's image, to the snapshot's
/// device path, as a snapshot of a mounted filesystem is a crash-consistent copy; and once
/// more beside it, `.kept`, for the test to compare with) and lvremove (removes the snapshot).
fn lvm_stand_ins(dir: &Path, origin: &Path, dev: &Path) -> PathBuf {
    let tools = dir.join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    let lvcreate = format!(
        "#!/bin/sh\n# lvcreate --snapshot --size S --name NAME VG/LV\nname=$5; vg=${{6%%/*}}\nmkdir -p {dev}/$vg\ncp --sparse=always {origin} {dev}/$vg/$name.kept\ncp --sparse=always {dev}/$vg/$name.kept {dev}/$vg/$name\n",
        dev = dev.display(),
        origin = origin.display()
    );
    let lvremove = format!(
        "#!/bin/sh\n# lvremove --yes VG/NAME\n[ -e {dev}/$2 ] || exit 5\nrm {dev}/$2\n",
        dev = dev.display()
    );
    for (name, body) in [("lvcreate", lvcreate), ("lvremove", lvremove)] {
        let p = tools.join(name);
        std::fs::write(&p, body).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    tools
}

/// 2026-01-05 12:00:00 UTC, a Monday: the nights of the unit test are days after it.
const MONDAY: u64 = 1_767_614_400;

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the test clock E2IMAGE_RS_TEST_NOW (`--features fault-injection`)"
)]
fn the_systemd_unit_appends_a_replayed_lvm_snapshot_and_removes_it() {
    if skip() {
        return;
    }
    if !can_mount() {
        return skipped("needs root and loop devices to let the kernel write the state");
    }
    let dir = scratch("replay-systemd");
    let img = dir.join("home.img");
    mkfs(&img, 32, &[]);
    let unit = std::fs::read_to_string(root().join("contrib/systemd/e2image-rs-archive@.service"))
        .unwrap();
    let (pre, start, post) = (
        unit_lines(&unit, "ExecStartPre"),
        unit_lines(&unit, "ExecStart"),
        unit_lines(&unit, "ExecStopPost"),
    );
    assert!(start[0].contains("--replay"), "{}", start[0]);
    let devdir = dir.join("dev");
    let q = dir.join("home.qcow2");
    let Some(m) = Mounted::new(&img, &dir.join("m"), "rw,commit=600") else {
        return skipped("mounting a loop device failed");
    };
    write_synced(&m.path("first"), b"the first state\n");
    let tools = lvm_stand_ins(&dir, &img, &devdir);
    let snap = devdir.join("vg0/home-e2image-rs");
    // The archive is created once from a snapshot, as the unit's comment says.
    std::fs::create_dir_all(devdir.join("vg0")).unwrap();
    sparse_copy(&img, &snap);
    let o = Command::new(bin())
        .args(["-Q", "--replay", "--name", "first"])
        .arg(&snap)
        .arg(&q)
        .env("E2IMAGE_RS_TEST_NOW", MONDAY.to_string())
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    std::fs::remove_file(&snap).unwrap();
    let vars = |archive: &Path| {
        vec![
            ("VG", "vg0".to_string()),
            ("LV", "home".to_string()),
            ("SNAPSHOT_SIZE", "1G".to_string()),
            ("ARCHIVE", archive.display().to_string()),
        ]
    };
    // Two nightly runs, the filesystem mounted and changing; then one whose append fails.
    for (night, archive) in [
        (1, q.clone()),
        (2, q.clone()),
        (3, dir.join("missing.qcow2")),
    ] {
        write_synced(
            &m.path(&format!("night{night}")),
            &vec![night as u8; 4096 * night],
        );
        let v = vars(&archive);
        let now = MONDAY + night as u64 * 86_400;
        for l in &pre {
            run_unit_line(l, &v, &tools, &devdir, now);
        }
        let status = run_unit_line(&start[0], &v, &tools, &devdir, now);
        for l in &post {
            run_unit_line(l, &v, &tools, &devdir, now);
        }
        assert!(
            !snap.exists(),
            "night {night}: the snapshot was left behind"
        );
        if night == 3 {
            assert_ne!(status, 0, "the append to a missing archive fails");
            continue;
        }
        assert_eq!(status, 0, "night {night}");
        // The state appended is the snapshot replayed, as a direct --replay export gives it.
        let kept = devdir.join("vg0/home-e2image-rs.kept");
        let (direct, state) = (dir.join("direct.raw"), dir.join("state.raw"));
        expect(&[&"-r", &"--replay", &kept, &direct], 0);
        let names = snapshot_list(&q)["snapshots"].as_array().unwrap().len();
        assert_eq!(names, night + 1);
        let list = snapshot_list(&q);
        let newest = list["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .max_by_key(|s| s["id"].as_str().unwrap().parse::<u64>().unwrap())
            .unwrap()["name"]
            .as_str()
            .unwrap()
            .to_string();
        expect(&[&"-r", &"--from-snapshot", &newest, &q, &state], 0);
        let differ = blocks_not_in(&direct, &state, 1024);
        let extra = blocks_not_in(&state, &direct, 1024);
        assert!(
            differ.is_empty() && extra.is_empty(),
            "night {night}: {differ:?} {extra:?}"
        );
        assert_eq!(fsck(&state), 0, "night {night}");
    }
    drop(m);
    assert_qemu_check(&q);
}

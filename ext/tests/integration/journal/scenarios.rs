//! The debugfs scenario (revoke, escape, uncommitted tail) on every journal format.

use super::*;

/// Builds the scenario on `mke2fs ARGS SIZE`, journaled with `jo OPEN`, and compares with
/// both oracles.
fn scenario_case(name: &str, args: &[&str], size: &str, open: &str) -> Recovery {
    let dir = Scratch::new("journal", name);
    let img = mkfs(&dir.0, args, size);
    scenario(&img, open);
    let e = oracle(&img, "e2fsck");
    let jr = oracle(&img, "jr");
    let rec = compare(&img, &e, false);
    compare(&img, &jr, false);
    rec
}

fn check_scenario(rec: &Recovery) {
    assert_eq!(rec.state, JournalState::NeedsRecovery);
    assert!(rec.replayed && rec.error.is_none(), "{rec:?}");
    assert_eq!(rec.transactions(), 3, "T4 is uncommitted");
    assert_eq!(rec.revoke_hits, 1);
    assert!(rec.overlay.values().any(|o| o.escaped));
}

#[test]
fn csum_v3_64bit_1k() {
    if !tools() {
        return;
    }
    let rec = scenario_case("v3-1k", &["-t", "ext4", "-b", "1024"], "16M", "-c");
    check_scenario(&rec);
}

#[test]
fn csum_v2_64bit_4k() {
    if !tools() {
        return;
    }
    let rec = scenario_case("v2-4k", &["-t", "ext4", "-b", "4096"], "64M", "-c -v 2");
    check_scenario(&rec);
}

#[test]
fn csum_v3_32bit_4k() {
    if !tools() {
        return;
    }
    let rec = scenario_case(
        "v3-32",
        &["-t", "ext4", "-O", "^64bit", "-b", "4096"],
        "32M",
        "-c",
    );
    check_scenario(&rec);
}

#[test]
fn no_csum_32bit_ext3_1k() {
    if !tools() {
        return;
    }
    let rec = scenario_case("ext3", &["-t", "ext3", "-b", "1024"], "16M", "");
    check_scenario(&rec);
}

#[test]
fn no_csum_64bit_4k() {
    if !tools() {
        return;
    }
    let rec = scenario_case("plain64", &["-t", "ext4", "-b", "4096"], "32M", "");
    check_scenario(&rec);
}

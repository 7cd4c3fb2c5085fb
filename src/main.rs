//! e2image-rs: images ext2/3/4 filesystems into QCOW2 or sparse raw files, lists the states
//! of an image, rolls a device back to one of them and replays deltas onto replicas.
//!
//! Layers, bottom to top; a module imports only from layers below it, and data flows one
//! way: source → `ext` (what to copy, through a block view) → pipeline → `qcow` or raw sink.
//!
//! 1. `sys` (mounts, path identity, temporary outputs, locks, signals, the writer of every
//!    report and message, test hooks), `exit` (exit codes, error printing), `text` (UUIDs,
//!    dates, sizes), `probe` (what a file holds),
//!    `record` (the export record header extension), `delta_record` (the delta record),
//!    `qcow_view` (a QCOW2 layer as a block view), `qcow_stdin` (a QCOW2 image on standard
//!    input: one pass, or spooled), `retention` (which states a policy keeps),
//!    `ranges` (sorted block ranges);
//! 2. `cli` (clap structures only), `plan` (the validated plans built once from them: the
//!    only thing the pipelines see);
//! 3. `copy` (the parallel copy engine), `archive` (an archive's states: opened for change,
//!    the newest, names and ids, retention decisions), `sink` (one trait, one file per output
//!    kind; sinks only write), `patching` (changing a target in place through a patch file:
//!    what rollback and apply share);
//! 4. the pipelines: `export` (export, QCOW2 → raw, archive append), `snapshots` (listing),
//!    `prune` (archive retention), `rollback`, `apply` (a delta replayed onto a replica),
//!    `verify` (structure and cluster checksums), `manual` (the manual page and shell
//!    completions, from `cli`'s definition);
//! 5. `main`: parse, plan, run, exit status (0 complete, 1 failed, 2 usage error, 3 complete
//!    with reported skips, 128 + N interrupted by signal N).
//!
//! Library errors become one-line messages here; the libraries never print. Everything the
//! binary prints goes through `sys::report` (a closed standard output ends in exit status 1,
//! never a panic).

mod apply;
mod archive;
mod bytes;
mod cli;
mod copy;
mod delta_record;
mod exit;
mod export;
mod manual;
mod patching;
mod plan;
mod probe;
mod prune;
mod qcow_stdin;
mod qcow_view;
mod ranges;
mod record;
mod retention;
mod rollback;
mod sink;
mod snapshots;
mod sys;
mod text;
mod verify;

use clap::Parser;
use exit::{fail, usage_error, EXIT_OK, EXIT_USAGE};
use plan::{
    apply_plan, rollback_plan, ExportPlan, PrunePlan, UsageError, APPLY_USAGE, EXPORT_USAGE,
    PRUNE_USAGE, ROLLBACK_USAGE,
};

fn main() {
    let json = std::env::args_os().any(|a| a == "--json");
    sys::signals::install(json);
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => std::process::exit(clap_error(&e, json)),
    };
    let code = match &cli.command {
        Some(cli::Command::Snapshots { image, json }) => match snapshots::list(image, *json) {
            Ok(()) => EXIT_OK,
            Err(e) => fail(&e, *json),
        },
        Some(cli::Command::Verify { image, json }) => match verify::run(image, *json) {
            Ok(code) => code,
            Err(e) => fail(&e, *json),
        },
        Some(cli::Command::Rollback(args)) => match rollback_plan(args) {
            Ok(plan) => patching::run(&plan),
            Err(UsageError(m)) => usage_error(&m, args.patch.json, ROLLBACK_USAGE),
        },
        Some(cli::Command::Apply(args)) => match apply_plan(args) {
            Ok(plan) => patching::run(&plan),
            Err(UsageError(m)) => usage_error(&m, args.patch.json, APPLY_USAGE),
        },
        Some(cli::Command::Prune(args)) => match PrunePlan::from_args(args) {
            Ok(plan) => match prune::run(&plan) {
                Ok(()) => EXIT_OK,
                Err(e) => fail(&e, plan.json),
            },
            Err(UsageError(m)) => usage_error(&m, args.json, PRUNE_USAGE),
        },
        Some(cli::Command::Man) => manual::print_man(),
        Some(cli::Command::Completions(args)) => manual::print_completions(args),
        None => match ExportPlan::from_args(&cli.export) {
            Ok(plan) => export(&plan),
            Err(e) => match e.downcast_ref::<UsageError>() {
                Some(UsageError(m)) => usage_error(m, cli.export.json, EXPORT_USAGE),
                None => fail(&e, cli.export.json),
            },
        },
    };
    let code = match sys::signals::interrupted() {
        Some(sig) if code != EXIT_OK => sys::signals::exit_status(sig),
        _ => code,
    };
    std::process::exit(sys::report::exit_status(code));
}

/// The export (or conversion): run, print the summary; returns the exit status.
fn export(plan: &ExportPlan) -> i32 {
    let summary = match export::run(plan) {
        Ok(s) => s,
        Err(e) => return fail(&e, plan.json()),
    };
    summary.print(plan.json());
    summary.exit_status()
}

/// Prints clap's error with our prefix; returns the exit status (0 for --help/--version).
fn clap_error(e: &clap::Error, json: bool) -> i32 {
    use clap::error::ErrorKind;
    if !e.use_stderr() {
        let _ = e.print();
        return EXIT_OK;
    }
    let rendered = e.render().to_string();
    let body = rendered.strip_prefix("error: ").unwrap_or(&rendered);
    let first_word = std::env::args_os()
        .skip(1)
        .find(|a| !a.to_string_lossy().starts_with('-'));
    let msg = match (
        e.kind(),
        first_word.and_then(|w| cli::unknown_subcommand(&w)),
    ) {
        (ErrorKind::MissingRequiredArgument | ErrorKind::InvalidSubcommand, Some(m)) => {
            format!("{m}\n")
        }
        _ => body.to_string(),
    };
    let first = msg.lines().next().unwrap_or_default().to_string();
    let nl = if msg.ends_with('\n') { "" } else { "\n" };
    sys::report::stderr(&format!("e2image-rs: error: {msg}{nl}"));
    if json {
        sys::report::json(&sys::report::ErrorReport {
            error: &first,
            exit_status: EXIT_USAGE,
        });
    }
    EXIT_USAGE
}

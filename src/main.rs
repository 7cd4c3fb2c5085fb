//! e2image-rs: images ext2/3/4 filesystems into QCOW2 or sparse raw files.
//!
//! `main` parses the command line, builds the validated plan, runs the pipeline and maps the
//! outcome to the exit status: 0 complete, 1 failed (nothing left under OUT), 2 usage error,
//! 3 complete with reported skips, 128 + N interrupted by signal N. Library errors become
//! one-line messages here (`e2image-rs: error: …`); the libraries never print.

mod cli;
mod convert;
mod copy;
mod e2undo;
mod export;
mod export_record;
mod plan;
mod qcow_view;
mod rollback;
mod sink;
mod snapshots;
mod states;
mod summary;
mod sys;

use clap::Parser;
use summary::{EXIT_FAILED, EXIT_USAGE};

fn main() {
    let json = std::env::args_os().any(|a| a == "--json");
    sys::signals::install(json);
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => std::process::exit(clap_error(&e, json)),
    };
    let code = match &cli.command {
        Some(cli::Command::Snapshots { image, json }) => {
            report(snapshots::list(image, *json), *json)
        }
        Some(cli::Command::Rollback(args)) => rollback::run(args),
        None => export(&cli.export),
    };
    let code = match sys::signals::interrupted() {
        Some(sig) if code != 0 => sys::signals::exit_status(sig),
        _ => code,
    };
    std::process::exit(code);
}

/// The export (or conversion): plan, run, print the summary; returns the exit status.
fn export(args: &cli::ExportArgs) -> i32 {
    let plan = match plan::ExportPlan::from_args(args) {
        Ok(p) => p,
        Err(plan::UsageError(m)) => return usage_error(&m, args.json),
    };
    let summary = match export::run(&plan) {
        Ok(s) => s,
        Err(e) => return fail(&e, plan.json),
    };
    for n in &summary.notes {
        eprintln!("e2image-rs: note: {n}");
    }
    for (state, w) in &summary.warnings {
        match state {
            Some(s) => eprintln!("e2image-rs: warning: [{s}] {w}"),
            None => eprintln!("e2image-rs: warning: {w}"),
        }
    }
    if plan.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary.to_json()).unwrap_or_default()
        );
    }
    summary.exit_status()
}

fn report(r: anyhow::Result<()>, json: bool) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => fail(&e, json),
    }
}

/// Prints a failure (and, with `--json`, a JSON object saying it); returns its exit status:
/// 2 for usage errors found late, 1 otherwise.
pub fn fail(e: &anyhow::Error, json: bool) -> i32 {
    let code = if e.downcast_ref::<plan::UsageError>().is_some() {
        EXIT_USAGE
    } else {
        EXIT_FAILED
    };
    print_error(&error_text(e), code, json);
    code
}

/// Prints a usage error with a pointer to `--help`; returns 2.
fn usage_error(msg: &str, json: bool) -> i32 {
    print_error(msg, EXIT_USAGE, json);
    eprintln!("Usage: e2image-rs -Q|-r [OPTIONS] SOURCE OUT; e2image-rs snapshots IMAGE; e2image-rs rollback IMAGE TARGET --patch PATCH (see --help)");
    EXIT_USAGE
}

fn print_error(msg: &str, code: i32, json: bool) {
    eprintln!("e2image-rs: error: {msg}");
    if json {
        println!(
            "{}",
            serde_json::json!({ "error": msg, "exit_status": code })
        );
    }
}

/// An error and its causes on one line, leaving out a cause whose text the line already holds
/// (an I/O error quoted by its context is not repeated).
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if c.is_empty() || text.contains(&c) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&c);
    }
    text
}

/// Prints clap's error with our prefix; returns the exit status (0 for --help/--version).
fn clap_error(e: &clap::Error, json: bool) -> i32 {
    use clap::error::ErrorKind;
    if !e.use_stderr() {
        let _ = e.print();
        return 0;
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
    eprint!("e2image-rs: error: {msg}");
    if !msg.ends_with('\n') {
        eprintln!();
    }
    if json {
        println!(
            "{}",
            serde_json::json!({ "error": first, "exit_status": EXIT_USAGE })
        );
    }
    EXIT_USAGE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_not_repeated() {
        let io = std::io::Error::from_raw_os_error(28);
        let e = anyhow::Error::new(io).context(format!(
            "write error at byte 5: {}",
            std::io::Error::from_raw_os_error(28)
        ));
        let t = error_text(&e);
        assert_eq!(t.matches("os error 28").count(), 1, "{t}");
    }
}

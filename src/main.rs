//! e2image-rs: images ext2/3/4 filesystems into QCOW2 or sparse raw files.
//!
//! `main` parses the command line, runs the pipeline and maps the outcome to the exit status:
//! 0 complete, 1 failed (nothing left under OUT), 2 usage error, 3 complete with reported
//! skips. Library errors become one-line messages here; the libraries never print.

mod cli;
mod convert;
mod copy;
mod e2undo;
mod export;
mod export_record;
mod mounted;
mod output;
mod qcow_view;
mod rollback;
mod sink;
mod snapshots;
mod states;
mod summary;

use clap::Parser;
use summary::{EXIT_FAILED, EXIT_USAGE};

fn main() {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let code = match &cli.command {
        Some(cli::Command::Snapshots { image, json }) => report(snapshots::list(image, *json)),
        Some(cli::Command::Rollback(args)) => rollback::run(args),
        None => match export::run(&cli.export) {
            Ok(summary) => {
                for n in &summary.notes {
                    eprintln!("e2image-rs: note: {n}");
                }
                for (state, w) in &summary.warnings {
                    match state {
                        Some(s) => eprintln!("e2image-rs: warning: [{s}] {w}"),
                        None => eprintln!("e2image-rs: warning: {w}"),
                    }
                }
                if cli.export.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&summary.to_json()).unwrap_or_default()
                    );
                }
                summary.exit_status()
            }
            Err(e) => fail(&e),
        },
    };
    std::process::exit(code);
}

fn report(r: anyhow::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => fail(&e),
    }
}

fn fail(e: &anyhow::Error) -> i32 {
    eprintln!("e2image-rs: error: {e:#}");
    EXIT_FAILED
}

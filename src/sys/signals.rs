//! SIGINT, SIGTERM and SIGHUP: an interrupted run removes its unfinished outputs, restores the
//! terminal and exits with 128 + the signal number (130, 143, 129), as shells expect.
//!
//! Design: a handler thread (signal-hook's iterator; no work in signal context) receives the
//! signal. Outside a [`Deferred`] section it removes every registered temporary output, clears
//! the progress bar line and exits. Inside one (a rollback writing its target, where stopping
//! between two writes is what keeps the target recoverable) it only records the signal; the
//! pipeline polls [`interrupted`] between writes and stops cleanly. Temporary outputs are
//! registered by [`super::output::TempOutput`]; its commit (rename) and the handler's removal
//! are serialised by one lock, so an output is either complete under its final name or gone.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::Mutex;

/// The signals that interrupt a run.
const SIGNALS: [i32; 3] = [
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGHUP,
];

/// Temporary outputs to remove on interrupt: (temporary path, final path).
static TEMPS: Mutex<Vec<(PathBuf, PathBuf)>> = Mutex::new(Vec::new());
/// The signal received, or 0.
static RECEIVED: AtomicI32 = AtomicI32::new(0);
/// Number of active [`Deferred`] sections.
static DEFERRED: AtomicUsize = AtomicUsize::new(0);
/// Print the interruption as a JSON summary on stdout (`--json`).
static JSON: AtomicBool = AtomicBool::new(false);

/// Starts the handler thread. Failing to install handlers is not fatal: the run then simply
/// dies on a signal as before, and the next run removes its temporaries.
pub fn install(json: bool) {
    JSON.store(json, Ordering::Relaxed);
    let Ok(mut signals) = signal_hook::iterator::Signals::new(SIGNALS) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                RECEIVED.store(sig, Ordering::SeqCst);
                if DEFERRED.load(Ordering::SeqCst) == 0 {
                    stop(sig);
                }
            }
        });
}

/// The exit status for an interrupt by `sig`.
pub fn exit_status(sig: i32) -> i32 {
    128 + sig
}

/// The signal's name for messages.
pub fn name(sig: i32) -> &'static str {
    match sig {
        signal_hook::consts::SIGINT => "SIGINT",
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// The signal received so far, if any.
pub fn interrupted() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Removes the temporaries, restores the terminal, reports and exits.
fn stop(sig: i32) -> ! {
    let temps = TEMPS.lock().unwrap_or_else(|e| e.into_inner());
    for (temp, _) in temps.iter() {
        let _ = std::fs::remove_file(temp);
    }
    super::report::restore_terminal();
    let outs: Vec<String> = temps.iter().map(|(_, t)| t.display().to_string()).collect();
    let what = if outs.is_empty() {
        String::new()
    } else {
        format!("; nothing was written under {}", outs.join(", "))
    };
    let msg = format!("interrupted by {}{what}", name(sig));
    super::report::error(&msg);
    if JSON.load(Ordering::Relaxed) {
        super::report::json(&super::report::ErrorReport {
            error: &msg,
            exit_status: exit_status(sig),
        });
    }
    std::process::exit(exit_status(sig));
}

/// Registers a temporary output to remove on interrupt.
pub fn register_temp(temp: &Path, target: &Path) {
    let mut t = TEMPS.lock().unwrap_or_else(|e| e.into_inner());
    t.push((temp.to_path_buf(), target.to_path_buf()));
}

/// Runs `f` (the rename of a temporary output, or its removal) with the registry locked, then
/// forgets `temp`: an interrupt sees the output either before or after `f`, never during.
pub fn settle_temp<T>(temp: &Path, f: impl FnOnce() -> T) -> T {
    let mut t = TEMPS.lock().unwrap_or_else(|e| e.into_inner());
    let r = f();
    t.retain(|(p, _)| p != temp);
    r
}

/// While alive, a signal is only recorded: the pipeline polls [`interrupted`] and stops at a
/// safe point. When the last one ends after a signal arrived, the run stops as usual.
pub struct Deferred(());

impl Deferred {
    /// Enters a deferred section.
    pub fn enter() -> Deferred {
        DEFERRED.fetch_add(1, Ordering::SeqCst);
        Deferred(())
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        DEFERRED.fetch_sub(1, Ordering::SeqCst);
    }
}

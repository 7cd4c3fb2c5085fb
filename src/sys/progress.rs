//! `-p`: what the run is doing, on standard error. Each phase the user waits on is named by
//! one line, `e2image-rs: progress: PHASE` ([`phase`]: "walking metadata", "replaying the
//! journal", "writing the patch", ...); a phase that counts bytes has a [`Progress`]: on a
//! terminal a bar labelled with the phase ("copying state 2/3: tuesday.img"), replaced when
//! done by one summary line; when standard error is not a terminal (a log, a pipe), a line
//! when it starts and the summary line when it ends, nothing in between. Without `-p`, nothing.

use super::report::{stderr, PROGRESS_SHOWN};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

/// With `-p` (`wanted`), the line naming the phase that starts: `e2image-rs: progress: WHAT`.
pub fn phase(wanted: bool, what: &str) {
    if wanted {
        stderr(&format!("e2image-rs: progress: {what}\n"));
    }
}

/// A count of bytes of one phase on stderr (see the module comment), or a silent one. It
/// names what it counts ("copying state 2/3: tuesday.img", "applying the patch to d.img")
/// and, when done, leaves one summary line ("… 4.6 MiB copied in 1.2 s").
pub struct Progress(Option<Shown>);

struct Shown {
    /// The bar, on a terminal; `None`: plain lines.
    bar: Option<indicatif::ProgressBar>,
    /// Bytes counted (the bar keeps its own).
    done: AtomicU64,
    started: std::time::Instant,
    what: String,
    verb: &'static str,
}

impl Progress {
    /// Counts `total` bytes copied, labelled `what`, or a silent one.
    pub fn new(wanted: bool, total: u64, what: &str) -> Progress {
        Progress::counting(wanted, total, what, "copied")
    }

    /// Counts `total` bytes that are `verb` ("copied", "written"), or a silent one.
    pub fn counting(wanted: bool, total: u64, what: &str, verb: &'static str) -> Progress {
        if !wanted {
            return Progress(None);
        }
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            let style = indicatif::ProgressStyle::with_template(
                "{msg} {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_message(what.to_string());
            PROGRESS_SHOWN.store(true, Ordering::SeqCst);
            bar
        });
        if bar.is_none() {
            let total = crate::text::size_short(total);
            stderr(&format!("e2image-rs: progress: {what} ({total})\n"));
        }
        Progress(Some(Shown {
            bar,
            done: AtomicU64::new(0),
            started: std::time::Instant::now(),
            what: what.to_string(),
            verb,
        }))
    }

    /// Counts `n` more bytes.
    pub fn inc(&self, n: u64) {
        if let Some(s) = &self.0 {
            s.done.fetch_add(n, Ordering::Relaxed);
            if let Some(b) = &s.bar {
                b.inc(n);
            }
        }
    }

    /// Replaces the bar (if any) by one line: what was counted, how much, how fast.
    pub fn finish(&self) {
        let Some(s) = &self.0 else { return };
        if let Some(b) = &s.bar {
            b.finish_and_clear();
            PROGRESS_SHOWN.store(false, Ordering::SeqCst);
        }
        let bytes = s.done.load(Ordering::Relaxed);
        let secs = s.started.elapsed().as_secs_f64();
        stderr(&format!(
            "e2image-rs: {}: {} {} in {secs:.1} s\n",
            s.what,
            crate::text::size_short(bytes),
            s.verb
        ));
    }
}

//! The packaging subcommands: `e2image-rs man` prints the manual page e2image-rs(1) and
//! `e2image-rs completions SHELL` a shell completion script, both generated from the clap
//! definition in `cli` (clap_mangen, clap_complete), so that they never disagree with
//! `--help`. Both write through `sys::report`.
//!
//! The manual is one page: the export's synopsis and options (one section per `--help`
//! heading), then a section per subcommand with its synopsis and options, and the sections
//! clap does not know: EXIT STATUS, ENVIRONMENT, FILES, EXAMPLES, SEE ALSO.

use crate::cli::{self, CompletionsArgs};
use crate::exit::{EXIT_FAILED, EXIT_OK};
use crate::sys::report;
use clap::CommandFactory;
use clap_mangen::roff::{bold, italic, roman, Inline, Roff};
use clap_mangen::Man;

/// `e2image-rs man`: prints the page; returns the exit status (1 if it could not be made).
pub fn print_man() -> i32 {
    match man_page() {
        Ok(page) => {
            report::text(&page);
            EXIT_OK
        }
        Err(e) => {
            report::error(&format!("cannot render the manual page: {e}"));
            EXIT_FAILED
        }
    }
}

/// `e2image-rs completions SHELL`: prints the script; returns the exit status.
pub fn print_completions(args: &CompletionsArgs) -> i32 {
    let mut cmd = cli::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "e2image-rs", &mut out);
    let mut script = String::from_utf8_lossy(&out).into_owned();
    if args.shell == clap_complete::Shell::Bash {
        script = script.replace(BASH_ARM_MISSPELLED, BASH_ARM);
    }
    report::text(&script);
    EXIT_OK
}

/// clap_complete's bash script spells the state of a subcommand of a hyphenated binary two
/// ways: the loop that reads the words arrives at `e2image__rs__subcmd__rollback`, the `case`
/// arms say `e2image__subcmd__rs__subcmd__rollback`, so no subcommand's options complete
/// (clap issue 6421, open in clap_complete 4.6.12). The arms are respelled as the loop
/// spells them; once clap_complete is fixed the replacement finds nothing.
const BASH_ARM_MISSPELLED: &str = "e2image__subcmd__rs__subcmd__";
/// See [`BASH_ARM_MISSPELLED`].
const BASH_ARM: &str = "e2image__rs__subcmd__";

/// The whole page e2image-rs(1), roff source.
///
/// # Errors
/// Only those of writing into memory (none in practice).
pub fn man_page() -> std::io::Result<String> {
    let mut cmd = cli::Cli::command();
    cmd.build();
    let man = Man::new(cmd.clone())
        .title("E2IMAGE-RS")
        .date(MAN_DATE)
        .manual("User Commands");
    let mut out: Vec<u8> = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    let subs: Vec<&clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .collect();
    for sub in &subs {
        Roff::new().control("br", []).to_writer(&mut out)?;
        out.extend(body(|w| {
            Man::new((*sub).clone()).render_synopsis_section(w)
        })?);
    }
    Roff::new()
        .control("SH", ["DESCRIPTION"])
        .text([roman(DESCRIPTION)])
        .to_writer(&mut out)?;
    man.render_options_section(&mut out)?;
    subcommand_list(&subs).to_writer(&mut out)?;
    for sub in &subs {
        subcommand_section(sub, &mut out)?;
    }
    extra_sections().to_writer(&mut out)?;
    man.render_version_section(&mut out)?;
    Ok(tidy(&String::from_utf8_lossy(&out)))
}

/// What `render` writes after its `.SH` heading line (the section's body).
fn body(render: impl Fn(&mut Vec<u8>) -> std::io::Result<()>) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    render(&mut v)?;
    let text = String::from_utf8_lossy(&v);
    let start = text.find(".SH ").unwrap_or(0);
    let start = text[start..]
        .find('\n')
        .map_or(text.len(), |i| start + i + 1);
    Ok(text[start..].as_bytes().to_vec())
}

/// The page as man and groff read it everywhere: clap_mangen's string definition (`Aq`)
/// once, at the top, and every non-ASCII character as a roff escape (`\[u2026]`), so that
/// groff needs no input encoding.
fn tidy(page: &str) -> String {
    const AQ: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";
    let mut out = String::from(AQ);
    for c in page.replace(AQ, "").chars() {
        match c.is_ascii() {
            true => out.push(c),
            false => out.push_str(&format!("\\[u{:04X}]", u32::from(c))),
        }
    }
    out
}

/// SUBCOMMANDS: each one's name and summary.
fn subcommand_list(subs: &[&clap::Command]) -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["SUBCOMMANDS"]);
    for sub in subs {
        r.control("TP", []);
        r.text([bold(format!("e2image-rs {}", sub.get_name()))]);
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        r.text([roman(about)]);
    }
    r
}

/// One section per subcommand (`E2IMAGE-RS ROLLBACK`): its summary, synopsis and options,
/// each `--help` heading as a subsection.
fn subcommand_section(sub: &clap::Command, out: &mut Vec<u8>) -> std::io::Result<()> {
    let title = format!("E2IMAGE-RS {}", sub.get_name().to_uppercase());
    let about = sub
        .get_long_about()
        .or_else(|| sub.get_about())
        .map(|a| a.to_string())
        .unwrap_or_default();
    Roff::new()
        .control("SH", [title.as_str()])
        .text([roman(about)])
        .control("PP", [])
        .to_writer(out)?;
    let man = Man::new(sub.clone());
    out.extend(body(|w| man.render_synopsis_section(w))?);
    let mut opts = Vec::new();
    man.render_options_section(&mut opts)?;
    let opts = String::from_utf8_lossy(&opts).replace(".SH ", ".SS ");
    out.extend(opts.into_bytes());
    Ok(())
}

/// The summary under DESCRIPTION.
const DESCRIPTION: &str = "e2image-rs images ext2, ext3 and ext4 filesystems into QCOW2 (and sparse raw) \
files that every QEMU tool opens, as e2image -Q and -r do: the metadata, and with -d the file data too. \
It keeps a filesystem's history as QCOW2 internal snapshots (archives grown in place with --append, \
pruned by a retention policy), writes deltas between two states (-x, --base), replays them onto a \
replica (apply), writes a state back onto a device through a crash-safe patch file (rollback), and \
replays a journal that needs recovery in memory (--replay). SOURCE is never written; OUT is written \
under a temporary name beside it and renamed over OUT only when complete.";

/// A `.TP` item: a bold tag and its text.
fn item(r: &mut Roff, tag: &str, text: &str) {
    r.control("TP", []);
    r.text([bold(tag)]);
    r.text([roman(text)]);
}

/// EXIT STATUS, ENVIRONMENT, FILES, EXAMPLES, SEE ALSO.
fn extra_sections() -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["EXIT STATUS"]);
    for (code, text) in EXIT_STATUSES {
        item(&mut r, code, text);
    }
    r.control("PP", []);
    r.text([roman(
        "Every error is one line starting \"e2image-rs: error: \"; with --json a failed run \
         still prints a JSON object with error and exit_status on standard output.",
    )]);
    r.control("SH", ["ENVIRONMENT"]);
    item(
        &mut r,
        "TMPDIR",
        "Where a QCOW2 image read from standard input is spooled (to an unlinked file) when it \
         cannot be read in one pass.",
    );
    r.control("SH", ["FILES"]);
    for (tag, text) in FILES {
        item(&mut r, tag, text);
    }
    r.control("SH", ["EXAMPLES"]);
    for (what, cmd) in EXAMPLES {
        r.control("TP", []);
        r.text([roman(what)]);
        r.text([bold(cmd)]);
    }
    r.control("SH", ["SEE ALSO"]);
    r.text(see_also());
    r
}

/// SEE ALSO: the oracles and companions, and the reference in docs/.
fn see_also() -> Vec<Inline> {
    let mut v = Vec::new();
    for (i, (name, sec)) in [
        ("e2image", "8"),
        ("qemu-img", "1"),
        ("e2fsck", "8"),
        ("e2undo", "8"),
        ("debugfs", "8"),
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            v.push(roman(", "));
        }
        v.push(bold(*name));
        v.push(roman(format!("({sec})")));
    }
    v.push(roman(". The full reference: "));
    v.push(italic("docs/"));
    v.push(roman(
        " in the source tree (usage, archives, rollback and apply, JSON, journals).",
    ));
    v
}

/// The date in the page's title line (the month of the last change to this page).
const MAN_DATE: &str = "2026-12";

/// EXIT STATUS: code and meaning, the statuses of `sys::status` (and signals).
const EXIT_STATUSES: [(&str, &str); 5] = [
    (
        "0",
        "Done completely (export, prune, rollback, apply, listing).",
    ),
    (
        "1",
        "Failed or refused; nothing is left under OUT. Rollback and apply: TARGET is untouched \
         or part-way, as the message says (finish with --resume, rewind with --undo).",
    ),
    (
        "2",
        "Usage error, including an OUT that is an input and e2image options not implemented.",
    ),
    (
        "3",
        "Exported, but some metadata was corrupt, unreadable or failed its checksum; each is \
         reported on standard error as a warning naming the inode, block and offset.",
    ),
    (
        "128+N",
        "Interrupted by signal N (130 SIGINT, 143 SIGTERM, 129 SIGHUP); nothing is left under OUT.",
    ),
];

/// FILES: what e2image-rs writes besides OUT.
const FILES: [(&str, &str); 2] = [
    (
        ".OUT.e2image-rs.PID.tmp",
        "The temporary beside OUT, renamed over OUT when complete; removed on failure or \
         interrupt, and by a later run when its writer is gone (mode 0600).",
    ),
    (
        "PATCH",
        "The patch file of rollback and apply (--patch): old and new bytes of every block \
         changed, checksummed; --resume and --undo read it.",
    ),
];

/// EXAMPLES: what, then the command.
const EXAMPLES: [(&str, &str); 10] = [
    ("Metadata of a filesystem as QCOW2:", "e2image-rs -Q /dev/sdb1 sdb1.qcow2"),
    ("With file data, as a sparse raw file:", "e2image-rs -r -d /dev/sdb1 sdb1.raw"),
    (
        "Create an archive whose only state is base:",
        "e2image-rs -Q -d --name base /dev/sdb1 home.qcow2",
    ),
    (
        "Add the current state to it (daily, from a timer), keeping the last 7 days:",
        "e2image-rs -Q -d --append --keep-daily 7 /dev/sdb1 home.qcow2",
    ),
    ("List the states of an image:", "e2image-rs snapshots home.qcow2"),
    (
        "A delta between two states, streamed to a replica:",
        "e2image-rs -Q -d -x a..b home.qcow2 - | ssh replica e2image-rs apply - /dev/sdX --patch /var/lib/e2image-rs/a..b.patch",
    ),
    (
        "Write a state back onto the device:",
        "e2image-rs rollback home.qcow2 /dev/sdb1 --snapshot base --patch /root/rb.patch",
    ),
    (
        "The replayed state of a filesystem whose journal needs recovery:",
        "e2image-rs -Q --replay /dev/sdb1 replayed.qcow2",
    ),
    (
        "Install the manual page:",
        "e2image-rs man > /usr/local/share/man/man1/e2image-rs.1",
    ),
    (
        "Install the bash completions:",
        "e2image-rs completions bash > /etc/bash_completion.d/e2image-rs",
    ),
];

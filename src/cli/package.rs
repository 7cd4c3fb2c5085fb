//! The arguments of the packaging subcommands: `man` (the manual page) and `completions`
//! (shell completion scripts), both generated from this crate's clap definition.

use clap::Args;

/// `e2image-rs completions SHELL`.
#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for: bash, zsh or fish (also elvish, powershell).
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

/// The text after `--help`: every command's exit statuses (the codes of `sys::status`).
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0      done completely
  1      failed or refused; nothing is left under OUT (rollback, apply: the message says where
         TARGET stands)
  2      usage error
  3      exported, but corrupt or unreadable metadata was skipped, or failed its checksum; each
         is reported on stderr as a warning
  128+N  interrupted by signal N (130 SIGINT, 143 SIGTERM, 129 SIGHUP); nothing is left under OUT

The manual: e2image-rs man | man -l -";

//! `-s` (e2image's scramble): the options of a scrambled export (docs/scrambling.md).

use clap::Args;

/// Scrambling of names in the image.
#[derive(Args, Debug, Default, Clone)]
pub struct ScrambleArgs {
    /// Scramble directory entry names and symlink targets in the image (e2image -s): it
    /// still passes e2fsck, and no name of SOURCE survives in it.
    #[arg(help_heading = "Scrambling", short = 's')]
    pub scramble: bool,
    /// Seed of the scrambled names (-s): the same SOURCE and seed give the same image;
    /// without it a random seed is used and reported.
    #[arg(
        help_heading = "Scrambling",
        long,
        value_name = "N",
        requires = "scramble"
    )]
    pub scramble_seed: Option<u64>,
    /// With -s, allow -d: file data is copied as it is and may hold what the names hide.
    #[arg(help_heading = "Scrambling", long, requires = "scramble")]
    pub allow_data: bool,
}

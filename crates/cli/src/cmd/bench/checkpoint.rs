//! `lazarus bench checkpoint` (under construction).

use crate::cmd::CmdResult;

/// Flags of `lazarus bench checkpoint`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the benchmark.
pub fn main(_args: Args) -> CmdResult {
    Err("lazarus bench checkpoint: not implemented yet".into())
}

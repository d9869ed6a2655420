//! `lazarus bench net` (under construction).

use crate::cmd::CmdResult;

/// Flags of `lazarus bench net`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the benchmark.
pub fn main(_args: Args) -> CmdResult {
    Err("lazarus bench net: not implemented yet".into())
}

//! `lazarus run` (under construction).

use super::CmdResult;

/// Flags of `lazarus run`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `lazarus run`.
pub fn main(_args: Args) -> CmdResult {
    Err("lazarus run: not implemented yet".into())
}

//! `lazarus inspect` (under construction).

use super::CmdResult;

/// Flags of `lazarus inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `lazarus inspect`.
pub fn main(_args: Args) -> CmdResult {
    Err("lazarus inspect: not implemented yet".into())
}

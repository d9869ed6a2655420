//! `lazarus verify` (under construction).

use super::CmdResult;

/// Flags of `lazarus verify`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `lazarus verify`.
pub fn main(_args: Args) -> CmdResult {
    Err("lazarus verify: not implemented yet".into())
}

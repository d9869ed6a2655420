//! `lazarus model` (under construction).

use super::CmdResult;

/// Flags of `lazarus model`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `lazarus model`.
pub fn main(_args: Args) -> CmdResult {
    Err("lazarus model: not implemented yet".into())
}

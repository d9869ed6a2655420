//! `lazarus gc` (under construction).

use super::CmdResult;

/// Flags of `lazarus gc`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `lazarus gc`.
pub fn main(_args: Args) -> CmdResult {
    Err("lazarus gc: not implemented yet".into())
}

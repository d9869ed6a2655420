//! `lazarus demo` (under construction).

use super::CmdResult;

/// Flags of `lazarus demo`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `lazarus demo`.
pub fn main(_args: Args) -> CmdResult {
    Err("lazarus demo: not implemented yet".into())
}

//! One module per subcommand. Each exposes `Args` (clap) and `main(Args) -> CmdResult`.

pub mod bench;
pub mod cluster;
pub mod demo;
pub mod gc;
pub mod inspect;
pub mod model;
pub mod recover;
pub mod run;
pub mod verify;

/// What every subcommand returns: an exit code, or an error printed with its causes (exit 2).
pub type CmdResult = Result<std::process::ExitCode, Box<dyn std::error::Error + Send + Sync>>;

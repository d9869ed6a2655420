//! One module per subcommand. Each exposes `Args` (clap) and `main(Args) -> CmdResult`.
//!
//! Output (issue #11 item 10): never `print!`/`println!`/`eprintln!`, which panic (exit
//! 101) when stdout or stderr fails (a full disk, a closed pipe). Results go through
//! `outln!`/`out!`, which return the write error so the command fails with it (`?`);
//! diagnostics through `errln!`/`err!`, which drop a write error (there is nowhere left
//! to report it, and the exit status still says what happened).

/// `println!` returning `std::io::Result<()>` (use with `?`).
macro_rules! outln {
    () => {
        $crate::cmd::stdout_context(::std::io::Write::write_all(
            &mut ::std::io::stdout().lock(),
            b"\n",
        ))
    };
    ($($arg:tt)*) => {
        $crate::cmd::stdout_context(::std::io::Write::write_fmt(
            &mut ::std::io::stdout().lock(),
            format_args!("{}\n", format_args!($($arg)*)),
        ))
    };
}

/// `print!` returning `std::io::Result<()>` (use with `?`).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cmd::stdout_context(::std::io::Write::write_fmt(
            &mut ::std::io::stdout().lock(),
            format_args!($($arg)*),
        ))
    };
}

/// Names stdout in a write error (keeping its kind: a broken pipe stays one).
pub(crate) fn stdout_context(r: std::io::Result<()>) -> std::io::Result<()> {
    r.map_err(|e| std::io::Error::new(e.kind(), format!("writing to stdout: {e}")))
}

/// `eprintln!` that ignores a failed stderr instead of panicking.
macro_rules! errln {
    ($($arg:tt)*) => {{
        let _ = ::std::io::Write::write_fmt(
            &mut ::std::io::stderr().lock(),
            format_args!("{}\n", format_args!($($arg)*)),
        );
    }};
}

/// `eprint!` that ignores a failed stderr instead of panicking.
macro_rules! err {
    ($($arg:tt)*) => {{
        let _ = ::std::io::Write::write_fmt(&mut ::std::io::stderr().lock(), format_args!($($arg)*));
    }};
}

pub mod bench;
pub mod cluster;
pub mod demo;
pub(crate) mod figure;
pub mod gc;
pub mod inspect;
pub mod model;
pub mod recover;
pub mod run;
pub mod verify;
pub mod vm;

/// What every subcommand returns: an exit code, or an error printed with its causes (exit 2).
pub type CmdResult = Result<std::process::ExitCode, Box<dyn std::error::Error + Send + Sync>>;

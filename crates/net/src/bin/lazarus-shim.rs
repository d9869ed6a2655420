//! The rank shim as a binary of its own (`lazarus-shim [--newlines] [--stdin-control]
//! [--rank-from VAR] -- PROG ARGS…`): what remote engines start on a rank's host when the
//! launcher is not the `lazarus` CLI (which has it as `lazarus __shim`). See
//! `lazarus_net::launch::shim`.

fn main() {
    let code = lazarus_net::launch::shim::main(std::env::args_os().skip(1).collect());
    std::process::exit(code);
}

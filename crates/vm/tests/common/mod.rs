//! Shared by the WAT-based tests: Binaryen's presence and the runtimes of this build.
#![allow(dead_code)]

use lazarus_vm::{instrument, RuntimeKind};

/// True when `wasm-opt` runs. Otherwise prints a loud SKIPPED line — or panics under
/// `CI=true`, where `.ci/run` must have installed it.
pub fn have_wasm_opt() -> bool {
    let ok = std::process::Command::new(instrument::wasm_opt_path())
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let msg =
            "SKIPPED: needs Binaryen's wasm-opt (Debian package binaryen; .ci/run installs it)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg} — failing because CI=true");
        }
        eprintln!("\n*** {msg} ***\n");
    }
    ok
}

/// The runtimes this build has.
pub fn runtimes() -> Vec<RuntimeKind> {
    [RuntimeKind::Wasmi, RuntimeKind::Wasmtime]
        .into_iter()
        .filter(|r| r.available())
        .collect()
}

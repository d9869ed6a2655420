//! Shared by the `vm_*` tests: the C test programs compiled to WASI (clang-16, wasi-libc),
//! the `lazarus` binary, seeds, and output comparison. The toolchain is installed by
//! `.ci/run`; without it these tests skip loudly, and fail under CI.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The `lazarus` binary under test.
pub fn lazarus() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lazarus"));
    // One instrumentation per program for the whole test run.
    c.env("LAZARUS_VM_CACHE", target_dir().join("vm-test-cache"));
    c.env_remove("LAZARUS_REPO");
    c.env_remove("LAZARUS_OUTPUT_MARKERS");
    c.env_remove("LAZARUS_JOB_TOKEN");
    c
}

/// The runtimes this `lazarus` was built with.
pub fn runtimes() -> Vec<&'static str> {
    if cfg!(feature = "wasmtime") {
        vec!["wasmi", "wasmtime"]
    } else {
        vec!["wasmi"]
    }
}

fn target_dir() -> PathBuf {
    // .../target/<profile>/lazarus -> .../target
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_lazarus"));
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir)
}

fn programs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../vm/tests/programs")
}

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True when clang-16 (with the wasi sysroot) and wasm-opt are there. Otherwise prints a
/// loud SKIPPED line — or panics under CI, where `.ci/run` must have installed them.
pub fn toolchain(test: &str) -> bool {
    let clang = have("clang-16", "--version");
    let opt = have("wasm-opt", "--version");
    let sysroot = Path::new("/usr/lib/wasm32-wasi/libc.a").exists()
        || Path::new("/usr/share/wasi-sysroot").exists();
    if clang && opt && sysroot {
        return true;
    }
    let msg = format!(
        "{test}: SKIPPED: needs clang-16, wasi-libc, libclang-rt-16-dev-wasm32 and binaryen \
         (clang-16: {clang}, wasi sysroot: {sysroot}, wasm-opt: {opt}); `.ci/run` installs them"
    );
    if lazarus_testbed::in_ci() {
        panic!("{msg} — failing because CI is set");
    }
    eprintln!("\n*** {msg} ***\n");
    false
}

/// `tests/programs/<name>.c` compiled to `wasm32-wasi` (cached by source digest).
pub fn program(name: &str) -> PathBuf {
    let src = programs_dir().join(format!("{name}.c"));
    let code = std::fs::read(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    const FLAGS: [&str; 3] = ["--target=wasm32-wasi", "-O2", "-Wl,-z,stack-size=8388608"];
    let mut key = code.clone();
    key.extend_from_slice(FLAGS.join(" ").as_bytes());
    let hash = source_key(&key);
    let dir = target_dir().join("vm-test-programs");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("{name}-{}.wasm", &hash[..16]));
    if out.exists() {
        return out;
    }
    let tmp = dir.join(format!(".{name}-{}.wasm", std::process::id()));
    let st = Command::new("clang-16")
        // 8 MiB of C stack: the recursion test goes thousands of frames deep.
        .args(FLAGS)
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .arg("-lm")
        .status()
        .expect("running clang-16");
    assert!(st.success(), "clang-16 failed on {}", src.display());
    std::fs::rename(&tmp, &out).unwrap();
    out
}

/// Cache key of a test source (FNV-1a and length: enough to notice an edited source).
fn source_key(b: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}{:016x}", b.len())
}

/// The base seed (printed; `LAZARUS_TEST_SEED` replays one).
pub fn seed(test: &str) -> u64 {
    let s = std::env::var("LAZARUS_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("{test}: seed {s} (replay with LAZARUS_TEST_SEED={s})");
    s
}

/// Stderr without lazarus's own lines (`lazarus ...` messages and tracing's log lines,
/// e.g. the store's "taking over stale lock" after a kill): not the program's output.
pub fn program_lines(stderr: &[u8]) -> String {
    let tracing = |l: &str| {
        let t = l.trim_start();
        l.contains('\u{1b}')
            || ["WARN ", "INFO ", "ERROR ", "DEBUG "]
                .iter()
                .any(|p| t.starts_with(p))
    };
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| !l.starts_with("lazarus") && !tracing(l))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Reads a file to a string (empty when absent).
pub fn read(p: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
}

/// Runs `prog args` in legs that each stop right after one checkpoint (every `every`
/// steps), alternating the runtimes, stdout going to one file that each resume truncates
/// back to its checkpoint; asserts the file equals an uninterrupted run's stdout byte for
/// byte. Returns how many legs stopped at a checkpoint before the last one finished.
pub fn legs_to_file(prog: &str, args: &[&str], every: &str) -> usize {
    let wasm = program(prog);
    let root = tempfile::tempdir().unwrap();
    let run = |rt: &str, repo: Option<&Path>, out: &Path| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(out)
            .unwrap();
        let mut c = lazarus();
        c.args(["vm", "run", "--seed", "5", "--runtime", rt]);
        match repo {
            Some(r) => {
                c.arg("--repo")
                    .arg(r)
                    .args(["--every", every, "--stop-after-checkpoints", "1"])
            }
            None => c.arg("--no-checkpoint"),
        };
        c.arg(&wasm).arg("--").args(args).stdout(f);
        c.status().unwrap()
    };
    let refo = root.path().join("ref.txt");
    assert!(run("wasmi", None, &refo).success(), "{prog}: reference run");
    let rts = runtimes();
    let out = root.path().join("out.txt");
    let repo = root.path().join("repo");
    let mut k = 0;
    loop {
        let rt = rts[k % rts.len()];
        let st = run(rt, Some(&repo), &out);
        if st.success() {
            break;
        }
        assert_eq!(st.code(), Some(3), "{prog}: leg {k} on {rt}");
        k += 1;
        assert!(k < 500, "{prog}: never finished");
    }
    assert_eq!(read(&out), read(&refo), "{prog}: output after {k} legs");
    k
}

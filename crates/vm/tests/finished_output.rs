//! Regression (review): running the command of a finished program again truncated its
//! output file back to the length recorded at exit, cutting what others (a job script)
//! appended afterwards. Alone in its binary: it redirects this process's fd 2.

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;

#[test]
fn rerun_of_a_finished_program_keeps_what_others_appended() {
    if !common::have_wasm_opt() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let c = common::appender::config(d.path());
    std::fs::write(d.path().join("data/log.txt"), "").unwrap();
    let out = d.path().join("err.txt");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out)
        .unwrap();
    (&f).write_all(b"program output\n").unwrap();
    // SAFETY: plain descriptor duplication; fd 2 is put back below.
    let saved = unsafe { libc::dup(2) };
    // SAFETY: as above.
    unsafe { libc::dup2(f.as_raw_fd(), 2) };
    let first = lazarus_vm::run(&c);
    // The job script appends its own line to the same log afterwards.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&out)
        .unwrap()
        .write_all(b"job: step 2 done\n")
        .unwrap();
    let again = lazarus_vm::run(&c);
    // SAFETY: as above.
    unsafe { libc::dup2(saved, 2) };
    assert_eq!(first.unwrap().exit_code, 7);
    assert!(again.unwrap().already_finished);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "program output\njob: step 2 done\n"
    );
}

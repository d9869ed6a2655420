//! Regression (review of the VM mode): a symlink inside a preopen led out of it. Only the
//! directory holding the entry was checked, and `path_open` followed the last component
//! (wasi-libc passes SYMLINK_FOLLOW by default), so `open("link")` read and wrote a file
//! outside; the host's own restores on resume (descriptors reopened by path, tracked files
//! restored, the undo journal) wrote through a symlink planted at a tracked path.

mod common;

use common::wasi::{func, host, open, read, try_open, write, CREAT, READ, TRUNC, WRITE};
use lazarus_vm::wasi::errno::{EXIST, NOTCAPABLE, NOTSUP};
use lazarus_vm::wasi::journal::Journal;
use lazarus_vm::wasi::{TrackedPath, Wasi};
use std::path::{Path, PathBuf};

/// `d/data` (the preopen) and `d/outside/secret.txt`.
fn layout(d: &Path) -> (PathBuf, PathBuf) {
    let (data, outside) = (d.join("data"), d.join("outside"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "top secret\n").unwrap();
    (data, outside.join("secret.txt"))
}

fn symlink(target: &str, at: &Path) {
    std::os::unix::fs::symlink(target, at).unwrap();
}

#[test]
fn symlink_in_preopen_leading_out_is_refused_for_read_and_write() {
    let d = tempfile::tempdir().unwrap();
    let (data, secret) = layout(d.path());
    symlink("../outside/secret.txt", &data.join("link"));
    symlink("../outside/new.txt", &data.join("dangling"));
    symlink("../outside", &data.join("dir"));
    std::fs::write(data.join("real.txt"), "inside\n").unwrap();
    symlink("real.txt", &data.join("inlink"));
    let (_, mut w) = host(&data);
    let mut mem = vec![0u8; 65536];
    let r = try_open(&mut w, &mut mem, "link", 0, READ, 0).0;
    assert_eq!(r, i32::from(NOTCAPABLE), "reading through the link");
    let r = try_open(&mut w, &mut mem, "link", TRUNC, WRITE, 0).0;
    assert_eq!(r, i32::from(NOTCAPABLE), "truncating through the link");
    let r = try_open(&mut w, &mut mem, "dir/secret.txt", 0, READ, 0).0;
    assert_eq!(r, i32::from(NOTCAPABLE), "a directory link leading out");
    let r = try_open(&mut w, &mut mem, "dangling", CREAT, WRITE, 0).0;
    assert_ne!(r, 0, "creating through a dangling link");
    assert!(!d.path().join("outside/new.txt").exists());
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "top secret\n");
    // A link that stays inside still works, and names the real file.
    let fd = open(&mut w, &mut mem, "inlink", 0, READ, 0);
    assert_eq!(read(&mut w, &mut mem, fd), b"inside\n");
    // The program cannot change a symlink itself (it could not be restored).
    let p = "link";
    mem[100..100 + p.len()].copy_from_slice(p.as_bytes());
    let r = w.call(
        &mut mem,
        func("path_unlink_file"),
        &[3, 100, p.len() as u64],
    );
    assert_eq!(r, Ok(i32::from(NOTSUP)));
    // mkdir over a symlink is EEXIST, as on the host (nothing to refuse).
    let p = "dir";
    mem[100..100 + p.len()].copy_from_slice(p.as_bytes());
    let args = [3, 100, p.len() as u64];
    let r = w.call(&mut mem, func("path_create_directory"), &args);
    assert_eq!(r, Ok(i32::from(EXIST)));
}

#[test]
fn resume_does_not_reopen_a_descriptor_through_a_planted_symlink() {
    let d = tempfile::tempdir().unwrap();
    let (data, secret) = layout(d.path());
    let (_, mut w) = host(&data);
    let mut mem = vec![0u8; 65536];
    let fd = open(&mut w, &mut mem, "out.txt", CREAT | TRUNC, WRITE, 0);
    write(&mut w, &mut mem, fd, b"mine\n");
    let state = w.state();
    drop(w);
    std::fs::remove_file(data.join("out.txt")).unwrap();
    symlink("../outside/secret.txt", &data.join("out.txt"));
    let e = Wasi::resume(&state, false).unwrap_err();
    assert!(e.to_string().contains("out.txt"), "{e}");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "top secret\n");
}

#[test]
fn undo_journal_does_not_write_through_a_planted_symlink() {
    let d = tempfile::tempdir().unwrap();
    let (data, secret) = layout(d.path());
    std::fs::write(data.join("log.txt"), "x\n").unwrap();
    let (preopens, _) = host(&data);
    let jdir = d.path().join("journal");
    let t = TrackedPath {
        pre: 0,
        rel: "log.txt".into(),
    };
    Journal::open(&jdir)
        .unwrap()
        .record(&data.join("log.txt"), &t)
        .unwrap();
    std::fs::remove_file(data.join("log.txt")).unwrap();
    symlink("../outside/secret.txt", &data.join("log.txt"));
    Journal::open(&jdir).unwrap().undo(&preopens).unwrap();
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "top secret\n");
    let md = std::fs::symlink_metadata(data.join("log.txt")).unwrap();
    assert!(md.is_file(), "the link itself is replaced by the file");
    assert_eq!(
        std::fs::read_to_string(data.join("log.txt")).unwrap(),
        "x\n"
    );
}

#[test]
fn resume_does_not_restore_a_tracked_file_through_a_planted_symlink() {
    if !common::have_wasm_opt() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (data, secret) = layout(d.path());
    let mut c = common::appender::config(d.path());
    std::fs::write(data.join("log.txt"), "existing\n").unwrap();
    c.stop_after_checkpoints = Some(2); // steps 40000 (before the append) and 80000 (after)
    assert!(lazarus_vm::run(&c).unwrap().stopped);
    std::fs::remove_file(data.join("log.txt")).unwrap();
    symlink("../outside/secret.txt", &data.join("log.txt"));
    c.stop_after_checkpoints = None;
    assert_eq!(lazarus_vm::run(&c).unwrap().exit_code, 7);
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "top secret\n");
    assert_eq!(
        std::fs::read_to_string(data.join("log.txt")).unwrap(),
        "existing\nA\n"
    );
}

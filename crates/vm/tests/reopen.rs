//! Regression (review): descriptors are reopened on resume by their path, so a file
//! renamed, replaced or deleted while open came back as another file (or not at all)
//! without a word. A checkpoint now records the open file's device and inode and whether
//! its path still named it; a resume refuses, naming the descriptor and the path, rather
//! than hand the program another file.

mod common;

use common::wasi::{func, host, open, read, rename, write, CREAT, READ, TRUNC, WRITE};
use lazarus_vm::wasi::Wasi;
use lazarus_vm::VmErrorKind;

#[test]
fn descriptor_whose_file_was_replaced_while_open_is_refused_on_resume() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a.txt"), "old content\n").unwrap();
    let (_, mut w) = host(&data);
    let mut mem = vec![0u8; 65536];
    let r = open(&mut w, &mut mem, "a.txt", 0, READ, 0);
    let t = open(&mut w, &mut mem, "tmp.txt", CREAT | TRUNC, WRITE, 0);
    write(&mut w, &mut mem, t, b"NEW CONTENT\n");
    assert_eq!(w.call(&mut mem, func("fd_close"), &[u64::from(t)]), Ok(0));
    assert_eq!(rename(&mut w, &mut mem, "tmp.txt", "a.txt"), 0); // fd r: still the old file
    let state = w.state();
    assert_eq!(read(&mut w, &mut mem, r), b"old content\n", "uninterrupted");
    drop(w);
    let e = Wasi::resume(&state, false).unwrap_err();
    assert_eq!(e.kind(), VmErrorKind::Mismatch, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("fd {r}")) && msg.contains("a.txt"),
        "{msg}"
    );
}

#[test]
fn descriptor_renamed_while_open_is_refused_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let (_, mut w) = host(&data);
    let mut mem = vec![0u8; 65536];
    let t = open(&mut w, &mut mem, "out.tmp", CREAT | TRUNC, WRITE, 0);
    write(&mut w, &mut mem, t, b"part 1\n");
    assert_eq!(rename(&mut w, &mut mem, "out.tmp", "out.txt"), 0); // still open
    let state = w.state();
    drop(w);
    let e = Wasi::resume(&state, false).unwrap_err();
    assert_eq!(e.kind(), VmErrorKind::Mismatch, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("fd {t}")) && msg.contains("out.tmp"),
        "{msg}"
    );
    assert!(
        msg.contains("renamed, replaced or deleted while open"),
        "{msg}"
    );
}

#[test]
fn input_replaced_between_checkpoint_and_resume_is_refused_and_a_tracked_file_is_not() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("in.txt"), "input\n").unwrap();
    let (_, mut w) = host(&data);
    let mut mem = vec![0u8; 65536];
    let r = open(&mut w, &mut mem, "in.txt", 0, READ, 0);
    let o = open(&mut w, &mut mem, "out.txt", CREAT | TRUNC, WRITE, 0);
    write(&mut w, &mut mem, o, b"out\n");
    let state = w.state();
    drop(w);
    // A tracked file recreated (as a restore does) resumes: its content is the checkpoint's.
    std::fs::remove_file(data.join("out.txt")).unwrap();
    std::fs::write(data.join("out.txt"), "out\n").unwrap();
    Wasi::resume(&state, false).unwrap();
    // An input someone replaced (same content, another file) is not the file it was.
    // (written beside it and renamed over it, as an editor saves: a file created after
    // the old one was deleted could reuse its inode number)
    std::fs::write(data.join("in.new"), "input\n").unwrap();
    std::fs::rename(data.join("in.new"), data.join("in.txt")).unwrap();
    let e = Wasi::resume(&state, false).unwrap_err();
    assert!(e.to_string().contains(&format!("fd {r}")), "{e}");
}

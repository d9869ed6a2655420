//! Regression (found by `vm_kill`): a pre-existing file the program appended to before its
//! first checkpoint got the appended line twice after a kill, because no checkpoint knew
//! the file yet. The undo journal records a path's state before the first change; here
//! the WASI host is driven directly, "killed" (dropped) and the journal undone.

mod common;

use common::wasi::{host, open, read, rename, write, CREAT, READ, TRUNC, WRITE};
use lazarus_vm::wasi::journal::Journal;
use lazarus_vm::wasi::{Preopen, TrackedPath};

#[test]
fn pre_existing_file_appended_before_the_first_checkpoint_is_rolled_back() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("log.txt"), "existing\n").unwrap();
    let (preopens, mut w) = host(&data);
    let jdir = d.path().join("journal");
    w.set_journal(Journal::open(&jdir).unwrap());
    let mut mem = vec![0u8; 65536];
    let log = open(&mut w, &mut mem, "log.txt", 0, WRITE, 1);
    write(&mut w, &mut mem, log, b"added\n");
    write(&mut w, &mut mem, log, b"again\n");
    let new = open(&mut w, &mut mem, "new.txt", CREAT | TRUNC, WRITE, 0);
    write(&mut w, &mut mem, new, b"fresh\n");
    assert_eq!(
        std::fs::read_to_string(data.join("log.txt")).unwrap(),
        "existing\nadded\nagain\n"
    );
    drop(w); // killed before any checkpoint

    let mut j = Journal::open(&jdir).unwrap();
    assert_eq!(
        j.undo(&preopens).unwrap(),
        2,
        "one entry per path, not per write"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("log.txt")).unwrap(),
        "existing\n"
    );
    assert!(
        !data.join("new.txt").exists(),
        "a file created after the checkpoint is removed"
    );
    j.clear().unwrap();
    assert_eq!(j.undo(&preopens).unwrap(), 0);
}

#[test]
fn damaged_journal_entry_outside_the_preopens_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let jdir = d.path().join("journal");
    std::fs::create_dir(&jdir).unwrap();
    std::fs::write(
        jdir.join("0.json"),
        r#"{"path":{"pre":0,"rel":"../../etc/passwd"},"pre":"absent"}"#,
    )
    .unwrap();
    let preopens = vec![Preopen {
        host: d.path().to_path_buf(),
        guest: ".".into(),
    }];
    let e = Journal::open(&jdir).unwrap().undo(&preopens).unwrap_err();
    assert_eq!(e.kind(), lazarus_vm::VmErrorKind::Corrupt, "{e}");
}

/// Regression (review): `Journal::clear` removed files in `read_dir` order, so a kill in
/// the middle could leave `N.json` without `N.data`, and every later undo failed. Now
/// the entries go first (fsynced), then the data: the states a kill can leave undo fine.
#[test]
fn kill_in_the_middle_of_journal_clear_does_not_block_resume() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("log.txt"), "x\n").unwrap();
    let (preopens, _) = host(&data);
    let jdir = d.path().join("journal");
    let t = TrackedPath {
        pre: 0,
        rel: "log.txt".into(),
    };
    let mut j = Journal::open(&jdir).unwrap();
    j.record(&data.join("log.txt"), &t).unwrap();
    // Killed after the entries were removed, before the data files.
    std::fs::remove_file(jdir.join("0.json")).unwrap();
    assert!(jdir.join("0.data").exists());
    std::fs::write(data.join("log.txt"), "changed later\n").unwrap();
    let mut j = Journal::open(&jdir).unwrap();
    assert_eq!(
        j.undo(&preopens).unwrap(),
        0,
        "an orphaned data file is ignored"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("log.txt")).unwrap(),
        "changed later\n"
    );
    // A new entry reuses the number; its own data replaces the orphan's.
    j.record(&data.join("log.txt"), &t).unwrap();
    std::fs::write(data.join("log.txt"), "after\n").unwrap();
    assert_eq!(Journal::open(&jdir).unwrap().undo(&preopens).unwrap(), 1);
    assert_eq!(
        std::fs::read_to_string(data.join("log.txt")).unwrap(),
        "changed later\n"
    );
    j.clear().unwrap();
    assert_eq!(std::fs::read_dir(&jdir).unwrap().count(), 0);
}

/// Regression (review): the journal recorded a renamed directory only as "was a
/// directory", and a checkpoint tracks only the paths inside it the program changed, so
/// renaming a directory and being killed before the next checkpoint brought it back
/// empty, its contents left under the new name. The rename itself is journaled now (for
/// a tracked directory too) and undone by renaming it back.
#[test]
fn directory_renamed_after_the_checkpoint_comes_back_with_its_contents() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir_all(data.join("d")).unwrap();
    std::fs::write(data.join("d/keep.txt"), "precious\n").unwrap();
    std::fs::create_dir_all(data.join("busy")).unwrap();
    std::fs::write(data.join("busy/x"), "x").unwrap();
    let (preopens, mut w) = host(&data);
    let jdir = d.path().join("journal");
    w.set_journal(Journal::open(&jdir).unwrap());
    let mut mem = vec![0u8; 65536];
    // Make `d` tracked: moved away and back, then a checkpoint.
    assert_eq!(rename(&mut w, &mut mem, "d", "x"), 0);
    assert_eq!(rename(&mut w, &mut mem, "x", "d"), 0);
    w.checkpoint_committed(1).unwrap();
    assert_eq!(rename(&mut w, &mut mem, "d", "e"), 0);
    // A rename that fails leaves no move behind (undoing it would move `busy`).
    assert_ne!(rename(&mut w, &mut mem, "e", "busy"), 0);
    let f = open(&mut w, &mut mem, "e/new.txt", CREAT, WRITE, 0);
    write(&mut w, &mut mem, f, b"new\n");
    drop(w); // killed before the next checkpoint
    Journal::open(&jdir).unwrap().undo(&preopens).unwrap();
    assert_eq!(
        std::fs::read_to_string(data.join("d/keep.txt")).unwrap(),
        "precious\n"
    );
    assert!(!data.join("d/new.txt").exists());
    assert!(!data.join("e").exists());
    assert_eq!(std::fs::read_to_string(data.join("busy/x")).unwrap(), "x");
}

/// Regression (review): the undo restored a journaled file by writing a new file and
/// renaming it over the path (a new inode), so a descriptor the program held open on it
/// since before the checkpoint (recorded with its inode, the file untracked then) was
/// refused on resume as "replaced since". An existing regular file is now rewritten in
/// place: the descriptor reopens and reads the old content.
#[test]
fn undo_keeps_the_inode_of_a_file_open_since_the_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("data.csv"), "a,b\n1,2\n").unwrap();
    let (preopens, mut w) = host(&data);
    let jdir = d.path().join("journal");
    w.set_journal(Journal::open(&jdir).unwrap());
    let mut mem = vec![0u8; 65536];
    let r = open(&mut w, &mut mem, "data.csv", 0, READ, 0);
    let state = w.state(); // checkpoint N: fd r open read-only, data.csv untracked
    w.checkpoint_committed(1).unwrap();
    let o = open(&mut w, &mut mem, "data.csv", TRUNC, WRITE, 0);
    write(&mut w, &mut mem, o, b"changed\n");
    drop(w); // killed before the next checkpoint
    Journal::open(&jdir).unwrap().undo(&preopens).unwrap();
    let mut w = lazarus_vm::wasi::Wasi::resume(&state, false).unwrap();
    assert_eq!(read(&mut w, &mut mem, r), b"a,b\n1,2\n");
}

/// Regression (review): entries left from before checkpoint N by a kill between N's
/// COMMIT and the journal clear were undone on resume from N. N's restore overwrites a
/// file's, but not a directory rename's: `a` renamed to `b`, N committed (tracking `b`'s
/// changed paths only), killed before the clear: the resume moved `b` back to `a` and
/// left an empty `b`. Entries are stamped with the checkpoint they follow; a resume from
/// N skips those written before N was committed.
#[test]
fn journal_left_from_before_the_checkpoint_resumed_from_is_not_undone() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir_all(data.join("a")).unwrap();
    std::fs::write(data.join("a/keep.txt"), "precious\n").unwrap();
    let (preopens, mut w) = host(&data);
    let jdir = d.path().join("journal");
    let mut j = Journal::open(&jdir).unwrap();
    j.follows(3); // resumed from (or committed) checkpoint 3
    w.set_journal(j);
    let mut mem = vec![0u8; 65536];
    assert_eq!(rename(&mut w, &mut mem, "a", "b"), 0);
    // Checkpoint 4 is committed here (it has `b` with its contents, no `a`); killed
    // before the journal is cleared.
    drop(w);
    let mut j = Journal::open(&jdir).unwrap();
    assert_eq!(j.undo_from(&preopens, Some(4)).unwrap(), 0);
    assert_eq!(
        std::fs::read_to_string(data.join("b/keep.txt")).unwrap(),
        "precious\n"
    );
    assert!(!data.join("a").exists());
    // Resumed from the checkpoint it follows, the same entries are undone.
    assert!(
        Journal::open(&jdir)
            .unwrap()
            .undo_from(&preopens, Some(3))
            .unwrap()
            > 0
    );
    assert_eq!(
        std::fs::read_to_string(data.join("a/keep.txt")).unwrap(),
        "precious\n"
    );
}

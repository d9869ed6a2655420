//! Regressions (review): a resume rewrote the user's files (undo journal, tracked files)
//! before checks that then refused the checkpoint as inconsistent; and falling back past
//! a damaged newest checkpoint kept the file changes made after the older one (the undo
//! journal reaches back only to the newest commit), silently.

mod common;

use lazarus_format::{ObjectSpec, Rank};
use lazarus_store::{CommitMeta, RepoOptions, RepoReader, Repository};
use lazarus_vm::runtime::GlobalValue;
use lazarus_vm::{run, VmErrorKind, VmMeta};
use std::path::Path;

/// Commits a copy of the newest checkpoint of `repo` with its `vm.meta` changed by `edit`.
fn recommit_newest(repo: &Path, edit: impl Fn(&mut VmMeta)) {
    let reader = RepoReader::open(repo).unwrap();
    let (ok, _) = reader.newest_committed_candidates().unwrap();
    let newest = &ok[0];
    let mut objs = reader.load_part(newest.id, Rank(0)).unwrap();
    for o in &mut objs {
        if o.info.name == "vm.meta" {
            let mut meta = VmMeta::decode(&o.data).unwrap();
            edit(&mut meta);
            o.data = meta.encode();
            if let lazarus_format::ObjectKind::Bulk { len, .. } = &mut o.info.kind {
                *len = o.data.len() as u64;
            }
        }
    }
    let opts = RepoOptions {
        chunk_size: lazarus_vm::VM_CHUNK_SIZE,
        ..RepoOptions::default()
    };
    let mut w = Repository::open(repo, opts).unwrap();
    let pending = w.begin(1).unwrap();
    let specs: Vec<ObjectSpec<'_>> = objs
        .iter()
        .map(|o| ObjectSpec::new(o.info.clone(), std::borrow::Cow::Borrowed(&o.data[..])))
        .collect();
    let receipt = pending.part_writer().write(Rank(0), &specs).unwrap();
    let meta = CommitMeta {
        step: newest.step,
        app: newest.app.clone(),
    };
    w.commit(pending, vec![receipt], meta).unwrap();
}

#[test]
fn inconsistent_checkpoint_is_refused_before_any_file_is_touched() {
    if !common::have_wasm_opt() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("data/log.txt");
    let mut c = common::appender::config(d.path());
    std::fs::write(&log, "existing\n").unwrap();
    c.stop_after_checkpoints = Some(2); // the second one tracks log.txt
    assert!(run(&c).unwrap().stopped);
    // A checkpoint that decodes but whose globals are not the module's: found only once
    // the module is instantiated.
    recommit_newest(&d.path().join("repo"), |m| {
        m.globals.push(("__lz_g999".into(), GlobalValue::I32(0)));
    });
    std::fs::write(&log, "the user's own later edit\n").unwrap();
    c.stop_after_checkpoints = None;
    let e = run(&c).unwrap_err();
    assert_eq!(e.kind(), VmErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("globals"), "{e}");
    // Both lists, so a mismatch can be told apart from damage (review).
    assert!(
        e.to_string().contains("\"__lz_g999\"]") && e.to_string().contains("exports"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "the user's own later edit\n",
        "refused before restoring any file"
    );
}

#[test]
fn fallback_with_directories_is_refused_naming_the_checkpoints() {
    if !common::have_wasm_opt() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("data/log.txt");
    let mut c = common::appender::config(d.path());
    std::fs::write(&log, "existing\n").unwrap();
    c.stop_after_checkpoints = Some(2); // steps 40000 (before the append) and 80000 (after)
    assert!(run(&c).unwrap().stopped);
    let mut dirs: Vec<_> = std::fs::read_dir(d.path().join("repo/checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    let newest = dirs.last().unwrap().join("COMMIT");
    let mut b = std::fs::read(&newest).unwrap();
    let n = b.len();
    b[n / 2] ^= 0x55;
    std::fs::write(&newest, b).unwrap();
    c.stop_after_checkpoints = None;
    // Resuming from the step-40000 checkpoint would append "A" a second time.
    let e = run(&c).unwrap_err();
    assert_eq!(e.kind(), VmErrorKind::Corrupt, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("checkpoint(s) 2 are damaged"), "{msg}");
    assert!(msg.contains("checkpoint 1 (step 40000)"), "{msg}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "existing\nA\n");
}

/// Regression (review): a checkpoint recording a detached descriptor (committed by an
/// older version) was refused only by the descriptor reopen, after the undo journal and
/// the file restore had rewritten the user's files. It needs only `vm.meta`: now refused
/// before any file is touched.
#[test]
fn checkpoint_with_a_detached_descriptor_is_refused_before_any_file_is_touched() {
    if !common::have_wasm_opt() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("data/log.txt");
    let mut c = common::appender::config(d.path());
    std::fs::write(&log, "existing\n").unwrap();
    c.stop_after_checkpoints = Some(2); // the second one tracks log.txt, open as fd 4
    assert!(run(&c).unwrap().stopped);
    recommit_newest(&d.path().join("repo"), |m| {
        for (_, f) in m.wasi.fds.iter_mut() {
            if let lazarus_vm::wasi::FdState::File { detached, .. } = f {
                *detached = true;
            }
        }
    });
    std::fs::write(&log, "the user's own later edit\n").unwrap();
    c.stop_after_checkpoints = None;
    let e = run(&c).unwrap_err();
    assert_eq!(e.kind(), VmErrorKind::Mismatch, "{e}");
    assert!(
        e.to_string().contains("fd 4") && e.to_string().contains("log.txt"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "the user's own later edit\n",
        "refused before restoring any file"
    );
}

/// Regression (review): the presence and length of each tracked file's `vm.file.N` object
/// were checked only while restoring files, after the undo journal had been undone and
/// cleared: a checkpoint with a short object undid (and forgot) the changes made after it,
/// then was refused.
#[test]
fn checkpoint_with_a_bad_file_object_is_refused_before_the_journal_is_undone() {
    use common::wasi::{host, open, write, CREAT, TRUNC, WRITE};
    use lazarus_vm::meta::FileState;
    use lazarus_vm::wasi::journal::Journal;
    if !common::have_wasm_opt() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (data, repo) = (d.path().join("data"), d.path().join("repo"));
    let mut c = common::appender::config(d.path());
    std::fs::write(data.join("log.txt"), "existing\n").unwrap();
    c.stop_after_checkpoints = Some(2); // the second one tracks log.txt
    assert!(run(&c).unwrap().stopped);
    recommit_newest(&repo, |m| {
        for f in &mut m.files {
            if let FileState::File { len, .. } = &mut f.state {
                *len += 1;
            }
        }
    });
    let id = RepoReader::open(&repo)
        .unwrap()
        .newest_committed_candidates()
        .unwrap()
        .0[0]
        .id
        .0;
    // Killed after that checkpoint, having created a file: the journal records it.
    let (preopens, mut w) = host(&data);
    let mut j = Journal::open(&repo.join("vm-undo")).unwrap();
    j.follows(id);
    w.set_journal(j);
    let mut mem = vec![0u8; 65536];
    let fd = open(&mut w, &mut mem, "after.txt", CREAT | TRUNC, WRITE, 0);
    write(&mut w, &mut mem, fd, b"made after the checkpoint\n");
    drop(w);
    c.stop_after_checkpoints = None;
    let e = run(&c).unwrap_err();
    assert_eq!(e.kind(), VmErrorKind::Corrupt, "{e}");
    assert!(
        e.to_string().contains("vm.file.") && e.to_string().contains("log.txt"),
        "{e}"
    );
    assert!(data.join("after.txt").exists(), "journal not undone");
    assert_eq!(
        std::fs::read_to_string(data.join("log.txt")).unwrap(),
        "existing\nA\n"
    );
    // The journal is kept: a good checkpoint (or the user) can still undo it.
    let mut j = Journal::open(&repo.join("vm-undo")).unwrap();
    assert_eq!(j.undo_from(&preopens, Some(id)).unwrap(), 1);
    assert!(!data.join("after.txt").exists());
}

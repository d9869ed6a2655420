//! Issue #11, item 6: `lazarus verify` blocked forever when a chunk path was a FIFO. Readers
//! open nothing that is not a regular file (`O_NONBLOCK | O_NOFOLLOW` + `fstat`), and the
//! writer replaces whatever squats a chunk's name (item 2: never blocks commits forever).

mod common;

use common::*;
use lazarus_format::Rank;
use lazarus_store::{RepoReader, Repository};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

const N: usize = 3000;

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o644) },
        0,
        "mkfifo {p:?}"
    );
}

/// Runs `f` on a thread and fails the test if it does not return within 60 s (a blocked
/// open of a FIFO never returns).
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what} blocked for 60 s"))
}

/// A repository with two checkpoints; returns (root, the newest id, a chunk file only the
/// newest one uses).
fn repo_with_unique_chunk(dir: &Path) -> (PathBuf, lazarus_format::CheckpointId, PathBuf) {
    let root = dir.join("repo");
    let mut repo = Repository::open(&root, small_opts()).unwrap();
    checkpoint(&mut repo, 1, 1, N);
    let id = checkpoint(&mut repo, 1, 2, N);
    drop(repo);
    let m = RepoReader::open(&root)
        .unwrap()
        .manifest(id, Rank(0))
        .unwrap();
    let hex = m.objects[0].chunks[0].digest.to_hex();
    let chunk = root.join("chunks").join(&hex[..2]).join(&hex);
    (root, id, chunk)
}

#[test]
fn verify_does_not_block_on_a_fifo_where_a_chunk_belongs() {
    for squat in ["fifo", "dir", "symlink"] {
        let d = tempfile::tempdir().unwrap();
        let (root, id, chunk) = repo_with_unique_chunk(d.path());
        let good = std::fs::read(&chunk).unwrap();
        std::fs::remove_file(&chunk).unwrap();
        match squat {
            "fifo" => mkfifo(&chunk),
            "dir" => std::fs::create_dir(&chunk).unwrap(),
            _ => {
                // A symlink to an intact copy: still refused (readers follow no links).
                let copy = d.path().join("copy");
                std::fs::write(&copy, &good).unwrap();
                std::os::unix::fs::symlink(&copy, &chunk).unwrap();
            }
        }
        let r = root.clone();
        let report = bounded("verify", move || {
            RepoReader::open(&r).unwrap().verify(&|_, _| {}).unwrap()
        });
        assert!(!report.intact.contains(&id), "{squat}: {report:?}");
        let p = &report.problems[0];
        assert_eq!(p.path, chunk, "{squat}");
        assert!(
            p.detail.contains("not a regular file"),
            "{squat}: {}",
            p.detail
        );
        // Restore's cheap check and fallback do not block either.
        let r = root.clone();
        let (cands, damaged) = bounded("candidates", move || {
            RepoReader::open(&r)
                .unwrap()
                .newest_committed_candidates()
                .unwrap()
        });
        assert!(cands.iter().all(|c| c.id != id), "{squat}");
        assert_eq!(damaged[0].checkpoint, id, "{squat}");
        // The next checkpoint of the same data replaces it and is intact.
        let r = root.clone();
        let again = bounded("checkpoint", move || {
            let mut repo = Repository::open(&r, small_opts()).unwrap();
            checkpoint(&mut repo, 1, 2, N)
        });
        let report = RepoReader::open(&root).unwrap().verify(&|_, _| {}).unwrap();
        assert!(report.intact.contains(&again), "{squat}: {report:?}");
        assert!(
            std::fs::symlink_metadata(&chunk).unwrap().is_file(),
            "{squat}"
        );
    }
}

#[test]
fn a_fifo_as_commit_or_manifest_or_format_does_not_block_readers() {
    for name in ["COMMIT", "rank-0.manifest", "FORMAT"] {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("repo");
        let mut repo = Repository::open(&root, small_opts()).unwrap();
        let id = checkpoint(&mut repo, 1, 1, N);
        drop(repo);
        let p = if name == "FORMAT" {
            root.join(name)
        } else {
            root.join("checkpoints").join(id.to_string()).join(name)
        };
        std::fs::remove_file(&p).unwrap();
        mkfifo(&p);
        let r = root.clone();
        let out = bounded(name, move || {
            RepoReader::open(&r).and_then(|rd| rd.verify(&|_, _| {}))
        });
        match out {
            Ok(report) => assert!(report.intact.is_empty(), "{name}: {report:?}"),
            Err(e) => assert!(e.to_string().contains("not a regular file"), "{name}: {e}"),
        }
    }
}

/// The writer's lock file opened through a symbolic link: whoever could write the
/// repository could make the next writer (or an administrator's `lazarus gc`) empty any
/// file, inside the repository or out of it.
#[test]
fn a_symlinked_lock_is_refused_not_followed() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("repo");
    let mut repo = Repository::open(&root, small_opts()).unwrap();
    checkpoint(&mut repo, 1, 1, N);
    drop(repo);
    let victim = d.path().join("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    let lock = root.join("LOCK");
    std::fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink(&victim, &lock).unwrap();
    let e = Repository::open(&root, small_opts()).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert!(e.to_string().contains("LOCK"), "{e}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    // A dangling link must not create its target either.
    let elsewhere = d.path().join("created-elsewhere");
    std::fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &lock).unwrap();
    assert!(Repository::open(&root, small_opts()).is_err());
    assert!(!elsewhere.exists());
}

/// A writer that finds a chunk damaged writes it again with its own codec, so an older
/// manifest may record another stored size for the same intact content; the cheap
/// check took that recorded size as authoritative and skipped the intact checkpoint.
#[test]
fn a_chunk_rewritten_with_another_codec_keeps_older_checkpoints_intact() {
    let d = tempfile::tempdir().unwrap();
    let (root, id, chunk) = repo_with_unique_chunk(d.path());
    let reader = RepoReader::open(&root).unwrap();
    let m = reader.manifest(id, Rank(0)).unwrap();
    let c = m.objects[0].chunks[0].clone();
    let raw = {
        let file = std::fs::read(&chunk).unwrap();
        lazarus_format::decode_chunk(&file, &c.digest).unwrap()
    };
    // The same content stored raw (codec 0) instead of compressed: another size.
    let recoded = lazarus_format::encode_chunk(&raw, lazarus_format::ChunkCodec::None, None, 1);
    assert_ne!(
        recoded.len() as u64,
        c.stored,
        "the test needs another size"
    );
    std::fs::write(&chunk, &recoded).unwrap();
    let reader = RepoReader::open(&root).unwrap();
    reader
        .check_committed(id)
        .unwrap_or_else(|e| panic!("an intact checkpoint was called damaged: {e}"));
    assert_holds(&root, id, 1, 2, N);
}

/// Attack review #2: `probe_lock` (the supervisor's dead-job probe) opened `LOCK` without
/// `O_NONBLOCK`, so a FIFO named `LOCK` blocked `lazarus run` forever (and a symlinked
/// `LOCK` was followed).
#[test]
fn probe_lock_does_not_block_on_a_fifo_lock() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("repo");
    let mut repo = Repository::open(&root, small_opts()).unwrap();
    checkpoint(&mut repo, 1, 1, N);
    drop(repo);
    let lock = root.join("LOCK");
    std::fs::remove_file(&lock).unwrap();
    mkfifo(&lock);
    let r = root.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(lazarus_store::probe_lock(&r));
    });
    let out = rx.recv_timeout(Duration::from_secs(10));
    if out.is_err() {
        // Free the stuck probe (a writer opening the FIFO unblocks its reader).
        let _w = std::fs::OpenOptions::new().write(true).open(&lock);
        panic!("probe_lock blocked on a FIFO named LOCK");
    }
    let e = out.unwrap().unwrap_err();
    assert!(e.to_string().contains("LOCK"), "{e}");
    assert!(e.to_string().contains("not a regular file"), "{e}");
    // A symlinked LOCK is not followed either.
    std::fs::remove_file(&lock).unwrap();
    let elsewhere = d.path().join("elsewhere");
    std::fs::write(&elsewhere, b"").unwrap();
    std::os::unix::fs::symlink(&elsewhere, &lock).unwrap();
    let e = lazarus_store::probe_lock(&root).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
}

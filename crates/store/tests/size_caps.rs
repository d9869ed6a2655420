//! Attack review #1 and #3: whole-object reads are bounded by the format's cap for the
//! object's kind (`lazarus_store::size_cap`) on every backend, checked against the size
//! announced before the body (a file's size, an HTTP `Content-Length`), and the S3 backend
//! reads bodies as a bounded stream. Each memory check runs in a child process of its own,
//! so its peak RSS is its own.

mod common;

use common::fake_s3::{fake_backend, fake_s3, fake_s3_with};
use common::*;
use lazarus_format::{CheckpointId, Rank};
use lazarus_store::{ObjectKey, ReadBackend, RepoReader, Repository, StoreErrorKind, WriteBackend};
use std::process::Command;

const CHILD_ENV: &str = "LAZARUS_TEST_SIZE_CAPS_CHILD";

/// In the parent: runs the test `name` alone in a child process and requires it to pass
/// (a process abort is a failure, not the end of the test binary). Returns true in the
/// child, which then runs the test's body.
fn in_child(name: &str) -> bool {
    if std::env::var_os(CHILD_ENV).is_some() {
        return true;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let tail = |b: &[u8]| String::from_utf8_lossy(&b[b.len().saturating_sub(4000)..]).into_owned();
    assert!(
        out.status.success(),
        "{name} failed in its child process ({:?}):\n{}\n{}",
        out.status,
        tail(&out.stdout),
        tail(&out.stderr)
    );
    false
}

fn assert_peak_below(mib: u64) {
    let peak = lazarus_testbed::peak_rss().expect("VmHWM in /proc/self/status");
    assert!(peak < mib << 20, "peak RSS {} MiB", peak >> 20);
}

/// #1: a server announcing `Content-Length: 1 TiB` for a COMMIT, then sending its body in
/// two frames, made the client pre-allocate 1 TiB: the process aborted. Now the COMMIT is
/// refused by its announced size before its body is read.
#[test]
fn a_hostile_content_length_is_refused_not_an_abort() {
    if !in_child("a_hostile_content_length_is_refused_not_an_abort") {
        return;
    }
    let b = fake_backend(fake_s3(1 << 40, 300));
    for key in [ObjectKey::Commit(CheckpointId(1)), ObjectKey::Lock] {
        let e = b.open(&key).map(|o| o.len).unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::Corrupt, "{e}");
        assert!(e.to_string().contains(&key.name()), "{e}");
        assert!(e.to_string().contains("more than any"), "{e}");
        let e = b.read(&key).map(|b| b.len()).unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::Corrupt, "{e}");
        let e = b
            .read_versioned(&key)
            .map(|o| o.map(|(b, _)| b.len()))
            .unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::Corrupt, "{e}");
    }
}

/// #1: an honest 300 MiB object under LOCK (a lease record is at most 4 KiB) was
/// downloaded whole before the lease decoder refused it. Now refused by its size.
#[test]
fn an_honest_huge_lock_object_is_refused_without_downloading_it() {
    if !in_child("an_honest_huge_lock_object_is_refused_without_downloading_it") {
        return;
    }
    let b = fake_backend(fake_s3(300 << 20, 300 << 20));
    // Lengths only in a failure (never 300 MiB of Debug output).
    let e = b
        .read_versioned(&ObjectKey::Lock)
        .map(|o| o.map(|(b, _)| b.len()))
        .unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("LOCK"), "{e}");
    assert_peak_below(128);
}

/// #10: the S3 backend's ranged read returned whatever length the server sent.
#[test]
fn a_ranged_read_of_the_wrong_length_is_an_error() {
    // 1000-byte object; its range 0..100 is answered with 50 bytes.
    let endpoint = fake_s3_with(|req| {
        if req.to_ascii_lowercase().contains("range:") {
            (
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-99/1000\r\n\
                 Content-Length: 50\r\n"
                    .into(),
                50,
            )
        } else {
            ("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n".into(), 1000)
        }
    });
    let b = fake_backend(endpoint);
    let key = ObjectKey::Chunk(lazarus_format::ChunkDigest([7; 32]));
    let e = b.read_range(&key, 0..100).map(|b| b.len()).unwrap_err();
    assert!(e.to_string().contains("50 of the 100"), "{e}");
}

/// #3: `truncate -s 1G repo/FORMAT` made every open of the repository read 1 GiB of
/// zeros. FORMAT is refused by its size, naming it.
#[test]
fn a_huge_format_file_is_refused_before_it_is_read() {
    if !in_child("a_huge_format_file_is_refused_before_it_is_read") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
    checkpoint(&mut repo, 1, 1, 1500);
    drop(repo);
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("FORMAT"))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let e = RepoReader::open(dir.path()).unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("FORMAT"), "{e}");
    assert_peak_below(512);
}

/// #3: commit read a rank's manifest file whole, whatever its size.
#[test]
fn a_huge_manifest_file_is_refused_by_commit_before_it_is_read() {
    if !in_child("a_huge_manifest_file_is_refused_by_commit_before_it_is_read") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
    let pending = repo.begin(1).unwrap();
    let bytes = le_f64(&field(0, 1, 1500));
    let rc = pending
        .part_writer()
        .write(Rank(0), &[bulk_f64("field", &bytes, None)])
        .unwrap();
    assert!(rc.manifest.is_none(), "a manifest file");
    let id = pending.id();
    let manifest = dir
        .path()
        .join("checkpoints")
        .join(id.to_string())
        .join("rank-0.manifest");
    // One GiB, well over the envelope cap (48 + 256 MiB).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&manifest)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let e = repo
        .commit(pending, vec![rc], Default::default())
        .unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("rank-0.manifest"), "{e}");
    assert_peak_below(512);
}

/// The caps are the format's (docs/FORMAT.md, "Independent readers", "Opening files").
#[test]
fn size_caps_are_the_formats() {
    use lazarus_store::size_cap;
    assert_eq!(size_cap(&ObjectKey::Format).unwrap().0, 12);
    assert_eq!(size_cap(&ObjectKey::Lock).unwrap().0, 4096);
    assert_eq!(
        size_cap(&ObjectKey::Commit(CheckpointId(1))).unwrap().0,
        48 + (256 << 20)
    );
    let chunk = size_cap(&ObjectKey::Chunk(lazarus_format::ChunkDigest([0; 32])))
        .unwrap()
        .0;
    assert!(chunk > 16 + lazarus_format::MAX_CHUNK_LEN, "{chunk}");
}

//! `RepoReader::newest_committed_candidates`: the cheap pre-check for restore that reads no
//! chunk contents, with load-and-fall-back for what it cannot see.

mod common;

use common::*;
use lazarus_format::Rank;
use lazarus_store::{RepoReader, Repository, StoreErrorKind};

/// Two checkpoints a, b; returns the path of a chunk file only b's rank 1 uses.
fn two_checkpoints(
    dir: &std::path::Path,
) -> (
    lazarus_format::CheckpointId,
    lazarus_format::CheckpointId,
    std::path::PathBuf,
) {
    let mut repo = Repository::open(dir, small_opts()).unwrap();
    let a = checkpoint(&mut repo, 2, 1, 2000);
    let b = checkpoint(&mut repo, 2, 2, 2000);
    let m = RepoReader::open(dir).unwrap().manifest(b, Rank(1)).unwrap();
    let d = m.objects[0].chunks[0].digest;
    (a, b, files(dir, &d.to_hex())[0].clone())
}

#[test]
fn intact_repository_lists_all_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _) = two_checkpoints(dir.path());
    let (ok, damages) = RepoReader::open(dir.path())
        .unwrap()
        .newest_committed_candidates()
        .unwrap();
    assert_eq!(ok.iter().map(|s| s.id).collect::<Vec<_>>(), vec![b, a]);
    assert!(damages.is_empty());
}

#[test]
fn truncated_or_deleted_chunk_is_caught_without_reading_data() {
    for delete in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, path) = two_checkpoints(dir.path());
        if delete {
            std::fs::remove_file(&path).unwrap();
        } else {
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        }
        let reader = RepoReader::open(dir.path()).unwrap();
        let (ok, damages) = reader.newest_committed_candidates().unwrap();
        assert_eq!(ok.iter().map(|s| s.id).collect::<Vec<_>>(), vec![a]);
        assert_eq!(damages.len(), 1);
        assert_eq!(damages[0].checkpoint, b);
        assert_eq!(damages[0].path, path);
        let e = reader.check_committed(b).unwrap_err();
        let want = if delete {
            StoreErrorKind::Missing
        } else {
            StoreErrorKind::Corrupt
        };
        assert_eq!(e.kind(), want, "{e}");
        assert!(e.to_string().contains("rank 1"), "{e}");
        assert_holds(dir.path(), a, 2, 1, 2000);
    }
}

#[test]
fn same_size_bit_flip_passes_the_check_and_load_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, path) = two_checkpoints(dir.path());
    flip(&path, 100);
    let reader = RepoReader::open(dir.path()).unwrap();
    let (ok, _) = reader.newest_committed_candidates().unwrap();
    assert_eq!(ok[0].id, b, "the cheap check reads no chunk contents");
    // What a restoring caller does: load, and on damage take the next candidate.
    let mut restored = None;
    for s in &ok {
        match reader.load_part(s.id, Rank(1)) {
            Ok(objs) => {
                restored = Some((s.id, objs));
                break;
            }
            Err(e) => {
                assert_eq!(e.kind(), StoreErrorKind::Corrupt);
                assert_eq!(e.path(), Some(path.as_path()));
            }
        }
    }
    let (id, objs) = restored.unwrap();
    assert_eq!(id, a);
    assert_eq!(objs[0].data, le_f64(&field(1, 1, 2000)));
}

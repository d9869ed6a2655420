//! docs/FORMAT.md gaps (issue #11): checkpoint directories are named by exactly 16 decimal
//! digits, so ids stop at 10^16 - 1. Before the fix the writer went on to a 17-digit
//! directory that every reader ignores: a checkpoint committed and then silently invisible.

use lazarus::format::{CheckpointId, FormatErrorKind, Manifest, Rank};
use lazarus::store::{CommitMeta, RepoOptions, RepoReader, Repository};

#[test]
fn ids_of_10_16_and_more_vs_16_digit_dir_names() {
    let dir = tempfile::tempdir().unwrap();
    drop(Repository::open(dir.path(), RepoOptions::default()).unwrap());
    // The last id that fits: begin/commit work and readers see it.
    std::fs::create_dir_all(dir.path().join("checkpoints/9999999999999998")).unwrap();
    let mut repo = Repository::open(dir.path(), RepoOptions::default()).unwrap();
    let p = repo.begin(1).unwrap();
    assert_eq!(p.id(), CheckpointId(9_999_999_999_999_999));
    let receipt = p.part_writer().write(Rank(0), &[]).unwrap();
    repo.commit(p, vec![receipt], CommitMeta::default())
        .unwrap();
    let seen = RepoReader::open(dir.path()).unwrap().committed().unwrap();
    assert_eq!(seen.last().map(|c| c.id), Some(CheckpointId::MAX));
    // One more would need a 17-digit directory: refused, naming why.
    let e = match repo.begin(1) {
        Ok(p) => panic!("began checkpoint {} beyond the 16-digit ids", p.id().0),
        Err(e) => e,
    };
    assert!(e.to_string().contains("16 decimal digits"), "{e}");
    assert!(!e.is_retryable(), "{e}");
    drop(repo);
    assert_eq!(CheckpointId::new(10_000_000_000_000_000), None);
    assert_eq!(
        CheckpointId::new(9_999_999_999_999_999),
        Some(CheckpointId::MAX)
    );
    // A record naming such an id does not decode.
    let m = Manifest {
        checkpoint: CheckpointId(10_000_000_000_000_000),
        rank: Rank(0),
        chunk_size: 1,
        objects: vec![],
    };
    let e = Manifest::decode(&m.encode()).unwrap_err();
    assert_eq!(e.kind, FormatErrorKind::Invalid);
    assert!(e.msg.contains("16 decimal digits"), "{e}");
}

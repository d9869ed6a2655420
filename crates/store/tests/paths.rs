//! Issue #11, item 5: a bare relative repository path (`r1`) failed with `missing (): fsync
//! of directory` (the parent of a bare name is the empty path). Every path form works:
//! bare, `./`, `../`, absolute, with a trailing slash, through a symlink. Alone in its test
//! binary: it changes the working directory.

mod common;

use common::*;
use lazarus_store::{RepoReader, Repository};
use std::path::{Path, PathBuf};

#[test]
fn bare_relative_repository_path_works_like_every_other_form() {
    let d = tempfile::tempdir().unwrap();
    let work = d.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::create_dir(d.path().join("real")).unwrap();
    std::os::unix::fs::symlink(d.path().join("real"), work.join("link")).unwrap();
    std::env::set_current_dir(&work).unwrap();
    let abs = d.path().join("abs-repo");
    let forms: Vec<PathBuf> = vec![
        "r1".into(),
        "r2/".into(),
        "./r3".into(),
        "./r4/".into(),
        "../up".into(),
        abs.clone(),
        PathBuf::from(format!("{}/", abs.display())).join("nested"),
        "link".into(),
        "link/inside".into(),
    ];
    for p in &forms {
        let mut repo = Repository::open(p, small_opts())
            .unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
        let id = checkpoint(&mut repo, 2, 1, 1000);
        drop(repo);
        assert_holds(p, id, 2, 1, 1000);
        let v = RepoReader::open(p).unwrap().verify(&|_, _| {}).unwrap();
        assert!(v.problems.is_empty(), "{}: {:?}", p.display(), v.problems);
        // Reopening (existing repository) works too.
        let mut repo = Repository::open(p, small_opts()).unwrap();
        checkpoint(&mut repo, 2, 2, 1000);
    }
    assert!(Path::new("r1/FORMAT").is_file());
    assert!(d.path().join("up/FORMAT").is_file());
    assert!(d.path().join("real/inside/FORMAT").is_file());
}

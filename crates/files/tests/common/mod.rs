//! A real repository and a rank's managed files, checkpointed the way the Job does it
//! (snapshot objects in the rank's part, COMMIT, then `committed`), without the network.
#![allow(dead_code)]

use lazarus_files::{Files, FilesConfig, RestoreError, RestoreTarget};
use lazarus_format::{CheckpointId, Rank};
use lazarus_store::{CommitMeta, RepoOptions, RepoReader, Repository};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const CHUNK: u32 = 4096;

pub struct Rig {
    pub dir: tempfile::TempDir,
    pub repo: Repository,
    pub root: PathBuf,
}

/// A tree as seen on disk: `None` for a directory, `Some(bytes)` for a file.
pub type Tree = BTreeMap<String, Option<Vec<u8>>>;

impl Rig {
    /// A rig in a temp dir (on disk: real fsync costs).
    pub fn new() -> Rig {
        Rig::in_dir(tempfile::tempdir().unwrap())
    }

    /// A rig in memory (`/dev/shm` when there is one): for the model tests, which check
    /// the logic against simulated crashes, thousands of fsyncs cost nothing there.
    pub fn in_memory() -> Rig {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        Rig::in_dir(dir)
    }

    fn in_dir(dir: tempfile::TempDir) -> Rig {
        let opts = RepoOptions {
            chunk_size: CHUNK,
            ..RepoOptions::default()
        };
        let repo = Repository::open(&dir.path().join("repo"), opts).unwrap();
        let root = dir.path().join("managed");
        Rig { dir, repo, root }
    }

    pub fn files(&self, accept: bool) -> Files {
        Files::new(FilesConfig {
            root: self.root.clone(),
            rank: 0,
            chunk: CHUNK as u64,
            accept_changes: accept,
        })
        .unwrap()
    }

    /// A new `Files` restored to `id` (or fresh).
    pub fn restored(&self, id: Option<CheckpointId>, accept: bool) -> Result<Files, RestoreError> {
        let f = self.files(accept);
        self.restore(&f, id)?;
        Ok(f)
    }

    pub fn restore(&self, f: &Files, id: Option<CheckpointId>) -> Result<u64, RestoreError> {
        let reader = RepoReader::open(self.repo.path()).unwrap();
        let target = id.map(|id| RestoreTarget {
            reader: &reader,
            id,
            world: 1,
            size: 1,
        });
        let plan = f.prepare_restore(target)?;
        let fetched = plan.fetched_bytes();
        f.apply_restore(plan).map_err(RestoreError::Files)?;
        Ok(fetched)
    }

    /// Snapshot, write the part, COMMIT, tell the files.
    pub fn checkpoint(&mut self, f: &Files) -> CheckpointId {
        let (id, snap) = self.commit_only(f);
        snap.committed(id).unwrap();
        id
    }

    /// Commits a checkpoint but never tells the files (a crash right after COMMIT).
    pub fn commit_only<'a>(&mut self, f: &'a Files) -> (CheckpointId, lazarus_files::Snapshot<'a>) {
        self.commit_snapshot(f.snapshot().unwrap())
    }

    /// Writes `snap`'s objects as the only part of a new checkpoint and commits it.
    pub fn commit_snapshot<'a>(
        &mut self,
        snap: lazarus_files::Snapshot<'a>,
    ) -> (CheckpointId, lazarus_files::Snapshot<'a>) {
        let pending = self.repo.begin(1).unwrap();
        let receipt = {
            let objs = snap.objects();
            pending.part_writer().write(Rank(0), &objs).unwrap()
        };
        let done = self
            .repo
            .commit(pending, vec![receipt], CommitMeta::default())
            .unwrap();
        (done.summary.id, snap)
    }

    /// A round that writes the part and then aborts.
    pub fn aborted(&mut self, f: &Files) {
        self.abort_snapshot(f.snapshot().unwrap());
    }

    /// Writes `snap`'s part, then aborts the round.
    pub fn abort_snapshot(&mut self, snap: lazarus_files::Snapshot<'_>) {
        let pending = self.repo.begin(1).unwrap();
        {
            let objs = snap.objects();
            pending.part_writer().write(Rank(0), &objs).unwrap();
        }
        self.repo.abort(pending).unwrap();
        snap.failed();
    }

    pub fn work(&self) -> PathBuf {
        self.root.join("rank-0")
    }
}

/// Every path under `root` with its content.
pub fn disk_tree(root: &Path) -> Tree {
    let mut out = Tree::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let key = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if e.file_type().unwrap().is_dir() {
                stack.push((e.path(), key.clone()));
                out.insert(key, None);
            } else {
                out.insert(key, Some(std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out
}

/// The seed of a seeded test: `LAZARUS_TEST_SEED` or `default`, printed.
pub fn seed(default: u64) -> u64 {
    let s = std::env::var("LAZARUS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    eprintln!("seed {s} (set LAZARUS_TEST_SEED to replay)");
    s
}

/// The refusal of a restore `r` that must be refused by the managed files.
pub fn refused(
    r: Result<lazarus_files::Files, lazarus_files::RestoreError>,
) -> lazarus_files::FilesError {
    match r {
        Err(RestoreError::Files(e)) => e,
        Err(RestoreError::Store(e)) => {
            panic!("store error instead of a refusal: {e}")
        }
        Ok(_) => panic!("the restore was not refused"),
    }
}

/// A real full file system (a 512 KiB tmpfs; needs root to mount).
pub struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts it at `at`; `None` when mounting is not allowed here.
    pub fn mount(at: &Path) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=512k", "lazarus-files-test"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Tmpfs {
    /// [`Tmpfs::mount`], or `None` after a loud skip message naming `test`; under CI
    /// (`lazarus_testbed::in_ci`) a tmpfs that cannot be mounted fails the test instead.
    pub fn mount_or_skip(at: &Path, test: &str) -> Option<Tmpfs> {
        let fs = Tmpfs::mount(at);
        if fs.is_none() {
            assert!(
                !lazarus_testbed::in_ci(),
                "under CI but a tmpfs could not be mounted (needs root)"
            );
            eprintln!("SKIPPED {test}: cannot mount a tmpfs (not root?)");
        }
        fs
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

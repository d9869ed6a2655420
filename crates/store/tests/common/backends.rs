//! One helper runs a test case against every backend: a directory, memory, and (when a
//! server is reachable, see `s3.rs`) an S3 bucket.
#![allow(dead_code)]

use lazarus_store::{
    DirKey, MemoryBackend, ObjectKey, RepoOptions, RepoReader, Repository, S3Backend, WriteBackend,
};
use std::sync::Arc;

/// A fresh, empty repository location on one backend.
pub struct TestRepo {
    pub kind: &'static str,
    pub backend: Arc<dyn WriteBackend>,
    _dir: Option<tempfile::TempDir>,
}

impl TestRepo {
    pub fn dir() -> TestRepo {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().join("repo");
        TestRepo {
            kind: "dir",
            backend: Arc::new(lazarus_store::DirBackend::new(root)),
            _dir: Some(d),
        }
    }

    pub fn memory() -> TestRepo {
        TestRepo {
            kind: "memory",
            backend: Arc::new(MemoryBackend::new()),
            _dir: None,
        }
    }

    /// `None` when no S3 server is available (skipped loudly; a failure under CI).
    pub fn s3(name: &str) -> Option<TestRepo> {
        let server = super::s3::server()?;
        let cfg = super::s3::config(&server, &super::s3::unique_prefix(name));
        Some(TestRepo {
            kind: "s3",
            backend: Arc::new(S3Backend::open(cfg).expect("S3 backend")),
            _dir: None,
        })
    }

    pub fn open(&self, opts: RepoOptions) -> Repository {
        Repository::open_backend(self.backend.clone(), opts)
            .unwrap_or_else(|e| panic!("[{}] open: {e}", self.kind))
    }

    pub fn reader(&self) -> RepoReader {
        RepoReader::from_backend(self.backend.clone().as_read())
            .unwrap_or_else(|e| panic!("[{}] reader: {e}", self.kind))
    }

    /// Flips one byte of object `key` (the last one: payload, never the header).
    pub fn flip_last_byte(&self, key: &ObjectKey) {
        let mut b = self.backend.read(key).expect("read to damage");
        let n = b.len();
        b[n - 1] ^= 0x55;
        self.backend
            .put(key, &[&b], lazarus_store::backend::PutMode::Overwrite)
            .expect("write damaged");
    }

    /// Every chunk object in the repository (names under `chunks/<hh>/`), sorted.
    pub fn chunk_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in self.backend.list(&DirKey::Chunks).expect("list chunks") {
            if !e.is_dir {
                continue;
            }
            let Ok(b) = u8::from_str_radix(&e.name, 16) else {
                continue;
            };
            for c in self.backend.list(&DirKey::ChunkFan(b)).expect("list fan") {
                out.push(c.name);
            }
        }
        out.sort();
        out
    }

    /// Names of the checkpoint directories present.
    pub fn checkpoint_dirs(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .backend
            .list(&DirKey::Checkpoints)
            .expect("list checkpoints")
            .into_iter()
            .map(|e| e.name)
            .collect();
        v.sort();
        v
    }
}

/// Runs `case` on a directory, in memory and on S3 (when available), naming the backend
/// in any panic.
pub fn for_each_backend(name: &str, case: impl Fn(&TestRepo)) {
    let mut repos = vec![TestRepo::dir(), TestRepo::memory()];
    repos.extend(TestRepo::s3(name));
    for r in &repos {
        eprintln!("[{name}] on {}", r.kind);
        case(r);
    }
}

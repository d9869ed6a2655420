//! The in-memory backend: a process-local map from keys to immutable byte strings. For
//! tests and for diskless checkpoint levels (a level is just another backend). Objects are
//! atomic and versioned like an object store's, `Create` and `IfMatch` are exact (one
//! mutex), durability is the process's lifetime. Directories are kept as a set, so an
//! empty pending checkpoint directory exists like on a file system.

use super::{
    DirKey, Entry, ObjectKey, ObjectMeta, ObjectReader, PutMode, ReadBackend, Version, WriteBackend,
};
use crate::error::{StoreError, StoreErrorKind};
use crate::lease::LeaseConfig;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Debug, Default)]
struct Inner {
    objects: BTreeMap<String, (Arc<Vec<u8>>, u64)>,
    dirs: BTreeSet<String>,
    next_version: u64,
}

/// A repository held in this process's memory. Clones share the same objects.
#[derive(Clone, Debug)]
pub struct MemoryBackend {
    location: PathBuf,
    inner: Arc<Mutex<Inner>>,
    lease: LeaseConfig,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// A new, empty, anonymous store (`memory://anonymous-<n>` in messages).
    pub fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Self::with_location(PathBuf::from(format!("memory://anonymous-{n}")))
    }

    fn with_location(location: PathBuf) -> Self {
        MemoryBackend {
            location,
            inner: Arc::new(Mutex::new(Inner::default())),
            lease: LeaseConfig::default(),
        }
    }

    /// The process-wide store named `name` (`memory://<name>`), created empty on first use.
    /// Lets path-based APIs (`Repository::open(Path::new("memory://x"))`, the Job API)
    /// share one in-memory repository within a process. It lives until the process ends.
    pub fn named(name: &str) -> MemoryBackend {
        static NAMED: OnceLock<Mutex<HashMap<String, MemoryBackend>>> = OnceLock::new();
        let mut all = NAMED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        all.entry(name.to_string())
            .or_insert_with(|| Self::with_location(PathBuf::from(format!("memory://{name}"))))
            .clone()
    }

    /// The same store with another lease timing (tests use short leases).
    pub fn with_lease_config(mut self, lease: LeaseConfig) -> Self {
        self.lease = lease;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent, so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the bytes of an existing object without a version change, as bit rot
    /// would (fault injection for tests).
    pub fn corrupt(&self, key: &ObjectKey, f: impl FnOnce(&mut Vec<u8>)) -> Result<(), StoreError> {
        let mut g = self.lock();
        let (bytes, _) = g
            .objects
            .get_mut(&key.rel_path())
            .ok_or_else(|| missing(&self.describe(key)))?;
        let mut b = bytes.as_ref().clone();
        f(&mut b);
        *bytes = Arc::new(b);
        Ok(())
    }
}

fn missing(p: &Path) -> StoreError {
    StoreError::new(StoreErrorKind::Missing, Some(p), "no such object")
}

fn prefix_of(dir: &DirKey) -> String {
    let rel = dir.rel_path();
    if rel.is_empty() {
        rel
    } else {
        format!("{rel}/")
    }
}

impl ReadBackend for MemoryBackend {
    fn location(&self) -> &Path {
        &self.location
    }

    fn open(&self, key: &ObjectKey) -> Result<ObjectReader, StoreError> {
        let bytes = self
            .lock()
            .objects
            .get(&key.rel_path())
            .map(|(b, _)| b.clone())
            .ok_or_else(|| missing(&self.describe(key)))?;
        Ok(ObjectReader {
            len: bytes.len() as u64,
            reader: Box::new(std::io::Cursor::new(ArcBytes(bytes))),
        })
    }

    fn read_range(
        &self,
        key: &ObjectKey,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<u8>, StoreError> {
        let g = self.lock();
        let (b, _) = g
            .objects
            .get(&key.rel_path())
            .ok_or_else(|| missing(&self.describe(key)))?;
        let len = b.len() as u64;
        let start = range.start.min(len) as usize;
        let end = (range.end.min(len) as usize).max(start);
        Ok(b.get(start..end).unwrap_or_default().to_vec())
    }

    fn stat(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StoreError> {
        Ok(self
            .lock()
            .objects
            .get(&key.rel_path())
            .map(|(b, _)| ObjectMeta {
                size: b.len() as u64,
                regular: true,
            }))
    }

    fn list(&self, dir: &DirKey) -> Result<Vec<Entry>, StoreError> {
        let prefix = prefix_of(dir);
        let g = self.lock();
        let mut out: BTreeMap<String, Entry> = BTreeMap::new();
        for (k, (b, _)) in g.objects.range(prefix.clone()..) {
            let Some(rest) = k.strip_prefix(&prefix) else {
                break;
            };
            let e = match rest.split_once('/') {
                Some((d, _)) => Entry {
                    name: d.to_string(),
                    is_dir: true,
                    size: None,
                },
                None => Entry {
                    name: rest.to_string(),
                    is_dir: false,
                    size: Some(b.len() as u64),
                },
            };
            out.entry(e.name.clone()).or_insert(e);
        }
        for d in g.dirs.range(prefix.clone()..) {
            let Some(rest) = d.strip_prefix(&prefix) else {
                break;
            };
            let name = rest.split('/').next().unwrap_or(rest);
            if !name.is_empty() {
                out.entry(name.to_string()).or_insert(Entry {
                    name: name.to_string(),
                    is_dir: true,
                    size: None,
                });
            }
        }
        Ok(out.into_values().collect())
    }

    fn dir_exists(&self, dir: &DirKey) -> Result<bool, StoreError> {
        if *dir == DirKey::Root {
            return Ok(true);
        }
        let rel = dir.rel_path();
        let prefix = prefix_of(dir);
        let g = self.lock();
        Ok(g.dirs.contains(&rel)
            || g.objects
                .range(prefix.clone()..)
                .next()
                .is_some_and(|(k, _)| k.starts_with(&prefix)))
    }
}

/// `Arc<Vec<u8>>` as `AsRef<[u8]>`, for a cursor that shares the stored bytes.
struct ArcBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl WriteBackend for MemoryBackend {
    fn as_read(self: Arc<Self>) -> Arc<dyn ReadBackend> {
        self
    }

    fn put(
        &self,
        key: &ObjectKey,
        parts: &[&[u8]],
        mode: PutMode,
    ) -> Result<Option<Version>, StoreError> {
        let rel = key.rel_path();
        let mut g = self.lock();
        let current = g.objects.get(&rel).map(|(_, v)| *v);
        let conflict = |why: &str| {
            Err(StoreError::new(
                StoreErrorKind::Conflict,
                Some(&self.describe(key)),
                why.to_string(),
            ))
        };
        match (&mode, current) {
            (PutMode::Create, Some(_)) => return conflict("already exists"),
            (PutMode::IfMatch(want), cur) if cur.map(|v| v.to_string()) != Some(want.0.clone()) => {
                return conflict("changed since it was read (version mismatch)");
            }
            _ => {}
        }
        g.next_version += 1;
        let v = g.next_version;
        g.objects.insert(rel, (Arc::new(parts.concat()), v));
        Ok(Some(Version(v.to_string())))
    }

    fn read_versioned(&self, key: &ObjectKey) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
        Ok(self
            .lock()
            .objects
            .get(&key.rel_path())
            .map(|(b, v)| (b.as_ref().clone(), Version(v.to_string()))))
    }

    fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        self.lock().objects.remove(&key.rel_path());
        Ok(())
    }

    fn create_dir(&self, dir: &DirKey) -> Result<bool, StoreError> {
        if self.dir_exists(dir)? {
            return Ok(false);
        }
        Ok(self.lock().dirs.insert(dir.rel_path()))
    }

    fn delete_dir(&self, dir: &DirKey) -> Result<(), StoreError> {
        let prefix = prefix_of(dir);
        let mut g = self.lock();
        g.objects.retain(|k, _| !k.starts_with(&prefix));
        let rel = dir.rel_path();
        g.dirs.retain(|d| *d != rel && !d.starts_with(&prefix));
        Ok(())
    }

    fn delete_dir_if_empty(&self, dir: &DirKey) -> Result<(), StoreError> {
        let prefix = prefix_of(dir);
        let mut g = self.lock();
        let empty = !g.objects.keys().any(|k| k.starts_with(&prefix))
            && !g.dirs.iter().any(|d| d.starts_with(&prefix));
        if empty {
            g.dirs.remove(&dir.rel_path());
        }
        Ok(())
    }

    fn lease_config(&self) -> LeaseConfig {
        self.lease.clone()
    }
}

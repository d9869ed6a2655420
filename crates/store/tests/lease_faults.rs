//! Regression tests of the lease under faults (review of the store's lease handling):
//! GC fencing when the lease is lost mid-collection, the fencing of a shared lease, and
//! lease requests whose first attempt landed although the client saw an error.
//!
//! Each "process" is a [`Flaky`] wrapper with its own location (so its own known-good
//! cache) over one shared [`MemoryBackend`].
mod common;

use common::{checkpoint, small_opts};
use lazarus_store::backend::{Entry, ObjectMeta, ObjectReader, PutMode, Version};
use lazarus_store::{
    DirKey, LeaseConfig, LeaseRecord, MemoryBackend, ObjectKey, ReadBackend, RepoOptions,
    RepoReader, Repository, StoreError, StoreErrorKind, WriteBackend,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One memory store seen by one "process", with faults on demand: LOCK puts that fail
/// (renewals cannot reach the server), slow deletes, and LOCK puts whose first attempt is
/// applied but answered with an error (what object_store's retry after a 5xx turns into a
/// 412, or what the client reports when its retries run out).
#[derive(Debug)]
struct Flaky {
    loc: PathBuf,
    inner: Arc<MemoryBackend>,
    /// Every LOCK put fails with `Unavailable`, unapplied.
    lock_puts_fail: AtomicBool,
    /// Every delete takes 25 ms.
    slow_deletes: AtomicBool,
    /// The next `IfMatch` put of LOCK is applied, then retried (the retry gets `Conflict`).
    retry_landed_if_match: AtomicBool,
    /// The next `Create` put of LOCK is applied, then retried (the retry gets `Conflict`).
    retry_landed_create: AtomicBool,
    /// The next `IfMatch` put of LOCK is applied, then answered `Unavailable`.
    landed_but_unavailable: AtomicBool,
    /// Reads of this object fail with an I/O error (no permission, say).
    unreadable: std::sync::Mutex<Option<ObjectKey>>,
    /// The next `Create` put of a COMMIT is answered `Conflict` unapplied, as S3 answers
    /// 409 ConditionalRequestConflict while an earlier attempt of the same conditional
    /// write is still in flight (it may land later).
    commit_conflict_in_flight: AtomicBool,
    /// The next `Create` put of a COMMIT is applied, then answered with an I/O error (a
    /// first attempt answered 503 and retried, the retry answered 403 Forbidden).
    commit_landed_then_forbidden: AtomicBool,
    /// Listings of `checkpoints/` leave out the newest checkpoint (a stale LIST).
    hide_newest_checkpoint: AtomicBool,
}

impl Flaky {
    fn new(name: &str, inner: Arc<MemoryBackend>) -> Arc<Flaky> {
        Arc::new(Flaky {
            loc: PathBuf::from(format!("memory://{name}")),
            inner,
            lock_puts_fail: AtomicBool::new(false),
            slow_deletes: AtomicBool::new(false),
            retry_landed_if_match: AtomicBool::new(false),
            retry_landed_create: AtomicBool::new(false),
            landed_but_unavailable: AtomicBool::new(false),
            unreadable: std::sync::Mutex::new(None),
            commit_conflict_in_flight: AtomicBool::new(false),
            commit_landed_then_forbidden: AtomicBool::new(false),
            hide_newest_checkpoint: AtomicBool::new(false),
        })
    }
}

impl ReadBackend for Flaky {
    fn location(&self) -> &Path {
        &self.loc
    }
    fn open(&self, key: &ObjectKey) -> Result<ObjectReader, StoreError> {
        if self.unreadable.lock().unwrap().as_ref() == Some(key) {
            return Err(StoreError::new(
                StoreErrorKind::Io,
                Some(&self.describe(key)),
                "injected: Permission denied (os error 13)",
            ));
        }
        self.inner.open(key)
    }
    fn stat(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StoreError> {
        self.inner.stat(key)
    }
    fn list(&self, dir: &DirKey) -> Result<Vec<Entry>, StoreError> {
        let mut all = self.inner.list(dir)?;
        if *dir == DirKey::Checkpoints && self.hide_newest_checkpoint.load(Ordering::SeqCst) {
            if let Some(newest) = all.iter().map(|e| e.name.clone()).max() {
                all.retain(|e| e.name != newest);
            }
        }
        Ok(all)
    }
    fn dir_exists(&self, dir: &DirKey) -> Result<bool, StoreError> {
        self.inner.dir_exists(dir)
    }
}

impl WriteBackend for Flaky {
    fn as_read(self: Arc<Self>) -> Arc<dyn ReadBackend> {
        self
    }
    fn put(
        &self,
        key: &ObjectKey,
        parts: &[&[u8]],
        mode: PutMode,
    ) -> Result<Option<Version>, StoreError> {
        if matches!(key, ObjectKey::Lock) {
            if self.lock_puts_fail.load(Ordering::SeqCst) {
                return Err(StoreError::new(
                    StoreErrorKind::Unavailable,
                    None,
                    "injected: 503 SlowDown",
                ));
            }
            let retried = match &mode {
                PutMode::IfMatch(_) => self.retry_landed_if_match.swap(false, Ordering::SeqCst),
                PutMode::Create => self.retry_landed_create.swap(false, Ordering::SeqCst),
                PutMode::Overwrite => false,
            };
            if retried {
                // First attempt lands, its answer is a 500; the client retries.
                self.inner.put(key, parts, mode.clone())?;
                return self.inner.put(key, parts, mode);
            }
            if matches!(mode, PutMode::IfMatch(_))
                && self.landed_but_unavailable.swap(false, Ordering::SeqCst)
            {
                self.inner.put(key, parts, mode)?;
                return Err(StoreError::new(
                    StoreErrorKind::Unavailable,
                    None,
                    "injected: 500 after the request was applied, retries exhausted",
                ));
            }
        }
        if matches!(key, ObjectKey::Commit(_))
            && matches!(mode, PutMode::Create)
            && self
                .commit_landed_then_forbidden
                .swap(false, Ordering::SeqCst)
        {
            self.inner.put(key, parts, mode)?;
            return Err(StoreError::new(
                StoreErrorKind::Io,
                None,
                "injected: 403 Forbidden on the retry of a PUT answered 503 but applied",
            ));
        }
        if matches!(key, ObjectKey::Commit(_))
            && matches!(mode, PutMode::Create)
            && self.commit_conflict_in_flight.swap(false, Ordering::SeqCst)
        {
            return Err(StoreError::new(
                StoreErrorKind::Conflict,
                None,
                "injected: 409 ConditionalRequestConflict",
            ));
        }
        self.inner.put(key, parts, mode)
    }
    fn read_versioned(&self, key: &ObjectKey) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
        self.inner.read_versioned(key)
    }
    fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        if self.slow_deletes.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(25));
        }
        self.inner.delete(key)
    }
    fn create_dir(&self, dir: &DirKey) -> Result<bool, StoreError> {
        self.inner.create_dir(dir)
    }
    fn delete_dir(&self, dir: &DirKey) -> Result<(), StoreError> {
        self.inner.delete_dir(dir)
    }
    fn dedup_by_create(&self) -> bool {
        true
    }
}

fn lease() -> LeaseConfig {
    LeaseConfig {
        ttl: Duration::from_millis(1000),
        renew_every: Duration::from_millis(100),
        max_clock_skew: Duration::from_millis(200),
        commit_margin: Duration::from_millis(500),
    }
}

fn opts() -> RepoOptions {
    RepoOptions {
        lease: Some(lease()),
        ..small_opts()
    }
}

fn lock_record(store: &MemoryBackend) -> LeaseRecord {
    LeaseRecord::decode(&store.read(&ObjectKey::Lock).expect("LOCK")).expect("a lease record")
}

/// Commits a one-rank checkpoint of one small object, or returns the commit's error.
fn try_commit(w: &mut Repository) -> Result<lazarus_format::CheckpointId, StoreError> {
    let pending = w.begin(1)?;
    let rc = pending
        .part_writer()
        .write(lazarus_format::Rank(0), &[common::serde_obj("x", b"x")])?;
    Ok(w.commit(pending, vec![rc], Default::default())?.summary.id)
}

/// Bug: GC checked the lease once, then went on deleting after losing it: writer A starts
/// `retain`, its renewals stop landing, writer B takes the lease over and commits; A's
/// sweep then deleted B's chunks and `retain` returned Ok. Now every delete is fenced:
/// A stops with `Locked`, naming the repository, and B's checkpoint is intact.
#[test]
fn gc_that_lost_its_lease_mid_sweep_stops_before_deleting_the_new_writers_chunks() {
    let store = Arc::new(MemoryBackend::new());
    let a_b = Flaky::new("proc-a", store.clone());
    let mut a = Repository::open_backend(a_b.clone(), opts()).unwrap();
    let n = 60_000; // 480 KB per rank: ~118 chunks of 4 KiB
    for step in 1..=3 {
        checkpoint(&mut a, 1, step, n);
    }
    // A's renewals stop reaching the server (throttled LOCK key, partial partition, a
    // paused renewal thread...) and its deletes are slow: it starts GC.
    a_b.lock_puts_fail.store(true, Ordering::SeqCst);
    a_b.slow_deletes.store(true, Ordering::SeqCst);
    let gc = std::thread::spawn(move || {
        let r = a.retain(1);
        (a, r)
    });
    // B takes the lease over once A's record has expired (ttl + skew), and commits.
    std::thread::sleep(Duration::from_millis(1400));
    let b_b = Flaky::new("proc-b", store.clone());
    let mut b = Repository::open_backend(b_b.clone(), opts()).expect("B takes the lease over");
    assert_eq!(b.lease_generation(), Some(2));
    let id = checkpoint(&mut b, 1, 99, n);
    let (_a, r) = gc.join().unwrap();
    let e = match r {
        Ok(g) => panic!(
            "A's GC succeeded without its lease: removed {:?}, {} chunks",
            g.removed, g.chunks_removed
        ),
        Err(e) => e,
    };
    assert_eq!(e.kind(), StoreErrorKind::Locked, "{e}");
    assert!(e.to_string().contains("memory://proc-a"), "{e}");
    assert!(e.to_string().contains("garbage collection"), "{e}");
    let reader = RepoReader::from_backend(b_b.clone().as_read()).unwrap();
    if let Err(e) = reader.check_committed(id) {
        panic!("B's committed checkpoint {id} was damaged by A's GC: {e}");
    }
    // And B's own GC, holding the lease, completes.
    b_b.slow_deletes.store(false, Ordering::SeqCst);
    let g = b.retain(1).expect("B's GC");
    assert_eq!(g.kept, vec![id]);
    reader
        .check_committed(id)
        .expect("B's checkpoint after B's GC");
    assert_eq!(lock_record(&store).generation, 2);
}

/// A shared lease is fenced to the generation it shared: once a process of the same job
/// took the (expired) lease over, the sharer of the old generation may neither commit nor
/// delete, although LOCK still names its job and is unexpired.
#[test]
fn sharer_of_a_lease_taken_over_by_its_own_job_is_fenced() {
    let store = Arc::new(MemoryBackend::new());
    let job = RepoOptions {
        job_token: Some("job-secret".into()),
        ..opts()
    };
    let h_b = Flaky::new("holder", store.clone());
    let holder = Repository::open_backend(h_b.clone(), job.clone()).unwrap();
    let s_b = Flaky::new("sharer", store.clone());
    let mut sharer = Repository::open_shared_backend(s_b, job.clone()).unwrap();
    assert_eq!(sharer.lease_generation(), Some(1));
    try_commit(&mut sharer).expect("a sharer of a live lease commits");
    // The holder's renewals stop; a later process of the same job takes the lease over.
    h_b.lock_puts_fail.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1300));
    let t_b = Flaky::new("taker", store.clone());
    let mut taker = Repository::open_shared_backend(t_b, job).expect("takes the expired lease");
    assert_eq!(taker.lease_generation(), Some(2));
    let e = try_commit(&mut sharer).expect_err("the sharer of generation 1 committed");
    assert_eq!(e.kind(), StoreErrorKind::Locked, "{e}");
    let e = sharer
        .retain(1)
        .expect_err("the sharer of generation 1 collected garbage");
    assert_eq!(e.kind(), StoreErrorKind::Locked, "{e}");
    try_commit(&mut taker).expect("the new holder commits");
    drop(holder);
}

/// Bug: one server error on a renewal made the writer think it lost its own lease for
/// good: the renewal's `PUT If-Match` was applied, the server answered 500, the client
/// retried, the retry got 412 -> `Conflict` -> lost; every later commit failed with "LOCK
/// was changed by another writer" although LOCK held our own record. Now LOCK is re-read
/// and our own bytes are recognised.
#[test]
fn renewal_whose_retried_request_had_landed_keeps_the_lease() {
    let store = Arc::new(MemoryBackend::new());
    let fb = Flaky::new("proc-r", store.clone());
    let mut w = Repository::open_backend(fb.clone(), opts()).unwrap();
    checkpoint(&mut w, 1, 1, 100);
    fb.retry_landed_if_match.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        !fb.retry_landed_if_match.load(Ordering::SeqCst),
        "no renewal ran"
    );
    if let Err(e) = try_commit(&mut w) {
        panic!("our own lease, renewed by us, is considered lost: {e}");
    }
    // And the renewals go on from the adopted version.
    let before = lock_record(&store);
    std::thread::sleep(Duration::from_millis(300));
    let after = lock_record(&store);
    assert_eq!((after.generation, after.pid), (1, std::process::id()));
    assert!(after.renewed_unix_ms > before.renewed_unix_ms, "{after:?}");
    drop(w);
    assert!(lock_record(&store).released);
}

/// The same after a renewal that landed but whose answer was an error (retries exhausted):
/// the next renewal's `If-Match` of the old version gets 412 against our own earlier record;
/// the lease is kept, and the release on drop (whose version is stale too) still releases.
#[test]
fn renewal_that_landed_but_failed_keeps_the_lease_and_the_release_releases() {
    let store = Arc::new(MemoryBackend::new());
    let fb = Flaky::new("proc-u", store.clone());
    let mut w = Repository::open_backend(fb.clone(), opts()).unwrap();
    fb.landed_but_unavailable.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        !fb.landed_but_unavailable.load(Ordering::SeqCst),
        "no renewal ran"
    );
    if let Err(e) = try_commit(&mut w) {
        panic!("our own lease is considered lost after a renewal that landed: {e}");
    }
    // The release's If-Match must carry the adopted version; check the stale-version
    // path too: the last renewal before the drop lands but fails.
    fb.landed_but_unavailable.store(true, Ordering::SeqCst);
    while fb.landed_but_unavailable.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    // Within a millisecond of that renewal, before the next one could settle it.
    drop(w);
    let r = lock_record(&store);
    assert!(r.released, "LOCK not released: {r:?}");
    // Released: another writer takes it at once.
    let other = Flaky::new("proc-v", store.clone());
    let t = std::time::Instant::now();
    let o = Repository::open_backend(other, opts()).expect("takes the released lease");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(o.lease_generation(), Some(2));
}

/// Acquire: a `Create` of LOCK that landed, then a retry told "exists", is ours: the
/// writer holds the lease instead of finding itself the holder and failing `Locked`.
#[test]
fn acquire_whose_retried_create_had_landed_takes_the_lease() {
    let store = Arc::new(MemoryBackend::new());
    let fb = Flaky::new("proc-c", store.clone());
    fb.retry_landed_create.store(true, Ordering::SeqCst);
    let mut w = match Repository::open_backend(fb.clone(), opts()) {
        Ok(w) => w,
        Err(e) => panic!("our own landed lease record made open fail: {e}"),
    };
    assert!(!fb.retry_landed_create.load(Ordering::SeqCst));
    assert_eq!(w.lease_generation(), Some(1));
    try_commit(&mut w).expect("commit under the lease");
    std::thread::sleep(Duration::from_millis(250));
    try_commit(&mut w).expect("commit after renewals");
}

/// Takeover: an `If-Match` put of LOCK over a released record that landed, then a retry
/// told 412, is ours too.
#[test]
fn takeover_whose_retried_request_had_landed_takes_the_lease() {
    let store = Arc::new(MemoryBackend::new());
    drop(Repository::open_backend(Flaky::new("first", store.clone()), opts()).unwrap());
    assert!(lock_record(&store).released);
    let fb = Flaky::new("proc-t", store.clone());
    fb.retry_landed_if_match.store(true, Ordering::SeqCst);
    let mut w = match Repository::open_backend(fb.clone(), opts()) {
        Ok(w) => w,
        Err(e) => panic!("our own landed takeover made open fail: {e}"),
    };
    assert!(!fb.retry_landed_if_match.load(Ordering::SeqCst));
    assert_eq!(w.lease_generation(), Some(2));
    std::thread::sleep(Duration::from_millis(250));
    try_commit(&mut w).expect("commit after renewals");
}

/// Bug: gc took a COMMIT it could not *read* (no permission, a server error) for a
/// damaged one, and swept the chunks of that intact checkpoint. Now it stops before
/// deleting anything, naming the file.
#[test]
fn gc_stops_at_a_commit_it_cannot_read() {
    let store = Arc::new(MemoryBackend::new());
    let fb = Flaky::new("proc-r", store.clone());
    let mut w = Repository::open_backend(fb.clone(), opts()).unwrap();
    checkpoint(&mut w, 1, 1, 3000);
    let newest = checkpoint(&mut w, 1, 2, 3000);
    *fb.unreadable.lock().unwrap() = Some(ObjectKey::Commit(newest));
    let e = w.retain(1).unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Io, "{e}");
    assert!(e.to_string().contains("garbage collection stopped"), "{e}");
    assert!(e.to_string().contains("COMMIT"), "{e}");
    // Verify, too, says it cannot read the repository (`lazarus verify` exit 2), not
    // that the checkpoint is damaged (exit 1).
    let reader = RepoReader::from_backend(fb.clone().as_read()).unwrap();
    let e = reader.verify(&|_, _| {}).unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Io, "{e}");
    *fb.unreadable.lock().unwrap() = None;
    let reader = RepoReader::from_backend(fb.clone().as_read()).unwrap();
    reader.verify_checkpoint(newest).unwrap();
}

/// Bug: a COMMIT create answered "conflict" while no COMMIT was there was reported as
/// "certainly not committed". On S3 a 409 ConditionalRequestConflict means an earlier
/// attempt of the same conditional write (the client's own retry) is still in flight and
/// may land: the outcome is unknown, decided by what the store holds later.
#[test]
fn a_commit_conflict_with_no_commit_there_is_an_unknown_outcome_not_an_abort() {
    let store = Arc::new(MemoryBackend::new());
    let b = Flaky::new("proc-a", store.clone());
    let mut w = Repository::open_backend(b.clone(), opts()).unwrap();
    try_commit(&mut w).expect("first checkpoint");
    b.commit_conflict_in_flight.store(true, Ordering::SeqCst);
    let e = try_commit(&mut w).expect_err("the COMMIT put was refused");
    assert_eq!(e.kind(), StoreErrorKind::CommitUnknown, "{e}");
    assert!(!e.is_retryable(), "{e}");
    assert!(e.to_string().contains("may still be applied"), "{e}");
}

/// Attack review #5: a COMMIT PUT applied but answered 503, whose retry was answered 403
/// (an `Io` error), was reported as not committed although COMMIT is visible. COMMIT is
/// now read back after every error but `InvalidArgument`.
#[test]
fn a_commit_that_landed_before_a_forbidden_retry_is_not_reported_uncommitted() {
    let store = Arc::new(MemoryBackend::new());
    let b = Flaky::new("proc-a", store.clone());
    let mut w = Repository::open_backend(b.clone(), opts()).unwrap();
    try_commit(&mut w).expect("first checkpoint");
    b.commit_landed_then_forbidden.store(true, Ordering::SeqCst);
    match try_commit(&mut w) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), StoreErrorKind::CommitUnknown, "{e}"),
    }
    let reader = RepoReader::from_backend(store.clone()).unwrap();
    assert_eq!(reader.committed().unwrap().len(), 2);
}

/// Attack review #6: GC trusted a `checkpoints/` listing that missed the checkpoint this
/// handle had just committed, and swept its new chunks. It now stops before deleting
/// anything.
#[test]
fn gc_refuses_a_listing_that_misses_the_checkpoint_just_committed() {
    let store = Arc::new(MemoryBackend::new());
    let b = Flaky::new("proc-a", store.clone());
    let mut w = Repository::open_backend(b.clone(), opts()).unwrap();
    // Different data: the newest checkpoint's chunks are its own.
    checkpoint(&mut w, 1, 1, 3000);
    let newest = checkpoint(&mut w, 1, 2, 3000);
    b.hide_newest_checkpoint.store(true, Ordering::SeqCst);
    let e = w
        .retain(1)
        .expect_err("the listing misses the newest checkpoint");
    assert!(e.to_string().contains(&newest.to_string()), "{e}");
    b.hide_newest_checkpoint.store(false, Ordering::SeqCst);
    RepoReader::from_backend(store.clone())
        .unwrap()
        .check_committed(newest)
        .expect("the newest checkpoint is intact");
}

//! The writer lock of backends without a process lock (object stores, memory): a lease
//! object in `LOCK`, taken and renewed with conditional puts (docs/STORAGE.md, "Lease").
//!
//! What it guarantees, and under which assumptions:
//! - **Acquire** is a conditional write: `Create` when there is no `LOCK`, else
//!   `IfMatch(version read)`. Of two takers exactly one wins; the loser re-reads.
//! - **Takeover** of a lease held by someone else happens only when one of these holds:
//!   the record says it was released; its holder is a dead process on this very host (same
//!   host name and boot id, `kill(pid, 0)` fails with ESRCH); our wall clock is past its
//!   `expires_unix_ms` by more than `max_clock_skew` (assumes clocks agree within that);
//!   or we have seen the very same version of `LOCK` unchanged for `ttl` + 1 s of our own
//!   monotonic clock (assumes only that clocks *run* at about the same rate). Otherwise
//!   `open` fails with `Locked`, at once while the record is unexpired (like a flock).
//! - **Fencing.** Every takeover increments `generation`, which the holder records in each
//!   COMMIT (`writer.lease_generation`). The holder renews every `renew_every` with
//!   `IfMatch` of its own last version, so a renewal after a takeover fails with
//!   `Conflict` and the lease is lost for good. A `Conflict` can also answer a retried
//!   request of ours whose first attempt was applied, or follow a renewal that failed but
//!   was applied: so `LOCK` is re-read first, and a record in it that is byte for byte one
//!   we sent (the latest, or one of the unconfirmed renewals since the last confirmed
//!   one) is ours: its version is adopted (likewise for acquire and release).
//!   [`LockGuard::check`], called right before every COMMIT, passes only while the last
//!   successful renewal *started* less than `ttl - commit_margin` ago; with
//!   `commit_margin` at least the backend's bound on one operation (every S3 request is
//!   time-bounded), a COMMIT that passed the check lands before any taker can consider
//!   the lease expired. GC deletions are fenced one by one with
//!   [`LockGuard::check_until`]: each is issued while the check would pass, so the same
//!   argument covers every one of them, however long the collection runs. And COMMIT is
//!   a conditional create, so even a writer that lost its lease can never overwrite a
//!   checkpoint someone else committed.
//! - **Sharing** (`open_shared`, same job token): the sharer re-reads `LOCK` at every
//!   check and passes only while it holds an unreleased record of its job, of the
//!   generation it shared, with more than `commit_margin` left. Processes sharing the
//!   same generation (successive incarnations of rank 0 under one supervisor) are not
//!   fenced from each other: the supervisor ends an incarnation before starting the next,
//!   and a rank on a host cut off from it stops by itself within the failure timeout
//!   (docs/STORAGE.md, "Lease", lists the window this leaves).
//! - Residual risk, documented: a server that applies a request long after the client
//!   gave up on it (beyond the operation bound) defeats any client-side lease; that is
//!   why COMMIT's conditional create, not the lease, is the commit point.

use crate::backend::{LockGuard, LockOwner, ObjectKey, PutMode, Version, WriteBackend};
use crate::error::{StoreError, StoreErrorKind};
use crate::fsutil::now_unix_ms;
use serde::{Deserialize, Serialize};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Timing of a lease. The defaults suit an object store whose every request is bounded by
/// 30 s: a crashed writer's lease is taken over after at most `ttl + max_clock_skew`
/// (at once on the same host), a live writer renews six times per `ttl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long a renewal keeps the lease valid.
    pub ttl: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
    /// How far apart the wall clocks of two writers may be.
    pub max_clock_skew: Duration,
    /// A COMMIT is written only if the last successful renewal started less than
    /// `ttl - commit_margin` ago; at least the backend's bound on one operation.
    pub commit_margin: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            ttl: Duration::from_secs(60),
            renew_every: Duration::from_secs(10),
            max_clock_skew: Duration::from_secs(30),
            commit_margin: Duration::from_secs(30),
        }
    }
}

impl LeaseConfig {
    /// A lease of `ttl` with the other timings derived from it: renew every `ttl / 6`,
    /// commit margin `ttl / 2`, clock skew `ttl / 2`.
    pub fn with_ttl(ttl: Duration) -> Self {
        LeaseConfig {
            ttl,
            renew_every: ttl / 6,
            max_clock_skew: ttl / 2,
            commit_margin: ttl / 2,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        let ok = self.ttl > Duration::ZERO
            && self.commit_margin < self.ttl
            && self.renew_every > Duration::ZERO
            && self.renew_every < self.ttl - self.commit_margin;
        if ok {
            Ok(())
        } else {
            Err(StoreError::new(
                StoreErrorKind::InvalidArgument,
                None,
                format!(
                    "lease timing {self:?}: need 0 < renew_every < ttl - commit_margin and \
                     commit_margin < ttl"
                ),
            ))
        }
    }
}

/// The `LOCK` object of a lease: who holds it, until when, and its generation. Stored as
/// JSON (at most [`LeaseRecord::MAX_LEN`] bytes); the first four fields are those of the
/// directory backend's `LOCK` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRecord {
    /// Holder's process id.
    pub pid: u32,
    /// Holder's host name.
    pub host: String,
    /// First 16 hex digits of BLAKE3(job token) of the holder, or null.
    pub job: Option<String>,
    /// When the holder took the lease (its wall clock, ms since the Unix epoch).
    pub since_unix_ms: u64,
    /// The holder host's boot id (Linux `/proc/sys/kernel/random/boot_id`), so that a pid
    /// is only ever compared on the boot that issued it.
    pub boot_id: Option<String>,
    /// Incremented by every takeover; recorded in the COMMITs this holder writes.
    pub generation: u64,
    /// The lease duration the holder promised to renew within.
    pub ttl_ms: u64,
    /// When the holder last renewed (its wall clock).
    pub renewed_unix_ms: u64,
    /// `renewed_unix_ms + ttl_ms`.
    pub expires_unix_ms: u64,
    /// Set by a clean release: anyone may take it at once.
    pub released: bool,
}

impl LeaseRecord {
    /// Largest accepted `LOCK` object.
    pub const MAX_LEN: usize = 4096;

    /// The JSON bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes and validates untrusted bytes: at most [`LeaseRecord::MAX_LEN`] bytes of JSON
    /// with exactly these fields, `generation >= 1`, `ttl_ms` in 1 ms ..= 1 day,
    /// `expires_unix_ms == renewed_unix_ms + ttl_ms`, a host name of at most 255 bytes.
    pub fn decode(bytes: &[u8]) -> Result<LeaseRecord, String> {
        if bytes.len() > Self::MAX_LEN {
            return Err(format!(
                "{} bytes, more than the {} a lease record may have",
                bytes.len(),
                Self::MAX_LEN
            ));
        }
        let r: LeaseRecord =
            serde_json::from_slice(bytes).map_err(|e| format!("not a lease record: {e}"))?;
        if r.generation == 0 {
            return Err("generation 0 (generations start at 1)".into());
        }
        if !(1..=86_400_000).contains(&r.ttl_ms) {
            return Err(format!("ttl of {} ms is outside 1 ms ..= 1 day", r.ttl_ms));
        }
        if r.renewed_unix_ms.checked_add(r.ttl_ms) != Some(r.expires_unix_ms) {
            return Err("expires_unix_ms is not renewed_unix_ms + ttl_ms".into());
        }
        if r.host.len() > 255 || r.job.as_ref().is_some_and(|j| j.len() > 64) {
            return Err("host or job tag too long".into());
        }
        Ok(r)
    }

    fn expired_by(&self, now_ms: u64, skew: Duration) -> bool {
        now_ms > self.expires_unix_ms.saturating_add(skew.as_millis() as u64)
    }
}

/// What this process knows about whoever holds `LOCK`, for [`decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Observation {
    /// Our wall clock, ms since the epoch.
    pub now_ms: u64,
    /// How long (our monotonic clock) we have seen this exact version of `LOCK`.
    pub unchanged_for: Duration,
    /// Whether the holder's pid is alive, asked only when it ran on this boot of this host.
    pub holder_dead_here: bool,
}

/// The outcome of looking at `LOCK`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Write our own record with this generation.
    Take {
        /// The new generation.
        generation: u64,
        /// Why (for the log line), when taking over someone's lease.
        over: Option<String>,
    },
    /// Share the live lease of our own job (supervisor and rank 0).
    Share,
    /// Expired by the holder's clock but not provably yet: look again shortly.
    Wait,
    /// A live holder: fail with this message.
    Locked(String),
}

/// Decides what to do about the current `LOCK` record (`None`: there is none). Pure: the
/// clocks and the liveness check come in `obs`. See the module docs for the rules.
pub(crate) fn decide(
    current: Option<&LeaseRecord>,
    me: &LockOwner,
    shared: bool,
    cfg: &LeaseConfig,
    obs: &Observation,
) -> Decision {
    let Some(r) = current else {
        return Decision::Take {
            generation: 1,
            over: None,
        };
    };
    let next = r.generation.saturating_add(1);
    let who = format!(
        "pid {} on host {} (generation {}, since {} ms)",
        r.pid, r.host, r.generation, r.since_unix_ms
    );
    if r.released {
        return Decision::Take {
            generation: next,
            over: None,
        };
    }
    let unexpired = obs.now_ms <= r.expires_unix_ms;
    if shared && me.job.is_some() && r.job == me.job && unexpired {
        return Decision::Share;
    }
    if obs.holder_dead_here {
        return Decision::Take {
            generation: next,
            over: Some(format!("dead writer {who}")),
        };
    }
    if r.expired_by(obs.now_ms, cfg.max_clock_skew) {
        return Decision::Take {
            generation: next,
            over: Some(format!("expired lease of {who}")),
        };
    }
    if obs.unchanged_for >= Duration::from_millis(r.ttl_ms) + Duration::from_secs(1) {
        return Decision::Take {
            generation: next,
            over: Some(format!(
                "lease of {who}, not renewed for {:?}",
                obs.unchanged_for
            )),
        };
    }
    if unexpired {
        return Decision::Locked(format!(
            "repository is locked: lease held by {who} until {} ms",
            r.expires_unix_ms
        ));
    }
    Decision::Wait
}

/// This host's boot id, if the platform has one.
pub(crate) fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.len() <= 64)
}

/// This host's name.
pub(crate) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// First 16 hex digits of BLAKE3(token): names a job without revealing its secret token.
pub(crate) fn job_tag(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex()[..16].to_string()
}

fn pid_dead(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if p <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(p, 0) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

struct State {
    version: Version,
    record: LeaseRecord,
    /// When the last successful renewal (or the acquisition) was *sent*.
    renewed_at: Instant,
    /// Set for good when a renewal finds `LOCK` changed by someone else.
    lost: Option<String>,
    /// The last renewal error, for the message when the lease runs out.
    last_error: Option<String>,
    /// Renewals sent since the last confirmed one whose outcome is unknown (they failed
    /// with an error that does not say they were not applied), oldest first, at most
    /// [`MAX_UNCONFIRMED`]: the encoded record, the record, when it was sent.
    unconfirmed: Vec<(Vec<u8>, LeaseRecord, Instant)>,
}

impl State {
    /// `record`, sent at `at`, is in `LOCK` as version `version`: the lease is renewed
    /// from then on, and no earlier renewal is left unconfirmed.
    fn renewed(&mut self, version: Version, record: LeaseRecord, at: Instant) {
        self.version = version;
        self.record = record;
        self.renewed_at = at;
        self.last_error = None;
        self.unconfirmed.clear();
    }
}

/// Most unconfirmed renewals remembered (older ones are older than the lease's `ttl`
/// with the default timings, so recognising them would not save the lease anyway).
const MAX_UNCONFIRMED: usize = 16;

/// After a conditional put of `LOCK` failed (`Conflict`, or an error that leaves its
/// outcome unknown): re-reads `LOCK` and returns which of `candidates`, records this
/// process sent, it holds byte for byte, with its current version. A request whose first
/// attempt was applied while the client saw an error (a 5xx, a timeout) and retried ends
/// in `Conflict` against our own write; the record is then ours after all. Byte identity
/// is the test: every record carries our pid, host, boot id, generation and the wall-clock
/// times of its sending, so no other writer produces the same bytes.
fn landed(
    backend: &dyn WriteBackend,
    candidates: &[&[u8]],
) -> Result<Option<(usize, Version)>, StoreError> {
    Ok(backend
        .read_versioned(&ObjectKey::Lock)?
        .and_then(|(b, v)| {
            candidates
                .iter()
                .position(|c| *c == b.as_slice())
                .map(|i| (i, v))
        }))
}

/// A held lease: renewed by a background thread until dropped, then released.
pub(crate) struct Lease {
    backend: Arc<dyn WriteBackend>,
    cfg: LeaseConfig,
    state: Arc<Mutex<State>>,
    stop: Option<mpsc::Sender<()>>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("location", &self.backend.location())
            .finish_non_exhaustive()
    }
}

/// A lease of our own job held by another process (the supervisor), shared: checked by
/// re-reading `LOCK` before each commit, never renewed or released by us.
struct SharedLease {
    backend: Arc<dyn WriteBackend>,
    cfg: LeaseConfig,
    me: LockOwner,
    generation: u64,
}

impl std::fmt::Debug for SharedLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLease")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

fn locked(backend: &dyn WriteBackend, msg: String) -> StoreError {
    StoreError::new(
        StoreErrorKind::Locked,
        Some(&backend.describe(&ObjectKey::Lock)),
        msg,
    )
}

/// Takes (or shares) the lease of `backend`'s repository, waiting at most about
/// `ttl + max_clock_skew` for an expired one to become provably free.
pub(crate) fn acquire(
    backend: Arc<dyn WriteBackend>,
    cfg: LeaseConfig,
    me: &LockOwner,
    shared: bool,
) -> Result<Box<dyn LockGuard>, StoreError> {
    cfg.validate()?;
    let key = ObjectKey::Lock;
    let path = backend.describe(&key);
    let deadline = Instant::now() + cfg.ttl + cfg.max_clock_skew + Duration::from_secs(2);
    let my_boot = boot_id();
    let mut seen: Option<(Version, Instant)> = None;
    // Lost races so far, for the backoff between attempts.
    let mut conflicts: u32 = 0;
    loop {
        let current = backend.read_versioned(&key)?;
        let (record, version) = match &current {
            None => (None, None),
            // A `LOCK` left empty (a directory repository copied into a bucket) holds nothing.
            Some((b, v)) if b.is_empty() => (None, Some(v.clone())),
            Some((b, v)) => {
                let r = LeaseRecord::decode(b).map_err(|e| {
                    StoreError::new(
                        StoreErrorKind::Corrupt,
                        Some(&path),
                        format!(
                            "the lease object is damaged ({e}); if no writer is running, \
                             delete it and retry"
                        ),
                    )
                })?;
                (Some(r), Some(v.clone()))
            }
        };
        let unchanged_for = match (&seen, &version) {
            (Some((v, since)), Some(now)) if v == now => since.elapsed(),
            _ => {
                seen = version.clone().map(|v| (v, Instant::now()));
                Duration::ZERO
            }
        };
        let obs = Observation {
            now_ms: now_unix_ms(),
            unchanged_for,
            holder_dead_here: record.as_ref().is_some_and(|r| {
                r.host == me.host
                    && r.boot_id.is_some()
                    && r.boot_id == my_boot
                    && r.pid != std::process::id()
                    && pid_dead(r.pid)
            }),
        };
        match decide(record.as_ref(), me, shared, &cfg, &obs) {
            Decision::Share => {
                let generation = record.map_or(0, |r| r.generation);
                tracing::debug!(path = %path.display(), "sharing the lease of our own job");
                return Ok(Box::new(SharedLease {
                    backend,
                    cfg,
                    me: me.clone(),
                    generation,
                }));
            }
            Decision::Locked(msg) => return Err(locked(backend.as_ref(), msg)),
            Decision::Wait => {
                if Instant::now() >= deadline {
                    return Err(locked(
                        backend.as_ref(),
                        "repository is locked: an expired lease could not be taken over in time"
                            .into(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Decision::Take { generation, over } => {
                let now = now_unix_ms();
                let rec = LeaseRecord {
                    pid: me.pid,
                    host: me.host.clone(),
                    job: me.job.clone(),
                    since_unix_ms: now,
                    boot_id: my_boot.clone(),
                    generation,
                    ttl_ms: cfg.ttl.as_millis() as u64,
                    renewed_unix_ms: now,
                    expires_unix_ms: now + cfg.ttl.as_millis() as u64,
                    released: false,
                };
                let mode = match &version {
                    None => PutMode::Create,
                    Some(v) => PutMode::IfMatch(v.clone()),
                };
                let encoded = rec.encode();
                let sent = Instant::now();
                let put = backend.put(&key, &[&encoded], mode);
                // A request that failed may have been applied (its first attempt landed,
                // the retry found LOCK changed, or the answer was lost): then LOCK holds
                // our very bytes and the lease is ours.
                let put = match put {
                    Err(e)
                        if matches!(
                            e.kind(),
                            StoreErrorKind::Conflict | StoreErrorKind::Unavailable
                        ) =>
                    {
                        match landed(backend.as_ref(), &[&encoded]) {
                            Ok(Some((_, v))) => {
                                tracing::debug!(
                                    path = %path.display(),
                                    "our lease record landed despite: {e}"
                                );
                                Ok(Some(v))
                            }
                            _ => Err(e),
                        }
                    }
                    other => other,
                };
                match put {
                    Ok(v) => {
                        if let Some(why) = over {
                            tracing::warn!(path = %path.display(), "took over the {why}");
                        }
                        let v = v.ok_or_else(|| {
                            StoreError::new(
                                StoreErrorKind::Io,
                                Some(&path),
                                "the backend returned no version for the lease",
                            )
                        })?;
                        return Ok(Box::new(Lease::start(backend, cfg, rec, v, sent)));
                    }
                    // Someone else wrote LOCK meanwhile: look again, after a backoff (found
                    // in review: a server answering every PUT 412 was sent GET+PUT in a
                    // tight loop until the deadline).
                    Err(e) if e.kind() == StoreErrorKind::Conflict => {
                        if Instant::now() >= deadline {
                            return Err(locked(
                                backend.as_ref(),
                                format!(
                                    "repository is locked: lost the race for the lease {} \
                                     times; the last conditional PUT of LOCK (expecting {}) \
                                     failed: {}",
                                    conflicts + 1,
                                    version.as_ref().map_or_else(
                                        || "no LOCK".to_string(),
                                        |v| format!("ETag {}", v.0)
                                    ),
                                    e.message()
                                ),
                            ));
                        }
                        let pause = Duration::from_millis(50 << conflicts.min(5))
                            .min(deadline.saturating_duration_since(Instant::now()));
                        conflicts += 1;
                        std::thread::sleep(pause);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

impl Lease {
    fn start(
        backend: Arc<dyn WriteBackend>,
        cfg: LeaseConfig,
        record: LeaseRecord,
        version: Version,
        renewed_at: Instant,
    ) -> Lease {
        let state = Arc::new(Mutex::new(State {
            version,
            record,
            renewed_at,
            lost: None,
            last_error: None,
            unconfirmed: Vec::new(),
        }));
        let (stop, stopped) = mpsc::channel::<()>();
        let (b, s, c) = (backend.clone(), state.clone(), cfg.clone());
        let renewer = std::thread::Builder::new()
            .name("lazarus-lease".into())
            .spawn(move || loop {
                match stopped.recv_timeout(c.renew_every) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                if !renew(b.as_ref(), &c, &s) {
                    return;
                }
            })
            .ok();
        if renewer.is_none() {
            tracing::warn!("could not start the lease renewal thread; the lease will run out");
        }
        Lease {
            backend,
            cfg,
            state,
            stop: Some(stop),
            renewer,
        }
    }
}

/// One renewal; false once the lease is lost for good.
fn renew(backend: &dyn WriteBackend, cfg: &LeaseConfig, state: &Mutex<State>) -> bool {
    let (mut rec, version) = {
        let g = state.lock().unwrap_or_else(|e| e.into_inner());
        if g.lost.is_some() {
            return false;
        }
        (g.record.clone(), g.version.clone())
    };
    let now = now_unix_ms();
    rec.renewed_unix_ms = now;
    rec.expires_unix_ms = now + cfg.ttl.as_millis() as u64;
    let encoded = rec.encode();
    let sent = Instant::now();
    let r = backend.put(&ObjectKey::Lock, &[&encoded], PutMode::IfMatch(version));
    let path = backend.describe(&ObjectKey::Lock);
    // A 412 may answer the retry of our own renewal whose first attempt landed (a 5xx,
    // then object_store retried), or follow an earlier renewal that failed but landed:
    // LOCK then holds bytes we sent, and the lease is still ours. Decided outside the
    // state's mutex (a request), so that `check` never waits on the network.
    let conflict = match &r {
        Err(e) if e.kind() == StoreErrorKind::Conflict => {
            let unconfirmed = state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .unconfirmed
                .clone();
            let mut candidates: Vec<&[u8]> = vec![&encoded];
            candidates.extend(unconfirmed.iter().rev().map(|(b, _, _)| b.as_slice()));
            let found = landed(backend, &candidates).map(|o| {
                o.map(|(i, v)| match i {
                    0 => (rec.clone(), sent, v),
                    i => {
                        let (_, r, at) = &unconfirmed[unconfirmed.len() - i];
                        (r.clone(), *at, v)
                    }
                })
            });
            Some(found)
        }
        _ => None,
    };
    let mut g = state.lock().unwrap_or_else(|e| e.into_inner());
    let unconfirmed = |g: &mut State, e: &StoreError| {
        if g.unconfirmed.len() >= MAX_UNCONFIRMED {
            g.unconfirmed.remove(0);
        }
        g.unconfirmed.push((encoded.clone(), rec.clone(), sent));
        g.last_error = Some(e.to_string());
    };
    match (r, conflict) {
        (Ok(Some(v)), _) => {
            g.renewed(v, rec, sent);
            true
        }
        (Ok(None), _) => {
            g.last_error = Some("the backend returned no version".into());
            true
        }
        (Err(e), Some(Ok(Some((record, at, v))))) => {
            tracing::debug!(path = %path.display(), "our lease renewal landed despite: {e}");
            g.renewed(v, record, at);
            true
        }
        (Err(e), Some(Ok(None))) => {
            let msg = format!(
                "lease generation {} lost: LOCK was changed by another writer ({e})",
                g.record.generation
            );
            tracing::error!(path = %path.display(), "{msg}");
            g.lost = Some(msg);
            false
        }
        (Err(e), Some(Err(read))) => {
            // Cannot tell whose LOCK it is: not lost yet, the lease ages until a later
            // renewal settles it (or `check` refuses once it is too old).
            tracing::warn!(
                path = %path.display(),
                "lease renewal got a conflict ({e}) and LOCK could not be re-read ({read}); \
                 will retry"
            );
            unconfirmed(&mut g, &e);
            true
        }
        (Err(e), None) => {
            tracing::warn!(path = %path.display(), "lease renewal failed (will retry): {e}");
            unconfirmed(&mut g, &e);
            true
        }
    }
}

impl LockGuard for Lease {
    fn check(&self) -> Result<(), StoreError> {
        self.check_until().map(|_| ())
    }

    /// Passes while the last successful renewal *started* less than `ttl - commit_margin`
    /// ago, and says until when that holds: a request issued before then ends (lands or
    /// is abandoned, within the backend's operation bound <= `commit_margin`) before the
    /// lease can expire for anyone else.
    fn check_until(&self) -> Result<Option<Instant>, StoreError> {
        let g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = &g.lost {
            return Err(locked(self.backend.as_ref(), l.clone()));
        }
        let age = g.renewed_at.elapsed();
        let limit = self.cfg.ttl.saturating_sub(self.cfg.commit_margin);
        if age >= limit {
            return Err(locked(
                self.backend.as_ref(),
                format!(
                    "lease generation {} not renewed for {age:?} (limit {limit:?}){}; \
                     refusing to commit",
                    g.record.generation,
                    g.last_error
                        .as_ref()
                        .map(|e| format!(", last renewal error: {e}"))
                        .unwrap_or_default()
                ),
            ));
        }
        Ok(Some(g.renewed_at + limit))
    }

    fn generation(&self) -> Option<u64> {
        Some(
            self.state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record
                .generation,
        )
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        let g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if g.lost.is_some() {
            return;
        }
        let mut rec = g.record.clone();
        rec.released = true;
        let encoded = rec.encode();
        let b = self.backend.as_ref();
        let path = b.describe(&ObjectKey::Lock);
        let release = |v: Version| b.put(&ObjectKey::Lock, &[&encoded], PutMode::IfMatch(v));
        let e = match release(g.version.clone()) {
            Ok(_) => return,
            Err(e) => e,
        };
        // As for a renewal: our release's first attempt may have landed (the retry then
        // gets a 412), or an earlier renewal of ours that failed had landed (so our
        // version is stale): LOCK holds bytes we sent, and the lease is still ours.
        let mut candidates: Vec<&[u8]> = vec![&encoded];
        candidates.extend(g.unconfirmed.iter().rev().map(|(b, _, _)| b.as_slice()));
        let r = match e.kind() {
            StoreErrorKind::Conflict | StoreErrorKind::Unavailable => {
                match landed(b, &candidates) {
                    Ok(Some((0, _))) => Ok(()),
                    Ok(Some((_, v))) => release(v).map(|_| ()),
                    _ => Err(e),
                }
            }
            _ => Err(e),
        };
        if let Err(e) = r {
            tracing::warn!(
                path = %path.display(),
                "could not release the lease (it will expire): {e}"
            );
        }
    }
}

impl LockGuard for SharedLease {
    fn check(&self) -> Result<(), StoreError> {
        self.check_until().map(|_| ())
    }

    /// Re-reads `LOCK`: passes while it holds an unreleased record of our job *and of the
    /// generation we shared* (a lease of our job taken over since, e.g. by a later
    /// incarnation after the holder's lease expired, fences us) that has more than
    /// `commit_margin` left by our wall clock; the answer holds until then. What it cannot
    /// tell apart: two processes sharing the same generation of our job's lease (two
    /// incarnations of rank 0 under one supervisor) both pass; the supervisor ends an
    /// incarnation before it starts the next, up to the window docs/STORAGE.md ("Lease")
    /// lists.
    fn check_until(&self) -> Result<Option<Instant>, StoreError> {
        let current = self.backend.read_versioned(&ObjectKey::Lock)?;
        let rec = current.and_then(|(b, _)| LeaseRecord::decode(&b).ok());
        let margin = self.cfg.commit_margin.as_millis() as u64;
        let now = now_unix_ms();
        let left = match &rec {
            Some(r) if r.job == self.me.job && r.generation == self.generation && !r.released => r
                .expires_unix_ms
                .saturating_sub(margin)
                .checked_sub(now)
                .filter(|ms| *ms > 0),
            _ => None,
        };
        match left {
            Some(ms) => Ok(Some(Instant::now() + Duration::from_millis(ms))),
            None => Err(locked(
                self.backend.as_ref(),
                format!(
                    "the shared lease of this job (generation {}) is no longer held{}; \
                     refusing to commit or delete",
                    self.generation,
                    match rec {
                        Some(r) if r.job != self.me.job || r.generation != self.generation => {
                            format!(
                                " (LOCK now holds generation {} of pid {} on host {})",
                                r.generation, r.pid, r.host
                            )
                        }
                        Some(r) if r.released => " (released by its holder)".into(),
                        Some(_) => format!(" (less than the commit margin of {margin} ms left)"),
                        None => " (LOCK is gone or unreadable)".into(),
                    }
                ),
            )),
        }
    }

    fn generation(&self) -> Option<u64> {
        Some(self.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn me(job: Option<&str>) -> LockOwner {
        LockOwner {
            pid: 7,
            host: "h".into(),
            job: job.map(str::to_string),
        }
    }

    fn rec(generation: u64, renewed: u64, ttl: u64) -> LeaseRecord {
        LeaseRecord {
            pid: 9,
            host: "other".into(),
            job: Some("j".into()),
            since_unix_ms: renewed,
            boot_id: None,
            generation,
            ttl_ms: ttl,
            renewed_unix_ms: renewed,
            expires_unix_ms: renewed + ttl,
            released: false,
        }
    }

    fn obs(now_ms: u64, unchanged_ms: u64) -> Observation {
        Observation {
            now_ms,
            unchanged_for: Duration::from_millis(unchanged_ms),
            holder_dead_here: false,
        }
    }

    #[test]
    fn takeover_rules() {
        let cfg = LeaseConfig::with_ttl(Duration::from_secs(10));
        let r = rec(3, 1_000_000, 10_000);
        let take = |d: &Decision| matches!(d, Decision::Take { generation: 4, .. });
        // Nobody: generation 1.
        assert!(matches!(
            decide(None, &me(None), false, &cfg, &obs(0, 0)),
            Decision::Take { generation: 1, .. }
        ));
        // Live: refused at once.
        let d = decide(Some(&r), &me(None), false, &cfg, &obs(1_005_000, 0));
        assert!(matches!(d, Decision::Locked(_)), "{d:?}");
        // Live, our job, shared: shared.
        let d = decide(Some(&r), &me(Some("j")), true, &cfg, &obs(1_005_000, 0));
        assert_eq!(d, Decision::Share);
        // Same job but not asking to share: refused.
        let d = decide(Some(&r), &me(Some("j")), false, &cfg, &obs(1_005_000, 0));
        assert!(matches!(d, Decision::Locked(_)));
        // Expired by its clock, within the skew: wait.
        let d = decide(Some(&r), &me(None), false, &cfg, &obs(1_012_000, 0));
        assert_eq!(d, Decision::Wait);
        // Past the skew: take.
        assert!(take(&decide(
            Some(&r),
            &me(None),
            false,
            &cfg,
            &obs(1_016_000, 0)
        )));
        // Unchanged for ttl + 1 s of our clock, whatever the wall clocks say: take.
        assert!(take(&decide(
            Some(&r),
            &me(None),
            false,
            &cfg,
            &obs(0, 11_000)
        )));
        assert!(!take(&decide(
            Some(&r),
            &me(None),
            false,
            &cfg,
            &obs(0, 10_500)
        )));
        // Released, or dead on this host: take at once.
        let mut rel = r.clone();
        rel.released = true;
        assert!(take(&decide(
            Some(&rel),
            &me(None),
            false,
            &cfg,
            &obs(0, 0)
        )));
        let dead = Observation {
            holder_dead_here: true,
            ..obs(1_005_000, 0)
        };
        assert!(take(&decide(Some(&r), &me(None), false, &cfg, &dead)));
    }

    #[test]
    fn config_validation() {
        assert!(LeaseConfig::default().validate().is_ok());
        assert!(LeaseConfig::with_ttl(Duration::from_millis(600))
            .validate()
            .is_ok());
        let bad = LeaseConfig {
            commit_margin: Duration::from_secs(60),
            ..LeaseConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    fn arb_record() -> impl Strategy<Value = LeaseRecord> {
        (
            any::<u32>(),
            "[a-z0-9.-]{0,40}",
            proptest::option::of("[0-9a-f]{16}"),
            any::<u64>(),
            proptest::option::of("[0-9a-f-]{36}"),
            1u64..u64::MAX,
            1u64..=86_400_000,
            0u64..(u64::MAX / 2),
            any::<bool>(),
        )
            .prop_map(
                |(pid, host, job, since, boot_id, generation, ttl_ms, renewed, released)| {
                    LeaseRecord {
                        pid,
                        host,
                        job,
                        since_unix_ms: since,
                        boot_id,
                        generation,
                        ttl_ms,
                        renewed_unix_ms: renewed,
                        expires_unix_ms: renewed + ttl_ms,
                        released,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn lease_record_roundtrips(r in arb_record()) {
            prop_assert_eq!(LeaseRecord::decode(&r.encode()), Ok(r));
        }

        #[test]
        fn lease_decoder_never_panics_on_mutations(
            r in arb_record(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let mut b = r.encode();
            for (i, x) in flips {
                let n = b.len();
                b[i % n] ^= x;
            }
            b.truncate(cut % (b.len() + 1));
            if let Ok(d) = LeaseRecord::decode(&b) {
                // Whatever decodes satisfies the validation.
                prop_assert!(d.generation >= 1);
                prop_assert_eq!(d.renewed_unix_ms.checked_add(d.ttl_ms), Some(d.expires_unix_ms));
            }
        }

        #[test]
        fn lease_decoder_never_panics_on_noise(b in proptest::collection::vec(any::<u8>(), 0..6000)) {
            let _ = LeaseRecord::decode(&b);
        }
    }
}

//! Failpoints, the simulated-full-disk write budget and the clock: what the repository
//! logic needs whatever the backend (the file primitives are in `backend/dir.rs`).

use crate::error::StoreError;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Prefix of temporary files; GC removes leftovers with this prefix.
pub(crate) const TMP_PREFIX: &str = ".tmp-";

/// Environment variable naming a failpoint at which the process kills itself (SIGKILL).
pub const FAILPOINT_ENV: &str = "LAZARUS_FAILPOINT";

/// Every failpoint name passed to [`failpoint`] in the workspace (the store's, the
/// levels' and the managed files'): what `lazarus run --inject-failpoint` accepts, so a
/// typo is refused instead of never firing. A unit test checks it against the calls.
pub const FAILPOINTS: &[&str] = &[
    "after_chunk_write",
    "before_manifest_rename",
    "after_manifest_rename",
    "before_level_history",
    "before_commit",
    "before_commit_rename",
    "after_commit_rename",
    "after_commit",
    "gc_during_sweep",
    "gc_after_uncommit",
    "levels_after_l1_commit",
    "levels_parity_before_commit",
    "files_after_journal_append",
    "files_before_data_write",
    "files_restore_mid_apply",
];

/// If `LAZARUS_FAILPOINT` equals `name`, the process SIGKILLs itself here. Used by
/// real-process crash tests; a no-op otherwise. The one failpoint switch of every crate
/// that writes checkpoint data (the store, managed files). `name#n` fires at the `n`-th
/// time the process passes `name` (1-based), e.g. during the third checkpoint's write.
pub fn failpoint(name: &str) {
    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let armed = ARMED.get_or_init(|| {
        std::env::var(FAILPOINT_ENV)
            .ok()
            .map(|v| match v.split_once('#') {
                Some((n, k)) => (n.to_string(), k.parse().unwrap_or(1)),
                None => (v, 1),
            })
    });
    let Some((armed, at)) = armed else { return };
    if armed == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *at {
        // A failed stderr must not turn the planned SIGKILL into a panic.
        // Marked as injected, so a log reader never mistakes it for a real crash.
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr(),
            format_args!("lazarus: injected failpoint {name}: SIGKILL\n"),
        );
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        std::process::abort();
    }
}

/// A shared budget of bytes that may still be written; exhausting it fails writes with
/// ENOSPC, to simulate a full disk deterministically.
#[derive(Clone, Debug, Default)]
pub(crate) struct Budget(Option<Arc<AtomicU64>>);

impl Budget {
    pub(crate) fn limited(bytes: u64) -> Self {
        Budget(Some(Arc::new(AtomicU64::new(bytes))))
    }

    /// Takes `n` bytes for writing `what`, or fails with `NoSpace` naming it.
    pub(crate) fn take(&self, n: u64, what: &Path) -> Result<(), StoreError> {
        let Some(b) = &self.0 else { return Ok(()) };
        let r = b.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
            left.checked_sub(n)
        });
        match r {
            Ok(_) => Ok(()),
            Err(_) => {
                b.store(0, Ordering::SeqCst);
                Err(StoreError::io(
                    what,
                    "writing",
                    std::io::Error::from_raw_os_error(libc::ENOSPC),
                ))
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod failpoint_list_tests {
    use super::FAILPOINTS;
    use std::collections::BTreeSet;
    use std::path::Path;

    /// Every `failpoint("NAME")` call in the workspace's sources.
    fn calls(dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                calls(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for (i, _) in text.match_indices("failpoint(\"") {
                    let rest = &text[i + "failpoint(\"".len()..];
                    if let Some(end) = rest.find('"') {
                        out.insert(rest[..end].to_string());
                    }
                }
            }
        }
    }

    /// The list is exactly the names used: none missing (refused though real), none
    /// stale (accepted though it never fires).
    #[test]
    fn failpoint_list_matches_the_calls_in_the_workspace() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut used = BTreeSet::new();
        calls(&root.join("src"), &mut used);
        for c in std::fs::read_dir(root.join("crates")).unwrap().flatten() {
            if c.path().join("src").is_dir() {
                calls(&c.path().join("src"), &mut used);
            }
        }
        // This module's own search pattern is not a call.
        used.remove("NAME");
        let listed: BTreeSet<String> = FAILPOINTS.iter().map(|s| s.to_string()).collect();
        assert_eq!(listed.len(), FAILPOINTS.len(), "a name is listed twice");
        assert_eq!(listed, used);
    }
}

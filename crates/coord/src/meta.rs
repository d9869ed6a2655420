//! The `lazarus.*` keys the runtimes record in a COMMIT's application metadata (`app`),
//! next to the program's own keys. Readers that do not know a key ignore it and a
//! checkpoint without it reads as "not recorded", so adding keys keeps every older
//! repository and reader working (docs/FORMAT.md, "COMMIT").

use std::collections::BTreeMap;
use std::time::Duration;

/// Prefix reserved for the runtime's keys; a program's own `app` keys may not use it.
pub const RESERVED_PREFIX: &str = "lazarus.";
/// `"true"` when the program called `Job::finish`: the checkpoint is the job's final
/// state, and a rerun restores it and does no more work.
pub const FINISHED_KEY: &str = "lazarus.finished";
/// Microseconds rank 0 spent in the checkpoint round until COMMIT was written: its part
/// written, every rank's vote received (so the slowest rank's write is in it). The
/// program was stopped at least this long.
pub const STALL_KEY: &str = "lazarus.stall_us";
/// Microseconds rank 0 spent writing its own part (hashing, compressing, writing and
/// syncing chunks and manifest). In an asynchronous checkpoint (issue #16) this is the
/// background flush, which the stall no longer contains.
pub const WRITE_KEY: &str = "lazarus.write_us";

/// Microseconds from the end of an asynchronous checkpoint's capture (the program going
/// on) to its COMMIT on rank 0: the background flush (every rank's part written and
/// voted, issue #16). Present only for asynchronous checkpoints, whose `lazarus.stall_us`
/// is then the capture alone.
pub const FLUSH_KEY: &str = "lazarus.flush_us";

/// `"unaligned"` for a checkpoint written by `AsyncSession` (absent: an aligned one).
pub const MODE_KEY: &str = "lazarus.mode";
/// The snapshot epoch of an unaligned checkpoint (`AsyncSession`), read back for a part
/// that holds no channel state.
pub const EPOCH_KEY: &str = "lazarus.epoch";

/// [`EPOCH_KEY`] of a COMMIT's metadata (absent or unreadable: `None`).
pub fn snapshot_epoch(app: &BTreeMap<String, String>) -> Option<u64> {
    app.get(EPOCH_KEY).and_then(|v| v.parse().ok())
}

/// The job-wide checkpoint number of a multi-level job (issue #15, docs/LEVELS.md): the
/// same number in the COMMIT of every level that holds the checkpoint, so restore can tell
/// which level's copy is the newest. Absent in jobs without levels.
pub const LEVEL_SEQ_KEY: &str = "lazarus.level.seq";

/// [`LEVEL_SEQ_KEY`] of a COMMIT's metadata (absent or unreadable: `None`).
pub fn level_seq(app: &BTreeMap<String, String>) -> Option<u64> {
    app.get(LEVEL_SEQ_KEY).and_then(|v| v.parse().ok())
}

/// What a committed checkpoint cost, as recorded in its COMMIT by rank 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordedCost {
    /// [`STALL_KEY`], if recorded.
    pub stall: Option<Duration>,
    /// [`WRITE_KEY`], if recorded.
    pub write: Option<Duration>,
    /// [`FLUSH_KEY`], if recorded (asynchronous checkpoints only).
    pub flush: Option<Duration>,
}

impl RecordedCost {
    /// Reads the keys (absent or unreadable values are `None`: older checkpoints).
    pub fn from_app(app: &BTreeMap<String, String>) -> Self {
        let us = |k: &str| {
            app.get(k)
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_micros)
        };
        RecordedCost {
            stall: us(STALL_KEY),
            write: us(WRITE_KEY),
            flush: us(FLUSH_KEY),
        }
    }

    /// Writes the recorded values into `app`.
    pub fn insert_into(&self, app: &mut BTreeMap<String, String>) {
        for (k, v) in [
            (STALL_KEY, self.stall),
            (WRITE_KEY, self.write),
            (FLUSH_KEY, self.flush),
        ] {
            if let Some(d) = v {
                app.insert(k.to_string(), d.as_micros().to_string());
            }
        }
    }
}

/// True when the COMMIT's metadata says the job finished there ([`FINISHED_KEY`]).
pub fn is_finished(app: &BTreeMap<String, String>) -> bool {
    app.get(FINISHED_KEY).is_some_and(|v| v == "true")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_round_trips_and_old_commits_read_as_unrecorded() {
        let mut app = BTreeMap::from([("version".to_string(), "1".to_string())]);
        assert_eq!(RecordedCost::from_app(&app), RecordedCost::default());
        let c = RecordedCost {
            stall: Some(Duration::from_micros(1500)),
            write: Some(Duration::from_micros(900)),
            flush: Some(Duration::from_micros(4000)),
        };
        c.insert_into(&mut app);
        assert_eq!(RecordedCost::from_app(&app), c);
        app.insert(STALL_KEY.into(), "garbage".into());
        assert_eq!(RecordedCost::from_app(&app).stall, None);
        assert!(!is_finished(&app));
        app.insert(FINISHED_KEY.into(), "true".into());
        assert!(is_finished(&app));
    }
}

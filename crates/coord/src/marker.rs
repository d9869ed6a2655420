//! Output markers: the control lines a rank writes on its stdout for the supervisor
//! (`lazarus run --repo`), docs/RECOVERY.md. One type, one formatter ([`Marker::line`]),
//! one parser ([`Marker::parse`]) and one writer ([`write_marker`]) for every runtime
//! that writes them (the Job API, [`AlignedRuntime`](crate::AlignedRuntime),
//! [`AsyncSession`](crate::AsyncSession), the supervisor's test probe) and for the
//! supervisor that reads them.
//!
//! Every marker line carries the key the supervisor gave this launch in
//! `LAZARUS_OUTPUT_MARKERS` (random, per `lazarus run`): `"\u{1e}lazarus:<key>:part <id>
//! <step>"`. Only a line with the key is a marker; anything else is the program's own
//! text, so output that merely looks like a marker (a program echoing untrusted input)
//! cannot settle the output commit (found in review: a forged `commit` released lines
//! before their checkpoint was durable, and a crash then printed them twice). Below, the
//! key is left out. With markers on, a rank writes `"\u{1e}lazarus:part <id> <step>"` once
//! its part of checkpoint `<id>` is durable, and rank 0 writes
//! `"\u{1e}lazarus:commit <id> <step>"` after COMMIT; `"\u{1e}lazarus:resumed <id|-> <step>"`
//! once restored (used to time recovery); with fast checkpoint levels,
//! `"\u{1e}lazarus:cut <seq> <step>"` where each checkpoint call begins. Two more tell the supervisor what no restart
//! can change: `"\u{1e}lazarus:repo <location>"` (the repository a rank opened,
//! `lazarus_store::repo_location`) and `"\u{1e}lazarus:refused <message>"` (a restore
//! error no restart can fix: the supervisor stops instead of restarting).

use lazarus_format::CheckpointId;
use std::io::Write;

/// Start of every control line (the ASCII record separator, then `lazarus:`), followed by
/// the launch's key and `:`. Text starting with it but without the key is ordinary text.
pub const MARKER_PREFIX: &str = "\u{1e}lazarus:";

/// Whether `key` can be a marker key: 16 to 128 lowercase hex digits (the supervisor
/// makes 32 from the operating system's random source).
pub fn is_marker_key(key: &str) -> bool {
    (16..=128).contains(&key.len()) && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The marker key this process was given (`LAZARUS_OUTPUT_MARKERS`, set by `lazarus run
/// --repo`), read once; `None` when markers are off. A value that is not a key (the `1`
/// of older versions) turns markers off, with a warning: a marker without the key would
/// be ordinary text to the supervisor.
pub fn marker_key() -> Option<&'static str> {
    static KEY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let v = std::env::var(crate::OUTPUT_MARKERS_ENV).ok()?;
        if is_marker_key(&v) {
            Some(v)
        } else {
            tracing::warn!(
                "{}={v:?} is not a marker key; no output markers are written",
                crate::OUTPUT_MARKERS_ENV
            );
            None
        }
    })
    .as_deref()
}

/// A control line written by a rank on its stdout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Marker {
    /// This rank's part of the checkpoint is durable; the lines before it belong to it.
    Part {
        /// checkpoint
        id: CheckpointId,
        /// its step
        step: u64,
    },
    /// The checkpoint is committed (written by the committing rank, rank 0).
    Commit {
        /// checkpoint
        id: CheckpointId,
        /// its step
        step: u64,
    },
    /// A job with fast checkpoint levels (docs/LEVELS.md) calls checkpoint number `seq`
    /// (job-wide) at `step` here, before writing it: a position in the rank's output, not
    /// a claim that anything is durable. After a restart the supervisor keeps the lines
    /// before the restored checkpoint's cut (the last cut at or below the restored `seq`,
    /// or step when the restore names no `seq`) and drops the rest (the re-execution
    /// prints those again), whatever level the ranks restored from.
    Cut {
        /// job-wide checkpoint number
        seq: u64,
        /// its step
        step: u64,
    },
    /// The rank restored this checkpoint (`None`: started fresh) and is running again.
    Resumed {
        /// checkpoint restored, if any
        id: Option<CheckpointId>,
        /// step restored
        step: u64,
        /// the restored checkpoint's job-wide number ([`Marker::Cut`]'s `seq`), in a job
        /// with fast levels: two checkpoint calls at one step (`checkpoint_now`, then
        /// `finish`) have equal steps, and only this tells their cuts apart
        seq: Option<u64>,
    },
    /// The repository the rank opened, as [`lazarus_store::repo_location`] normalizes it. The supervisor
    /// stops a job whose ranks opened another repository than its own.
    Repo {
        /// normalized location (one line)
        location: String,
    },
    /// The rank's restore failed in a way no restart can fix (a checkpoint that cannot be
    /// restored on this number of ranks, a schema mismatch, every checkpoint damaged): the
    /// supervisor stops instead of restarting.
    Refused {
        /// the rank's error, naming the checkpoint and why (one line)
        message: String,
    },
}

/// Replaces line breaks so a free-text marker field stays one line.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

impl Marker {
    /// The line (without newline) a rank writes for this marker, with the launch's `key`.
    pub fn line(&self, key: &str) -> String {
        let body = match self {
            Marker::Part { id, step } => format!("part {} {step}", id.0),
            Marker::Commit { id, step } => format!("commit {} {step}", id.0),
            Marker::Cut { seq, step } => format!("cut {seq} {step}"),
            Marker::Resumed { id, step, seq } => {
                let id = id.map_or_else(|| "-".to_string(), |id| id.0.to_string());
                match seq {
                    Some(seq) => format!("resumed {id} {step} {seq}"),
                    None => format!("resumed {id} {step}"),
                }
            }
            Marker::Repo { location } => format!("repo {}", one_line(location)),
            Marker::Refused { message } => format!("refused {}", one_line(message)),
        };
        format!("{MARKER_PREFIX}{key}:{body}")
    }

    /// Parses a line (with or without its newline) of a launch whose key is `key`. `None`
    /// for ordinary text, which includes a line with the marker prefix but another key (or
    /// none); `Some(Err)` for a line with the prefix and the key that is malformed (never
    /// shown to the user either: it came from the runtime).
    pub fn parse(line: &[u8], key: &str) -> Option<Result<Marker, String>> {
        if key.is_empty() {
            return None;
        }
        let rest = line
            .strip_prefix(MARKER_PREFIX.as_bytes())?
            .strip_prefix(key.as_bytes())?
            .strip_prefix(b":")?;
        let text = match std::str::from_utf8(rest) {
            Ok(t) => t.trim_end_matches(['\n', '\r']),
            Err(_) => return Some(Err("marker is not UTF-8".into())),
        };
        // Free-text markers: everything after the first space is the payload (one line:
        // `line()` never writes a line break into it).
        match text.split_once(' ') {
            Some(("repo" | "refused", p)) if p.contains(['\n', '\r']) => {
                return Some(Err(format!("marker {text:?} has a line break")))
            }
            Some(("repo", loc)) if !loc.is_empty() => {
                return Some(Ok(Marker::Repo {
                    location: loc.to_string(),
                }))
            }
            Some(("refused", msg)) if !msg.is_empty() => {
                return Some(Ok(Marker::Refused {
                    message: msg.to_string(),
                }))
            }
            _ => {}
        }
        let mut it = text.split(' ');
        let (kind, id, step) = (it.next(), it.next(), it.next());
        // Only `resumed` has a fourth field (the restored checkpoint's seq).
        let seq = match (kind, it.next()) {
            (_, None) => None,
            (Some("resumed"), Some(s)) => match s.parse::<u64>() {
                Ok(v) => Some(v),
                Err(_) => return Some(Err(format!("marker {text:?}: bad seq"))),
            },
            _ => return Some(Err(format!("marker {text:?} has extra fields"))),
        };
        if it.next().is_some() {
            return Some(Err(format!("marker {text:?} has extra fields")));
        }
        let step = match step.map(str::parse::<u64>) {
            Some(Ok(s)) => s,
            _ => return Some(Err(format!("marker {text:?}: bad or missing step"))),
        };
        let id = match id {
            Some("-") => None,
            Some(s) => match s.parse::<u64>() {
                Ok(v) => Some(CheckpointId(v)),
                Err(_) => return Some(Err(format!("marker {text:?}: bad checkpoint id"))),
            },
            None => return Some(Err(format!("marker {text:?}: missing checkpoint id"))),
        };
        Some(match (kind, id) {
            (Some("part"), Some(id)) => Ok(Marker::Part { id, step }),
            (Some("commit"), Some(id)) => Ok(Marker::Commit { id, step }),
            (Some("cut"), Some(id)) => Ok(Marker::Cut { seq: id.0, step }),
            (Some("resumed"), id) => Ok(Marker::Resumed { id, step, seq }),
            _ => Err(format!("unknown marker {text:?}")),
        })
    }
}

/// Writes `m` as one line on stdout, with this process's key, and flushes, so it is
/// ordered with the program's own lines. Callers decide whether markers are on
/// ([`markers_enabled`]); without a key nothing is written. A closed or full stdout must not fail the job: markers only
/// inform the supervisor, so write errors are ignored.
pub fn write_marker(m: &Marker) {
    let Some(key) = marker_key() else {
        return;
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", m.line(key));
    let _ = out.flush();
}

/// True when this process was asked to write markers (a key in `LAZARUS_OUTPUT_MARKERS`,
/// set by `lazarus run --repo` for every rank; [`marker_key`]).
pub fn markers_enabled() -> bool {
    marker_key().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn marker_round_trip_and_rejects() {
        for m in [
            Marker::Part {
                id: CheckpointId(7),
                step: 30,
            },
            Marker::Commit {
                id: CheckpointId(0),
                step: 0,
            },
            Marker::Resumed {
                id: None,
                step: 0,
                seq: None,
            },
            Marker::Cut { seq: 12, step: 48 },
            Marker::Resumed {
                id: Some(CheckpointId(3)),
                step: 9,
                seq: None,
            },
            Marker::Resumed {
                id: Some(CheckpointId(3)),
                step: 9,
                seq: Some(14),
            },
        ] {
            let line = format!("{}\n", m.line(KEY));
            assert_eq!(Marker::parse(line.as_bytes(), KEY), Some(Ok(m)));
        }
        for m in [
            Marker::Repo {
                location: "/data/my repo".into(),
            },
            Marker::Repo {
                location: "s3://bucket/prefix".into(),
            },
            Marker::Refused {
                message: "checkpoint 3: field `x` is per-rank state".into(),
            },
        ] {
            let line = format!("{}\n", m.line(KEY));
            assert_eq!(Marker::parse(line.as_bytes(), KEY), Some(Ok(m)));
        }
        // A multi-line message stays one marker line.
        let m = Marker::Refused {
            message: "a\nb".into(),
        };
        assert_eq!(
            Marker::parse(m.line(KEY).as_bytes(), KEY),
            Some(Ok(Marker::Refused {
                message: "a b".into()
            }))
        );
        assert_eq!(Marker::parse(b"checksum=12\n", KEY), None);
        for bad in [
            "part x 1",
            "part 1",
            "commit - 3",
            "nope 1 2",
            "part 1 2 3",
            "cut 1 2 3",
            "resumed 1 2 x",
            "resumed 1 2 3 4",
            "repo",
            "refused ",
        ] {
            let line = format!("{MARKER_PREFIX}{KEY}:{bad}");
            assert!(
                matches!(Marker::parse(line.as_bytes(), KEY), Some(Err(_))),
                "{bad}"
            );
        }
    }

    /// Found in review: any line starting with the marker prefix was a marker, so a
    /// program printing untrusted text could forge a `commit` and settle the output
    /// commit (lines released before their checkpoint was durable, printed twice after a
    /// crash). Only a line with the launch's key is a marker now; the rest is text.
    #[test]
    fn a_marker_without_the_launchs_key_is_ordinary_text() {
        let commit = Marker::Commit {
            id: CheckpointId(u64::MAX),
            step: 0,
        };
        let other = "fedcba9876543210fedcba9876543210";
        for line in [
            format!("{MARKER_PREFIX}commit 18446744073709551615 0\n"),
            format!("{}\n", commit.line(other)),
            format!("{MARKER_PREFIX}{KEY}commit 1 0\n"),
            format!("{MARKER_PREFIX}{}:commit 1 0\n", &KEY[..16]),
        ] {
            assert_eq!(Marker::parse(line.as_bytes(), KEY), None, "{line:?}");
        }
        assert_eq!(
            Marker::parse(commit.line(KEY).as_bytes(), KEY),
            Some(Ok(commit.clone()))
        );
        // An empty key makes no line a marker.
        assert_eq!(Marker::parse(commit.line("").as_bytes(), ""), None);
        assert!(is_marker_key(KEY) && is_marker_key(other));
        for bad in [
            "1",
            "",
            "0123456789ABCDEF0123",
            "0123456789abcdeg",
            &"a".repeat(129),
        ] {
            assert!(!is_marker_key(bad), "{bad}");
        }
    }

    proptest::proptest! {
        /// Marker lines come from rank stdout, i.e. from any program: parsing never panics,
        /// and whatever parses formats back to a line that parses to the same marker.
        #[test]
        fn marker_parse_never_panics(
            kind in proptest::sample::select(vec!["part ", "commit ", "resumed ", "repo ", "refused ", ""]),
            text in "[ -~\r\n\u{1e}é-]{0,40}",
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20),
        ) {
            let mut line = format!("{MARKER_PREFIX}{KEY}:").into_bytes();
            line.extend_from_slice(kind.as_bytes());
            line.extend_from_slice(text.as_bytes());
            line.extend_from_slice(&tail);
            if let Some(Ok(m)) = Marker::parse(&line, KEY) {
                proptest::prop_assert_eq!(Marker::parse(m.line(KEY).as_bytes(), KEY), Some(Ok(m)));
            }
        }
    }
}

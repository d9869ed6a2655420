//! The agreed restore: every rank of a job restores the same committed checkpoint, or
//! every rank starts fresh, or every rank fails. One implementation for every runtime (the
//! Job API, [`AsyncSession`](crate::AsyncSession), the supervisor's test probe); each
//! brings only how it loads and how it applies a checkpoint.
//!
//! Protocol (docs/PROTOCOL.md, "Agreed restore"):
//! 1. Rank 0 lists the committed checkpoints that pass a cheap check (COMMIT and
//!    manifests decode, chunk files present with their sizes; no data read), newest first,
//!    and broadcasts the newest as the plan.
//! 2. Every rank *loads* its share of it ([`RestoreAgreement::run`]'s `load`), which reads
//!    and verifies every chunk it needs (the data is read once) and changes nothing.
//! 3. The ranks exchange their outcomes. Damage anywhere ([`classify`]: a digest, decoder
//!    or version check failed, a file is missing): all fall back together to the next
//!    older candidate, rank 0 logging what was skipped. Any other error (I/O, which is no
//!    evidence that the checkpoint is bad; a refusal of the caller's): every rank fails.
//! 4. Only when every rank loaded does each *apply* it (`apply`: build the value, restore
//!    it, put files back), and the ranks exchange that outcome too: one failure fails all.
//!
//! Running out of candidates after damage, or finding only damaged ones, is never a
//! silent fresh start: [`OnAllDamaged`] decides (refuse by default). A repository without
//! any committed checkpoint is an ordinary fresh start (`apply(None)`).

use crate::damage::{announce_all_damaged, OnAllDamaged};
use lazarus_format::{CheckpointId, Rank};
use lazarus_net::{Comm, NetError};
use lazarus_store::{CheckpointSummary, Damage, RepoReader, StoreError, StoreErrorKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::Path;

/// Where a candidate's copy lives (issue #15, docs/LEVELS.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// The durable repository (L4): the one every runtime restores from.
    #[default]
    Durable,
    /// A fast level (1: node-local, 2: partner copy); the caller's `load` knows how to
    /// read it, and `id` is then the job-wide checkpoint number, not a repository id.
    Fast {
        /// the slowest level any rank must read from
        level: u8,
    },
}

/// A committed checkpoint chosen by rank 0, as every rank learns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The checkpoint.
    pub id: CheckpointId,
    /// The step recorded in its COMMIT.
    pub step: u64,
    /// The number of ranks that wrote it.
    pub world: u32,
    /// The application metadata of its COMMIT (`lazarus.*` keys included).
    pub app: BTreeMap<String, String>,
    /// Which level holds it.
    pub source: Source,
}

impl From<&CheckpointSummary> for Candidate {
    fn from(c: &CheckpointSummary) -> Self {
        Candidate {
            id: c.id,
            step: c.step,
            world: c.world_size,
            app: c.app.clone(),
            source: Source::Durable,
        }
    }
}

/// The order in which rank 0 tries candidates when a job has fast levels: newest
/// job-wide checkpoint number ([`crate::meta::LEVEL_SEQ_KEY`]; a durable COMMIT without
/// it counts as 0) first, and at equal numbers the fast copy before the durable one (it
/// is cheaper to read and holds the same state). Within each input the given order
/// (newest first) is kept.
pub fn merge_candidates(fast: Vec<Candidate>, durable: Vec<Candidate>) -> Vec<Candidate> {
    if fast.is_empty() {
        return durable;
    }
    let seq = |c: &Candidate| match c.source {
        Source::Fast { .. } => c.id.0,
        Source::Durable => crate::meta::level_seq(&c.app).unwrap_or(0),
    };
    let mut all: Vec<Candidate> = fast.into_iter().chain(durable).collect();
    // Stable: fast candidates come first in `all`, so they win ties.
    all.sort_by_key(|c| std::cmp::Reverse(seq(c)));
    all
}

/// Why a rank could not load a candidate.
#[derive(Debug)]
pub enum LoadError<E> {
    /// The checkpoint is unusable: every rank falls back to an older one.
    Damaged(Damage),
    /// Stop: this rank's error; every other rank fails too.
    Fatal(E),
}

impl<E> LoadError<E> {
    /// A store error met while loading checkpoint `id`: damage (see [`classify`]) or, for
    /// anything else, `fatal(e)`.
    pub fn from_store(
        id: CheckpointId,
        e: StoreError,
        fatal: impl FnOnce(StoreError) -> E,
    ) -> Self {
        match classify(id, e) {
            Ok(d) => LoadError::Damaged(d),
            Err(e) => LoadError::Fatal(fatal(e)),
        }
    }
}

/// The one classification of a store error met while restoring checkpoint `id`: damage
/// (`Corrupt`, `Missing`, `VersionUnsupported`: the bytes are bad or absent, and an older
/// checkpoint may still be good) as `Ok(Damage)`, or the error back for anything else
/// (I/O, a held lock, a full disk: no evidence against the checkpoint, so falling back
/// would silently lose work; the job fails and a supervisor retries).
pub fn classify(id: CheckpointId, e: StoreError) -> Result<Damage, StoreError> {
    match e.kind() {
        StoreErrorKind::Corrupt | StoreErrorKind::Missing | StoreErrorKind::VersionUnsupported => {
            Ok(Damage {
                checkpoint: id,
                path: e.path().map(Path::to_path_buf).unwrap_or_default(),
                kind: e.kind().to_string(),
                detail: e.to_string(),
            })
        }
        _ => Err(e),
    }
}

/// `checkpoint 3: corrupt (<file>): <message>`. `detail` already starts with the kind and
/// the file (it is the store error's text), so they are not repeated.
pub fn describe_damage(d: &Damage) -> String {
    if d.detail.starts_with(d.kind.as_str()) {
        format!("checkpoint {}: {}", d.checkpoint.0, d.detail)
    } else {
        format!("checkpoint {}: {}: {}", d.checkpoint.0, d.kind, d.detail)
    }
}

/// Logs a skipped damaged checkpoint (rank 0).
pub fn warn_damage(d: &Damage) {
    // The description names the checkpoint and the file already: no structured fields
    // repeating them on the same line.
    tracing::warn!("skipping damaged {}", describe_damage(d));
}

/// How the agreed restore ended on every rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// Nothing restored. `damaged` lists the committed checkpoints given up as damaged
    /// (newest first; non-empty only under [`OnAllDamaged::StartFresh`]).
    Fresh {
        /// the damaged checkpoints skipped
        damaged: Vec<Damage>,
    },
    /// `from` was restored; `skipped` lists the newer committed checkpoints found damaged.
    Restored {
        /// the checkpoint restored
        from: Candidate,
        /// newer damaged checkpoints, newest first
        skipped: Vec<Damage>,
    },
}

/// In which phase another rank failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Loading (reading, verifying, redistributing) the checkpoint.
    Load,
    /// Applying it (building and restoring the value) or starting fresh.
    Apply,
}

/// Why the agreed restore failed on this rank.
#[derive(Debug)]
pub enum AgreeError<E> {
    /// This rank's own error, from `load` or `apply`.
    Own(E),
    /// Another rank failed (its own error is reported there); no rank goes on.
    Peer {
        /// the first failed rank
        rank: Rank,
        /// the checkpoint being restored (`None`: a fresh start)
        checkpoint: Option<CheckpointId>,
        /// its error
        message: String,
        /// when
        phase: Phase,
    },
    /// Rank 0 (this rank) could not list the committed checkpoints.
    Listing(StoreError),
    /// Rank 0 could not list the committed checkpoints; its message.
    Rank0(String),
    /// Every committed checkpoint is damaged and [`OnAllDamaged::Refuse`] applies (rank
    /// 0 said so on stderr).
    AllDamaged(Vec<Damage>),
    /// Talking to the other ranks failed.
    Net(NetError),
}

impl<E> From<NetError> for AgreeError<E> {
    fn from(e: NetError) -> Self {
        AgreeError::Net(e)
    }
}

/// Rank 0's decision, broadcast to every rank. `skipped` carries the damage rank 0 found
/// so every rank reports the same.
#[derive(Serialize, Deserialize)]
enum Plan {
    From {
        candidate: Candidate,
        skipped: Vec<Damage>,
    },
    Fresh {
        skipped: Vec<Damage>,
    },
    AllDamaged {
        skipped: Vec<Damage>,
    },
    Failed(String),
}

/// One rank's outcome of a phase, exchanged with every rank.
#[derive(Serialize, Deserialize)]
enum Attempt {
    Ok,
    Damaged(Damage),
    Fatal(String),
}

/// The first rank (in rank order) whose attempt is fatal.
fn first_fatal(all: &[Attempt]) -> Option<(Rank, String)> {
    all.iter().enumerate().find_map(|(r, a)| match a {
        Attempt::Fatal(m) => Some((Rank(r as u32), m.clone())),
        _ => None,
    })
}

/// The agreed restore of one rank: its communicator, the repository and the policy for
/// a repository whose committed checkpoints are all damaged (rank 0's applies to all).
#[derive(Clone, Copy, Debug)]
pub struct RestoreAgreement<'a> {
    /// This rank's communicator; every rank of it must run the agreement.
    pub comm: &'a Comm,
    /// The repository every rank reads.
    pub repo: &'a Path,
    /// What to do when every committed checkpoint is damaged.
    pub on_all_damaged: OnAllDamaged,
}

impl RestoreAgreement<'_> {
    /// Runs the agreed restore (module docs). `load` is called on every rank for each
    /// candidate until all load it without damage; it must change nothing. `apply` is
    /// called exactly once on every rank, after every rank loaded: with the candidate and
    /// what `load` returned, or with `None` for a fresh start. Returns `apply`'s value and
    /// how the job starts, identical on every rank, or the reason every rank fails.
    pub fn run<L, T, E: Display>(
        &self,
        load: impl FnMut(&Candidate) -> Result<L, LoadError<E>>,
        apply: impl FnOnce(Option<(&Candidate, L)>) -> Result<T, E>,
    ) -> Result<(T, Start), AgreeError<E>> {
        self.run_with(Vec::new(), Vec::new(), load, apply)
    }

    /// [`RestoreAgreement::run`] with candidates of fast levels (issue #15), which rank 0
    /// tries in the order of [`merge_candidates`] with the durable repository's, and the
    /// fast-level checkpoints known complete that no level can rebuild (`lost`): they
    /// count as damage found before the first candidate, so a restore that then runs
    /// out of candidates is refused under [`OnAllDamaged::Refuse`] instead of starting
    /// fresh, and one that restores an older checkpoint reports them skipped. `fast` and
    /// `lost` matter on rank 0 only (every rank may pass the same lists).
    pub fn run_with<L, T, E: Display>(
        &self,
        fast: Vec<Candidate>,
        lost: Vec<Damage>,
        mut load: impl FnMut(&Candidate) -> Result<L, LoadError<E>>,
        apply: impl FnOnce(Option<(&Candidate, L)>) -> Result<T, E>,
    ) -> Result<(T, Start), AgreeError<E>> {
        let comm = self.comm;
        let me = comm.rank();
        // Rank 0 only: the candidates, newest first, and the damage found so far.
        let mut candidates = std::collections::VecDeque::new();
        let mut skipped: Vec<Damage> = Vec::new();
        if me == Rank(0) {
            let listed = RepoReader::open(self.repo).and_then(|r| r.newest_committed_candidates());
            match listed {
                Ok((ok, damaged)) => {
                    lost.iter().chain(&damaged).for_each(warn_damage);
                    let durable = ok.iter().map(Candidate::from).collect();
                    candidates = merge_candidates(fast, durable).into();
                    skipped = lost.into_iter().chain(damaged).collect();
                }
                Err(e) => {
                    // Tell the others before failing, so they do not wait for us.
                    let mut p = Plan::Failed(e.to_string());
                    comm.broadcast(Rank(0), &mut p)?;
                    return Err(AgreeError::Listing(e));
                }
            }
        }
        loop {
            let mut plan = match candidates.pop_front() {
                Some(candidate) => Plan::From {
                    candidate,
                    skipped: skipped.clone(),
                },
                None if !skipped.is_empty() && self.on_all_damaged == OnAllDamaged::Refuse => {
                    Plan::AllDamaged {
                        skipped: skipped.clone(),
                    }
                }
                None => Plan::Fresh {
                    skipped: skipped.clone(),
                },
            };
            comm.broadcast(Rank(0), &mut plan)?;
            let (candidate, skipped_now) = match plan {
                Plan::Failed(why) => return Err(AgreeError::Rank0(why)),
                Plan::AllDamaged { skipped } => {
                    if me == Rank(0) {
                        announce_all_damaged(self.repo, &skipped, OnAllDamaged::Refuse);
                    }
                    return Err(AgreeError::AllDamaged(skipped));
                }
                Plan::Fresh { skipped } => {
                    if me == Rank(0) && !skipped.is_empty() {
                        announce_all_damaged(self.repo, &skipped, OnAllDamaged::StartFresh);
                    }
                    let value = self.agree_apply(None, apply(None))?;
                    return Ok((value, Start::Fresh { damaged: skipped }));
                }
                Plan::From { candidate, skipped } => (candidate, skipped),
            };
            let loaded = load(&candidate);
            let mine = match &loaded {
                Ok(_) => Attempt::Ok,
                Err(LoadError::Damaged(d)) => Attempt::Damaged(d.clone()),
                Err(LoadError::Fatal(e)) => Attempt::Fatal(e.to_string()),
            };
            let all = comm.allgather(&mine)?;
            let loaded = match loaded {
                Err(LoadError::Fatal(e)) => return Err(AgreeError::Own(e)),
                other => other,
            };
            if let Some((rank, message)) = first_fatal(&all) {
                return Err(AgreeError::Peer {
                    rank,
                    checkpoint: Some(candidate.id),
                    message,
                    phase: Phase::Load,
                });
            }
            let damage = all.into_iter().find_map(|a| match a {
                Attempt::Damaged(d) => Some(d),
                _ => None,
            });
            if let Some(d) = damage {
                // One entry per checkpoint: the first rank's finding.
                if me == Rank(0) {
                    warn_damage(&d);
                    skipped.push(d);
                }
                continue;
            }
            let Ok(loaded) = loaded else {
                // Unreachable: every rank reported Ok, this one included.
                return Err(AgreeError::Rank0("restore outcome lost".into()));
            };
            let value = self.agree_apply(Some(candidate.id), apply(Some((&candidate, loaded))))?;
            return Ok((
                value,
                Start::Restored {
                    from: candidate,
                    skipped: skipped_now,
                },
            ));
        }
    }

    /// Every rank learns whether every rank applied: one failure fails all.
    fn agree_apply<T, E: Display>(
        &self,
        checkpoint: Option<CheckpointId>,
        applied: Result<T, E>,
    ) -> Result<T, AgreeError<E>> {
        let mine = match &applied {
            Ok(_) => Attempt::Ok,
            Err(e) => Attempt::Fatal(e.to_string()),
        };
        let all = self.comm.allgather(&mine)?;
        let value = applied.map_err(AgreeError::Own)?;
        match first_fatal(&all) {
            Some((rank, message)) => Err(AgreeError::Peer {
                rank,
                checkpoint,
                message,
                phase: Phase::Apply,
            }),
            None => Ok(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damage_text_names_the_kind_once() {
        let e = StoreError::new(StoreErrorKind::Corrupt, Some(Path::new("/r/c/0001")), "bad");
        let d = classify(CheckpointId(3), e).unwrap();
        assert_eq!(
            describe_damage(&d),
            "checkpoint 3: corrupt (/r/c/0001): bad"
        );
        let io = StoreError::new(StoreErrorKind::Io, None, "EIO");
        assert!(classify(CheckpointId(3), io).is_err(), "I/O is not damage");
    }

    fn cand(id: u64, seq: Option<u64>, source: Source) -> Candidate {
        let mut app = BTreeMap::new();
        if let Some(s) = seq {
            app.insert(crate::meta::LEVEL_SEQ_KEY.to_string(), s.to_string());
        }
        Candidate {
            id: CheckpointId(id),
            step: 0,
            world: 1,
            app,
            source,
        }
    }

    #[test]
    fn fast_copies_win_ties_and_newer_durable_checkpoints_win_over_older_fast_ones() {
        let fast = Source::Fast { level: 1 };
        let d = Source::Durable;
        // Durable ids 7 (seq 20), 6 (seq 10), 5 (no seq); fast seqs 25, 20, 19.
        let merged = merge_candidates(
            vec![
                cand(25, None, fast),
                cand(20, None, fast),
                cand(19, None, fast),
            ],
            vec![cand(7, Some(20), d), cand(6, Some(10), d), cand(5, None, d)],
        );
        let order: Vec<(u64, Source)> = merged.iter().map(|c| (c.id.0, c.source)).collect();
        assert_eq!(
            order,
            vec![(25, fast), (20, fast), (7, d), (19, fast), (6, d), (5, d)]
        );
        // Without fast candidates the durable order is untouched.
        let only = merge_candidates(Vec::new(), vec![cand(2, None, d), cand(9, Some(1), d)]);
        assert_eq!(only[0].id, CheckpointId(2));
    }
}

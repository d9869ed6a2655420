//! Aligned checkpoints: a two-phase commit (Gray 1978; Bernstein, Hadzilacos & Goodman
//! 1987, ch. 7) between one [`Coordinator`] and `world` [`Participant`]s.
//!
//! Phase 1: the coordinator sends `Prepare(round)`; each participant writes its part and
//! votes `Durable(receipt)` or `Failed(reason)`. Phase 2: with all `world` receipts the
//! coordinator asks the runtime to write COMMIT and, only once that write is reported
//! durable, broadcasts `Commit`; any failure, a dead rank, or the round deadline makes it
//! broadcast `Abort` and ask for the leftovers to be collected. Both machines are pure:
//! inputs are `step`/`tick`/local events, outputs are action lists executed in order.
//! Time is a `Duration` since any fixed origin chosen by the runtime (monotonic).

use crate::error::{check_rank, ProtocolError};
use lazarus_format::{CheckpointId, Epoch, Rank};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// One commit round: the epoch it snapshots and the repository id its parts are written to.
/// Both strictly increase from round to round within one coordinator incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RoundId {
    /// the checkpoint epoch (stamped on messages by the net layer)
    pub epoch: Epoch,
    /// the checkpoint's id in the repository
    pub ckpt: CheckpointId,
}

/// How a round ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// COMMIT was written durably; the checkpoint is usable.
    Commit,
    /// The checkpoint is never used; its parts are garbage.
    Abort,
}

/// The coordinator's final word on a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Decision {
    /// the round decided
    pub round: RoundId,
    /// commit or abort
    pub outcome: Outcome,
}

/// Messages from the coordinator to a participant.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ToParticipant {
    /// Write your part of `round` and vote. `previous` repeats the decision of the round
    /// before, so a participant that missed that decision still learns it.
    Prepare {
        /// the round to write
        round: RoundId,
        /// the decision of the previous round of this coordinator, if any
        previous: Option<Decision>,
    },
    /// The outcome of a round.
    Decided(Decision),
}

/// A participant's vote on a round.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Vote<R> {
    /// My part is durable; `R` is the store's receipt (opaque here), listed in COMMIT.
    Durable(R),
    /// I could not write my part; the round must abort.
    Failed(String),
}

/// The message from a participant to the coordinator.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VoteMsg<R> {
    /// the round voted on
    pub round: RoundId,
    /// the voter
    pub from: Rank,
    /// the vote
    pub vote: Vote<R>,
}

/// Time bounds. Every phase of a round that waits on a peer has one, so no round can hang
/// (opening a runtime waits like a collective, see `AlignedRuntime::new`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Timeouts {
    /// Coordinator: a round still missing votes this long after it started is aborted.
    pub round: Duration,
    /// Both sides: unanswered messages are re-sent this often (covers message loss).
    pub retry: Duration,
    /// Participant: after voting, give up waiting for the decision after this long and
    /// report the outcome as unknown. Must exceed `round` plus the COMMIT write time.
    pub decision: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            round: Duration::from_secs(30),
            retry: Duration::from_millis(200),
            decision: Duration::from_secs(90),
        }
    }
}

/// Why a round was aborted.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AbortReason {
    /// A participant voted `Failed`.
    Failed {
        /// who failed
        rank: Rank,
        /// its reason
        reason: String,
    },
    /// The round deadline passed; these ranks had not voted.
    Timeout {
        /// ranks whose vote never arrived
        missing: Vec<Rank>,
    },
    /// The runtime reported that a rank died.
    RankDied {
        /// the dead rank
        rank: Rank,
    },
    /// Writing COMMIT failed (and the store guarantees it is not visible).
    CommitWrite(String),
    /// The coordinator's own rank gave up on the round (its part write or its network
    /// failed): see [`Coordinator::abort`].
    Local(String),
}

impl AbortReason {
    /// Whether the ranks may go on after a round aborted for `reason` and try the next one
    /// (`None`: the reason is unknown here). The one rule, for rank 0 (which knows the
    /// reason) and every other rank (which never does: the decision it learns, from the
    /// `Decided` message, a later `Prepare` or the repository, carries none).
    ///
    /// The ranks of one job must make the same decision, or one goes on while another
    /// stops and the survivors wait out a round that never starts. Since only rank 0 knows
    /// the reason, the answer cannot depend on it: every abort is retryable, the same as
    /// an unknown reason. A cause that does forbid going on is not the abort's to report:
    /// a dead rank or a broken network is the non-retryable net error of the rank that
    /// meets it (rank 0 reports the peer it saw die, every rank the next communication
    /// with a dead one), so a full disk (`Failed`), a slow rank (`Timeout`) or a failed
    /// COMMIT write may pass at the next round on every rank alike.
    ///
    /// The match is exhaustive on purpose: a new reason must be given an answer here, and
    /// that answer must be the one of `None`.
    pub fn retryable(reason: Option<&AbortReason>) -> bool {
        match reason {
            None => true,
            Some(
                AbortReason::Failed { .. }
                | AbortReason::Timeout { .. }
                | AbortReason::RankDied { .. }
                | AbortReason::CommitWrite(_)
                | AbortReason::Local(_),
            ) => true,
        }
    }
}

/// What the coordinator asks its runtime to do, in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CoordinatorAction<R> {
    /// Send `msg` to participant `to` (possibly the local rank).
    Send {
        /// destination
        to: Rank,
        /// the message
        msg: ToParticipant,
    },
    /// Write COMMIT for `round`, listing every rank's receipt (sorted by rank), then call
    /// [`Coordinator::commit_written`]. Nothing is broadcast before that call.
    WriteCommit {
        /// the round to commit
        round: RoundId,
        /// one receipt per rank, `0..world` in order
        receipts: Vec<(Rank, R)>,
    },
    /// Delete whatever parts of `round` exist (the store's abort); the round is never used.
    CollectLeftovers {
        /// the aborted round
        round: RoundId,
    },
    /// The round is decided (for logging and for the caller of `checkpoint()`).
    Decided {
        /// the decision
        decision: Decision,
        /// why it aborted, for an abort
        reason: Option<AbortReason>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum CoordPhase {
    Collecting,
    Committing,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ActiveRound<R> {
    id: RoundId,
    deadline: Duration,
    next_retry: Duration,
    receipts: BTreeMap<Rank, R>,
    phase: CoordPhase,
}

/// The coordinator of aligned rounds (rank 0's role, or a separate process).
///
/// Guarantees: `WriteCommit` is emitted only with a `Durable` receipt from every rank of
/// the world, at most once per round; `Commit` is broadcast only after
/// [`commit_written`](Self::commit_written) reported success; every round started is
/// decided exactly once, by its deadline at the latest while collecting votes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Coordinator<R> {
    world: u32,
    timeouts: Timeouts,
    active: Option<ActiveRound<R>>,
    last: Option<Decision>,
}

impl<R: Clone> Coordinator<R> {
    /// A coordinator for `world` ranks (`world >= 1`).
    pub fn new(world: u32, timeouts: Timeouts) -> Result<Self, ProtocolError> {
        if world == 0 {
            return Err(ProtocolError::Misuse("a world has at least one rank"));
        }
        Ok(Coordinator {
            world,
            timeouts,
            active: None,
            last: None,
        })
    }

    /// The round in progress, if any.
    pub fn active_round(&self) -> Option<RoundId> {
        self.active.as_ref().map(|a| a.id)
    }

    /// The most recent decision.
    pub fn last_decision(&self) -> Option<Decision> {
        self.last
    }

    /// Starts `round` at time `now`: sends `Prepare` to every rank. Fails if a round is in
    /// progress or if the epoch or checkpoint id does not increase.
    pub fn start_round(
        &mut self,
        round: RoundId,
        now: Duration,
    ) -> Result<Vec<CoordinatorAction<R>>, ProtocolError> {
        if self.active.is_some() {
            return Err(ProtocolError::Misuse("a round is already in progress"));
        }
        if let Some(last) = self.last {
            if round.epoch <= last.round.epoch || round.ckpt <= last.round.ckpt {
                return Err(ProtocolError::Misuse(
                    "epoch and checkpoint id must increase from round to round",
                ));
            }
        }
        self.active = Some(ActiveRound {
            id: round,
            deadline: now + self.timeouts.round,
            next_retry: now + self.timeouts.retry,
            receipts: BTreeMap::new(),
            phase: CoordPhase::Collecting,
        });
        let previous = self.last;
        Ok((0..self.world)
            .map(|r| CoordinatorAction::Send {
                to: Rank(r),
                msg: ToParticipant::Prepare { round, previous },
            })
            .collect())
    }

    /// Handles a vote. Late and duplicate votes are ignored; a vote for the last decided
    /// round is answered with that decision (the voter missed it).
    pub fn step(
        &mut self,
        msg: VoteMsg<R>,
        _now: Duration,
    ) -> Result<Vec<CoordinatorAction<R>>, ProtocolError> {
        check_rank(msg.from, self.world)?;
        if let Some(active) = self.active.as_mut() {
            if active.id == msg.round {
                if active.phase != CoordPhase::Collecting {
                    return Ok(Vec::new());
                }
                return Ok(match msg.vote {
                    Vote::Durable(receipt) => {
                        active.receipts.entry(msg.from).or_insert(receipt);
                        if active.receipts.len() == self.world as usize {
                            active.phase = CoordPhase::Committing;
                            let receipts = active
                                .receipts
                                .iter()
                                .map(|(r, x)| (*r, x.clone()))
                                .collect();
                            vec![CoordinatorAction::WriteCommit {
                                round: active.id,
                                receipts,
                            }]
                        } else {
                            Vec::new()
                        }
                    }
                    Vote::Failed(reason) => self.decide(
                        Outcome::Abort,
                        Some(AbortReason::Failed {
                            rank: msg.from,
                            reason,
                        }),
                    ),
                });
            }
            if active.id.epoch == msg.round.epoch {
                return Err(ProtocolError::ConflictingRound {
                    epoch: msg.round.epoch,
                    known: active.id.ckpt,
                    got: msg.round.ckpt,
                    rank: msg.from,
                });
            }
        }
        if let Some(last) = self.last {
            if last.round == msg.round {
                return Ok(vec![CoordinatorAction::Send {
                    to: msg.from,
                    msg: ToParticipant::Decided(last),
                }]);
            }
        }
        Ok(Vec::new())
    }

    /// Reports the result of a `WriteCommit`. `Err` must mean COMMIT is not visible.
    pub fn commit_written(
        &mut self,
        round: RoundId,
        result: Result<(), String>,
    ) -> Result<Vec<CoordinatorAction<R>>, ProtocolError> {
        match &self.active {
            Some(a) if a.id == round && a.phase == CoordPhase::Committing => {}
            _ => {
                return Err(ProtocolError::Misuse(
                    "commit_written without a WriteCommit",
                ))
            }
        }
        Ok(match result {
            Ok(()) => self.decide(Outcome::Commit, None),
            Err(e) => self.decide(Outcome::Abort, Some(AbortReason::CommitWrite(e))),
        })
    }

    /// The coordinator's runtime cannot go on with the round it is collecting votes for
    /// (e.g. its own part failed, or its network broke without naming a peer): the round
    /// aborts now, and every rank is told, instead of waiting for the deadline. A round
    /// whose COMMIT is being written is not touched (only the write's result decides).
    pub fn abort(&mut self, reason: String) -> Vec<CoordinatorAction<R>> {
        match &self.active {
            Some(a) if a.phase == CoordPhase::Collecting => {
                self.decide(Outcome::Abort, Some(AbortReason::Local(reason)))
            }
            _ => Vec::new(),
        }
    }

    /// Reports that the `WriteCommit` of `round` ended with COMMIT visible but not known
    /// durable. The round ends with no decision announced (neither outcome can be promised);
    /// participants resolve it from the repository (`OutcomeUnknown`) once their decision
    /// deadline passes or rank 0 goes away, and a later round may start.
    pub fn commit_unknown(&mut self, round: RoundId) -> Result<(), ProtocolError> {
        match &self.active {
            Some(a) if a.id == round && a.phase == CoordPhase::Committing => {
                self.active = None;
                Ok(())
            }
            _ => Err(ProtocolError::Misuse(
                "commit_unknown without a WriteCommit",
            )),
        }
    }

    /// The runtime saw `rank` die: a round still collecting votes aborts at once. (Once
    /// COMMIT is being written the votes are all in, so the round's fate is the write's.)
    pub fn rank_failed(&mut self, rank: Rank) -> Result<Vec<CoordinatorAction<R>>, ProtocolError> {
        check_rank(rank, self.world)?;
        match &self.active {
            Some(a) if a.phase == CoordPhase::Collecting => {
                Ok(self.decide(Outcome::Abort, Some(AbortReason::RankDied { rank })))
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Advances time: re-sends `Prepare` to silent ranks every `retry`, aborts at the
    /// deadline. There is no deadline while COMMIT is being written: the write may already
    /// have landed, so only its reported result may decide.
    pub fn tick(&mut self, now: Duration) -> Vec<CoordinatorAction<R>> {
        let Some(active) = self.active.as_mut() else {
            return Vec::new();
        };
        if active.phase != CoordPhase::Collecting {
            return Vec::new();
        }
        let missing: Vec<Rank> = (0..self.world)
            .map(Rank)
            .filter(|r| !active.receipts.contains_key(r))
            .collect();
        if now >= active.deadline {
            return self.decide(Outcome::Abort, Some(AbortReason::Timeout { missing }));
        }
        if now < active.next_retry {
            return Vec::new();
        }
        active.next_retry = now + self.timeouts.retry;
        let round = active.id;
        let previous = self.last;
        missing
            .into_iter()
            .map(|to| CoordinatorAction::Send {
                to,
                msg: ToParticipant::Prepare { round, previous },
            })
            .collect()
    }

    fn decide(
        &mut self,
        outcome: Outcome,
        reason: Option<AbortReason>,
    ) -> Vec<CoordinatorAction<R>> {
        let Some(active) = self.active.take() else {
            return Vec::new();
        };
        let decision = Decision {
            round: active.id,
            outcome,
        };
        self.last = Some(decision);
        let mut out: Vec<CoordinatorAction<R>> = Vec::with_capacity(self.world as usize + 2);
        if outcome == Outcome::Abort {
            out.push(CoordinatorAction::CollectLeftovers { round: active.id });
        }
        out.extend((0..self.world).map(|r| CoordinatorAction::Send {
            to: Rank(r),
            msg: ToParticipant::Decided(decision),
        }));
        out.push(CoordinatorAction::Decided { decision, reason });
        out
    }
}

/// What a participant asks its runtime to do, in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ParticipantAction<R> {
    /// Write this rank's part of `round` (at the program's checkpoint call), then call
    /// [`Participant::part_written`].
    WritePart {
        /// the round
        round: RoundId,
    },
    /// Send this vote to the coordinator.
    Send(VoteMsg<R>),
    /// The coordinator's decision on the round this rank took part in.
    Learned(Decision),
    /// This rank's part of an aborted round exists (it may have landed after the
    /// coordinator collected the leftovers): delete it.
    DiscardPart {
        /// the aborted round
        round: RoundId,
    },
    /// No decision arrived in time (or a newer round superseded this one without saying).
    /// The repository is the truth: the round committed iff its COMMIT exists.
    OutcomeUnknown {
        /// the round
        round: RoundId,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum PartPhase<R> {
    Idle,
    Writing {
        round: RoundId,
    },
    Voted {
        round: RoundId,
        vote: Vote<R>,
        next_retry: Duration,
        deadline: Duration,
    },
    Done {
        decision: Decision,
        vote: Option<Vote<R>>,
    },
}

/// One rank's side of the aligned round.
///
/// Guarantees: a part is written at most once per round; a vote, once cast, never changes;
/// every vote cast leads to `Learned` or `OutcomeUnknown` within `Timeouts::decision`; an
/// aborted round's part is never left behind by this rank (`DiscardPart`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Participant<R> {
    me: Rank,
    timeouts: Timeouts,
    highest: Option<RoundId>,
    phase: PartPhase<R>,
}

impl<R: Clone> Participant<R> {
    /// The participant for rank `me`.
    pub fn new(me: Rank, timeouts: Timeouts) -> Self {
        Participant {
            me,
            timeouts,
            highest: None,
            phase: PartPhase::Idle,
        }
    }

    /// The newest round this rank has been asked to write.
    pub fn current_round(&self) -> Option<RoundId> {
        self.highest
    }

    /// The decision this rank knows for its current round, if any.
    pub fn decision(&self) -> Option<Decision> {
        match &self.phase {
            PartPhase::Done { decision, .. } => Some(*decision),
            _ => None,
        }
    }

    /// Handles a message from the coordinator.
    pub fn step(
        &mut self,
        msg: ToParticipant,
        now: Duration,
    ) -> Result<Vec<ParticipantAction<R>>, ProtocolError> {
        let mut out = Vec::new();
        match msg {
            ToParticipant::Decided(d) => self.learn(d, &mut out),
            ToParticipant::Prepare { round, previous } => {
                if let Some(prev) = previous {
                    self.learn(prev, &mut out);
                }
                match self.highest {
                    Some(h) if round.epoch < h.epoch => {}
                    Some(h) if round.epoch == h.epoch => {
                        if round.ckpt != h.ckpt {
                            return Err(ProtocolError::ConflictingRound {
                                epoch: round.epoch,
                                known: h.ckpt,
                                got: round.ckpt,
                                rank: self.me,
                            });
                        }
                        // The coordinator has not heard our vote: say it again.
                        let vote = match &mut self.phase {
                            PartPhase::Voted {
                                vote, next_retry, ..
                            } => {
                                *next_retry = now + self.timeouts.retry;
                                Some(vote.clone())
                            }
                            PartPhase::Done { vote, .. } => vote.clone(),
                            _ => None,
                        };
                        if let Some(vote) = vote {
                            out.push(self.vote_msg(round, vote));
                        }
                    }
                    _ => {
                        if let PartPhase::Writing { round: old }
                        | PartPhase::Voted { round: old, .. } = &self.phase
                        {
                            out.push(ParticipantAction::OutcomeUnknown { round: *old });
                        }
                        self.highest = Some(round);
                        self.phase = PartPhase::Writing { round };
                        out.push(ParticipantAction::WritePart { round });
                    }
                }
            }
        }
        Ok(out)
    }

    /// Reports the result of a `WritePart`: `Ok(receipt)` once the part is durable.
    pub fn part_written(
        &mut self,
        round: RoundId,
        result: Result<R, String>,
        now: Duration,
    ) -> Vec<ParticipantAction<R>> {
        match &self.phase {
            PartPhase::Writing { round: r } if *r == round => {
                let vote = match result {
                    Ok(receipt) => Vote::Durable(receipt),
                    Err(e) => Vote::Failed(e),
                };
                self.phase = PartPhase::Voted {
                    round,
                    vote: vote.clone(),
                    next_retry: now + self.timeouts.retry,
                    deadline: now + self.timeouts.decision,
                };
                vec![self.vote_msg(round, vote)]
            }
            // Aborted while we were writing: our part is garbage as soon as it exists.
            PartPhase::Done { decision, .. } if decision.round == round && result.is_ok() => {
                vec![ParticipantAction::DiscardPart { round }]
            }
            _ => Vec::new(),
        }
    }

    /// Advances time: re-sends the vote every `retry` until the decision arrives, and
    /// gives up with `OutcomeUnknown` at the decision deadline.
    pub fn tick(&mut self, now: Duration) -> Vec<ParticipantAction<R>> {
        let PartPhase::Voted {
            round,
            vote,
            next_retry,
            deadline,
        } = &mut self.phase
        else {
            return Vec::new();
        };
        let round = *round;
        if now >= *deadline {
            self.phase = PartPhase::Idle;
            return vec![ParticipantAction::OutcomeUnknown { round }];
        }
        if now < *next_retry {
            return Vec::new();
        }
        *next_retry = now + self.timeouts.retry;
        let vote = vote.clone();
        vec![self.vote_msg(round, vote)]
    }

    fn vote_msg(&self, round: RoundId, vote: Vote<R>) -> ParticipantAction<R> {
        ParticipantAction::Send(VoteMsg {
            round,
            from: self.me,
            vote,
        })
    }

    fn learn(&mut self, d: Decision, out: &mut Vec<ParticipantAction<R>>) {
        let (round, vote) = match &self.phase {
            PartPhase::Writing { round } => (*round, None),
            PartPhase::Voted { round, vote, .. } => (*round, Some(vote.clone())),
            _ => return,
        };
        if round != d.round {
            return;
        }
        // The coordinator's CollectLeftovers may have run before our part landed.
        let discard = d.outcome == Outcome::Abort && matches!(vote, Some(Vote::Durable(_)));
        self.phase = PartPhase::Done { decision: d, vote };
        out.push(ParticipantAction::Learned(d));
        if discard {
            out.push(ParticipantAction::DiscardPart { round });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type C = Coordinator<u64>;
    type P = Participant<u64>;

    fn rid(e: u64) -> RoundId {
        RoundId {
            epoch: Epoch(e),
            ckpt: CheckpointId(e),
        }
    }

    fn ms(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    fn t() -> Timeouts {
        Timeouts {
            round: ms(1000),
            retry: ms(100),
            decision: ms(3000),
        }
    }

    fn durable(r: u32, e: u64) -> VoteMsg<u64> {
        VoteMsg {
            round: rid(e),
            from: Rank(r),
            vote: Vote::Durable(r as u64 * 10),
        }
    }

    #[test]
    fn commits_only_with_all_receipts_then_after_write() {
        let mut c = C::new(3, t()).unwrap();
        assert_eq!(c.start_round(rid(1), ms(0)).unwrap().len(), 3);
        assert!(c.step(durable(0, 1), ms(1)).unwrap().is_empty());
        assert!(c.step(durable(2, 1), ms(1)).unwrap().is_empty());
        assert!(
            c.step(durable(2, 1), ms(1)).unwrap().is_empty(),
            "duplicate"
        );
        let a = c.step(durable(1, 1), ms(2)).unwrap();
        assert_eq!(
            a,
            vec![CoordinatorAction::WriteCommit {
                round: rid(1),
                receipts: vec![(Rank(0), 0), (Rank(1), 10), (Rank(2), 20)]
            }]
        );
        // No deadline while COMMIT is being written.
        assert!(c.tick(ms(10_000)).is_empty());
        let a = c.commit_written(rid(1), Ok(())).unwrap();
        assert!(a.contains(&CoordinatorAction::Send {
            to: Rank(2),
            msg: ToParticipant::Decided(Decision {
                round: rid(1),
                outcome: Outcome::Commit
            })
        }));
        assert_eq!(c.active_round(), None);
    }

    #[test]
    fn failed_vote_aborts_and_collects_leftovers() {
        let mut c = C::new(2, t()).unwrap();
        c.start_round(rid(1), ms(0)).unwrap();
        let a = c
            .step(
                VoteMsg {
                    round: rid(1),
                    from: Rank(1),
                    vote: Vote::Failed("disk full".into()),
                },
                ms(1),
            )
            .unwrap();
        assert_eq!(a[0], CoordinatorAction::CollectLeftovers { round: rid(1) });
        // A late durable vote for the aborted round gets the abort decision back.
        let a = c.step(durable(0, 1), ms(2)).unwrap();
        assert_eq!(
            a,
            vec![CoordinatorAction::Send {
                to: Rank(0),
                msg: ToParticipant::Decided(Decision {
                    round: rid(1),
                    outcome: Outcome::Abort
                })
            }]
        );
        // A new round after an abort works.
        assert!(c.start_round(rid(2), ms(3)).is_ok());
    }

    #[test]
    fn deadline_aborts_naming_missing_ranks_and_retries_before() {
        let mut c = C::new(3, t()).unwrap();
        c.start_round(rid(1), ms(0)).unwrap();
        c.step(durable(1, 1), ms(1)).unwrap();
        let resend = c.tick(ms(150));
        assert_eq!(resend.len(), 2, "prepare re-sent to ranks 0 and 2 only");
        assert!(c.tick(ms(160)).is_empty(), "not before the next retry");
        let a = c.tick(ms(1000));
        assert!(a.contains(&CoordinatorAction::Decided {
            decision: Decision {
                round: rid(1),
                outcome: Outcome::Abort
            },
            reason: Some(AbortReason::Timeout {
                missing: vec![Rank(0), Rank(2)]
            })
        }));
    }

    #[test]
    fn dead_rank_aborts_collecting_round_but_not_a_commit_in_flight() {
        let mut c = C::new(2, t()).unwrap();
        c.start_round(rid(1), ms(0)).unwrap();
        let a = c.rank_failed(Rank(1)).unwrap();
        assert!(a.contains(&CoordinatorAction::Decided {
            decision: Decision {
                round: rid(1),
                outcome: Outcome::Abort
            },
            reason: Some(AbortReason::RankDied { rank: Rank(1) })
        }));
        c.start_round(rid(2), ms(1)).unwrap();
        c.step(durable(0, 2), ms(1)).unwrap();
        c.step(durable(1, 2), ms(1)).unwrap();
        // Every part is durable and COMMIT is being written: only its result decides.
        assert!(c.rank_failed(Rank(1)).unwrap().is_empty());
        let a = c.commit_written(rid(2), Err("ENOSPC".into())).unwrap();
        assert!(a.contains(&CoordinatorAction::CollectLeftovers { round: rid(2) }));
    }

    /// Review finding 4: an early exit of rank 0 decides the round (Abort, told to every
    /// rank) so nobody waits for a decision and the next round can start.
    #[test]
    fn local_abort_decides_and_frees_the_coordinator() {
        let mut c = C::new(3, t()).unwrap();
        c.start_round(rid(1), ms(0)).unwrap();
        c.step(durable(1, 1), ms(1)).unwrap();
        let a = c.abort("rank 0's part failed".into());
        assert_eq!(a[0], CoordinatorAction::CollectLeftovers { round: rid(1) });
        let told: Vec<Rank> = a
            .iter()
            .filter_map(|x| match x {
                CoordinatorAction::Send {
                    to,
                    msg: ToParticipant::Decided(d),
                } if d.outcome == Outcome::Abort => Some(*to),
                _ => None,
            })
            .collect();
        assert_eq!(told, vec![Rank(0), Rank(1), Rank(2)]);
        assert_eq!(c.active_round(), None);
        assert!(c.abort("again".into()).is_empty(), "nothing left to abort");
        c.start_round(rid(2), ms(2)).unwrap();
        for r in 0..3 {
            c.step(durable(r, 2), ms(3)).unwrap();
        }
        // While COMMIT is being written, only its result decides.
        assert!(c.abort("late".into()).is_empty());
        // COMMIT visible but not durable: no decision at all, and the next round may start.
        c.commit_unknown(rid(2)).unwrap();
        assert_eq!(c.active_round(), None);
        assert_eq!(c.last_decision().map(|d| d.round), Some(rid(1)));
        assert!(c.commit_unknown(rid(2)).is_err());
        c.start_round(rid(3), ms(4)).unwrap();
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let mut c = C::new(2, t()).unwrap();
        c.start_round(rid(1), ms(0)).unwrap();
        assert_eq!(
            c.step(durable(5, 1), ms(0)).unwrap_err().kind(),
            crate::ErrorKind::UnknownRank
        );
        let conflicting = VoteMsg {
            round: RoundId {
                epoch: Epoch(1),
                ckpt: CheckpointId(9),
            },
            from: Rank(0),
            vote: Vote::Durable(0),
        };
        assert_eq!(
            c.step(conflicting, ms(0)).unwrap_err().kind(),
            crate::ErrorKind::ConflictingRound
        );
        assert!(c.start_round(rid(2), ms(0)).is_err(), "round in progress");
        assert!(
            c.commit_written(rid(1), Ok(())).is_err(),
            "no WriteCommit yet"
        );
        assert!(C::new(0, t()).is_err());
    }

    #[test]
    fn participant_round_trip_and_stale_messages() {
        let mut p = P::new(Rank(1), t());
        let a = p
            .step(
                ToParticipant::Prepare {
                    round: rid(2),
                    previous: None,
                },
                ms(0),
            )
            .unwrap();
        assert_eq!(a, vec![ParticipantAction::WritePart { round: rid(2) }]);
        // Stale prepare (older epoch) is ignored.
        assert!(p
            .step(
                ToParticipant::Prepare {
                    round: rid(1),
                    previous: None
                },
                ms(0)
            )
            .unwrap()
            .is_empty());
        let a = p.part_written(rid(2), Ok(7), ms(5));
        assert_eq!(a.len(), 1);
        // Retry, then the decision.
        assert_eq!(p.tick(ms(105)).len(), 1);
        let d = Decision {
            round: rid(2),
            outcome: Outcome::Commit,
        };
        assert_eq!(
            p.step(ToParticipant::Decided(d), ms(110)).unwrap(),
            vec![ParticipantAction::Learned(d)]
        );
        assert!(
            p.tick(ms(10_000)).is_empty(),
            "no more retries once decided"
        );
        assert!(p
            .step(ToParticipant::Decided(d), ms(110))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn participant_discards_part_written_after_abort() {
        let mut p = P::new(Rank(0), t());
        p.step(
            ToParticipant::Prepare {
                round: rid(1),
                previous: None,
            },
            ms(0),
        )
        .unwrap();
        let d = Decision {
            round: rid(1),
            outcome: Outcome::Abort,
        };
        p.step(ToParticipant::Decided(d), ms(1)).unwrap();
        assert_eq!(
            p.part_written(rid(1), Ok(1), ms(2)),
            vec![ParticipantAction::DiscardPart { round: rid(1) }]
        );
    }

    #[test]
    fn participant_times_out_and_learns_missed_decision_from_next_prepare() {
        let mut p = P::new(Rank(0), t());
        let prep = |e, previous| ToParticipant::Prepare {
            round: rid(e),
            previous,
        };
        p.step(prep(1, None), ms(0)).unwrap();
        p.part_written(rid(1), Ok(1), ms(0));
        let d1 = Decision {
            round: rid(1),
            outcome: Outcome::Commit,
        };
        let a = p.step(prep(2, Some(d1)), ms(10)).unwrap();
        assert_eq!(
            a,
            vec![
                ParticipantAction::Learned(d1),
                ParticipantAction::WritePart { round: rid(2) }
            ]
        );
        p.part_written(rid(2), Ok(2), ms(20));
        assert_eq!(
            p.tick(ms(3020)),
            vec![ParticipantAction::OutcomeUnknown { round: rid(2) }]
        );
        assert!(p.tick(ms(9000)).is_empty());
    }
}

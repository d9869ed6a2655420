//! Exhaustive model checking (stateright) of the real state machines, not a re-statement
//! of them: every reachable interleaving of a small configuration is explored.
//!
//! - `two_phase_commit`: 1 coordinator, 2 participants, up to 2 rounds, over a network that
//!   loses and reorders messages (retries duplicate them); part writes and COMMIT writes may fail;
//!   discrete time drives retries and deadlines. Safety (2PC, Bernstein et al. 1987 §7.3):
//!   COMMIT only with every part durable; nobody learns Commit unless COMMIT exists; no
//!   two views of one round disagree; an aborted round is never committed; a round still
//!   collecting votes never outlives its deadline.
//! - `marker_protocol`: 2 ranks (3 behind `#[ignore]`) exchanging bounded transfers over
//!   FIFO channels where post-cut data may overtake a marker; one snapshot. Safety
//!   (Chandy & Lamport 1985 §3, Lai & Yang 1987): once every rank completed, the recorded
//!   state conserves the total, has no orphan receive and no lost send.

use lazarus_coord::{
    ChannelState, Coordinator, CoordinatorAction, Outcome, Participant, ParticipantAction, RoundId,
    Timeouts, ToParticipant, Unaligned, UnalignedAction, Vote, VoteMsg,
};
use lazarus_format::{CheckpointId, Epoch, Rank};
use stateright::{Checker, Model, Property};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

// ---------------------------------------------------------------- two-phase commit

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Env {
    ToRank(u32, ToParticipantKey),
    ToCoord(u32, RoundId, bool),
}

/// `ToParticipant` made orderable for a set-shaped network.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum ToParticipantKey {
    Prepare(RoundId, Option<(RoundId, bool)>),
    Decided(RoundId, bool),
}

fn key(m: &ToParticipant) -> ToParticipantKey {
    match m {
        ToParticipant::Prepare { round, previous } => ToParticipantKey::Prepare(
            *round,
            previous.map(|d| (d.round, d.outcome == Outcome::Commit)),
        ),
        ToParticipant::Decided(d) => {
            ToParticipantKey::Decided(d.round, d.outcome == Outcome::Commit)
        }
    }
}

fn unkey(k: &ToParticipantKey) -> ToParticipant {
    let dec = |round, commit: bool| lazarus_coord::Decision {
        round,
        outcome: if commit {
            Outcome::Commit
        } else {
            Outcome::Abort
        },
    };
    match k {
        ToParticipantKey::Prepare(round, previous) => ToParticipant::Prepare {
            round: *round,
            previous: previous.map(|(r, c)| dec(r, c)),
        },
        ToParticipantKey::Decided(r, c) => ToParticipant::Decided(dec(*r, *c)),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TpcState {
    clock: u64,
    coord: Coordinator<u32>,
    parts: Vec<Participant<u32>>,
    /// In flight: any may be delivered next (reordering) or dropped (loss); re-sends by
    /// the protocol's retry timers are the duplicates.
    net: BTreeSet<Env>,
    pending_write: Vec<Option<RoundId>>,
    pending_commit: Option<RoundId>,
    rounds_started: u64,
    started_at: BTreeMap<RoundId, u64>,
    durable: BTreeSet<(RoundId, u32)>,
    committed: BTreeSet<RoundId>,
    decided: BTreeMap<RoundId, Outcome>,
    learned: BTreeSet<(u32, RoundId, Outcome)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum TpcAction {
    Start,
    Deliver(Env),
    Drop(Env),
    PartWritten(u32, bool),
    CommitWritten(bool),
    Tick,
}

struct Tpc {
    world: u32,
    rounds: u64,
    max_clock: u64,
    /// Bound on messages in flight at once (bounded model checking of the network).
    max_net: usize,
}

/// One time unit is one second; the round deadline is `ROUND` units.
const ROUND: u64 = 3;

fn timeouts() -> Timeouts {
    Timeouts {
        round: Duration::from_secs(ROUND),
        retry: Duration::from_secs(2),
        decision: Duration::from_secs(ROUND + 1),
    }
}

impl TpcState {
    fn coord_actions(&mut self, acts: Vec<CoordinatorAction<u32>>) {
        for a in acts {
            match a {
                CoordinatorAction::Send { to, msg } => {
                    self.net.insert(Env::ToRank(to.0, key(&msg)));
                }
                CoordinatorAction::WriteCommit { round, receipts } => {
                    assert!(self.pending_commit.is_none());
                    // Receipts must be exactly the durable parts' receipts.
                    for (r, x) in &receipts {
                        assert_eq!(r.0, *x, "receipt of the wrong rank");
                    }
                    self.pending_commit = Some(round);
                }
                CoordinatorAction::CollectLeftovers { .. } => {}
                CoordinatorAction::Decided { decision, .. } => {
                    let prev = self.decided.insert(decision.round, decision.outcome);
                    assert!(prev.is_none(), "decided twice");
                }
            }
        }
    }

    fn part_actions(&mut self, r: u32, acts: Vec<ParticipantAction<u32>>) {
        for a in acts {
            match a {
                ParticipantAction::WritePart { round } => {
                    self.pending_write[r as usize] = Some(round)
                }
                ParticipantAction::Send(v) => {
                    let ok = matches!(v.vote, Vote::Durable(_));
                    self.net.insert(Env::ToCoord(v.from.0, v.round, ok));
                }
                ParticipantAction::Learned(d) => {
                    self.learned.insert((r, d.round, d.outcome));
                }
                ParticipantAction::DiscardPart { .. }
                | ParticipantAction::OutcomeUnknown { .. } => {}
            }
        }
    }
}

impl Model for Tpc {
    type State = TpcState;
    type Action = TpcAction;

    fn init_states(&self) -> Vec<TpcState> {
        vec![TpcState {
            clock: 0,
            coord: Coordinator::new(self.world, timeouts()).unwrap(),
            parts: (0..self.world)
                .map(|r| Participant::new(Rank(r), timeouts()))
                .collect(),
            net: BTreeSet::new(),
            pending_write: vec![None; self.world as usize],
            pending_commit: None,
            rounds_started: 0,
            started_at: BTreeMap::new(),
            durable: BTreeSet::new(),
            committed: BTreeSet::new(),
            decided: BTreeMap::new(),
            learned: BTreeSet::new(),
        }]
    }

    fn actions(&self, s: &TpcState, out: &mut Vec<TpcAction>) {
        if s.coord.active_round().is_none() && s.rounds_started < self.rounds {
            out.push(TpcAction::Start);
        }
        for e in &s.net {
            out.push(TpcAction::Deliver(e.clone()));
            out.push(TpcAction::Drop(e.clone()));
        }
        for (r, w) in s.pending_write.iter().enumerate() {
            if w.is_some() {
                out.push(TpcAction::PartWritten(r as u32, true));
                out.push(TpcAction::PartWritten(r as u32, false));
            }
        }
        if s.pending_commit.is_some() {
            out.push(TpcAction::CommitWritten(true));
            out.push(TpcAction::CommitWritten(false));
        }
        if s.clock < self.max_clock {
            out.push(TpcAction::Tick);
        }
    }

    fn next_state(&self, s: &TpcState, a: TpcAction) -> Option<TpcState> {
        let mut s = s.clone();
        let now = Duration::from_secs(s.clock);
        match a {
            TpcAction::Start => {
                s.rounds_started += 1;
                let round = RoundId {
                    epoch: Epoch(s.rounds_started),
                    ckpt: CheckpointId(s.rounds_started),
                };
                s.started_at.insert(round, s.clock);
                let acts = s.coord.start_round(round, now).ok()?;
                s.coord_actions(acts);
            }
            TpcAction::Deliver(e) => match s.net.take(&e)? {
                Env::ToRank(r, m) => {
                    let acts = s.parts[r as usize].step(unkey(&m), now).ok()?;
                    s.part_actions(r, acts);
                }
                Env::ToCoord(r, round, ok) => {
                    let vote = if ok {
                        Vote::Durable(r)
                    } else {
                        Vote::Failed("model".into())
                    };
                    let msg = VoteMsg {
                        round,
                        from: Rank(r),
                        vote,
                    };
                    let acts = s.coord.step(msg, now).ok()?;
                    s.coord_actions(acts);
                }
            },
            TpcAction::Drop(e) => {
                s.net.remove(&e);
            }
            TpcAction::PartWritten(r, ok) => {
                let round = s.pending_write[r as usize].take()?;
                let result = if ok {
                    s.durable.insert((round, r));
                    Ok(r)
                } else {
                    Err("model".to_string())
                };
                let acts = s.parts[r as usize].part_written(round, result, now);
                s.part_actions(r, acts);
            }
            TpcAction::CommitWritten(ok) => {
                let round = s.pending_commit.take()?;
                let result = if ok {
                    s.committed.insert(round);
                    Ok(())
                } else {
                    Err("model".to_string())
                };
                let acts = s.coord.commit_written(round, result).ok()?;
                s.coord_actions(acts);
            }
            TpcAction::Tick => {
                s.clock += 1;
                let now = Duration::from_secs(s.clock);
                let acts = s.coord.tick(now);
                s.coord_actions(acts);
                for r in 0..self.world {
                    let acts = s.parts[r as usize].tick(now);
                    s.part_actions(r, acts);
                }
            }
        }
        Some(s)
    }

    fn within_boundary(&self, s: &TpcState) -> bool {
        s.net.len() <= self.max_net
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "COMMIT only with every part durable",
                |m: &Tpc, s: &TpcState| {
                    s.committed
                        .iter()
                        .all(|r| (0..m.world).all(|p| s.durable.contains(&(*r, p))))
                },
            ),
            Property::always("Commit learned only if COMMIT exists", |_, s: &TpcState| {
                s.learned
                    .iter()
                    .all(|(_, r, o)| *o == Outcome::Abort || s.committed.contains(r))
            }),
            Property::always("every view agrees with the decision", |_, s: &TpcState| {
                s.learned
                    .iter()
                    .all(|(_, r, o)| s.decided.get(r) == Some(o))
                    && s.decided
                        .iter()
                        .all(|(r, o)| (*o == Outcome::Commit) == s.committed.contains(r))
            }),
            Property::always(
                "collecting never outlives the deadline",
                |_, s: &TpcState| match (s.coord.active_round(), s.pending_commit) {
                    (Some(r), None) => s.clock < s.started_at.get(&r).copied().unwrap_or(0) + ROUND,
                    _ => true,
                },
            ),
            Property::sometimes("a round commits", |_, s: &TpcState| !s.committed.is_empty()),
            Property::sometimes("a round aborts", |_, s: &TpcState| {
                s.decided.values().any(|o| *o == Outcome::Abort)
            }),
            Property::sometimes("a commit after an abort", |m: &Tpc, s: &TpcState| {
                m.rounds < 2
                    || s.decided.get(&RoundId {
                        epoch: Epoch(1),
                        ckpt: CheckpointId(1),
                    }) == Some(&Outcome::Abort)
                        && !s.committed.is_empty()
            }),
        ]
    }
}

#[test]
fn two_phase_commit() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let checker = Tpc {
        world: env("TPC_WORLD", 2) as u32,
        rounds: env("TPC_ROUNDS", 2),
        max_clock: env("TPC_CLOCK", 4),
        max_net: env("TPC_NET", 2) as usize,
    }
    .checker()
    .timeout(Duration::from_secs(env("TPC_TIMEOUT", 600)))
    .spawn_bfs()
    .join();
    println!("2PC: {} unique states", checker.unique_state_count());
    checker.assert_properties();
}

// ---------------------------------------------------------------- marker protocol

type Id = (u32, u8);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Frame {
    App(Epoch, Id),
    Marker(Epoch),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
struct App {
    balance: u8,
    sent: BTreeSet<(Id, u32)>,
    received: BTreeSet<Id>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ClState {
    apps: Vec<App>,
    recs: Vec<Unaligned<Id>>,
    chans: BTreeMap<(u32, u32), Vec<Frame>>,
    captured: Vec<Option<App>>,
    done: Vec<Option<ChannelState<Id>>>,
    started: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ClAction {
    Snapshot,
    Send(u32, u32),
    Deliver(u32, u32, bool),
}

struct Markers {
    world: u32,
    sends_per_rank: u8,
}

impl ClState {
    fn apply(&mut self, r: u32, acts: Vec<UnalignedAction<Id>>) {
        for a in acts {
            match a {
                UnalignedAction::TakeLocalSnapshot { .. } => {
                    self.captured[r as usize] = Some(self.apps[r as usize].clone());
                }
                UnalignedAction::SendMarker { to, epoch } => {
                    self.chans
                        .entry((r, to.0))
                        .or_default()
                        .push(Frame::Marker(epoch));
                }
                UnalignedAction::Deliver { payload, .. } => {
                    let app = &mut self.apps[r as usize];
                    assert!(app.received.insert(payload), "delivered twice");
                    app.balance += 1;
                }
                UnalignedAction::Complete(cs) => self.done[r as usize] = Some(cs),
                UnalignedAction::Abandoned { .. } => unreachable!("one snapshot only"),
            }
        }
    }
}

impl Model for Markers {
    type State = ClState;
    type Action = ClAction;

    fn init_states(&self) -> Vec<ClState> {
        let w = self.world as usize;
        vec![ClState {
            apps: vec![
                App {
                    balance: self.sends_per_rank,
                    ..App::default()
                };
                w
            ],
            recs: (0..self.world)
                .map(|r| Unaligned::new(Rank(r), self.world).unwrap())
                .collect(),
            chans: BTreeMap::new(),
            captured: vec![None; w],
            done: vec![None; w],
            started: false,
        }]
    }

    fn actions(&self, s: &ClState, out: &mut Vec<ClAction>) {
        if !s.started {
            out.push(ClAction::Snapshot);
        }
        for r in 0..self.world {
            if s.apps[r as usize].sent.len() < self.sends_per_rank as usize {
                for to in 0..self.world {
                    out.push(ClAction::Send(r, to));
                }
            }
        }
        for ((from, to), q) in &s.chans {
            if !q.is_empty() {
                out.push(ClAction::Deliver(*from, *to, false));
                if matches!(q.first(), Some(Frame::Marker(_)))
                    && q.iter().any(|f| matches!(f, Frame::App(..)))
                {
                    out.push(ClAction::Deliver(*from, *to, true));
                }
            }
        }
    }

    fn next_state(&self, s: &ClState, a: ClAction) -> Option<ClState> {
        let mut s = s.clone();
        match a {
            ClAction::Snapshot => {
                s.started = true;
                let acts = s.recs[0].start_snapshot(Epoch(1));
                s.apply(0, acts);
            }
            ClAction::Send(r, to) => {
                let app = &mut s.apps[r as usize];
                let id = (r, app.sent.len() as u8);
                app.sent.insert((id, to));
                app.balance -= 1;
                let e = s.recs[r as usize].epoch();
                s.chans.entry((r, to)).or_default().push(Frame::App(e, id));
            }
            ClAction::Deliver(from, to, overtake) => {
                let q = s.chans.get_mut(&(from, to))?;
                let i = if overtake {
                    q.iter().position(|f| matches!(f, Frame::App(..)))?
                } else {
                    0
                };
                let f = q.remove(i);
                if q.is_empty() {
                    s.chans.remove(&(from, to));
                }
                let acts = match f {
                    Frame::App(e, id) => s.recs[to as usize].on_message(Rank(from), e, id),
                    Frame::Marker(e) => s.recs[to as usize].on_marker(Rank(from), e),
                }
                .ok()?;
                s.apply(to, acts);
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "complete snapshot is a consistent cut",
                |m: &Markers, s: &ClState| {
                    if s.done.iter().any(|d| d.is_none()) {
                        return true;
                    }
                    let caps: Vec<&App> = s.captured.iter().flatten().collect();
                    let in_flight: BTreeSet<Id> = s
                        .done
                        .iter()
                        .flatten()
                        .flat_map(|cs| cs.channels.iter().flat_map(|(_, v)| v.iter().copied()))
                        .collect();
                    let recorded: usize = s.done.iter().flatten().map(|cs| cs.len()).sum();
                    let total: usize =
                        caps.iter().map(|a| a.balance as usize).sum::<usize>() + recorded;
                    let sent: BTreeSet<Id> = caps
                        .iter()
                        .flat_map(|a| a.sent.iter().map(|(i, _)| *i))
                        .collect();
                    let received: BTreeSet<Id> = caps
                        .iter()
                        .flat_map(|a| a.received.iter().copied())
                        .collect();
                    total == (m.world as usize) * (m.sends_per_rank as usize)
                        && recorded == in_flight.len()
                        && received.is_subset(&sent)
                        && received.is_disjoint(&in_flight)
                        && sent
                            .iter()
                            .all(|i| received.contains(i) || in_flight.contains(i))
                },
            ),
            Property::sometimes(
                "a snapshot records a message in flight",
                |_, s: &ClState| {
                    s.done.iter().all(|d| d.is_some())
                        && s.done.iter().flatten().any(|cs| !cs.is_empty())
                },
            ),
            Property::sometimes(
                "Lai-Yang: data snapshots a rank before its marker",
                |_, s: &ClState| {
                    s.captured[1].is_some()
                        && s.chans
                            .get(&(0, 1))
                            .is_some_and(|q| q.contains(&Frame::Marker(Epoch(1))))
                },
            ),
        ]
    }
}

#[test]
fn marker_protocol() {
    let checker = Markers {
        world: 2,
        sends_per_rank: 2,
    }
    .checker()
    .spawn_bfs()
    .join();
    println!("markers: {} unique states", checker.unique_state_count());
    checker.assert_properties();
}

#[test]
#[ignore = "bigger configuration; minutes on 2 cores"]
fn marker_protocol_three_ranks() {
    let checker = Markers {
        world: 3,
        sends_per_rank: 1,
    }
    .checker()
    .spawn_bfs()
    .join();
    println!("markers(3): {} unique states", checker.unique_state_count());
    checker.assert_properties();
}

#[test]
#[ignore = "bigger configuration; minutes on 2 cores"]
fn two_phase_commit_three_ranks() {
    let checker = Tpc {
        world: 3,
        rounds: 1,
        max_clock: 4,
        max_net: 3,
    }
    .checker()
    .spawn_bfs()
    .join();
    println!("2PC(3): {} unique states", checker.unique_state_count());
    checker.assert_properties();
}

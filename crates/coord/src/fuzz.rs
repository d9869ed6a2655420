//! Entry points for the fuzz targets and the decoder property tests (`fuzz/` and
//! `tests/decoders.rs`): the decoders of bytes this crate takes from peers or from disk,
//! run exactly as the runtimes run them. Hidden from the documentation; not an API.

use crate::aligned::{
    Coordinator, CoordinatorAction, Outcome, Participant, ParticipantAction, RoundId, Timeouts,
    ToParticipant, Vote, VoteMsg,
};
use crate::unaligned::ChannelState;
use crate::unaligned_rt::wire;
use crate::SavedMessage;
use lazarus_format::{CheckpointId, Epoch, ObjectInfo, Rank};
use lazarus_store::PartReceipt;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// What a restore does with the bytes of a rank's channel-state object (`lazarus.channels`,
/// read from a checkpoint): decodes them (`info` as the manifest records the object) and
/// checks the state for replay in a world of `world` ranks as the snapshot of `epoch`.
/// `Ok` only for a state that passes both; must never panic or over-allocate.
#[doc(hidden)]
pub fn fuzz_channel_state(
    info: &ObjectInfo,
    bytes: &[u8],
    world: u32,
    epoch: Option<Epoch>,
) -> Result<ChannelState<SavedMessage>, String> {
    let cs = wire::decode_channels(info, bytes)?;
    wire::check_channels(&cs, world, epoch)?;
    Ok(cs)
}

/// The manifest entry a session writes for its channel state (for [`fuzz_channel_state`]).
#[doc(hidden)]
pub fn channels_object_info() -> ObjectInfo {
    wire::channels_info()
}

/// Runs the two-phase commit on bytes from peers: a coordinator and one participant of a
/// small world (both taken from the first two bytes) get a sequence of records
/// `[op, len, len bytes]`, where the bytes are decoded with postcard as the runtimes decode
/// them (`ToParticipant` for the participant, `VoteMsg<PartReceipt>` for the coordinator,
/// `PartReceipt` for a part written) and undecodable ones are dropped. The coordinator's
/// messages to the participant's rank and the participant's votes are also delivered, so
/// the machines run real rounds that hostile messages interleave with. Bit 7 of `op` moves
/// a decoded message onto the round in progress (a peer that knows it), so they are not
/// all stale.
///
/// Returns how many messages decoded and how many rounds committed; `Err` names a broken guarantee (COMMIT asked for
/// without a durable vote of that round from every rank, a round decided twice, a part
/// written twice, a vote changed). Must never panic, whatever the bytes.
#[doc(hidden)]
pub fn fuzz_two_phase(bytes: &[u8]) -> Result<(usize, usize), String> {
    let (Some(&w), Some(&m)) = (bytes.first(), bytes.get(1)) else {
        return Ok((0, 0));
    };
    let world = u32::from(w % 4) + 1;
    let me = Rank(u32::from(m) % world);
    let timeouts = Timeouts {
        round: Duration::from_millis(1000),
        retry: Duration::from_millis(100),
        decision: Duration::from_millis(3000),
    };
    let mut h = TwoPhase {
        world,
        me,
        coord: Coordinator::new(world, timeouts).map_err(|e| e.to_string())?,
        part: Participant::new(me, timeouts),
        now: Duration::ZERO,
        next: 1,
        durable: BTreeMap::new(),
        decided: BTreeSet::new(),
        written: BTreeSet::new(),
        votes: BTreeMap::new(),
        to_coord: Vec::new(),
        to_part: Vec::new(),
        writing: None,
        committed: 0,
    };
    let mut decoded = 0;
    let mut rest = &bytes[2..];
    while let [op, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (msg, after) = tail.split_at(n);
        rest = after;
        let rebase = op & 0x80 != 0;
        match op % 4 {
            0 => {
                if let Ok(mut v) = postcard::from_bytes::<VoteMsg<PartReceipt>>(msg) {
                    decoded += 1;
                    if let (true, Some(r)) = (rebase, h.coord.active_round()) {
                        v.round = r;
                    }
                    h.vote(v)?;
                }
            }
            1 => {
                if let Ok(mut p) = postcard::from_bytes::<ToParticipant>(msg) {
                    decoded += 1;
                    if let (true, Some(r)) = (rebase, h.part.current_round()) {
                        match &mut p {
                            ToParticipant::Prepare { round, .. } => *round = r,
                            ToParticipant::Decided(d) => d.round = r,
                        }
                    }
                    h.to_part.push(p);
                }
            }
            2 => {
                h.now += Duration::from_millis(msg.iter().map(|b| u64::from(*b)).sum::<u64>());
                let a = h.coord.tick(h.now);
                h.coord_actions(a)?;
                let a = h.part.tick(h.now);
                h.part_actions(a)?;
                if rebase && h.coord.active_round().is_none() {
                    let round = RoundId {
                        epoch: Epoch(h.next),
                        ckpt: CheckpointId(h.next),
                    };
                    h.next += 1;
                    if let Ok(a) = h.coord.start_round(round, h.now) {
                        h.coord_actions(a)?;
                    }
                }
            }
            _ => {
                let receipt = postcard::from_bytes::<PartReceipt>(msg);
                decoded += usize::from(receipt.is_ok());
                if let Some(round) = h.writing.take() {
                    let a = h
                        .part
                        .part_written(round, receipt.map_err(|e| e.to_string()), h.now);
                    h.part_actions(a)?;
                }
                if let Some(r) = h.coord.active_round() {
                    let result = if rebase { Ok(()) } else { Err("fuzz".into()) };
                    // Refused unless COMMIT of that round was asked for.
                    if let Ok(a) = h.coord.commit_written(r, result) {
                        h.coord_actions(a)?;
                    }
                }
            }
        }
        h.deliver()?;
    }
    Ok((decoded, h.committed))
}

struct TwoPhase {
    world: u32,
    me: Rank,
    coord: Coordinator<PartReceipt>,
    part: Participant<PartReceipt>,
    now: Duration,
    next: u64,
    /// the first durable receipt each rank sent for each round, while it could count
    durable: BTreeMap<(RoundId, Rank), PartReceipt>,
    decided: BTreeSet<RoundId>,
    written: BTreeSet<RoundId>,
    votes: BTreeMap<RoundId, Vote<PartReceipt>>,
    to_coord: Vec<VoteMsg<PartReceipt>>,
    to_part: Vec<ToParticipant>,
    writing: Option<RoundId>,
    committed: usize,
}

impl TwoPhase {
    fn vote(&mut self, v: VoteMsg<PartReceipt>) -> Result<(), String> {
        if let (Vote::Durable(x), true) = (&v.vote, self.coord.active_round() == Some(v.round)) {
            self.durable
                .entry((v.round, v.from))
                .or_insert_with(|| x.clone());
        }
        // An error is the runtime's "ignoring vote": never fatal, never a panic.
        if let Ok(a) = self.coord.step(v, self.now) {
            self.coord_actions(a)?;
        }
        Ok(())
    }

    fn deliver(&mut self) -> Result<(), String> {
        // Bounded: each pass only forwards what the previous one produced.
        for _ in 0..8 {
            if self.to_part.is_empty() && self.to_coord.is_empty() {
                break;
            }
            for p in std::mem::take(&mut self.to_part) {
                if let Ok(a) = self.part.step(p, self.now) {
                    self.part_actions(a)?;
                }
            }
            for v in std::mem::take(&mut self.to_coord) {
                self.vote(v)?;
            }
        }
        Ok(())
    }

    fn coord_actions(
        &mut self,
        actions: Vec<CoordinatorAction<PartReceipt>>,
    ) -> Result<(), String> {
        for a in actions {
            match a {
                CoordinatorAction::WriteCommit { round, receipts } => {
                    let ranks: Vec<Rank> = receipts.iter().map(|(r, _)| *r).collect();
                    if ranks != (0..self.world).map(Rank).collect::<Vec<_>>() {
                        return Err(format!(
                            "COMMIT of {round:?} asked for with receipts of {ranks:?}"
                        ));
                    }
                    for (r, x) in &receipts {
                        if self.durable.get(&(round, *r)) != Some(x) {
                            return Err(format!(
                                "COMMIT of {round:?} lists a receipt {r} never sent"
                            ));
                        }
                    }
                }
                CoordinatorAction::Decided { decision, .. } => {
                    if !self.decided.insert(decision.round) {
                        return Err(format!("{:?} decided twice", decision.round));
                    }
                    if decision.outcome == Outcome::Commit {
                        self.committed += 1;
                    }
                }
                CoordinatorAction::Send { to, msg } => {
                    if to.0 >= self.world {
                        return Err(format!("message to {to}, outside the world"));
                    }
                    if to == self.me {
                        self.to_part.push(msg);
                    }
                }
                CoordinatorAction::CollectLeftovers { .. } => {}
            }
        }
        Ok(())
    }

    fn part_actions(&mut self, actions: Vec<ParticipantAction<PartReceipt>>) -> Result<(), String> {
        for a in actions {
            match a {
                ParticipantAction::WritePart { round } => {
                    if !self.written.insert(round) {
                        return Err(format!("part of {round:?} written twice"));
                    }
                    self.writing = Some(round);
                }
                ParticipantAction::Send(v) => {
                    if v.from != self.me {
                        return Err(format!("a vote of {} sent by {}", v.from, self.me));
                    }
                    let first = self.votes.entry(v.round).or_insert_with(|| v.vote.clone());
                    if *first != v.vote {
                        return Err(format!("the vote on {:?} changed", v.round));
                    }
                    self.to_coord.push(v);
                }
                ParticipantAction::Learned(_)
                | ParticipantAction::DiscardPart { .. }
                | ParticipantAction::OutcomeUnknown { .. } => {}
            }
        }
        Ok(())
    }
}

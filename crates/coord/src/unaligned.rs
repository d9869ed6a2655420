//! Unaligned checkpoints: a per-rank consistent-cut recorder for FIFO channels.
//!
//! Chandy & Lamport (1985) markers, plus Lai & Yang (1987) epoch piggybacking: every
//! application message carries the sender's epoch (the number of its latest local
//! snapshot), so a message from a newer epoch forces the local snapshot *before* it is
//! delivered. That keeps post-cut sends out of pre-cut state (no orphans) even when data
//! overtakes a marker, and it lets a rank join a snapshot it has not heard of yet.
//!
//! Every rank has one incoming channel from every rank, itself included (a message a rank
//! sends to itself can be in flight in its own queue). See docs/PROTOCOL.md.

use crate::error::{check_rank, ProtocolError};
use lazarus_format::{Epoch, Rank};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The messages recorded for one snapshot: those sent before the senders' cut and received
/// after the receiver's cut. Saved with the rank's part; replayed once after a restart.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChannelState<M> {
    /// the snapshot's epoch
    pub epoch: Epoch,
    /// per sending rank, in receive order; only non-empty channels, sorted by rank
    pub channels: Vec<(Rank, Vec<M>)>,
}

impl<M> ChannelState<M> {
    /// Number of recorded messages over all channels.
    pub fn len(&self) -> usize {
        self.channels.iter().map(|(_, m)| m.len()).sum()
    }

    /// True if no message was in flight across the cut.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How far beyond its own epoch a rank accepts the epoch of a marker or of a message's
/// stamp (Lai-Yang), which makes it take that snapshot at once.
///
/// Why not "only the next epoch": epochs are checkpoint ids in the runtime, and ids skip
/// legitimately (every aborted round uses one; a restarted job restores an older
/// checkpoint while the repository hands out ids above every directory; a rank that is
/// slow to read hears of a newer round from a faster peer), so no exact "next" is known
/// here. Why a bound at all: a snapshot is never undone, so a marker of `u64::MAX` or
/// `current + 10^9` from a buggy or replayed peer would put this rank past every later
/// real round: their markers would be stale, its own stamps would drag every other rank
/// there too, and rank 0 could not start a round above it. Such an epoch is a protocol
/// error naming the peer and both epochs, returned before anything changes. 2^24 ids
/// between two snapshots of one rank is more than any job uses (at one round a second,
/// half a year of rounds that all aborted without this rank).
pub const MAX_EPOCH_LEAP: u64 = 1 << 24;

/// What the recorder asks its runtime to do, in order. Order matters: a
/// `TakeLocalSnapshot` must capture the application state before any later `Deliver`
/// is applied, and markers must be sent before any later application send.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UnalignedAction<M> {
    /// Capture the application state now; it is this rank's state in snapshot `epoch`.
    /// From now on stamp outgoing messages with `epoch`.
    TakeLocalSnapshot {
        /// the new epoch
        epoch: Epoch,
    },
    /// Send a marker of `epoch` to `to` on the FIFO channel (itself included).
    SendMarker {
        /// destination
        to: Rank,
        /// the snapshot's epoch
        epoch: Epoch,
    },
    /// Hand this message to the application.
    Deliver {
        /// the sender
        from: Rank,
        /// the message
        payload: M,
    },
    /// All markers are in: this rank's part of snapshot `epoch` is the state captured at
    /// `TakeLocalSnapshot` plus this channel state.
    Complete(ChannelState<M>),
    /// Snapshot `epoch` was still recording when a newer one began or it was abandoned;
    /// its captured state is garbage.
    Abandoned {
        /// the abandoned epoch
        epoch: Epoch,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Recording<M> {
    epoch: Epoch,
    open: BTreeSet<Rank>,
    recorded: BTreeMap<Rank, Vec<M>>,
    done: bool,
}

/// One rank's snapshot recorder.
///
/// Guarantees (with FIFO channels and markers sent as asked): the captured state of epoch
/// `e` reflects exactly the messages sent with epoch `< e` that were delivered before the
/// capture; every message sent with epoch `< e` and delivered after the capture is in the
/// channel state of `e` exactly once; messages stamped `>= e` are never recorded. So the
/// union of all ranks' parts of `e` is a consistent cut (no orphan, no lost message).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Unaligned<M> {
    me: Rank,
    world: u32,
    epoch: Epoch,
    recording: Option<Recording<M>>,
}

impl<M: Clone> Unaligned<M> {
    /// A fresh recorder for rank `me` of `world`, at epoch 0 (no snapshot taken yet).
    pub fn new(me: Rank, world: u32) -> Result<Self, ProtocolError> {
        check_rank(me, world)?;
        Ok(Unaligned {
            me,
            world,
            epoch: Epoch(0),
            recording: None,
        })
    }

    /// The recorder of a rank restarted from a committed snapshot with this channel state.
    /// Returns the `Deliver` actions of the saved messages, per channel in their original
    /// order: the runtime must queue them ahead of any traffic of the new incarnation (the
    /// net layer's `requeue`). Senders never resend them: their restored state is after
    /// the send. Fails if the state names a rank outside the world.
    pub fn restore(
        me: Rank,
        world: u32,
        saved: ChannelState<M>,
    ) -> Result<(Self, Vec<UnalignedAction<M>>), ProtocolError> {
        check_rank(me, world)?;
        for (from, _) in &saved.channels {
            check_rank(*from, world)?;
        }
        let me_ = Unaligned {
            me,
            world,
            epoch: saved.epoch,
            recording: None,
        };
        let replay = saved
            .channels
            .into_iter()
            .flat_map(|(from, msgs)| {
                msgs.into_iter()
                    .map(move |payload| UnalignedAction::Deliver { from, payload })
            })
            .collect();
        Ok((me_, replay))
    }

    /// The rank this recorder belongs to.
    pub fn rank(&self) -> Rank {
        self.me
    }

    /// The epoch to stamp on every message this rank sends now.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// True while a snapshot has markers outstanding.
    pub fn is_recording(&self) -> bool {
        self.recording.as_ref().is_some_and(|r| !r.done)
    }

    /// Begins snapshot `epoch` here (the initiator, or a rank told by the coordinator).
    /// Does nothing if this rank already took a snapshot at `epoch` or later.
    pub fn start_snapshot(&mut self, epoch: Epoch) -> Vec<UnalignedAction<M>> {
        let mut out = Vec::new();
        if epoch > self.epoch {
            self.take_snapshot(epoch, &mut out);
            self.check_complete(&mut out);
        }
        out
    }

    /// Handles an application message stamped with the sender's epoch `msg_epoch`.
    pub fn on_message(
        &mut self,
        from: Rank,
        msg_epoch: Epoch,
        payload: M,
    ) -> Result<Vec<UnalignedAction<M>>, ProtocolError> {
        check_rank(from, self.world)?;
        self.check_leap(from, "message", msg_epoch)?;
        let mut out = Vec::new();
        if msg_epoch > self.epoch {
            // Lai-Yang: the sender is past a cut we have not taken; take it before
            // delivering, and the message itself proves that channel is closed.
            self.take_snapshot(msg_epoch, &mut out);
            self.close(from);
        } else if let Some(rec) = self.recording.as_mut() {
            if rec.open.contains(&from) {
                if msg_epoch < rec.epoch {
                    rec.recorded.entry(from).or_default().push(payload.clone());
                } else {
                    // Sent after the sender's cut: its marker is implied.
                    rec.open.remove(&from);
                }
            } else if msg_epoch < rec.epoch {
                return Err(ProtocolError::FifoViolation {
                    from,
                    msg_epoch,
                    epoch: rec.epoch,
                });
            }
        }
        out.push(UnalignedAction::Deliver { from, payload });
        self.check_complete(&mut out);
        Ok(out)
    }

    /// Handles a marker of `epoch` from `from`. Stale markers (of abandoned or older
    /// snapshots) and duplicates are ignored; a marker more than [`MAX_EPOCH_LEAP`] beyond
    /// this rank's epoch is an error and changes nothing.
    pub fn on_marker(
        &mut self,
        from: Rank,
        epoch: Epoch,
    ) -> Result<Vec<UnalignedAction<M>>, ProtocolError> {
        check_rank(from, self.world)?;
        self.check_leap(from, "marker", epoch)?;
        let mut out = Vec::new();
        if epoch > self.epoch {
            self.take_snapshot(epoch, &mut out);
        }
        if self.recording.as_ref().is_some_and(|r| r.epoch == epoch) {
            self.close(from);
            self.check_complete(&mut out);
        }
        Ok(out)
    }

    /// Stops recording `epoch` (its round was aborted). Messages already recorded were
    /// delivered too, so nothing is lost; the epoch counter does not go back.
    pub fn abandon(&mut self, epoch: Epoch) -> Vec<UnalignedAction<M>> {
        match &self.recording {
            Some(r) if r.epoch == epoch => {
                let was_open = !r.done;
                self.recording = None;
                if was_open {
                    vec![UnalignedAction::Abandoned { epoch }]
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }
    }

    /// Refuses an epoch from a peer more than [`MAX_EPOCH_LEAP`] beyond this rank's.
    fn check_leap(&self, from: Rank, what: &'static str, got: Epoch) -> Result<(), ProtocolError> {
        if got.0 > self.epoch.0.saturating_add(MAX_EPOCH_LEAP) {
            return Err(ProtocolError::EpochLeap {
                from,
                what,
                got,
                current: self.epoch,
            });
        }
        Ok(())
    }

    fn take_snapshot(&mut self, epoch: Epoch, out: &mut Vec<UnalignedAction<M>>) {
        if let Some(old) = &self.recording {
            if !old.done {
                out.push(UnalignedAction::Abandoned { epoch: old.epoch });
            }
        }
        self.epoch = epoch;
        out.push(UnalignedAction::TakeLocalSnapshot { epoch });
        out.extend((0..self.world).map(|r| UnalignedAction::SendMarker { to: Rank(r), epoch }));
        self.recording = Some(Recording {
            epoch,
            open: (0..self.world).map(Rank).collect(),
            recorded: BTreeMap::new(),
            done: false,
        });
    }

    fn close(&mut self, from: Rank) {
        if let Some(rec) = self.recording.as_mut() {
            rec.open.remove(&from);
        }
    }

    fn check_complete(&mut self, out: &mut Vec<UnalignedAction<M>>) {
        let Some(rec) = self.recording.as_mut() else {
            return;
        };
        if rec.done || !rec.open.is_empty() {
            return;
        }
        // Keep the closed recording (done) so a late pre-cut message is caught as a FIFO
        // violation instead of being silently delivered outside the cut.
        rec.done = true;
        let recorded = std::mem::take(&mut rec.recorded);
        out.push(UnalignedAction::Complete(ChannelState {
            epoch: rec.epoch,
            channels: recorded
                .into_iter()
                .filter(|(_, m)| !m.is_empty())
                .collect(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use UnalignedAction::*;

    fn markers(world: u32, e: u64) -> Vec<UnalignedAction<u32>> {
        (0..world)
            .map(|r| SendMarker {
                to: Rank(r),
                epoch: Epoch(e),
            })
            .collect()
    }

    #[test]
    fn chandy_lamport_records_until_marker() {
        // Rank 1 of 3 initiates epoch 1; rank 0's pre-cut message arrives before its marker.
        let mut u = Unaligned::<u32>::new(Rank(1), 3).unwrap();
        let mut want = vec![TakeLocalSnapshot { epoch: Epoch(1) }];
        want.extend(markers(3, 1));
        assert_eq!(u.start_snapshot(Epoch(1)), want);
        assert!(u.start_snapshot(Epoch(1)).is_empty(), "idempotent");
        assert_eq!(
            u.on_message(Rank(0), Epoch(0), 7).unwrap(),
            vec![Deliver {
                from: Rank(0),
                payload: 7
            }]
        );
        assert!(u.on_marker(Rank(1), Epoch(1)).unwrap().is_empty());
        assert!(u.on_marker(Rank(0), Epoch(1)).unwrap().is_empty());
        assert!(u.is_recording());
        let a = u.on_marker(Rank(2), Epoch(1)).unwrap();
        assert_eq!(
            a,
            vec![Complete(ChannelState {
                epoch: Epoch(1),
                channels: vec![(Rank(0), vec![7])]
            })]
        );
        assert!(!u.is_recording());
        assert!(
            u.on_marker(Rank(2), Epoch(1)).unwrap().is_empty(),
            "duplicate"
        );
        // A pre-cut message after the marker cannot happen on a FIFO channel.
        assert_eq!(
            u.on_message(Rank(0), Epoch(0), 8).unwrap_err().kind(),
            crate::ErrorKind::FifoViolation
        );
    }

    #[test]
    fn lai_yang_message_from_newer_epoch_snapshots_before_delivery() {
        let mut u = Unaligned::<u32>::new(Rank(0), 2).unwrap();
        let a = u.on_message(Rank(1), Epoch(1), 5).unwrap();
        assert_eq!(a[0], TakeLocalSnapshot { epoch: Epoch(1) });
        assert_eq!(
            a.last(),
            Some(&Deliver {
                from: Rank(1),
                payload: 5
            })
        );
        assert_eq!(u.epoch(), Epoch(1));
        // Channel from 1 is closed by that message; our own marker closes the last one.
        let a = u.on_marker(Rank(0), Epoch(1)).unwrap();
        assert_eq!(
            a,
            vec![Complete(ChannelState {
                epoch: Epoch(1),
                channels: vec![]
            })]
        );
        // The overtaken marker of rank 1 arrives late: ignored.
        assert!(u.on_marker(Rank(1), Epoch(1)).unwrap().is_empty());
    }

    #[test]
    fn single_rank_world_completes_with_its_own_marker() {
        let mut u = Unaligned::<u32>::new(Rank(0), 1).unwrap();
        u.start_snapshot(Epoch(3));
        let a = u.on_message(Rank(0), Epoch(0), 1).unwrap();
        assert_eq!(a.len(), 1);
        let a = u.on_marker(Rank(0), Epoch(3)).unwrap();
        assert_eq!(
            a,
            vec![Complete(ChannelState {
                epoch: Epoch(3),
                channels: vec![(Rank(0), vec![1])]
            })]
        );
    }

    #[test]
    fn newer_snapshot_abandons_unfinished_one() {
        let mut u = Unaligned::<u32>::new(Rank(0), 2).unwrap();
        u.start_snapshot(Epoch(1));
        let a = u.on_marker(Rank(1), Epoch(2)).unwrap();
        assert_eq!(a[0], Abandoned { epoch: Epoch(1) });
        assert_eq!(a[1], TakeLocalSnapshot { epoch: Epoch(2) });
        assert!(u.on_marker(Rank(1), Epoch(1)).unwrap().is_empty(), "stale");
        assert_eq!(u.abandon(Epoch(2)), vec![Abandoned { epoch: Epoch(2) }]);
        assert!(!u.is_recording());
        // Pre-cut stragglers of an abandoned snapshot are just delivered.
        assert_eq!(u.on_message(Rank(1), Epoch(0), 4).unwrap().len(), 1);
    }

    /// Review (2026-12-07): a marker of an epoch far beyond this rank's (a buggy or
    /// replayed peer) was taken as a snapshot, and every later real round was then stale
    /// here (its markers ignored, `start_snapshot` a no-op). It is refused, naming the
    /// peer and both epochs, and changes nothing; so is such a message stamp.
    #[test]
    fn huge_epoch_marker_is_refused_and_later_rounds_complete() {
        let mut u = Unaligned::<u32>::new(Rank(0), 2).unwrap();
        u.start_snapshot(Epoch(3));
        let before = u.clone();
        for far in [u64::MAX, 3 + 1_000_000_000, 3 + MAX_EPOCH_LEAP + 1] {
            let e = u.on_marker(Rank(1), Epoch(far)).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::EpochLeap);
            let text = e.to_string();
            assert!(
                text.contains("rank 1") && text.contains(&format!("epoch {far}")),
                "{text}"
            );
            assert!(text.contains("epoch 3"), "{text}");
            let e = u.on_message(Rank(1), Epoch(far), 9).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::EpochLeap, "{e}");
            assert_eq!(u, before, "a refused epoch changes nothing");
        }
        // The edge of the window is still a real round (ids skip).
        let edge = Epoch(3 + MAX_EPOCH_LEAP);
        let a = u.on_marker(Rank(1), edge).unwrap();
        assert_eq!(a[0], Abandoned { epoch: Epoch(3) });
        assert_eq!(a[1], TakeLocalSnapshot { epoch: edge });
        let a = u.on_marker(Rank(0), edge).unwrap();
        assert!(
            matches!(&a[..], [Complete(cs)] if cs.epoch == edge),
            "{a:?}"
        );
    }

    #[test]
    fn restore_replays_in_channel_order_and_checks_ranks() {
        let saved = ChannelState {
            epoch: Epoch(4),
            channels: vec![(Rank(0), vec![1, 2]), (Rank(2), vec![3])],
        };
        let (u, replay) = Unaligned::restore(Rank(1), 3, saved.clone()).unwrap();
        assert_eq!(u.epoch(), Epoch(4));
        let got: Vec<_> = replay
            .into_iter()
            .map(|a| match a {
                Deliver { from, payload } => (from.0, payload),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(got, vec![(0, 1), (0, 2), (2, 3)]);
        assert_eq!(
            Unaligned::restore(Rank(1), 2, saved).unwrap_err().kind(),
            crate::ErrorKind::UnknownRank
        );
        let mut u = Unaligned::<u32>::new(Rank(0), 2).unwrap();
        assert!(u.on_message(Rank(2), Epoch(0), 1).is_err());
        assert!(u.on_marker(Rank(9), Epoch(1)).is_err());
    }

    #[test]
    fn channel_state_serializes_to_json() {
        let s = ChannelState {
            epoch: Epoch(2),
            channels: vec![(Rank(1), vec![10u32, 11])],
        };
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(j, r#"{"epoch":2,"channels":[[1,[10,11]]]}"#);
        assert_eq!(serde_json::from_str::<ChannelState<u32>>(&j).unwrap(), s);
        assert_eq!(s.len(), 2);
    }
}

//! The opening handshake of an aligned runtime on a communicator (`AlignedRuntime::new`),
//! and of an unaligned session (`AsyncSession::open`, on its own two tags), which has the
//! same problem: a vote its participant re-sent in a finished session's last round (or a
//! decision rank 0 sent in answer to one) stays in the mailbox, and the next session's
//! first round may have that very id (an aborted round's directory is deleted, so a new
//! `Repository` hands its id out again).
//!
//! Rounds are named by their checkpoint id, which two repositories (or one repository after
//! an aborted round, whose id is reused) repeat, and a vote or `Prepare` re-sent late in a
//! runtime's last round outlives it in the communicator's mailbox. A runtime opened later
//! on the same communicator (a Job after a Job) must not take them for its own: rank 0 took
//! a stale vote (another run's receipt) and committed it, a participant wrote its part for
//! a `Prepare` of the past. So every runtime opens each of its channels (rank 0 ↔ each
//! rank, on the round's two tags, rank 0's channel to itself included) with a handshake
//! and drops what came before it:
//!
//! - each side sends `Hello(n)` with a fresh nonce `n`, answers every `Hello(x)` it
//!   receives with `Ack(x)`, and is open once it receives `Ack(n)`, dropping everything
//!   else it receives on the channel before that;
//! - channels are FIFO, and a peer sends `Ack(n)` only after its own `Hello`, which follows
//!   every message of its earlier runtimes: all of those are dropped. A message of the new
//!   runtime (a `Prepare`) is sent only once its sender is open, which needs the peer's
//!   `Ack`, sent after the peer's `Hello`: nothing of the new runtime is dropped.
//! - The nonces make the leftovers of a runtime whose opening failed halfway (one rank
//!   never constructed it) harmless: a stale `Hello` is answered with an `Ack` nobody
//!   waits for, a stale `Ack` names no current nonce, and both arrive before the current
//!   `Ack`, so they are dropped with the rest.
//!
//! Waits have no deadline of their own, like the collectives of a Job's opening: a dead
//! peer is reported by the communicator's failure detection; a slow one (rank 0 taking
//! over a repository lease) is waited for.

use crate::aligned_rt::{TAG_TO_PARTICIPANT, TAG_VOTE};
use lazarus_format::Rank;
use lazarus_net::{Comm, NetError, Tag};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// The first bytes of every handshake message. Never a valid postcard encoding of a
/// `ToParticipant` or a `VoteMsg` (the bytes after `0xff` make an out-of-range variant
/// index or vote), so a handshake message is never mistaken for a round's.
const PREFIX: &[u8] = b"\xfflazarus aligned runtime fence 2 ";
const HELLO: u8 = b'H';
const ACK: u8 = b'A';

type Nonce = [u8; 16];

fn nonce() -> Nonce {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // Unique, not secret: RandomState's per-process random keys, the process, the time
    // and a counter.
    let mut out = [0u8; 16];
    for half in out.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

fn message(kind: u8, n: &Nonce) -> Vec<u8> {
    let mut m = Vec::with_capacity(PREFIX.len() + 1 + n.len());
    m.extend_from_slice(PREFIX);
    m.push(kind);
    m.extend_from_slice(n);
    m
}

/// `(kind, nonce)` of a handshake message; `None` for anything else.
fn parse(payload: &[u8]) -> Option<(u8, Nonce)> {
    let rest = payload.strip_prefix(PREFIX)?;
    let (&kind, n) = rest.split_first()?;
    Some((kind, Nonce::try_from(n).ok()?))
}

/// One channel to open: messages go to `peer` on tag `send`, come from it on `recv`.
struct Channel {
    peer: Rank,
    send: u32,
    recv: u32,
}

/// Opens this rank's channels of the aligned runtime on `comm` (see the module doc):
/// rank 0's to every rank and to itself, another rank's to rank 0. Returns how many
/// messages of earlier runtimes were dropped.
#[doc(hidden)]
pub fn open_channels(comm: &Comm) -> Result<usize, NetError> {
    open_channels_on(comm, TAG_TO_PARTICIPANT, TAG_VOTE)
}

/// [`open_channels`] for a runtime whose rank 0 sends on checkpoint tag `to_participant`
/// and whose participants vote on `vote` (the unaligned session's tags). Every rank must
/// be past the previous runtime on `comm` (its `finish` returned) before any rank calls
/// this: a handshake message reaching a runtime still running is not one of its messages.
pub(crate) fn open_channels_on(
    comm: &Comm,
    to_participant: u32,
    vote: u32,
) -> Result<usize, NetError> {
    let me = comm.rank();
    let channels: Vec<Channel> = if me == Rank(0) {
        // Rank 0 to itself on both tags (its own Prepare and vote go through its mailbox),
        // then to every other rank.
        let mut c = vec![
            Channel {
                peer: me,
                send: to_participant,
                recv: to_participant,
            },
            Channel {
                peer: me,
                send: vote,
                recv: vote,
            },
        ];
        c.extend((1..comm.size()).map(|r| Channel {
            peer: Rank(r),
            send: to_participant,
            recv: vote,
        }));
        c
    } else {
        vec![Channel {
            peer: Rank(0),
            send: vote,
            recv: to_participant,
        }]
    };
    let n = nonce();
    for c in &channels {
        if c.peer == me {
            // Nobody else writes this channel: our own Ack is the end of the past.
            comm.send_bytes(me, Tag::checkpoint(c.send), message(ACK, &n))?;
        } else {
            comm.send_bytes(c.peer, Tag::checkpoint(c.send), message(HELLO, &n))?;
        }
    }
    let mut dropped = 0;
    for c in &channels {
        loop {
            let env = comm.recv_envelope(Some(c.peer), Some(Tag::checkpoint(c.recv)))?;
            match parse(&env.payload) {
                Some((ACK, x)) if x == n => break,
                Some((HELLO, x)) => {
                    comm.send_bytes(c.peer, Tag::checkpoint(c.send), message(ACK, &x))?
                }
                Some(_) => {}
                None => dropped += 1,
            }
        }
    }
    if dropped > 0 {
        tracing::debug!(
            "{me}: dropped {dropped} checkpoint message(s) of an earlier runtime on this communicator"
        );
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_messages_parse_and_nothing_else_does() {
        let n = nonce();
        assert_ne!(n, nonce(), "nonces repeat");
        assert_eq!(parse(&message(HELLO, &n)), Some((HELLO, n)));
        assert_eq!(parse(&message(ACK, &n)), Some((ACK, n)));
        assert_eq!(parse(PREFIX), None);
        assert_eq!(parse(&message(ACK, &n)[..PREFIX.len() + 5]), None);
        let vote = crate::aligned::VoteMsg::<()> {
            round: crate::aligned::RoundId {
                epoch: lazarus_format::Epoch(u64::MAX),
                ckpt: lazarus_format::CheckpointId(u64::MAX),
            },
            from: Rank(u32::MAX),
            vote: crate::aligned::Vote::Failed("x".repeat(40)),
        };
        assert_eq!(parse(&postcard::to_allocvec(&vote).unwrap()), None);
        // And no handshake message decodes as a round's message.
        for kind in [HELLO, ACK] {
            let m = message(kind, &n);
            assert!(postcard::from_bytes::<crate::aligned::ToParticipant>(&m).is_err());
            assert!(postcard::from_bytes::<crate::aligned::VoteMsg<()>>(&m).is_err());
        }
    }
}

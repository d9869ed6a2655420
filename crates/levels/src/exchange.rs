//! The level round's agreement messages, point to point in the private checkpoint tag
//! range (docs/LEVELS.md, "Asynchronous level rounds").
//!
//! A level round may run on the Job's background flush thread while the program uses the
//! same communicator on its own thread, collectives included. `Comm` collectives number
//! their messages with one per-communicator counter, so a collective on each thread would
//! cross-match. The round therefore never uses a collective: what every rank must learn
//! (each rank's outcome, each rank's parity base) is gathered to rank 0 and sent back to
//! every rank, on tags of `0x300..0x400` (inside `Tag::CHECKPOINT_PRIVATE`: a wildcard
//! receive of the program never takes them). Each message carries the round's job-wide
//! checkpoint number, checked on receipt; messages from one sender on one tag arrive in
//! order, and every rank sends and receives exactly one per round on every path, so a
//! rank that is already in the next round never confuses the two. Rank 0 answers every
//! rank even when a message was bad or lost (with the reason), so no rank is left
//! waiting for it.

use crate::error::LevelError;
use lazarus_format::Rank;
use lazarus_net::{Comm, Tag};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Checkpoint-space tag of the round's outcome exchange.
pub(crate) const TAG_OUTCOME: u32 = 0x304;
/// Checkpoint-space tag of the parity round's base exchange.
pub(crate) const TAG_BASES: u32 = 0x305;

/// Every rank's `value` in rank order, on every rank: gathered to rank 0, which sends
/// the whole vector (or why it has none) to every rank. `seq` is the round's number. Rank
/// 0 always hears every rank before it answers every rank, so one bad or lost message
/// fails the round on every rank instead of leaving some waiting (and no message of it
/// is left queued for the next round). A message of another round, one that does not
/// decode, or a vector of the wrong length is a [`LevelError::Protocol`] naming the
/// sender; rank 0's refusal reaches the others as [`LevelError::Peer`].
pub(crate) fn all_of<T: Serialize + DeserializeOwned>(
    comm: &Comm,
    tag: u32,
    seq: u64,
    value: &T,
) -> Result<Vec<T>, LevelError> {
    let (me, n) = (comm.rank().0, comm.size());
    let tag = Tag::checkpoint(tag);
    let own = encode(&(seq, value));
    if me != 0 {
        comm.send_bytes(Rank(0), tag, own)?;
        let (_, answer): (u64, Result<Vec<T>, String>) = recv_round(comm, Rank(0), tag, seq)?;
        let all = answer.map_err(|message| LevelError::Peer {
            rank: Rank(0),
            message,
        })?;
        if all.len() != n as usize {
            return Err(LevelError::Protocol {
                rank: Rank(0),
                detail: format!(
                    "{} values for a round of {n} ranks (checkpoint {seq})",
                    all.len()
                ),
            });
        }
        return Ok(all);
    }
    let mut all = Vec::with_capacity(n as usize);
    let mut failed: Option<LevelError> = None;
    let (_, mine): (u64, T) = decode(Rank(0), &own)?;
    all.push(mine);
    for r in 1..n {
        match recv_round::<T>(comm, Rank(r), tag, seq) {
            Ok((_, v)) => all.push(v),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    let answer: Result<&Vec<T>, String> = match &failed {
        None => Ok(&all),
        Some(e) => Err(e.to_string()),
    };
    let bytes = encode(&(seq, answer));
    for r in 1..n {
        // A rank that cannot be reached is already failing the round.
        if let Err(e) = comm.send_bytes(Rank(r), tag, bytes.clone()) {
            failed.get_or_insert(e.into());
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(all),
    }
}

/// Receives `from`'s message of round `seq` on `tag` (another round's is an error).
fn recv_round<T: DeserializeOwned>(
    comm: &Comm,
    from: Rank,
    tag: Tag,
    seq: u64,
) -> Result<(u64, T), LevelError> {
    let env = comm.recv_envelope(Some(from), Some(tag))?;
    let (s, v): (u64, T) = decode(from, &env.payload)?;
    check(from, seq, s)?;
    Ok((s, v))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing owned values into a Vec cannot fail.
    postcard::to_allocvec(value).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(from: Rank, bytes: &[u8]) -> Result<T, LevelError> {
    let (v, rest): (T, _) = postcard::take_from_bytes(bytes).map_err(|e| LevelError::Protocol {
        rank: from,
        detail: format!("level round message: {e}"),
    })?;
    if !rest.is_empty() {
        return Err(LevelError::Protocol {
            rank: from,
            detail: format!("{} trailing bytes after a level round message", rest.len()),
        });
    }
    Ok(v)
}

fn check(from: Rank, want: u64, got: u64) -> Result<(), LevelError> {
    if want == got {
        Ok(())
    } else {
        Err(LevelError::Protocol {
            rank: from,
            detail: format!("a message of the level round of checkpoint {got} in that of {want}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rank_gets_every_value_in_rank_order() {
        let got = lazarus_net::local(4, |comm| {
            let me = comm.rank().0;
            (1..=3u64)
                .map(|seq| all_of(&comm, TAG_OUTCOME, seq, &(me * 10)).unwrap())
                .collect::<Vec<_>>()
        })
        .unwrap();
        for per_rank in got {
            assert_eq!(per_rank, vec![vec![0, 10, 20, 30]; 3]);
        }
    }

    /// A bad message from one rank (here: of a later round) fails the round on every
    /// rank, and no rank is left waiting for rank 0 (the old exchange returned on rank 0
    /// at once and the others waited forever).
    #[test]
    fn a_bad_message_fails_the_round_on_every_rank_without_a_hang() {
        let got = lazarus_net::local(4, |comm| {
            let me = comm.rank().0;
            let seq = if me == 2 { 8 } else { 7 };
            all_of(&comm, TAG_OUTCOME, seq, &me).map_err(|e| e.to_string())
        })
        .unwrap();
        for (r, g) in got.iter().enumerate() {
            let e = g.as_ref().expect_err("the round fails everywhere");
            assert!(
                e.contains("a message of the level round of checkpoint"),
                "rank {r}: {e}"
            );
        }
    }
}

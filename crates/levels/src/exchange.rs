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
//! rank that is already in the next round never confuses the two.

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
/// the whole vector to every rank. `seq` is the round's number; a message of another
/// round, one that does not decode, or a vector of the wrong length is a
/// [`LevelError::Protocol`] naming the sender.
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
        let env = comm.recv_envelope(Some(Rank(0)), Some(tag))?;
        let (s, all): (u64, Vec<T>) = decode(Rank(0), &env.payload)?;
        check(Rank(0), seq, s)?;
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
    let (_, mine): (u64, T) = decode(Rank(0), &own)?;
    all.push(mine);
    for r in 1..n {
        let env = comm.recv_envelope(Some(Rank(r)), Some(tag))?;
        let (s, v): (u64, T) = decode(Rank(r), &env.payload)?;
        check(Rank(r), seq, s)?;
        all.push(v);
    }
    let bytes = encode(&(seq, &all));
    for r in 1..n {
        comm.send_bytes(Rank(r), tag, bytes.clone())?;
    }
    Ok(all)
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

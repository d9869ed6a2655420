//! What the unaligned runtime puts on the wire and in the repository.
//!
//! Control messages use four tags of the checkpoint tag space, starting at
//! [`UNALIGNED_TAG_BASE`]; nothing else in Lazarus uses that range, so a session can share a job
//! with other users of `Tag::checkpoint` as long as they stay below it. Markers are the
//! epoch as `u64` little-endian; 2PC messages and votes are postcard; `Done` is empty.
//!
//! The channel state is stored as one extra serde object of the rank's part, named
//! [`CHANNELS_OBJECT`], holding `ChannelState<SavedMessage>` in postcard.

use crate::unaligned::ChannelState;
use lazarus_format::{Epoch, ObjectInfo, ObjectKind, ObjectSpec};
use serde::{Deserialize, Serialize};

/// First checkpoint-space tag used by the unaligned runtime ("LZU" in ASCII, then 0..3).
pub const UNALIGNED_TAG_BASE: u32 = 0x4C5A_5500;
pub(crate) const TAG_MARKER: u32 = UNALIGNED_TAG_BASE;
pub(crate) const TAG_TO_PARTICIPANT: u32 = UNALIGNED_TAG_BASE + 1;
pub(crate) const TAG_VOTE: u32 = UNALIGNED_TAG_BASE + 2;
pub(crate) const TAG_DONE: u32 = UNALIGNED_TAG_BASE + 3;

/// Reserved object name of the channel state in a rank's part. A user state may not
/// contain an object of this name (a checkpoint refuses it).
pub const CHANNELS_OBJECT: &str = "lazarus.channels";
const CHANNELS_TYPE: &str = "ChannelState<SavedMessage>";

/// An application message as saved in the channel state: enough to deliver it again
/// exactly as it was sent (the sender is the channel's rank).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SavedMessage {
    /// the user tag it was sent with
    pub tag: u32,
    /// the sender's epoch stamped on it (always older than the snapshot's epoch)
    pub epoch: Epoch,
    /// the message bytes (one block on the wire: postcard writes them as the per-byte
    /// sequence would, so saved channel states keep their encoding)
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

pub(crate) fn encode_marker(e: Epoch) -> Vec<u8> {
    e.0.to_le_bytes().to_vec()
}

pub(crate) fn decode_marker(b: &[u8]) -> Option<Epoch> {
    let a: [u8; 8] = b.try_into().ok()?;
    Some(Epoch(u64::from_le_bytes(a)))
}

/// The manifest entry of the channel state (what `decode_channels` checks).
pub(crate) fn channels_info() -> ObjectInfo {
    ObjectInfo {
        name: CHANNELS_OBJECT.to_string(),
        type_name: CHANNELS_TYPE.to_string(),
        kind: ObjectKind::Serde,
        sharing: Some(lazarus_format::Sharing::Rank),
        layout: None,
    }
}

pub(crate) fn channels_object(
    cs: &ChannelState<SavedMessage>,
) -> Result<ObjectSpec<'static>, postcard::Error> {
    Ok(ObjectSpec {
        info: channels_info(),
        data: postcard::to_allocvec(cs)?.into(),
        hint: None,
    })
}

pub(crate) fn decode_channels(
    info: &ObjectInfo,
    data: &[u8],
) -> Result<ChannelState<SavedMessage>, String> {
    if info.type_name != CHANNELS_TYPE || info.kind != ObjectKind::Serde {
        return Err(format!(
            "object {CHANNELS_OBJECT:?} has type {:?}, expected serde {CHANNELS_TYPE:?}",
            info.type_name
        ));
    }
    postcard::from_bytes(data).map_err(|e| format!("object {CHANNELS_OBJECT:?}: postcard: {e}"))
}

/// Checks that a decoded channel state can be replayed in a world of `world` ranks, as
/// the snapshot of `epoch` (the checkpoint's, from its COMMIT, when recorded): every
/// sender is a rank of the world, every saved message is older than the snapshot, and
/// the snapshot is the checkpoint's. A state that fails this was not written by a
/// session (its digests matched, so it is damage): it must be found while loading, when
/// every rank can still fall back together, not once some rank restored its state.
pub(crate) fn check_channels(
    cs: &ChannelState<SavedMessage>,
    world: u32,
    epoch: Option<Epoch>,
) -> Result<(), String> {
    if let Some(e) = epoch.filter(|e| *e != cs.epoch) {
        return Err(format!(
            "object {CHANNELS_OBJECT:?}: channel state of epoch {} in a checkpoint of epoch {}",
            cs.epoch.0, e.0
        ));
    }
    for (from, msgs) in &cs.channels {
        if from.0 >= world {
            return Err(format!(
                "object {CHANNELS_OBJECT:?}: saved messages from {from}, outside a world of {world}"
            ));
        }
        if let Some(m) = msgs.iter().find(|m| m.epoch >= cs.epoch) {
            return Err(format!(
                "object {CHANNELS_OBJECT:?}: a saved message from {from} of epoch {}, not \
                 older than the snapshot's epoch {}",
                m.epoch.0, cs.epoch.0
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lazarus_format::Rank;

    #[test]
    fn channels_object_round_trips_and_rejects_garbage() {
        let cs = ChannelState {
            epoch: Epoch(3),
            channels: vec![(
                Rank(1),
                vec![SavedMessage {
                    tag: 7,
                    epoch: Epoch(2),
                    payload: vec![1, 2, 3],
                }],
            )],
        };
        let o = channels_object(&cs).unwrap();
        assert_eq!(decode_channels(&o.info, &o.data).unwrap(), cs);
        assert!(decode_channels(&o.info, &[0xff; 3]).is_err());
        let mut bad = o.info.clone();
        bad.type_name = "u64".into();
        assert!(decode_channels(&bad, &o.data).is_err());
        assert_eq!(decode_marker(&encode_marker(Epoch(9))), Some(Epoch(9)));
        assert_eq!(decode_marker(&[1, 2]), None);
    }
}

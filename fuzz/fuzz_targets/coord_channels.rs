//! A rank's saved channel state (`lazarus.channels`, postcard of
//! `ChannelState<SavedMessage>`) as a restore reads it from a checkpoint: decoded and checked
//! for replay (`lazarus_coord::fuzz_channel_state`) in a world and at a checkpoint epoch
//! taken from the first two bytes. Must never panic or allocate in proportion to a claimed
//! length; a state that passes the check names only ranks of the world, holds only messages
//! older than its epoch (the checkpoint's, when given), re-encodes to itself and replays
//! every saved message exactly once.
#![no_main]

use lazarus_coord::{channels_object_info, fuzz_channel_state, Unaligned, UnalignedAction};
use lazarus_format::{Epoch, Rank};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [w, e, bytes @ ..] = data else {
        return;
    };
    let world = u32::from(*w % 8) + 1;
    let epoch = (*e != 0xff).then_some(Epoch(u64::from(*e % 8)));
    let info = channels_object_info();
    if let Ok(cs) = fuzz_channel_state(&info, bytes, world, epoch) {
        assert!(epoch.is_none_or(|e| e == cs.epoch));
        for (from, msgs) in &cs.channels {
            assert!(from.0 < world);
            assert!(msgs.iter().all(|m| m.epoch < cs.epoch));
        }
        let again = postcard::to_allocvec(&cs).expect("a decoded state encodes");
        let back = fuzz_channel_state(&info, &again, world, epoch).expect("re-encoded state");
        assert_eq!(back, cs);
        let (_, replay) = Unaligned::restore(Rank(0), world, cs.clone()).expect("checked state");
        assert_eq!(replay.len(), cs.len());
        assert!(replay
            .iter()
            .all(|a| matches!(a, UnalignedAction::Deliver { .. })));
    }
});

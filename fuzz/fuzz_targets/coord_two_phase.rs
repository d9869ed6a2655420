//! The two-phase commit's messages from peers (`ToParticipant` to a participant,
//! `VoteMsg<PartReceipt>` to the coordinator, decoded with postcard as both runtimes do)
//! fed into the pure state machines (`lazarus_coord::fuzz_two_phase`: a coordinator and a
//! participant running real rounds that the decoded messages interleave with). A hostile
//! or buggy peer must never panic the leader or a rank: every step is `Ok` or `Err`, and
//! the guarantees hold (COMMIT only with a durable vote of the round from every rank, each
//! round decided once, each part written once, a vote never changed).
#![no_main]

use lazarus_coord::fuzz_two_phase;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = fuzz_two_phase(data) {
        panic!("two-phase commit guarantee broken: {e}");
    }
});

//! The L2 copy protocol's decoders (`lazarus_levels::CopyMsg::decode` and the in-place
//! decoder of streamed chunks): another rank's bytes must decode or be refused, never
//! panic; what decodes re-encodes to a message that decodes to itself, and both decoders
//! agree on every `Chunks` message (`lazarus_levels::fuzz_copy_msg`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| lazarus_levels::fuzz_copy_msg(data));

//! Frame decoders of the runtime: arbitrary bytes must decode or fail, never panic. Also
//! the sealed-frame reader, on the raw bytes and on the bytes cut into bodies and sealed
//! first (so that the code after the MAC check sees arbitrary frames).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lazarus_net::wire::decode(data);
    let _ = lazarus_net::wire::hello_version(data);
    let _ = lazarus_net::fuzz_sealed_frames(data);
});

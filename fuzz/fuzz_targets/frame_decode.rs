//! Frame decoder of the runtime: arbitrary bytes must decode or fail, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lazarus_net::wire::decode(data);
});

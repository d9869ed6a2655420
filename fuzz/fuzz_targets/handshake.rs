//! Authentication handshake against arbitrary peer bytes: error or success, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lazarus_net::fuzz_handshake(data);
});

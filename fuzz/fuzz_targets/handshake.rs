//! Both sides of the authentication handshake (wire version 2) against arbitrary peer
//! bytes: error or success, never panic or over-allocate.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lazarus_net::fuzz_handshake(data);
});

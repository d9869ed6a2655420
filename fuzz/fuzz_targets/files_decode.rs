//! The managed files' journal, base state and part index are read back after crashes and
//! from repositories: decoding any bytes must never panic or over-allocate.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lazarus_files::decode_untrusted(data);
});

//! The L3 parity header (`lazarus_levels::slots::Header::decode`), read from another rank's
//! parity update or from a parity repository: must decode or be refused, never panic;
//! what decodes re-encodes to a header that decodes to itself, and its slots cut a region
//! of its length into chunks without panicking.
#![no_main]

use lazarus_levels::slots::Header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::decode("fuzz", data) {
        let again = Header::decode("fuzz", &h.encode()).expect("re-encoded header decodes");
        assert_eq!(again, h);
        let _ = h.chunks_of(&vec![0u8; (h.region_len as usize).min(4096)]);
    }
});

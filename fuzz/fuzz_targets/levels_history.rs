//! The multi-level history record's decoder (`lazarus_levels::History::decode`): the
//! bytes of `LEVELS-HISTORY` in a repository must decode or be refused, never panic; what
//! decodes re-encodes to a record that decodes to itself.
#![no_main]

use lazarus_levels::History;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = History::decode(data, "LEVELS-HISTORY") {
        let bytes = h.encode().expect("a decoded record encodes");
        let again = History::decode(&bytes, "LEVELS-HISTORY").expect("re-encoded record decodes");
        assert_eq!(again, h);
    }
});

//! The N→M piece transfer's decoder (`lazarus_levels::PiecesMsg::decode`): another rank's
//! bytes must decode or be refused, never panic; what decodes re-encodes to a message
//! that decodes to itself.
#![no_main]

use lazarus_format::Rank;
use lazarus_levels::PiecesMsg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = PiecesMsg::decode(Rank(1), data) {
        let again = PiecesMsg::decode(Rank(1), &m.encode()).expect("re-encoded message decodes");
        assert_eq!(again, m);
    }
});

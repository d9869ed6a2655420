//! Wire form of exact sums (sent between ranks by every DVec sum and `ExactSums::allreduce`):
//! arbitrary bytes must decode or fail, never panic; whatever decodes re-encodes to an
//! accumulator that decodes equal, and merging it many times must not overflow.
#![no_main]
use lazarus_dist::{ExactSum, ExactSums};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = postcard::from_bytes::<ExactSum>(data) {
        let again: ExactSum = postcard::from_bytes(&postcard::to_allocvec(&s).unwrap()).unwrap();
        assert_eq!(again, s);
        let mut m = s.clone();
        for _ in 0..1024 {
            m.merge(&s);
        }
        let _ = m.value();
    }
    if let Ok(v) = postcard::from_bytes::<ExactSums>(data) {
        let _ = v.values();
    }
});

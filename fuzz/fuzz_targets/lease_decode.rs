//! The S3/memory lease record (`LOCK` of backends without flock) from untrusted bytes:
//! must never panic; whatever decodes re-encodes to a record that decodes to itself.
#![no_main]

use lazarus_store::LeaseRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = LeaseRecord::decode(data) {
        assert!(r.generation >= 1);
        assert_eq!(LeaseRecord::decode(&r.encode()), Ok(r));
    }
});

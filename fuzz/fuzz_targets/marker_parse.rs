//! Output markers come from any rank program's stdout, so they are untrusted bytes: parsing
//! never panics, and whatever parses formats back to a line that parses the same.
#![no_main]
use lazarus_supervisor::{Marker, MARKER_PREFIX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut line = MARKER_PREFIX.as_bytes().to_vec();
    line.extend_from_slice(data);
    for l in [&line[..], data] {
        if let Some(Ok(m)) = Marker::parse(l) {
            assert_eq!(Marker::parse(m.line().as_bytes()), Some(Ok(m)));
        }
    }
});

//! Output markers come from any rank program's stdout, so they are untrusted bytes: parsing
//! never panics, and whatever parses formats back to a line that parses the same.
#![no_main]
use lazarus_supervisor::{Marker, MARKER_PREFIX};
use libfuzzer_sys::fuzz_target;

const KEY: &str = "0123456789abcdef0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    let mut line = format!("{MARKER_PREFIX}{KEY}:").into_bytes();
    line.extend_from_slice(data);
    for l in [&line[..], data] {
        if let Some(Ok(m)) = Marker::parse(l, KEY) {
            assert_eq!(Marker::parse(m.line(KEY).as_bytes(), KEY), Some(Ok(m)));
        }
    }
});

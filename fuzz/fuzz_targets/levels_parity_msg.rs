//! The L3 parity protocol's decoder (`lazarus_levels::l3::ParityMsg::decode`), and the
//! parity rebuild fed with what it carries: another rank's bytes must decode or be
//! refused, never panic; what decodes re-encodes to a message that decodes to itself; a
//! shard of any length with any recorded layout is refused or rebuilds, never panics; a
//! parity update's header decodes or is refused, and its segments update a shard or are
//! refused.
#![no_main]

use lazarus_format::Rank;
use lazarus_levels::l3::ParityMsg;
use lazarus_levels::parity::{rebuild, update, Layout};
use lazarus_levels::slots::Header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = ParityMsg::decode(Rank(1), data) {
        let again = ParityMsg::decode(Rank(1), &m.encode()).expect("re-encoded message decodes");
        assert_eq!(again, m);
        if let ParityMsg::Shard {
            shard, bytes, seq, ..
        } = &m
        {
            // A layout as a damaged parity COMMIT could record it (small, to stay fast).
            let k = (seq % 4) as usize + 1;
            let layout = Layout {
                shard_bytes: (seq >> 8) as usize % 512,
                lens: (0..k as u64).map(|i| (seq >> (16 + i)) % 300).collect(),
                m: (*shard as usize % 3) + 1,
            };
            let present: Vec<(usize, &[u8])> = Vec::new();
            let _ = rebuild(&layout, &present, &[(*shard as usize, bytes.as_slice())]);
        }
        if let ParityMsg::Update {
            header,
            segments,
            index,
            ..
        } = &m
        {
            // A header and segments as another rank could send them: decoded and applied
            // to a small shard, or refused.
            if let Ok(h) = Header::decode("fuzz", header) {
                let again = Header::decode("fuzz", &h.encode()).expect("re-encoded header decodes");
                assert_eq!(again, h);
                let _ = h.chunks_of(&vec![0u8; (h.region_len as usize).min(4096)]);
            }
            let mut shard = vec![0u8; 256];
            let _ = update(&mut shard, 0, (*index as usize % 3) + 1, 2, &[(0, segments.as_slice())]);
        }
    }
});

//! Arbitrary object lists fed to `lazarus_state::restore`: must return an error, never panic.
#![no_main]

use lazarus_format::{DType, LoadedObject, ObjectInfo, ObjectKind};
use lazarus_state::{Checkpoint, Serde};
use libfuzzer_sys::fuzz_target;

#[derive(Checkpoint, Default)]
#[checkpoint(crate = "lazarus_state")]
struct Target {
    a: u64,
    v: Vec<f64>,
    arr: [u16; 3],
    s: String,
    o: Option<Vec<u32>>,
    w: Serde<Vec<String>>,
}

const NAMES: [&str; 7] = ["a", "v", "arr", "s", "o", "w", "value"];
const TYPES: [&str; 6] = ["u64", "Vec<f64>", "[u16; 3]", "String", "Option<Vec<u32>>", "Vec<String>"];
// Recorded layouts (format 1.3): right ones, wrong ones and garbage.
const LAYOUTS: [&str; 5] = ["[String]", "Some([u32])", "None", "[u64]", "#0123456789abcdef"];

fuzz_target!(|data: &[u8]| {
    // Each record: name selector, type selector, kind selector, len byte, payload length, payload.
    let mut objs = Vec::new();
    let mut rest = data;
    while let [n, t, k, len, plen, tail @ ..] = rest {
        let take = (*plen as usize).min(tail.len());
        let (payload, next) = tail.split_at(take);
        let kind = if k % 2 == 0 {
            ObjectKind::Serde
        } else {
            let dtype = [DType::F64, DType::U16, DType::U8][(*k as usize / 2) % 3];
            ObjectKind::Bulk { dtype, len: *len as u64, global: None }
        };
        let info = ObjectInfo {
            name: NAMES[*n as usize % NAMES.len()].to_string(),
            type_name: TYPES[*t as usize % TYPES.len()].to_string(),
            kind,
            sharing: None,
            layout: (len % 2 == 1).then(|| LAYOUTS[*len as usize / 2 % LAYOUTS.len()].to_string()),
        };
        objs.push(LoadedObject { info, data: payload.to_vec() });
        rest = next;
    }
    let _ = lazarus_state::restore(&mut Target::default(), objs);
});

//! Property: save then restore gives back the same value, for every supported field type,
//! and restoring arbitrary bytes never panics.

use lazarus_state::{restore, save, to_loaded, Checkpoint};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
enum Mode {
    #[default]
    Off,
    On(u32),
    Named {
        s: String,
    },
}

#[derive(Checkpoint, Clone, Debug, PartialEq, Default)]
struct Nested {
    a: i16,
    b: [u8; 4],
}

#[derive(Checkpoint, Clone, Debug, PartialEq, Default)]
struct All {
    u8_: u8,
    i8_: i8,
    u16_: u16,
    i16_: i16,
    u32_: u32,
    i32_: i32,
    u64_: u64,
    i64_: i64,
    usize_: usize,
    f32_: f32,
    f64_: f64,
    b: bool,
    c: char,
    s: String,
    o: Option<u16>,
    vu8: Vec<u8>,
    vi16: Vec<i16>,
    vu32: Vec<u32>,
    vi64: Vec<i64>,
    vf32: Vec<f32>,
    vf64: Vec<f64>,
    arr: [f64; 5],
    #[checkpoint(serde)]
    mode: Mode,
    #[checkpoint(serde)]
    words: Vec<String>,
    nested: Nested,
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        Just(Mode::Off),
        any::<u32>().prop_map(Mode::On),
        ".{0,8}".prop_map(|s| Mode::Named { s })
    ]
}

prop_compose! {
    fn all()(
        s in (any::<u8>(), any::<i8>(), any::<u16>(), any::<i16>(), any::<u32>(), any::<i32>(), any::<u64>(), any::<i64>()),
        t in (any::<usize>(), any::<f32>(), any::<f64>(), any::<bool>(), any::<char>(), ".{0,16}", any::<Option<u16>>()),
        v in (prop::collection::vec(any::<u8>(), 0..64), prop::collection::vec(any::<i16>(), 0..64),
              prop::collection::vec(any::<u32>(), 0..64), prop::collection::vec(any::<i64>(), 0..64),
              prop::collection::vec(any::<f32>(), 0..64), prop::collection::vec(any::<f64>(), 0..64)),
        arr in any::<[f64; 5]>(),
        mode in mode(),
        words in prop::collection::vec(".{0,6}", 0..4),
        nested in (any::<i16>(), any::<[u8; 4]>()),
    ) -> All {
        All {
            u8_: s.0, i8_: s.1, u16_: s.2, i16_: s.3, u32_: s.4, i32_: s.5, u64_: s.6, i64_: s.7,
            usize_: t.0, f32_: t.1, f64_: t.2, b: t.3, c: t.4, s: t.5, o: t.6,
            vu8: v.0, vi16: v.1, vu32: v.2, vi64: v.3, vf32: v.4, vf64: v.5,
            arr, mode, words, nested: Nested { a: nested.0, b: nested.1 },
        }
    }
}

/// Bitwise comparison so NaN payloads count as equal when they are the same bits.
fn bits(v: &All) -> Vec<u8> {
    save(v)
        .unwrap()
        .iter()
        .flat_map(|o| o.data.to_vec())
        .collect()
}

proptest! {
    #[test]
    fn save_restore_round_trips(v in all()) {
        let objs = save(&v).unwrap();
        let mut back = All::default();
        restore(&mut back, to_loaded(&objs)).unwrap();
        prop_assert_eq!(bits(&back), bits(&v));
        prop_assert_eq!(&back.vf64.len(), &v.vf64.len());
        prop_assert_eq!(&back.s, &v.s);
        prop_assert_eq!(&back.mode, &v.mode);
    }

    #[test]
    fn restoring_mutated_bytes_never_panics(v in all(), idx in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut objs = to_loaded(&save(&v).unwrap());
        let i = idx.index(objs.len());
        let o = &mut objs[i];
        if !o.data.is_empty() {
            let j = cut.index(o.data.len());
            o.data[j] ^= byte | 1;
            if byte % 2 == 0 { o.data.truncate(j); }
        }
        let _ = restore(&mut All::default(), objs);
    }
}

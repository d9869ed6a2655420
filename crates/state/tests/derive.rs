//! The derive and the schema check, end to end through save/restore in memory.

use lazarus_format::{DType, LoadedObject, ObjectKind};
use lazarus_state::{restore, save, to_loaded, Checkpoint, Serde, StateError, StateErrorKind};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
struct Params {
    dt: f64,
    label: String,
}

#[derive(Checkpoint, Debug, Default, PartialEq)]
struct Inner {
    hits: u32,
    weights: [f32; 3],
}

#[derive(Checkpoint, Debug, Default, PartialEq)]
#[checkpoint(after_restore = "Sim::rebuild")]
struct Sim {
    step: u64,
    grid: Vec<f64>,
    #[checkpoint(serde)]
    params: Params,
    inner: Inner,
    maybe: Option<i64>,
    name: String,
    #[checkpoint(skip)]
    total: f64,
    #[checkpoint(skip)]
    rebuilt: bool,
}

impl Sim {
    fn rebuild(&mut self) -> Result<(), StateError> {
        self.total = self.grid.iter().sum();
        self.rebuilt = true;
        Ok(())
    }
    fn sample() -> Self {
        Sim {
            step: 42,
            grid: vec![1.0, 2.5, -3.0],
            params: Params {
                dt: 0.25,
                label: "heat".into(),
            },
            inner: Inner {
                hits: 9,
                weights: [0.5, 1.5, 2.5],
            },
            maybe: Some(-7),
            name: "sim".into(),
            total: 0.5,
            rebuilt: false,
        }
    }
}

#[test]
fn objects_are_named_by_field_path_with_kinds() {
    let s = Sim::sample();
    let objs = save(&s).unwrap();
    let got: Vec<(&str, &str)> = objs
        .iter()
        .map(|o| (o.info.name.as_str(), o.info.type_name.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("step", "u64"),
            ("grid", "Vec<f64>"),
            ("params", "Params"),
            ("inner.hits", "u32"),
            ("inner.weights", "[f32; 3]"),
            ("maybe", "Option<i64>"),
            ("name", "String"),
        ]
    );
    assert_eq!(
        objs[1].info.kind,
        ObjectKind::Bulk {
            dtype: DType::F64,
            len: 3,
            global: None
        }
    );
    let le: Vec<u8> = s.grid.iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(&*objs[1].data, &le[..]);
    #[cfg(target_endian = "little")]
    assert!(
        matches!(objs[1].data, std::borrow::Cow::Borrowed(_)),
        "bulk data must not be copied on LE hosts"
    );
}

#[test]
fn round_trip_restores_fields_and_rebuilds_skipped_ones() {
    let s = Sim::sample();
    let loaded = to_loaded(&save(&s).unwrap());
    let mut back = Sim {
        total: 100.0,
        ..Default::default()
    };
    restore(&mut back, loaded).unwrap();
    assert_eq!(back.grid, s.grid);
    assert_eq!(back.params, s.params);
    assert_eq!(back.inner, s.inner);
    assert_eq!(back.maybe, Some(-7));
    assert_eq!(
        back.total, 0.5,
        "skip field rebuilt by the hook from restored data"
    );
    assert!(back.rebuilt);
}

#[derive(Checkpoint, Default)]
struct SimV2 {
    step: u64,
    grid: Vec<f32>,
}

#[derive(Checkpoint, Default)]
struct SimTooMuch {
    step: u64,
    grid: Vec<f64>,
    #[checkpoint(serde)]
    params: Params,
    inner: Inner,
    maybe: Option<i64>,
    name: String,
    extra: u8,
}

fn loaded_sample() -> Vec<LoadedObject> {
    to_loaded(&save(&Sim::sample()).unwrap())
}

#[test]
fn dtype_change_is_a_kind_mismatch_naming_the_field() {
    let err = restore(&mut SimV2::default(), loaded_sample()).unwrap_err();
    assert_eq!(err.field(), "grid");
    assert_eq!(err.kind(), StateErrorKind::Schema);
    assert!(err.to_string().contains("grid"), "{err}");
}

#[test]
fn removed_fields_are_reported_as_unexpected() {
    #[derive(Checkpoint, Default)]
    struct Small {
        step: u64,
        grid: Vec<f64>,
    }
    let err = restore(&mut Small::default(), loaded_sample()).unwrap_err();
    assert!(
        matches!(&err, StateError::Unexpected { field, count: 5 } if field == "inner.hits"),
        "{err}"
    );
}

#[test]
fn added_field_is_reported_as_missing() {
    let err = restore(&mut SimTooMuch::default(), loaded_sample()).unwrap_err();
    assert!(
        matches!(&err, StateError::Missing { field } if field == "extra"),
        "{err}"
    );
}

#[test]
fn serde_type_change_is_a_type_mismatch() {
    #[derive(Serialize, Deserialize, Default)]
    struct Other {
        dt: f64,
    }
    #[derive(Checkpoint, Default)]
    struct S {
        params: Serde<Other>,
    }
    #[derive(Checkpoint, Default)]
    struct T {
        #[checkpoint(serde)]
        params: Params,
    }
    let objs = to_loaded(&save(&T::default()).unwrap());
    let err = restore(&mut S::default(), objs).unwrap_err();
    assert!(
        matches!(&err, StateError::TypeMismatch { field, expected, found } if field == "params" && expected == "Other" && found == "Params"),
        "{err}"
    );
}

/// Two versions of serde types that keep their names while their insides change so that
/// postcard decodes the old bytes without error into wrong values.
mod evolved {
    pub mod v1 {
        #[derive(serde::Serialize, serde::Deserialize, Debug, Default, Clone)]
        pub struct Knobs {
            pub offset: i64,
            pub dt: f64,
            pub dx: f64,
        }
        #[derive(serde::Serialize, serde::Deserialize, Debug, Default, Clone, PartialEq)]
        pub enum Mode {
            #[default]
            Explicit,
            Implicit,
        }
    }
    pub mod retyped {
        #[derive(serde::Serialize, serde::Deserialize, Debug, Default)]
        pub struct Knobs {
            pub offset: u64, // was i64
            pub dt: f64,
            pub dx: f64,
        }
    }
    pub mod swapped {
        #[derive(serde::Serialize, serde::Deserialize, Debug, Default)]
        pub struct Knobs {
            pub offset: i64,
            pub dx: f64, // dt and dx swapped
            pub dt: f64,
        }
    }
    pub mod reordered {
        #[derive(serde::Serialize, serde::Deserialize, Debug, Default, PartialEq)]
        pub enum Mode {
            #[default]
            Implicit, // variants reordered
            Explicit,
        }
    }
    pub mod renamed_in_rust {
        /// The Rust field was renamed, the saved name kept with `#[serde(rename)]`.
        #[derive(serde::Serialize, serde::Deserialize, Debug, Default)]
        pub struct Knobs {
            pub offset: i64,
            #[serde(rename = "dt")]
            pub time_step: f64,
            pub dx: f64,
        }
    }
}

fn knobs_v1() -> evolved::v1::Knobs {
    evolved::v1::Knobs {
        offset: -3,
        dt: 0.1,
        dx: 2.0,
    }
}

fn layout_refusal<New: Serialize + serde::de::DeserializeOwned + Default>(
    saved: impl Serialize + serde::de::DeserializeOwned,
) -> StateError {
    let objs = to_loaded(&save(&Serde(saved)).unwrap());
    match restore(&mut Serde(New::default()), objs) {
        Err(e) => e,
        Ok(()) => panic!("restored without an error"),
    }
}

/// Regression: for a serde type only the name was checked and postcard records no schema,
/// so a type changed inside under the same name restored old checkpoints into wrong values
/// without any error (`-3_i64` read as `5_u64`, `dt` and `dx` exchanged, `Implicit` read
/// as `Explicit`). The recorded layout now refuses each of them, naming the field and both
/// layouts.
#[test]
fn serde_type_changed_inside_under_the_same_name_was_misread_silently() {
    #[derive(Checkpoint, Default)]
    struct Old {
        #[checkpoint(serde)]
        p: evolved::v1::Knobs,
        m: Serde<evolved::v1::Mode>,
    }
    #[derive(Checkpoint, Default)]
    struct Retyped {
        #[checkpoint(serde)]
        p: evolved::retyped::Knobs,
        m: Serde<evolved::v1::Mode>,
    }
    #[derive(Checkpoint, Default)]
    struct Swapped {
        #[checkpoint(serde)]
        p: evolved::swapped::Knobs,
        m: Serde<evolved::v1::Mode>,
    }
    #[derive(Checkpoint, Default)]
    struct Reordered {
        #[checkpoint(serde)]
        p: evolved::v1::Knobs,
        m: Serde<evolved::reordered::Mode>,
    }
    let old = Old {
        p: knobs_v1(),
        m: Serde(evolved::v1::Mode::Implicit),
    };
    let objs = to_loaded(&save(&old).unwrap());

    let err = restore(&mut Retyped::default(), objs.clone()).unwrap_err();
    assert!(
        matches!(&err, StateError::LayoutMismatch { field, type_name, saved, restored }
            if field == "p" && type_name == "Knobs"
                && saved == "Knobs{offset:int,dt:f64,dx:f64}"
                && restored == "Knobs{offset:uint,dt:f64,dx:f64}"),
        "{err}"
    );
    assert_eq!(err.kind(), StateErrorKind::Schema);
    let text = err.to_string();
    assert!(
        text.contains("field `p`") && text.contains("offset:int"),
        "{text}"
    );

    let err = restore(&mut Swapped::default(), objs.clone()).unwrap_err();
    assert!(
        matches!(&err, StateError::LayoutMismatch { field, restored, .. }
            if field == "p" && restored == "Knobs{offset:int,dx:f64,dt:f64}"),
        "{err}"
    );

    let err = restore(&mut Reordered::default(), objs.clone()).unwrap_err();
    assert!(
        matches!(&err, StateError::LayoutMismatch { field, saved, restored, .. }
            if field == "m" && saved == "Mode::Implicit#1" && restored == "Mode::Explicit#1"),
        "{err}"
    );

    // The unchanged types still restore the saved values.
    let mut same = Old::default();
    restore(&mut same, objs).unwrap();
    assert_eq!((same.p.offset, same.p.dt, same.p.dx), (-3, 0.1, 2.0));
    assert_eq!(same.m.0, evolved::v1::Mode::Implicit);
}

#[test]
fn reordered_variants_inside_a_sequence_are_refused_even_when_the_set_of_names_is_equal() {
    use evolved::{reordered, v1};
    // [Explicit#0, Implicit#1] decodes under the reordered type as [Implicit#0, Explicit#1]:
    // the same two names, other indexes.
    let err = layout_refusal::<Vec<reordered::Mode>>(vec![v1::Mode::Explicit, v1::Mode::Implicit]);
    assert!(matches!(err, StateError::LayoutMismatch { .. }), "{err}");
}

#[test]
fn changes_the_saved_value_never_reaches_restore_it() {
    use evolved::{renamed_in_rust, reordered, retyped, v1};
    // A Rust rename that keeps the serde name reads the same bytes the same way.
    let objs = to_loaded(&save(&Serde(knobs_v1())).unwrap());
    let mut renamed = Serde(renamed_in_rust::Knobs::default());
    restore(&mut renamed, objs).unwrap();
    assert_eq!(
        (renamed.0.offset, renamed.0.time_step, renamed.0.dx),
        (-3, 0.1, 2.0)
    );
    // `None` means the same whatever the payload type became.
    let objs = to_loaded(&save(&Serde(None::<v1::Knobs>)).unwrap());
    let mut none = Serde(Some(retyped::Knobs::default()));
    restore(&mut none, objs).unwrap();
    assert!(none.0.is_none());
    // An empty sequence of reordered variants holds no variant to misread.
    let objs = to_loaded(&save(&Serde(Vec::<v1::Mode>::new())).unwrap());
    let mut empty = Serde(vec![reordered::Mode::Explicit]);
    restore(&mut empty, objs).unwrap();
    assert!(empty.0.is_empty());
}

#[test]
fn a_hash_map_restores_although_each_process_iterates_it_in_another_order() {
    use std::collections::HashMap;
    let mut m: HashMap<String, Option<Vec<u32>>> = HashMap::new();
    for i in 0..100u32 {
        m.insert(format!("k{i}"), (i % 2 == 0).then(|| vec![i; 3]));
    }
    let objs = to_loaded(&save(&Serde(m.clone())).unwrap());
    // A map built in another order (as another process would) restores without a refusal.
    let mut back = Serde(HashMap::new());
    restore(&mut back, objs).unwrap();
    assert_eq!(back.0, m);
}

#[test]
fn objects_written_before_layouts_were_recorded_are_checked_by_name_only() {
    // A format 1.2 writer recorded no layout: the old behaviour, no refusal.
    let mut objs = to_loaded(&save(&Serde(knobs_v1())).unwrap());
    assert!(objs[0].info.layout.is_some());
    objs[0].info.layout = None;
    let mut swapped = Serde(evolved::swapped::Knobs::default());
    restore(&mut swapped, objs).unwrap();
    assert_eq!((swapped.0.dx, swapped.0.dt), (0.1, 2.0));
}

#[test]
fn plain_leaves_record_no_layout_beyond_their_type_name() {
    #[derive(Checkpoint, Default)]
    struct Counters {
        step: u64,
        name: String,
        flag: bool,
        count: usize,
        maybe: Option<u32>,
    }
    let c = Counters {
        maybe: Some(1),
        ..Default::default()
    };
    let objs = save(&c).unwrap();
    let layouts: Vec<_> = objs.iter().map(|o| o.info.layout.as_deref()).collect();
    assert_eq!(layouts, [None, None, None, None, Some("Some(uint)")]);
}

/// Review finding: postcard writes 16- to 128-bit integers as the same varints, so a field
/// widened from `u32` to `u64` (or `i16` to `i64`) reads the same values; tracing each
/// width by name refused it. Narrowing still fails where a value does not fit.
#[test]
fn a_widened_integer_field_restores_and_a_narrowed_one_fails_on_a_value_that_does_not_fit() {
    mod narrow {
        #[derive(serde::Serialize, serde::Deserialize, Default, Debug, PartialEq)]
        pub struct Counts {
            pub n: u32,
            pub d: i16,
        }
    }
    mod wide {
        #[derive(serde::Serialize, serde::Deserialize, Default, Debug, PartialEq)]
        pub struct Counts {
            pub n: u64,
            pub d: i64,
        }
    }
    let objs = to_loaded(&save(&Serde(narrow::Counts { n: 70_000, d: -300 })).unwrap());
    let mut w = Serde(wide::Counts::default());
    restore(&mut w, objs).unwrap();
    assert_eq!(w.0, wide::Counts { n: 70_000, d: -300 });

    let objs = to_loaded(&save(&Serde(wide::Counts { n: 1 << 40, d: 5 })).unwrap());
    let mut n = Serde(narrow::Counts::default());
    let err = restore(&mut n, objs).unwrap_err();
    assert!(matches!(err, StateError::Decode { .. }), "{err}");
}

#[test]
fn array_length_change_is_a_length_error() {
    #[derive(Checkpoint, Default)]
    struct A {
        w: [u16; 4],
    }
    #[derive(Checkpoint, Default)]
    struct B {
        #[checkpoint(rename = "w")]
        w2: Vec<u16>,
    }
    // Same dtype, different container: the type name differs.
    let objs = to_loaded(&save(&A { w: [1, 2, 3, 4] }).unwrap());
    let err = restore(&mut B::default(), objs.clone()).unwrap_err();
    assert!(matches!(err, StateError::TypeMismatch { .. }), "{err}");
    // A truncated payload is a length error, not a panic.
    let mut bad = objs;
    bad[0].data.pop();
    let err = restore(&mut A::default(), bad).unwrap_err();
    assert!(
        matches!(&err, StateError::Length { field, .. } if field == "w"),
        "{err}"
    );
}

#[test]
fn rename_and_tuple_and_unit_structs() {
    #[derive(Checkpoint, Default, Debug, PartialEq)]
    struct Pair(u8, Vec<i32>);
    #[derive(Checkpoint, Default, Debug, PartialEq)]
    struct Unit;
    #[derive(Checkpoint, Default, Debug, PartialEq)]
    struct Outer {
        #[checkpoint(rename = "p")]
        pair: Pair,
        unit: Unit,
    }
    let v = Outer {
        pair: Pair(3, vec![-1, 2]),
        unit: Unit,
    };
    let objs = save(&v).unwrap();
    let names: Vec<_> = objs.iter().map(|o| o.info.name.clone()).collect();
    assert_eq!(names, ["p.0", "p.1"]);
    let mut back = Outer::default();
    restore(&mut back, to_loaded(&objs)).unwrap();
    assert_eq!(back, v);
}

#[test]
fn generic_structs_and_nested_hooks() {
    #[derive(Checkpoint, Default)]
    #[checkpoint(after_restore = "Leaf::hook")]
    struct Leaf {
        x: u8,
        #[checkpoint(skip)]
        seen: u8,
    }
    impl Leaf {
        fn hook(&mut self) -> Result<(), StateError> {
            self.seen = self.x + 1;
            Ok(())
        }
    }
    #[derive(Checkpoint, Default)]
    struct G<T> {
        val: T,
        leaf: Leaf,
    }
    let g = G {
        val: vec![1u64, 2],
        leaf: Leaf { x: 4, seen: 0 },
    };
    let mut back = G::<Vec<u64>>::default();
    restore(&mut back, to_loaded(&save(&g).unwrap())).unwrap();
    assert_eq!(back.val, vec![1, 2]);
    assert_eq!(back.leaf.seen, 5, "nested hook ran");
}

#[test]
fn hook_errors_propagate() {
    #[derive(Checkpoint, Default)]
    #[checkpoint(after_restore = "Bad::hook")]
    struct Bad {
        x: u8,
    }
    impl Bad {
        fn hook(&mut self) -> Result<(), StateError> {
            Err(StateError::custom("x", "cannot rebuild"))
        }
    }
    let err = restore(
        &mut Bad::default(),
        to_loaded(&save(&Bad { x: 1 }).unwrap()),
    )
    .unwrap_err();
    assert_eq!(err.kind(), StateErrorKind::Custom);
    assert_eq!(err.field(), "x");
}

#[test]
fn root_leaf_and_duplicates() {
    let v = vec![1.0f32, 2.0];
    let objs = save(&v).unwrap();
    assert_eq!(objs[0].info.name, lazarus_state::ROOT_NAME);
    let mut loaded = to_loaded(&objs);
    loaded.push(loaded[0].clone());
    let err = restore(&mut Vec::<f32>::new(), loaded).unwrap_err();
    assert!(matches!(err, StateError::Duplicate { .. }), "{err}");
}

#[test]
fn garbage_serde_bytes_are_a_decode_error() {
    let mut objs = to_loaded(&save(&Sim::sample()).unwrap());
    let p = objs.iter_mut().find(|o| o.info.name == "params").unwrap();
    p.data = vec![0xff; 3];
    let err = restore(&mut Sim::default(), objs).unwrap_err();
    assert_eq!(err.kind(), StateErrorKind::Codec);
    assert_eq!(err.field(), "params");
}

/// Format 1.2: every object records its sharing, from the declarations alone.
#[test]
fn replicated_declarations_are_recorded_per_object() {
    use lazarus_format::{GlobalRange, Sharing};

    #[derive(Checkpoint)]
    #[checkpoint(replicated)]
    struct Config {
        n: u32,
        names: Vec<u8>,
    }

    #[derive(Checkpoint)]
    struct Block {
        data: Vec<f64>,
    }

    impl Block {
        fn global(&self) -> GlobalRange {
            GlobalRange {
                start: 0,
                len: self.data.len() as u64,
                total: 10,
            }
        }
    }

    /// A hand-written distributed leaf (what `DVec` does).
    struct Dist(Block);
    impl Checkpoint for Dist {
        fn save<'a>(&'a self, out: &mut lazarus_state::StateWriter<'a>) -> Result<(), StateError> {
            out.bulk("DVec<f64>", &self.0.data, Some(self.0.global()))
        }
        fn restore(&mut self, _: &mut lazarus_state::StateReader) -> Result<(), StateError> {
            Ok(())
        }
    }

    #[derive(Checkpoint)]
    struct S {
        mine: Vec<u64>,
        #[checkpoint(replicated)]
        step: u64,
        #[checkpoint(serde, replicated)]
        label: String,
        config: Config,
        #[checkpoint(replicated)]
        inner: Block,
        #[checkpoint(replicated)] // distributed wins: a DVec is never copied whole
        field: Dist,
    }

    let s = S {
        mine: vec![1],
        step: 3,
        label: "x".into(),
        config: Config {
            n: 1,
            names: vec![2],
        },
        inner: Block { data: vec![1.0] },
        field: Dist(Block { data: vec![0.5; 4] }),
    };
    let got: Vec<(String, Option<Sharing>)> = lazarus_state::save(&s)
        .unwrap()
        .into_iter()
        .map(|o| (o.info.name, o.info.sharing))
        .collect();
    let want = [
        ("mine", Sharing::Rank),
        ("step", Sharing::Replicated),
        ("label", Sharing::Replicated),
        ("config.n", Sharing::Replicated),
        ("config.names", Sharing::Replicated),
        ("inner.data", Sharing::Replicated),
        ("field", Sharing::Distributed),
    ];
    let want: Vec<(String, Option<Sharing>)> = want
        .iter()
        .map(|(n, s)| (n.to_string(), Some(*s)))
        .collect();
    assert_eq!(got, want);
}

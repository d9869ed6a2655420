//! Properties of the serde layout check (crate docs, "Schema names"; docs/FORMAT.md 1.3):
//! it never refuses a value restored into its own type, and it refuses exactly the
//! restores into a changed type that would give a value other than the one saved.

use lazarus_state::{restore, save, to_loaded, Serde, StateError};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
enum Shape {
    #[default]
    Empty,
    Point(i32),
    Pair(u8, Option<String>),
    Boxed {
        inner: Vec<Shape>,
        tags: BTreeMap<String, Option<u16>>,
    },
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
struct Model {
    name: String,
    shapes: Vec<Shape>,
    index: HashMap<u32, Vec<Option<Shape>>>,
    nested: Vec<Vec<(u8, Shape)>>,
}

fn shape() -> impl Strategy<Value = Shape> {
    let leaf = prop_oneof![
        Just(Shape::Empty),
        any::<i32>().prop_map(Shape::Point),
        (any::<u8>(), prop::option::of("[a-z]{0,4}")).prop_map(|(a, b)| Shape::Pair(a, b)),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        (
            prop::collection::vec(inner, 0..4),
            prop::collection::btree_map("[a-c]{1,2}", prop::option::of(any::<u16>()), 0..3),
        )
            .prop_map(|(inner, tags)| Shape::Boxed { inner, tags })
    })
}

fn model() -> impl Strategy<Value = Model> {
    (
        "[a-z]{0,8}",
        prop::collection::vec(shape(), 0..12),
        prop::collection::hash_map(
            any::<u32>(),
            prop::collection::vec(prop::option::of(shape()), 0..3),
            0..6,
        ),
        prop::collection::vec(prop::collection::vec((any::<u8>(), shape()), 0..3), 0..3),
    )
        .prop_map(|(name, shapes, index, nested)| Model {
            name,
            shapes,
            index,
            nested,
        })
}

/// Three unit variants in the saved order, and the same names in another order.
mod saved {
    #[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq)]
    pub enum Color {
        Red,
        Green,
        Blue,
    }
}

macro_rules! reordered {
    ($name:ident: $a:ident, $b:ident, $c:ident) => {
        mod $name {
            #[derive(
                serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Default,
            )]
            pub enum Color {
                #[default]
                $a,
                $b,
                $c,
            }
            pub const ORDER: [&str; 3] = [stringify!($a), stringify!($b), stringify!($c)];
        }
    };
}
reordered!(rgb: Red, Green, Blue);
reordered!(rbg: Red, Blue, Green);
reordered!(grb: Green, Red, Blue);
reordered!(gbr: Green, Blue, Red);
reordered!(brg: Blue, Red, Green);
reordered!(bgr: Blue, Green, Red);

const SAVED_ORDER: [&str; 3] = ["Red", "Green", "Blue"];

fn color(i: u8) -> saved::Color {
    [saved::Color::Red, saved::Color::Green, saved::Color::Blue][usize::from(i % 3)]
}

/// Restores `saved` (a `Vec` of saved colors) into the reordered type `T` and checks the
/// outcome against what the bytes would mean: refused exactly when some saved variant's
/// index names another variant in `T`; otherwise the same names come back.
fn check_reorder<T>(saved: &[saved::Color], order: [&str; 3]) -> Result<(), TestCaseError>
where
    T: Serialize + serde::de::DeserializeOwned + Default + std::fmt::Debug,
{
    let objs = to_loaded(&save(&Serde(saved.to_vec())).expect("save"));
    let mut back: Serde<Vec<T>> = Serde(Vec::new());
    let misread = saved
        .iter()
        .any(|c| SAVED_ORDER[*c as usize] != order[*c as usize]);
    match restore(&mut back, objs) {
        Ok(()) => {
            prop_assert!(!misread, "a misreading restore was accepted: {:?}", back.0);
            let names: Vec<String> = back.0.iter().map(|c| format!("{c:?}")).collect();
            let want: Vec<String> = saved.iter().map(|c| format!("{c:?}")).collect();
            prop_assert_eq!(names, want);
        }
        Err(StateError::LayoutMismatch { .. }) => prop_assert!(misread, "refused a correct read"),
        Err(e) => prop_assert!(false, "unexpected error {e}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// No false refusal: any value restores into its own type, whatever its nesting, its
    /// maps' iteration order or the mix of variants in its sequences.
    #[test]
    fn a_value_restored_into_its_own_type_is_never_refused(m in model()) {
        let objs = to_loaded(&save(&Serde(m.clone())).expect("save"));
        let mut back = Serde(Model::default());
        restore(&mut back, objs).expect("restore");
        prop_assert_eq!(back.0, m);
    }

    /// Exactly the misreading restores are refused, for every reordering of three variants
    /// and any sequence of them (including the empty one, and ones that hold only the
    /// variants whose index did not move).
    #[test]
    fn reordered_variants_are_refused_exactly_when_a_saved_value_would_change(
        picks in prop::collection::vec(any::<u8>(), 0..20),
    ) {
        let saved: Vec<saved::Color> = picks.iter().map(|&i| color(i)).collect();
        check_reorder::<rgb::Color>(&saved, rgb::ORDER)?;
        check_reorder::<rbg::Color>(&saved, rbg::ORDER)?;
        check_reorder::<grb::Color>(&saved, grb::ORDER)?;
        check_reorder::<gbr::Color>(&saved, gbr::ORDER)?;
        check_reorder::<brg::Color>(&saved, brg::ORDER)?;
        check_reorder::<bgr::Color>(&saved, bgr::ORDER)?;
    }
}

/// A tree of one child a level, as deep as it is long.
#[derive(Serialize, Deserialize, Debug, Default)]
struct Tree {
    children: Vec<Tree>,
}

/// Was: the layout tracer needs several times postcard's stack a nested level, so saving a
/// value that postcard encodes and decodes fine (a 30k-deep tree on a 16 MiB stack)
/// overflowed the stack and aborted the process. Now a value nested deeper than the tracer
/// follows records no layout and is checked by name, as before format 1.3.
#[test]
fn regression_a_value_too_deep_to_trace_saves_and_restores_instead_of_overflowing_the_stack() {
    std::thread::Builder::new()
        .stack_size(16 << 20)
        .spawn(|| {
            let mut tree = Tree::default();
            for _ in 0..30_000 {
                tree = Tree {
                    children: vec![tree],
                };
            }
            let saved = Serde(tree);
            let objs = to_loaded(&save(&saved).unwrap());
            assert_eq!(objs[0].info.layout, None);
            let mut back = Serde(Tree::default());
            restore(&mut back, objs).unwrap();
            assert_eq!(back.0.children.len(), 1);
            // Dropping them recurses as deep as they nest.
            std::mem::forget(back);
            std::mem::forget(saved);
        })
        .unwrap()
        .join()
        .unwrap();
}

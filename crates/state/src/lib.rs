//! Turning a program's state into checkpoint objects and back.
//!
//! Three types carry the design:
//! - [`Checkpoint`]: implemented by every value that can be saved — by `#[derive(Checkpoint)]`
//!   for structs, and here for numbers, `String`, `Option`, `Vec`/arrays of numbers.
//! - [`StateWriter`]: receives a value's objects, one per leaf field, named by field path
//!   (`params.dt`). Bulk arrays are borrowed as raw little-endian bytes (no per-element
//!   encoding, no copy on little-endian hosts), so the store's fixed-size chunking makes an
//!   update to 1 % of an array cost about 1 % of the bytes.
//! - [`StateReader`]: gives the objects back and checks the schema: every object the type
//!   expects must be present with the same type name and kind, and no object may be left
//!   over. Mismatches are [`StateError`]s naming the field.
//!
//! For large arrays that change a little between checkpoints, [`DirtyVec`] records which
//! pages were written since the last durable checkpoint and tells the store, which then
//! neither reads nor hashes the others (see its module doc for why that is never wrong).
//!
//! # Derive
//!
//! `#[derive(Checkpoint)]` writes both methods for a struct; its attributes (`skip`,
//! `serde`, `rename`, `replicated`, `after_restore`, `crate`) are documented, with an
//! example, on the [`Checkpoint`] trait.
//!
//! # Sharing between ranks
//!
//! Every saved object records how it relates across ranks (docs/FORMAT.md, format 1.2):
//! `distributed` (a bulk array with a global range: one block of a `DVec`), `replicated`
//! (declared with `#[checkpoint(replicated)]` or [`StateWriter::replicated`]) or `rank`
//! (everything else: this rank's own value). A checkpoint restores on another number of
//! ranks only when it holds no `rank` object; the decision never depends on how many ranks
//! wrote it (with one old rank, every value would look "identical on all ranks").
//!
//! # Schema names
//!
//! Leaves record a type name: `u64`, `String`, `Vec<f64>`, `[f32; 3]`, and for serde
//! types the Rust type name with module paths removed (`Params`, `Option<u32>`), so moving
//! a type between modules does not invalidate checkpoints but renaming it does.
//!
//! For a serde value (`#[checkpoint(serde)]`, [`Serde<T>`](Serde), `Option<T>` and any
//! other leaf encoded with postcard) the name is not enough: postcard records no field
//! names, types or variant names, so a type whose inside changed while its name stayed —
//! a field `i64` turned `u64`, two fields of one type swapped, enum variants reordered —
//! would decode old bytes without error into wrong values (`-3_i64` as `5_u64`, `dt` and
//! `dx` exchanged, `Explicit` as `Implicit`). So the writer also records the saved value's
//! *layout* (format 1.3): a short text of its field, type and variant names, with the
//! variant index postcard wrote, such as `Params{dt:f64,dx:f64,mode:Mode::Implicit#1}`.
//! The reader decodes the bytes into the program's type, traces the decoded value the
//! same way, and refuses a different text with [`StateError::LayoutMismatch`], naming the
//! field and both layouts.
//!
//! What the check compares is the value, not the whole type: a change the saved value does
//! not reach (a variant it does not hold, the payload type of a `None`, the element type of
//! an empty `Vec`) cannot misread it and restores. Sequences and maps record the set of
//! their distinct element layouts, so a `HashMap` (random order per process) compares
//! equal; integers of 16 to 128 bits are one class each for signed and unsigned, as
//! postcard writes them alike, so widening a field (`u32` to `u64`) is not refused; deep
//! parts are folded into a digest, and a value nested more than 2048 parts
//! deep records no layout (it is checked by name). Renaming a Rust field while keeping its
//! saved name with `#[serde(rename = "old")]` keeps checkpoints readable; making a field a
//! newtype (`u32` to `Meters(u32)`) is refused although postcard would read it, unless
//! the newtype is `#[serde(transparent)]`. When a serde type's contents change on purpose,
//! give it a new type name (`ParamsV2`) or save it under a new field name
//! (`#[checkpoint(rename = "params_v2")]`): old checkpoints are then refused by name.
//!
//! Names only catch what names can tell apart. A tuple struct's fields have no names, so
//! they are recorded by position (`0`, `1`, both for `#[derive(Checkpoint)]` objects and
//! inside serde layouts): swapping two fields of one type in a tuple struct
//! (`struct S(Vec<f64>, Vec<f64>)` whose meaning is reordered, `Point(f64, f64)` turned
//! `(y, x)`) is *not* detected, and the values restore exchanged. Give checkpointed types
//! named fields (found in review: the docs above said swapped fields were always caught).
//!
//! Objects written before format 1.3 carry no layout and are still checked by name only;
//! so are objects that hand-written impls read raw with [`StateReader::take`]. The
//! tracing walks the whole value at save and at restore: about 1.3 to 6 times postcard's
//! own time for the value, up to about 12 for sequences whose elements almost all differ
//! in shape (docs/PERFORMANCE.md, "Serde layouts"); bulk arrays pay nothing.
#![deny(missing_docs)]
// A failed stdout/stderr must never panic a job (issue #11 item 10): no print macros.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

// Lets `#[derive(Checkpoint)]` name this crate as `::lazarus_state` from inside it.
extern crate self as lazarus_state;

mod element;
mod error;
mod impls;
mod layout;
mod reader;
mod tracked;
mod writer;

pub use element::{swap_element_bytes, to_le_bytes, Element};
pub use error::{StateError, StateErrorKind};
pub use impls::Serde;
pub use lazarus_derive::Checkpoint;
pub use reader::StateReader;
pub use tracked::{DirtyVec, PageTracker, VecMut, TRACK_PAGE};
pub use writer::StateWriter;

use lazarus_format::{LoadedObject, ObjectSpec};

/// The object name of a leaf saved at the root (a value that is not a struct).
pub const ROOT_NAME: &str = "value";

/// A value that can be saved into checkpoint objects and restored in place from them.
///
/// Implemented here for numbers, `bool`, `String`, `Option`, `Vec`s and arrays of numbers,
/// [`DirtyVec`] and [`Serde`]; by `lazarus_dist::DVec`; and by `#[derive(Checkpoint)]` for
/// structs. A hand-written impl pushes objects with [`StateWriter::bulk`] /
/// [`StateWriter::serde`] (at the current path) or saves children with
/// [`StateWriter::field`], and mirrors that in `restore`.
///
/// # The derive
///
/// `#[derive(Checkpoint)]` (structs with named or tuple fields, and unit structs)
/// generates `save` and `restore`, field by field, and an `after_restore` that calls each
/// field's hook and then the struct's own. Each saved field becomes one object named by
/// its path (`params.dt` for a field of a nested derived struct): numbers and `Vec`s or
/// arrays of numbers as raw little-endian arrays (no per-element encoding), everything
/// else through its own `Checkpoint` impl or, when marked, serde.
///
/// ```
/// use lazarus_state::{Checkpoint, StateError};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
/// struct Params { dt: f64, name: String }
///
/// #[derive(Checkpoint, Debug)]
/// #[checkpoint(after_restore = "Sim::rebuild")]
/// struct Sim {
///     step: u64,                 // small serde object
///     field: Vec<f64>,           // bulk: raw LE bytes
///     #[checkpoint(serde)]       // any serde type
///     params: Params,
///     #[checkpoint(skip)]        // not saved; keeps its initial value, rebuilt by the hook
///     sum: f64,
/// }
///
/// impl Sim {
///     fn rebuild(&mut self) -> Result<(), StateError> {
///         self.sum = self.field.iter().sum();
///         Ok(())
///     }
/// }
///
/// let a = Sim { step: 7, field: vec![1.0, 2.0], params: Params { dt: 0.1, name: "x".into() }, sum: 3.0 };
/// let objects = lazarus_state::save(&a)?;
/// let names: Vec<_> = objects.iter().map(|o| o.info.name.as_str()).collect();
/// assert_eq!(names, ["step", "field", "params"]);
///
/// let loaded = lazarus_state::to_loaded(&objects);
/// let mut b = Sim { step: 0, field: vec![], params: Params { dt: 0.0, name: String::new() }, sum: 0.0 };
/// lazarus_state::restore(&mut b, loaded)?;
/// assert_eq!((b.step, &b.field, &b.params, b.sum), (7, &a.field, &a.params, 3.0));
/// # Ok::<(), StateError>(())
/// ```
///
/// Field attributes:
///
/// | attribute | effect |
/// |---|---|
/// | `#[checkpoint(skip)]` | not saved; restore leaves the field as it was in the value restored into (the initial value, see `Job`'s restore methods), for the struct's `after_restore` hook to rebuild |
/// | `#[checkpoint(serde)]` | saved with serde (postcard) as one object: for serde types that do not implement `Checkpoint`, such as `Vec<String>`, an enum or a user struct |
/// | `#[checkpoint(rename = "old_name")]` | saved under another name, e.g. to keep reading checkpoints written before a field was renamed |
/// | `#[checkpoint(replicated)]` | alone or with `serde`: the field holds the same value on every rank by construction (parameters, a counter every rank advances alike), so a checkpoint may give each rank of another world size a copy ("Sharing between ranks" in the crate docs), after comparing the old ranks' copies byte for byte: the value must encode deterministically (`BTreeMap`/`BTreeSet`, not `HashMap`/`HashSet`, whose order is random per process); not allowed with `skip` |
///
/// Struct attributes:
///
/// | attribute | effect |
/// |---|---|
/// | `#[checkpoint(after_restore = "path::to::fn")]` | a `fn(&mut Self) -> Result<(), StateError>` run after the whole value (and every field's own hook) was restored: the place to rebuild skipped fields |
/// | `#[checkpoint(replicated)]` | every field of every value of the struct is replicated |
/// | `#[checkpoint(crate = "path")]` | the path of this crate when it is reachable under another name (the default is `::lazarus::state`, or `::lazarus_state` inside the Lazarus crates) |
///
/// Each attribute may appear once on a struct or field: a second `after_restore`,
/// `rename` or `crate` is a compile error (a second `after_restore` used to replace the
/// first silently, whose hook then never ran). This compiles:
///
/// ```
/// use lazarus_state::{Checkpoint, StateError};
/// #[derive(Checkpoint)]
/// #[checkpoint(after_restore = "S::b")]
/// struct S { #[checkpoint(rename = "y")] x: u64 }
/// impl S {
///     fn a(&mut self) -> Result<(), StateError> { Ok(()) }
///     fn b(&mut self) -> Result<(), StateError> { self.a() }
/// }
/// ```
///
/// and these, differing only by the repeated attribute, do not:
///
/// ```compile_fail
/// use lazarus_state::{Checkpoint, StateError};
/// #[derive(Checkpoint)]
/// #[checkpoint(after_restore = "S::a", after_restore = "S::b")]
/// struct S { #[checkpoint(rename = "y")] x: u64 }
/// impl S {
///     fn a(&mut self) -> Result<(), StateError> { Ok(()) }
///     fn b(&mut self) -> Result<(), StateError> { self.a() }
/// }
/// ```
///
/// ```compile_fail
/// use lazarus_state::{Checkpoint, StateError};
/// #[derive(Checkpoint)]
/// #[checkpoint(after_restore = "S::b")]
/// struct S { #[checkpoint(rename = "y")] #[checkpoint(rename = "z")] x: u64 }
/// impl S {
///     fn a(&mut self) -> Result<(), StateError> { Ok(()) }
///     fn b(&mut self) -> Result<(), StateError> { self.a() }
/// }
/// ```
///
/// Fields of a tuple struct are saved by position (objects `0`, `1`, …): swapping two
/// fields of the same type between versions of a program restores them swapped, as
/// reordering the fields of a `#[repr(C)]` file format would; name the fields (or
/// `rename` them) where the order may change.
///
/// Two saved fields may not share a name (after `rename`); enums are not derivable (save
/// them as a field with `#[checkpoint(serde)]`). Schema names: leaves record a type name
/// (`u64`, `Vec<f64>`, `[f32; 3]`, and for serde types the Rust type name with module
/// paths removed), so moving a type between modules keeps old checkpoints readable while
/// renaming it does not. Serde values also record their layout (field, type and variant
/// names), so a serde type changed inside under the same name is refused rather than
/// misread (crate docs, "Schema names").
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not implement `Checkpoint`",
    note = "in a #[derive(Checkpoint)] struct, mark the field #[checkpoint(serde)] if it is a serde type, #[checkpoint(skip)] to rebuild it after restore, or derive Checkpoint for it"
)]
pub trait Checkpoint {
    /// Pushes this value's objects under the writer's current path.
    fn save<'a>(&'a self, out: &mut StateWriter<'a>) -> Result<(), StateError>;

    /// Replaces this value's saved parts with the reader's objects at the current path.
    /// Parts that are not saved (skipped fields) keep their current value.
    fn restore(&mut self, inp: &mut StateReader) -> Result<(), StateError>;

    /// Runs once after the whole top-level value was restored; rebuilds what was not saved.
    /// The default does nothing, which is right for any type without skipped parts.
    fn after_restore(&mut self) -> Result<(), StateError> {
        Ok(())
    }
}

/// Saves `value` into its list of objects (bulk data borrowed from `value`).
pub fn save<T: Checkpoint + ?Sized>(value: &T) -> Result<Vec<ObjectSpec<'_>>, StateError> {
    let mut w = StateWriter::new();
    value.save(&mut w)?;
    Ok(w.into_objects())
}

/// Restores `value` in place from `objects`: checks the schema in both directions, then
/// runs the `after_restore` hooks.
pub fn restore<T: Checkpoint + ?Sized>(
    value: &mut T,
    objects: Vec<LoadedObject>,
) -> Result<(), StateError> {
    let mut r = StateReader::new(objects)?;
    value.restore(&mut r)?;
    r.finish()?;
    value.after_restore()
}

/// Copies saved objects into the form a store returns them in; for tests and in-memory
/// round trips.
pub fn to_loaded(objects: &[ObjectSpec<'_>]) -> Vec<LoadedObject> {
    objects
        .iter()
        .map(|o| LoadedObject {
            info: o.info.clone(),
            data: o.data.to_vec(),
        })
        .collect()
}

/// `T`'s Rust name with module paths removed: `alloc::vec::Vec<heat::Params>` becomes
/// `Vec<Params>`. Used as the schema name of serde objects.
pub fn short_type_name<T: ?Sized>() -> String {
    strip_paths(std::any::type_name::<T>())
}

fn strip_paths(full: &str) -> String {
    let mut out = String::with_capacity(full.len());
    let mut seg_start = 0;
    let mut chars = full.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            out.truncate(seg_start);
        } else {
            out.push(c);
            if !(c.is_alphanumeric() || c == '_') {
                seg_start = out.len();
            }
        }
    }
    out
}

/// Appends `.name` (or `name` at the root) to `path`; returns the length to truncate back to.
pub(crate) fn push_path(path: &mut String, name: &str) -> Result<usize, StateError> {
    if name.is_empty() || name.contains('.') {
        return Err(StateError::custom(
            path.clone(),
            format!("invalid field name {name:?} (empty or contains '.')"),
        ));
    }
    let saved = path.len();
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(name);
    Ok(saved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_paths_keeps_only_last_segments() {
        assert_eq!(
            strip_paths("alloc::vec::Vec<alloc::string::String>"),
            "Vec<String>"
        );
        assert_eq!(strip_paths("heat::Params"), "Params");
        assert_eq!(
            strip_paths("(u8, core::option::Option<a::B>)"),
            "(u8, Option<B>)"
        );
        assert_eq!(strip_paths("[a::b::C; 3]"), "[C; 3]");
        assert_eq!(short_type_name::<Option<String>>(), "Option<String>");
    }
}

/// Re-exports for code generated by `#[derive(Checkpoint)]`; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use serde;
}

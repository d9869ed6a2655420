//! The layout of a serde value: what postcard leaves out of its bytes.
//!
//! postcard writes values without field names, types or variant names, so bytes written
//! by one version of a type decode without error into another version that kept the same
//! wire shape: `-3_i64` reads back as `5_u64`, two `f64` fields exchange their values,
//! reordered enum variants swap. A type name cannot see any of that.
//!
//! The layout is a short text that names what the bytes mean: primitive types, struct and
//! field names in order, enum and variant names *with the variant index* postcard wrote.
//! The writer records the layout of the value it saved; the reader decodes the bytes into
//! the program's type, traces the decoded value the same way and compares. Any change that
//! makes the same bytes mean something else — a retyped or renamed field, swapped fields,
//! reordered variants — gives a different text, and the restore is refused naming both.
//!
//! Why trace the *value* and not the type: tracing a type needs sample values and fails on
//! types that deserialize with `deserialize_any`; tracing the value works for every type
//! postcard can encode, and compares exactly what was restored. A change a value does not
//! reach (a variant that is not present, the payload type of a `None`) cannot misread it,
//! so it is not reported either.
//!
//! Text grammar (`x`, `y` are nested layouts):
//! - primitives: `bool`, `u8`, `i8`, `uint` (`u16` … `u128`, `usize`), `int` (`i16` …
//!   `i128`, `isize`), `f32`, `f64`, `char`, `String`, `bytes`, `()`; `None`, `Some(x)`.
//!   postcard writes every integer from 16 to 128 bits as one varint, so widening a field
//!   (`u32` to `u64`) reads the same values and is not refused; narrowing one fails to
//!   decode values that do not fit; `uint` to `int` (zigzag) is refused;
//! - structs: `Name`, `Name(x)`, `Name(x,y)`, `Name{a:x,b:y}`; tuples `(x,y)`;
//! - variants: `Enum::Var#0`, `Enum::Var#1(x)`, `Enum::Var#2(x,y)`, `Enum::Var#3{a:x}`;
//! - sequences `[x|y]` and maps `{k:x|k:y}`: the *set* of distinct element (entry)
//!   layouts, sorted, so that a `Vec` of a million `f64` is `[f64]` and a `HashMap`, whose
//!   order is random per process, has one layout.
//!
//! A nested part longer than [`NESTED_FOLD`] bytes, and a whole layout longer than
//! [`TOP_FOLD`], is replaced by `#` and 16 hex digits of its BLAKE3, which keeps the text
//! of deep or recursive values bounded while still comparing them. A value nested more
//! than [`MAX_DEPTH`] parts deep is not traced at all and has no layout (the tracer would
//! need more stack than postcard does for it).
//!
//! The serializer says it is not human-readable, as postcard does, so types that encode
//! differently for humans (addresses, timestamps) are traced in their postcard form.

use serde::ser::{self, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A nested part longer than this is folded into its digest.
pub const NESTED_FOLD: usize = 256;
/// A whole layout longer than this is folded into its digest.
pub const TOP_FOLD: usize = 2048;

/// Nested parts deeper than this are not traced: the value has no layout.
///
/// The tracer needs several times the stack that postcard needs per nested level, so a
/// deep value (a long chain of boxes or one-child trees) that postcard encodes and decodes
/// would otherwise overflow the thread's stack and abort the process. This bound keeps
/// the tracer within about 1 MiB of stack.
pub const MAX_DEPTH: u32 = 2048;

/// The layout text of `value` (module doc), or `None` when it nests deeper than
/// [`MAX_DEPTH`] levels. Fails only when the value's own `Serialize` impl fails, with
/// its message.
pub fn layout_of<T: Serialize + ?Sized>(value: &T) -> Result<Option<String>, String> {
    let mut out = String::new();
    match value.serialize(Tracer { out: &mut out }) {
        Ok(()) => {}
        Err(e) if e.0 == TOO_DEEP => return Ok(None),
        Err(e) => return Err(e.0),
    }
    fold(&mut out, TOP_FOLD);
    Ok(Some(out))
}

const TOO_DEEP: &str = "nested deeper than lazarus_state's layout tracer follows";

thread_local! {
    /// How many [`nested`] calls are open on this thread.
    static DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

fn fold(text: &mut String, limit: usize) {
    if text.len() > limit {
        let hex = lazarus_format::ChunkDigest::of(text.as_bytes()).to_hex();
        text.clear();
        text.push('#');
        text.push_str(&hex[..16]);
    }
}

/// Traces one nested value into a fresh, folded string.
fn nested<T: Serialize + ?Sized>(value: &T, into: &mut String) -> Result<(), TraceError> {
    /// Closes the level even when a `Serialize` impl panics.
    struct Level(u32);
    impl Drop for Level {
        fn drop(&mut self) {
            DEPTH.with(|d| d.set(self.0));
        }
    }
    let depth = DEPTH.with(|d| d.get());
    if depth >= MAX_DEPTH {
        return Err(TraceError(TOO_DEEP.into()));
    }
    DEPTH.with(|d| d.set(depth + 1));
    let _level = Level(depth);
    into.clear();
    value.serialize(Tracer { out: into })?;
    count_work(into.len() as u64);
    fold(into, NESTED_FOLD);
    Ok(())
}

#[cfg(test)]
thread_local! {
    /// Tests only: sketch tokens mixed plus text bytes traced on this thread, a measure of
    /// the tracer's work that, unlike a clock, is the same on a loaded machine.
    static WORK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[inline]
fn count_work(_units: u64) {
    #[cfg(test)]
    WORK.with(|w| w.set(w.get() + _units));
}

/// The error of a value's own `Serialize` impl; the tracer itself never fails.
#[derive(Debug)]
struct TraceError(String);

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TraceError {}

impl ser::Error for TraceError {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        TraceError(msg.to_string())
    }
}

struct Tracer<'o> {
    out: &'o mut String,
}

impl Tracer<'_> {
    fn word(self, w: &str) -> Result<(), TraceError> {
        self.out.push_str(w);
        Ok(())
    }

    fn variant(&mut self, name: &str, index: u32, variant: &str) {
        use fmt::Write;
        // Writing into a String cannot fail.
        let _ = write!(self.out, "{name}::{variant}#{index}");
    }
}

macro_rules! primitive {
    ($($method:ident: $ty:ty => $word:literal),* $(,)?) => {$(
        fn $method(self, _v: $ty) -> Result<(), TraceError> {
            self.word($word)
        }
    )*};
}

impl<'o> ser::Serializer for Tracer<'o> {
    type Ok = ();
    type Error = TraceError;
    type SerializeSeq = SetOf<'o>;
    type SerializeTuple = ListOf<'o>;
    type SerializeTupleStruct = ListOf<'o>;
    type SerializeTupleVariant = ListOf<'o>;
    type SerializeMap = SetOf<'o>;
    type SerializeStruct = ListOf<'o>;
    type SerializeStructVariant = ListOf<'o>;

    primitive!(
        serialize_bool: bool => "bool",
        serialize_i8: i8 => "i8",
        serialize_i16: i16 => "int",
        serialize_i32: i32 => "int",
        serialize_i64: i64 => "int",
        serialize_i128: i128 => "int",
        serialize_u8: u8 => "u8",
        serialize_u16: u16 => "uint",
        serialize_u32: u32 => "uint",
        serialize_u64: u64 => "uint",
        serialize_u128: u128 => "uint",
        serialize_f32: f32 => "f32",
        serialize_f64: f64 => "f64",
        serialize_char: char => "char",
        serialize_str: &str => "String",
        serialize_bytes: &[u8] => "bytes",
    );

    fn serialize_none(self) -> Result<(), TraceError> {
        self.word("None")
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), TraceError> {
        self.out.push_str("Some(");
        let mut inner = String::new();
        nested(value, &mut inner)?;
        self.out.push_str(&inner);
        self.out.push(')');
        Ok(())
    }

    fn serialize_unit(self) -> Result<(), TraceError> {
        self.word("()")
    }

    fn serialize_unit_struct(self, name: &'static str) -> Result<(), TraceError> {
        self.word(name)
    }

    fn serialize_unit_variant(
        mut self,
        name: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<(), TraceError> {
        self.variant(name, index, variant);
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<(), TraceError> {
        let mut list = ListOf::open(self.out, ')');
        list.out.push_str(name);
        list.out.push('(');
        ser::SerializeTuple::serialize_element(&mut list, value)?;
        ser::SerializeTuple::end(list)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        mut self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), TraceError> {
        self.variant(name, index, variant);
        let mut list = ListOf::open(self.out, ')');
        list.out.push('(');
        ser::SerializeTuple::serialize_element(&mut list, value)?;
        ser::SerializeTuple::end(list)
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<SetOf<'o>, TraceError> {
        Ok(SetOf::open(self.out, '[', ']'))
    }

    fn serialize_tuple(self, _len: usize) -> Result<ListOf<'o>, TraceError> {
        self.out.push('(');
        Ok(ListOf::open(self.out, ')'))
    }

    fn serialize_tuple_struct(
        self,
        name: &'static str,
        _len: usize,
    ) -> Result<ListOf<'o>, TraceError> {
        self.out.push_str(name);
        self.out.push('(');
        Ok(ListOf::open(self.out, ')'))
    }

    fn serialize_tuple_variant(
        mut self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<ListOf<'o>, TraceError> {
        self.variant(name, index, variant);
        self.out.push('(');
        Ok(ListOf::open(self.out, ')'))
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<SetOf<'o>, TraceError> {
        Ok(SetOf::open(self.out, '{', '}'))
    }

    fn serialize_struct(self, name: &'static str, _len: usize) -> Result<ListOf<'o>, TraceError> {
        self.out.push_str(name);
        self.out.push('{');
        Ok(ListOf::open(self.out, '}'))
    }

    fn serialize_struct_variant(
        mut self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<ListOf<'o>, TraceError> {
        self.variant(name, index, variant);
        self.out.push('{');
        Ok(ListOf::open(self.out, '}'))
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// Tuples, structs and variants: the parts in order, comma-separated. The opening
/// bracket is already written; `close` is written at the end.
struct ListOf<'o> {
    out: &'o mut String,
    close: char,
    first: bool,
    scratch: String,
}

impl<'o> ListOf<'o> {
    fn open(out: &'o mut String, close: char) -> Self {
        ListOf {
            out,
            close,
            first: true,
            scratch: String::new(),
        }
    }

    fn part<T: Serialize + ?Sized>(
        &mut self,
        key: Option<&str>,
        value: &T,
    ) -> Result<(), TraceError> {
        nested(value, &mut self.scratch)?;
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        if let Some(key) = key {
            self.out.push_str(key);
            self.out.push(':');
        }
        self.out.push_str(&self.scratch);
        Ok(())
    }

    fn close(self) -> Result<(), TraceError> {
        self.out.push(self.close);
        Ok(())
    }
}

/// The serde traits of [`ListOf`]: positional parts, then named ones.
macro_rules! list_parts {
    ($($trait:ident: $method:ident),* $(,)?) => {$(
        impl ser::$trait for ListOf<'_> {
            type Ok = ();
            type Error = TraceError;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TraceError> {
                self.part(None, value)
            }
            fn end(self) -> Result<(), TraceError> {
                self.close()
            }
        }
    )*};
}

list_parts!(
    SerializeTuple: serialize_element,
    SerializeTupleStruct: serialize_field,
    SerializeTupleVariant: serialize_field,
);

macro_rules! list_fields {
    ($($trait:ident),* $(,)?) => {$(
        impl ser::$trait for ListOf<'_> {
            type Ok = ();
            type Error = TraceError;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), TraceError> {
                self.part(Some(key), value)
            }
            fn end(self) -> Result<(), TraceError> {
                self.close()
            }
        }
    )*};
}

list_fields!(SerializeStruct, SerializeStructVariant);

/// Sequences and maps: the sorted set of distinct element (or `key:value` entry) layouts,
/// `|`-separated.
///
/// Tracing every element into text would cost several times postcard's encoding, so each
/// element is first *sketched*: its serialize events hashed without any allocation. Only
/// an element whose sketch this sequence has not seen is traced into text. Equal sketches
/// mean equal event streams and so equal texts (up to a 2^-128 collision); two sketches
/// may differ for one text (inner sequences in another order), which only traces it twice.
///
/// A sketch stops at [`SKETCH_DEPTH`] nested levels and the element is then traced
/// without one: sketching every element of every level of a deep value in full would
/// cost the depth squared (each level re-hashes everything below it).
const FEW: usize = 16;

struct SetOf<'o> {
    out: &'o mut String,
    open: char,
    close: char,
    set: BTreeSet<String>,
    /// The first `FEW` distinct sketches, then the others.
    few: Vec<u128>,
    seen: BTreeSet<u128>,
    last: Option<u128>,
    scratch: String,
    /// Map only: the traced text of each key sketch seen so far (a map, not a list: a
    /// map's keys can have as many distinct sketches as entries), and the sketch of the
    /// key whose value comes next, or its text when it has no sketch (too deep).
    keys: BTreeMap<u128, String>,
    key: Option<u128>,
    key_text: String,
}

impl<'o> SetOf<'o> {
    fn open(out: &'o mut String, open: char, close: char) -> Self {
        SetOf {
            out,
            open,
            close,
            set: BTreeSet::new(),
            few: Vec::new(),
            seen: BTreeSet::new(),
            last: None,
            scratch: String::new(),
            keys: BTreeMap::new(),
            key: None,
            key_text: String::new(),
        }
    }

    /// Whether an element of sketch `h` is new to this sequence (and records it). A few
    /// distinct sketches, the common case, are scanned linearly: cheaper than a tree.
    fn is_new(&mut self, h: u128) -> bool {
        if self.last == Some(h) {
            return false;
        }
        self.last = Some(h);
        if self.few.contains(&h) {
            return false;
        }
        if self.few.len() < FEW {
            self.few.push(h);
            return true;
        }
        self.seen.insert(h)
    }

    fn close(self) -> Result<(), TraceError> {
        self.out.push(self.open);
        for (i, item) in self.set.iter().enumerate() {
            if i > 0 {
                self.out.push('|');
            }
            self.out.push_str(item);
        }
        self.out.push(self.close);
        Ok(())
    }
}

impl ser::SerializeSeq for SetOf<'_> {
    type Ok = ();
    type Error = TraceError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TraceError> {
        if sketch(value).map_or(true, |h| self.is_new(h)) {
            nested(value, &mut self.scratch)?;
            self.set.insert(std::mem::take(&mut self.scratch));
        }
        Ok(())
    }
    fn end(self) -> Result<(), TraceError> {
        self.close()
    }
}

impl ser::SerializeMap for SetOf<'_> {
    type Ok = ();
    type Error = TraceError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), TraceError> {
        // The key's text is needed only if its entry turns out new, but the key is gone
        // by then: trace each distinct key sketch once, when first seen.
        self.key = sketch(key).ok();
        match self.key {
            Some(h) if !self.keys.contains_key(&h) => {
                let mut text = String::new();
                nested(key, &mut text)?;
                self.keys.insert(h, text);
            }
            Some(_) => {}
            None => nested(key, &mut self.key_text)?,
        }
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TraceError> {
        let entry = match (self.key, sketch(value)) {
            (Some(key), Ok(value)) => {
                let mut entry = Sketch::new(key);
                entry.token(TOKEN_ENTRY);
                entry.state ^= value;
                entry.token(TOKEN_ENTRY);
                Some(entry.state)
            }
            _ => None,
        };
        if entry.is_none_or(|h| self.is_new(h)) {
            let key = match self.key {
                Some(h) => self.keys.get(&h).map(String::as_str).unwrap_or_default(),
                None => self.key_text.as_str(),
            };
            nested(value, &mut self.scratch)?;
            self.set.insert(format!("{key}:{}", self.scratch));
        }
        Ok(())
    }
    fn end(self) -> Result<(), TraceError> {
        self.close()
    }
}

/// The sketch of `value`: a 128-bit hash of its serialize events (names hashed by their
/// `&'static str` address and length, which is unique per distinct name within the
/// process). Never persisted: it only decides which elements to trace. Fails when the
/// value nests deeper than [`SKETCH_DEPTH`] or its `Serialize` impl fails; the caller
/// then traces it, which reports the impl's own error.
fn sketch<T: Serialize + ?Sized>(value: &T) -> Result<u128, TraceError> {
    let mut s = Sketch::new(0x6c61_7a61_7275_735f_6c61_796f_7574_0001);
    value.serialize(&mut s)?;
    s.token(TOKEN_END);
    Ok(s.state)
}

/// Nested levels a sketch follows before giving up (the element is then traced).
const SKETCH_DEPTH: u32 = 64;

struct Sketch {
    state: u128,
    depth: u32,
}

const SKETCH_MUL: u128 = 0x2360_ed05_1fc6_5da4_4385_df64_9fcc_f645;
const TOKEN_END: u32 = 1;
const TOKEN_ENTRY: u32 = 2;
const TOKEN_SEP: u32 = 3;
const TOKEN_CLOSE: u32 = 4;

impl Sketch {
    fn new(state: u128) -> Self {
        Sketch { state, depth: 0 }
    }

    /// Enters one nested level; fails past [`SKETCH_DEPTH`].
    fn enter(&mut self) -> Result<(), TraceError> {
        self.depth += 1;
        if self.depth > SKETCH_DEPTH {
            return Err(TraceError("too deep to sketch".into()));
        }
        Ok(())
    }

    /// Closes the level [`Sketch::enter`] opened.
    fn leave(&mut self) {
        self.depth -= 1;
        self.token(TOKEN_CLOSE);
    }

    fn token(&mut self, x: u32) {
        self.mix(u128::from(x));
    }

    fn mix(&mut self, x: u128) {
        count_work(1);
        self.state = (self.state ^ x).wrapping_mul(SKETCH_MUL);
        self.state ^= self.state >> 64;
    }

    /// One token for a kind (or a variant index: it always follows its enum's token, so
    /// the two cannot be confused) and a name: the name's address and length (two names at
    /// one address differ in length).
    fn name(&mut self, kind: u32, name: &'static str) {
        let addr = name.as_ptr() as usize as u128;
        let len = (name.len() as u128) & 0xffff_ffff;
        self.mix(addr << 64 | len << 32 | u128::from(kind));
    }
}

macro_rules! sketch_primitive {
    ($($method:ident: $ty:ty => $token:literal),* $(,)?) => {$(
        fn $method(self, _v: $ty) -> Result<(), TraceError> {
            self.token($token);
            Ok(())
        }
    )*};
}

impl ser::Serializer for &mut Sketch {
    type Ok = ();
    type Error = TraceError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    sketch_primitive!(
        serialize_bool: bool => 10,
        serialize_i8: i8 => 11,
        serialize_i16: i16 => 12,
        serialize_i32: i32 => 13,
        serialize_i64: i64 => 14,
        serialize_i128: i128 => 15,
        serialize_u8: u8 => 16,
        serialize_u16: u16 => 17,
        serialize_u32: u32 => 18,
        serialize_u64: u64 => 19,
        serialize_u128: u128 => 20,
        serialize_f32: f32 => 21,
        serialize_f64: f64 => 22,
        serialize_char: char => 23,
        serialize_str: &str => 24,
        serialize_bytes: &[u8] => 25,
    );

    fn serialize_none(self) -> Result<(), TraceError> {
        self.token(26);
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), TraceError> {
        self.token(27);
        self.enter()?;
        value.serialize(&mut *self)?;
        self.leave();
        Ok(())
    }
    fn serialize_unit(self) -> Result<(), TraceError> {
        self.token(28);
        Ok(())
    }
    fn serialize_unit_struct(self, name: &'static str) -> Result<(), TraceError> {
        self.name(29, name);
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<(), TraceError> {
        self.name(30, name);
        self.name(index, variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<(), TraceError> {
        self.name(31, name);
        self.enter()?;
        value.serialize(&mut *self)?;
        self.leave();
        Ok(())
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), TraceError> {
        self.name(32, name);
        self.name(index, variant);
        self.enter()?;
        value.serialize(&mut *self)?;
        self.leave();
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self, TraceError> {
        self.token(33);
        self.enter()?;
        Ok(self)
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self, TraceError> {
        self.token(34);
        self.enter()?;
        Ok(self)
    }
    fn serialize_tuple_struct(self, name: &'static str, _len: usize) -> Result<Self, TraceError> {
        self.name(35, name);
        self.enter()?;
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self, TraceError> {
        self.name(36, name);
        self.name(index, variant);
        self.enter()?;
        Ok(self)
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self, TraceError> {
        self.token(37);
        self.enter()?;
        Ok(self)
    }
    fn serialize_struct(self, name: &'static str, _len: usize) -> Result<Self, TraceError> {
        self.name(38, name);
        self.enter()?;
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self, TraceError> {
        self.name(39, name);
        self.name(index, variant);
        self.enter()?;
        Ok(self)
    }
    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The parts of every compound value: a separator token, the part, and a closing token
/// at the end.
macro_rules! sketch_compound {
    ($($trait:ident: $method:ident),* $(,)?) => {$(
        impl ser::$trait for &mut Sketch {
            type Ok = ();
            type Error = TraceError;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TraceError> {
                self.token(TOKEN_SEP);
                value.serialize(&mut **self)
            }
            fn end(self) -> Result<(), TraceError> {
                self.leave();
                Ok(())
            }
        }
    )*};
}

sketch_compound!(
    SerializeSeq: serialize_element,
    SerializeTuple: serialize_element,
    SerializeTupleStruct: serialize_field,
    SerializeTupleVariant: serialize_field,
);

macro_rules! sketch_fields {
    ($($trait:ident),* $(,)?) => {$(
        impl ser::$trait for &mut Sketch {
            type Ok = ();
            type Error = TraceError;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), TraceError> {
                self.name(TOKEN_SEP, key);
                value.serialize(&mut **self)
            }
            fn end(self) -> Result<(), TraceError> {
                self.leave();
                Ok(())
            }
        }
    )*};
}

sketch_fields!(SerializeStruct, SerializeStructVariant);

impl ser::SerializeMap for &mut Sketch {
    type Ok = ();
    type Error = TraceError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), TraceError> {
        self.token(TOKEN_SEP);
        key.serialize(&mut **self)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TraceError> {
        self.token(TOKEN_ENTRY);
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), TraceError> {
        self.leave();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};
    use std::collections::{BTreeMap, HashMap};

    /// The layout, which every value here is shallow enough to have.
    fn layout_of<T: Serialize + ?Sized>(value: &T) -> Result<String, String> {
        super::layout_of(value).map(|layout| layout.expect("shallower than MAX_DEPTH"))
    }

    #[derive(Serialize, Deserialize)]
    struct Params {
        dt: f64,
        dx: f64,
        mode: Mode,
        tags: Vec<String>,
    }

    #[derive(Serialize, Deserialize)]
    enum Mode {
        Explicit,
        Implicit { theta: f32 },
        Pair(u8, i16),
        Wrapped(Option<u32>),
    }

    #[derive(Serialize)]
    struct Meters(u32);

    #[derive(Serialize)]
    struct Unit;

    #[test]
    fn layouts_name_types_fields_and_variants_with_their_index() {
        let p = Params {
            dt: 0.1,
            dx: 0.2,
            mode: Mode::Implicit { theta: 0.5 },
            tags: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            layout_of(&p).unwrap(),
            "Params{dt:f64,dx:f64,mode:Mode::Implicit#1{theta:f32},tags:[String]}"
        );
        assert_eq!(layout_of(&Mode::Explicit).unwrap(), "Mode::Explicit#0");
        assert_eq!(
            layout_of(&Mode::Pair(1, 2)).unwrap(),
            "Mode::Pair#2(u8,int)"
        );
        assert_eq!(
            layout_of(&Mode::Wrapped(Some(3))).unwrap(),
            "Mode::Wrapped#3(Some(uint))"
        );
        assert_eq!(layout_of(&Meters(3)).unwrap(), "Meters(uint)");
        assert_eq!(layout_of(&Unit).unwrap(), "Unit");
        assert_eq!(layout_of(&(1u8, "x", ())).unwrap(), "(u8,String,())");
        assert_eq!(layout_of(&None::<u8>).unwrap(), "None");
        assert_eq!(layout_of(&-3i64).unwrap(), "int");
        // postcard writes 16- to 128-bit integers as the same varints: widening reads right.
        assert_eq!(layout_of(&3u16).unwrap(), layout_of(&3u128).unwrap());
        assert_ne!(layout_of(&3u64).unwrap(), layout_of(&3i64).unwrap());
        assert_ne!(layout_of(&3u8).unwrap(), layout_of(&3u16).unwrap());
        assert_eq!(layout_of(&Vec::<u8>::new()).unwrap(), "[]");
    }

    #[test]
    fn sequences_and_maps_list_each_distinct_element_layout_once_in_sorted_order() {
        let v = vec![
            Mode::Explicit,
            Mode::Pair(1, 2),
            Mode::Explicit,
            Mode::Pair(3, 4),
        ];
        assert_eq!(
            layout_of(&v).unwrap(),
            "[Mode::Explicit#0|Mode::Pair#2(u8,int)]"
        );
        assert_eq!(layout_of(&vec![0.5f64; 100_000]).unwrap(), "[f64]");
        let mut m = BTreeMap::new();
        m.insert(1u32, Some(2u8));
        m.insert(2u32, None);
        assert_eq!(layout_of(&m).unwrap(), "{uint:None|uint:Some(u8)}");
    }

    #[test]
    fn a_hash_maps_layout_does_not_depend_on_its_iteration_order() {
        // Two maps with the same entries inserted in opposite orders usually iterate
        // differently; both must give one layout.
        let mut a = HashMap::new();
        let mut b = HashMap::new();
        for i in 0..200u32 {
            let v = if i % 3 == 0 { None } else { Some(i) };
            a.insert(i, v);
            b.insert(
                199 - i,
                if (199 - i) % 3 == 0 {
                    None
                } else {
                    Some(199 - i)
                },
            );
        }
        assert_eq!(layout_of(&a).unwrap(), layout_of(&b).unwrap());
        assert_eq!(layout_of(&a).unwrap(), "{uint:None|uint:Some(uint)}");
    }

    #[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
    struct Node {
        label: u8,
        children: Vec<Node>,
    }

    fn chain(depth: usize) -> Node {
        let mut n = Node {
            label: 0,
            children: vec![],
        };
        for _ in 0..depth {
            n = Node {
                label: 0,
                children: vec![n],
            };
        }
        n
    }

    #[test]
    fn deep_values_fold_into_bounded_digests_that_still_compare() {
        let deep = layout_of(&chain(1000)).unwrap();
        // The outer levels stay readable; what lies below NESTED_FOLD bytes is a digest.
        assert!(deep.starts_with("Node{label:u8,children:[#"), "{deep}");
        assert!(deep.len() <= NESTED_FOLD, "{deep}");
        assert_eq!(deep, layout_of(&chain(1000)).unwrap());
        assert_ne!(deep, layout_of(&chain(999)).unwrap());
        // A set of many different-depth chains stays bounded too.
        let many: Vec<Node> = (0..300).map(chain).collect();
        assert!(layout_of(&many).unwrap().len() <= TOP_FOLD);
    }

    /// The reference the sketch shortcut must equal: every element traced into text.
    fn traced_one_by_one<T: Serialize>(items: &[T]) -> String {
        let mut set = BTreeSet::new();
        for item in items {
            let mut text = String::new();
            nested(item, &mut text).unwrap();
            set.insert(text);
        }
        format!("[{}]", set.into_iter().collect::<Vec<_>>().join("|"))
    }

    proptest::proptest! {
        /// Skipping elements whose sketch was seen never loses a distinct layout.
        #[test]
        fn the_sketch_shortcut_loses_no_distinct_element_layout(
            picks in proptest::collection::vec((0u8..6, proptest::collection::vec(0u8..3, 0..4)), 0..40)
        ) {
            let items: Vec<(Mode, Vec<Option<Mode>>)> = picks
                .iter()
                .map(|(k, inner)| {
                    let mode = |k: u8| match k % 4 {
                        0 => Mode::Explicit,
                        1 => Mode::Implicit { theta: 1.0 },
                        2 => Mode::Pair(1, 2),
                        _ => Mode::Wrapped(None),
                    };
                    let inner = inner.iter().map(|&i| (i != 0).then(|| mode(i + *k))).collect();
                    (mode(*k), inner)
                })
                .collect();
            proptest::prop_assert_eq!(layout_of(&items).unwrap(), traced_one_by_one(&items));
        }
    }

    /// The tracer's work for `layout_of(value)` (`WORK`): deterministic, unlike a clock.
    fn layout_work<T: Serialize>(value: &T) -> u64 {
        WORK.with(|w| w.set(0));
        std::hint::black_box(layout_of(value).unwrap());
        WORK.with(|w| w.get())
    }

    /// Keys whose sketches all differ (each a different pattern of `None`s), few texts.
    fn keyed_by_patterns(n: usize) -> BTreeMap<Vec<Option<u8>>, u8> {
        (0..n)
            .map(|i| ((0..16).map(|b| (i >> b & 1 == 1).then_some(1)).collect(), 0))
            .collect()
    }

    /// Was: every key was looked up in a list of the key sketches seen so far, so a map
    /// whose keys have n distinct sketches (sequences of `Option`s or enums, sequences of
    /// different lengths) cost n^2: 20k entries took 200 times their postcard encoding.
    /// The lookup is a tree now; this checks the work that remains is linear (and the
    /// wall-clock ratio is printed by tests/layout_cost.rs, a measurement, not a test).
    #[test]
    fn regression_map_keys_with_many_distinct_sketches_cost_linear_time() {
        let small = keyed_by_patterns(4_000);
        let large = keyed_by_patterns(16_000);
        assert_eq!(layout_of(&large).unwrap(), "{[None]:u8|[None|Some(u8)]:u8}");
        let ratio = layout_work(&large) as f64 / layout_work(&small) as f64;
        assert!(ratio < 4.5, "4x the entries cost {ratio:.2}x the work");
    }

    /// Was: each sequence level sketched its elements in full, everything below it, and
    /// then traced them, whose sequences sketched everything below again: a value nested
    /// d levels deep through sequences or maps (a tree, a chain) cost d^2 (depth 2000:
    /// 100 ms against 30 us of postcard encoding). Measured as work, not time.
    #[test]
    fn regression_deep_values_cost_linear_time_not_depth_squared() {
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn(|| {
                // Both within MAX_DEPTH (two nested levels a node).
                let shallow = layout_work(&chain(120));
                let deep = layout_work(&chain(960));
                let ratio = deep as f64 / shallow as f64;
                // Linear is about 8; depth squared gives about 64.
                assert!(ratio < 12.0, "8x the depth cost {ratio:.1}x the work");
            })
            .unwrap()
            .join()
            .unwrap();
    }

    fn text<T: Serialize>(value: &T) -> String {
        let mut t = String::new();
        nested(value, &mut t).unwrap();
        t
    }

    /// Was: the tracer needs several times postcard's stack a nested level, so a value
    /// postcard encodes and decodes (a long chain) overflowed the stack and aborted the
    /// process at save (20k levels on an 8 MiB stack, 4k on a 2 MiB thread).
    #[test]
    fn regression_values_too_deep_to_trace_have_no_layout_instead_of_overflowing_the_stack() {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                let deep = chain(20_000);
                assert_eq!(super::layout_of(&deep), Ok(None));
                // Just within the bound still has one; the depth count was restored.
                let within = chain(MAX_DEPTH as usize / 2 - 1);
                assert!(super::layout_of(&within).unwrap().is_some());
                assert_eq!(
                    layout_of(&vec![Mode::Explicit]).unwrap(),
                    "[Mode::Explicit#0]"
                );
                // Dropping it would recurse as deep as it nests.
                std::mem::forget(deep);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn elements_too_deep_to_sketch_are_traced_each_and_lose_no_layout() {
        let depth = SKETCH_DEPTH as usize;
        let items: Vec<Node> = [depth - 2, depth + 5, depth + 5, 3, depth + 40, depth + 5]
            .into_iter()
            .map(chain)
            .collect();
        assert_eq!(layout_of(&items).unwrap(), traced_one_by_one(&items));
        let map: BTreeMap<u32, Node> = [(1, depth + 9), (2, depth + 9), (3, 2)]
            .into_iter()
            .map(|(k, d)| (k, chain(d)))
            .collect();
        let mut want = [text(&chain(depth + 9)), text(&chain(2))].map(|t| format!("uint:{t}"));
        want.sort();
        assert_eq!(layout_of(&map).unwrap(), format!("{{{}}}", want.join("|")));
        // Deep keys, too.
        let map: BTreeMap<Vec<Node>, u8> = [(vec![chain(depth + 9)], 1), (vec![chain(1)], 2)]
            .into_iter()
            .collect();
        let mut want =
            [text(&vec![chain(depth + 9)]), text(&vec![chain(1)])].map(|t| format!("{t}:u8"));
        want.sort();
        assert_eq!(layout_of(&map).unwrap(), format!("{{{}}}", want.join("|")));
    }

    #[test]
    fn a_failing_serialize_impl_is_reported_with_its_message() {
        struct Bad;
        impl Serialize for Bad {
            fn serialize<S: ser::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(ser::Error::custom("no way"))
            }
        }
        assert_eq!(layout_of(&vec![Bad]).unwrap_err(), "no way");
    }
}

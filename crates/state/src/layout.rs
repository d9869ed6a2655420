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
//! - primitives: `bool`, `i8` … `i128`, `u8` … `u128`, `f32`, `f64`, `char`, `String`,
//!   `bytes`, `()`; `None`, `Some(x)`;
//! - structs: `Name`, `Name(x)`, `Name(x,y)`, `Name{a:x,b:y}`; tuples `(x,y)`;
//! - variants: `Enum::Var#0`, `Enum::Var#1(x)`, `Enum::Var#2(x,y)`, `Enum::Var#3{a:x}`;
//! - sequences `[x|y]` and maps `{k:x|k:y}`: the *set* of distinct element (entry)
//!   layouts, sorted, so that a `Vec` of a million `f64` is `[f64]` and a `HashMap`, whose
//!   order is random per process, has one layout.
//!
//! A nested part longer than [`NESTED_FOLD`] bytes, and a whole layout longer than
//! [`TOP_FOLD`], is replaced by `#` and 16 hex digits of its BLAKE3, which keeps the text
//! of deep or recursive values bounded while still comparing them.
//!
//! The serializer says it is not human-readable, as postcard does, so types that encode
//! differently for humans (addresses, timestamps) are traced in their postcard form.

use serde::ser::{self, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// A nested part longer than this is folded into its digest.
pub const NESTED_FOLD: usize = 256;
/// A whole layout longer than this is folded into its digest.
pub const TOP_FOLD: usize = 2048;

/// The layout text of `value` (module doc). Fails only when the value's own `Serialize`
/// impl fails, with its message.
pub fn layout_of<T: Serialize + ?Sized>(value: &T) -> Result<String, String> {
    let mut out = String::new();
    value
        .serialize(Tracer { out: &mut out })
        .map_err(|e| e.0)?;
    fold(&mut out, TOP_FOLD);
    Ok(out)
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
    into.clear();
    value.serialize(Tracer { out: into })?;
    fold(into, NESTED_FOLD);
    Ok(())
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
        serialize_i16: i16 => "i16",
        serialize_i32: i32 => "i32",
        serialize_i64: i64 => "i64",
        serialize_i128: i128 => "i128",
        serialize_u8: u8 => "u8",
        serialize_u16: u16 => "u16",
        serialize_u32: u32 => "u32",
        serialize_u64: u64 => "u64",
        serialize_u128: u128 => "u128",
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

impl ser::SerializeTuple for ListOf<'_> {
    type Ok = ();
    type Error = TraceError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TraceError> {
        self.part(None, value)
    }
    fn end(self) -> Result<(), TraceError> {
        self.close()
    }
}

impl ser::SerializeTupleStruct for ListOf<'_> {
    type Ok = ();
    type Error = TraceError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TraceError> {
        self.part(None, value)
    }
    fn end(self) -> Result<(), TraceError> {
        self.close()
    }
}

impl ser::SerializeTupleVariant for ListOf<'_> {
    type Ok = ();
    type Error = TraceError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TraceError> {
        self.part(None, value)
    }
    fn end(self) -> Result<(), TraceError> {
        self.close()
    }
}

impl ser::SerializeStruct for ListOf<'_> {
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

impl ser::SerializeStructVariant for ListOf<'_> {
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

/// Sequences and maps: the sorted set of distinct element (or `key:value` entry) layouts,
/// `|`-separated.
///
/// Tracing every element into text would cost several times postcard's encoding, so each
/// element is first *sketched*: its serialize events hashed without any allocation. Only
/// an element whose sketch this sequence has not seen is traced into text. Equal sketches
/// mean equal event streams and so equal texts (up to a 2^-128 collision); two sketches
/// may differ for one text (inner sequences in another order), which only traces it twice.
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
    /// Map only: the traced text of each key sketch seen so far, and the sketch of the key
    /// whose value comes next.
    keys: Vec<(u128, String)>,
    key: u128,
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
            keys: Vec::new(),
            key: 0,
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
        if self.is_new(sketch(value)?) {
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
        self.key = sketch(key)?;
        if !self.keys.iter().any(|(h, _)| *h == self.key) {
            let mut text = String::new();
            nested(key, &mut text)?;
            self.keys.push((self.key, text));
        }
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TraceError> {
        let mut entry = Sketch(self.key);
        entry.token(TOKEN_ENTRY);
        entry.0 ^= sketch(value)?;
        entry.token(TOKEN_ENTRY);
        if self.is_new(entry.0) {
            let key = self
                .keys
                .iter()
                .find(|(h, _)| *h == self.key)
                .map(|(_, text)| text.as_str())
                .unwrap_or_default();
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
/// process). Never persisted: it only decides which elements to trace.
fn sketch<T: Serialize + ?Sized>(value: &T) -> Result<u128, TraceError> {
    let mut s = Sketch(0x6c61_7a61_7275_735f_6c61_796f_7574_0001);
    value.serialize(&mut s)?;
    s.token(TOKEN_END);
    Ok(s.0)
}

struct Sketch(u128);

const SKETCH_MUL: u128 = 0x2360_ed05_1fc6_5da4_4385_df64_9fcc_f645;
const TOKEN_END: u32 = 1;
const TOKEN_ENTRY: u32 = 2;
const TOKEN_SEP: u32 = 3;
const TOKEN_CLOSE: u32 = 4;

impl Sketch {
    fn token(&mut self, x: u32) {
        self.mix(u128::from(x));
    }

    fn mix(&mut self, x: u128) {
        self.0 = (self.0 ^ x).wrapping_mul(SKETCH_MUL);
        self.0 ^= self.0 >> 64;
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
        value.serialize(&mut *self)?;
        self.token(TOKEN_CLOSE);
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
        value.serialize(&mut *self)?;
        self.token(TOKEN_CLOSE);
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
        value.serialize(&mut *self)?;
        self.token(TOKEN_CLOSE);
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self, TraceError> {
        self.token(33);
        Ok(self)
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self, TraceError> {
        self.token(34);
        Ok(self)
    }
    fn serialize_tuple_struct(self, name: &'static str, _len: usize) -> Result<Self, TraceError> {
        self.name(35, name);
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
        Ok(self)
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self, TraceError> {
        self.token(37);
        Ok(self)
    }
    fn serialize_struct(self, name: &'static str, _len: usize) -> Result<Self, TraceError> {
        self.name(38, name);
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
                self.token(TOKEN_CLOSE);
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
                self.token(TOKEN_CLOSE);
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
        self.token(TOKEN_CLOSE);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};
    use std::collections::{BTreeMap, HashMap};

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
        assert_eq!(layout_of(&Mode::Pair(1, 2)).unwrap(), "Mode::Pair#2(u8,i16)");
        assert_eq!(
            layout_of(&Mode::Wrapped(Some(3))).unwrap(),
            "Mode::Wrapped#3(Some(u32))"
        );
        assert_eq!(layout_of(&Meters(3)).unwrap(), "Meters(u32)");
        assert_eq!(layout_of(&Unit).unwrap(), "Unit");
        assert_eq!(layout_of(&(1u8, "x", ())).unwrap(), "(u8,String,())");
        assert_eq!(layout_of(&None::<u8>).unwrap(), "None");
        assert_eq!(layout_of(&-3i64).unwrap(), "i64");
        assert_eq!(layout_of(&Vec::<u8>::new()).unwrap(), "[]");
    }

    #[test]
    fn sequences_and_maps_list_each_distinct_element_layout_once_in_sorted_order() {
        let v = vec![Mode::Explicit, Mode::Pair(1, 2), Mode::Explicit, Mode::Pair(3, 4)];
        assert_eq!(layout_of(&v).unwrap(), "[Mode::Explicit#0|Mode::Pair#2(u8,i16)]");
        assert_eq!(layout_of(&vec![0.5f64; 100_000]).unwrap(), "[f64]");
        let mut m = BTreeMap::new();
        m.insert(1u32, Some(2u8));
        m.insert(2u32, None);
        assert_eq!(layout_of(&m).unwrap(), "{u32:None|u32:Some(u8)}");
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
            b.insert(199 - i, if (199 - i) % 3 == 0 { None } else { Some(199 - i) });
        }
        assert_eq!(layout_of(&a).unwrap(), layout_of(&b).unwrap());
        assert_eq!(layout_of(&a).unwrap(), "{u32:None|u32:Some(u32)}");
    }

    #[derive(Serialize)]
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

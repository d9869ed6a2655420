//! Objects: the named pieces of a rank's state. This is the contract between the `state`
//! crate (which turns user values into objects) and the `store` crate (which chunks, hashes
//! and writes them). Bulk objects are raw little-endian element bytes; serde objects are
//! postcard bytes (see docs/FORMAT.md, "Serde objects").

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Element type of a bulk array. On disk every element is little-endian, fixed width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// unsigned 8-bit
    U8,
    /// signed 8-bit
    I8,
    /// unsigned 16-bit
    U16,
    /// signed 16-bit
    I16,
    /// unsigned 32-bit
    U32,
    /// signed 32-bit
    I32,
    /// unsigned 64-bit
    U64,
    /// signed 64-bit
    I64,
    /// IEEE-754 binary32
    F32,
    /// IEEE-754 binary64
    F64,
}

impl DType {
    /// Width of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
        }
    }

    /// The tag used in manifests and docs/FORMAT.md (`"f64"`, `"u8"`, ...).
    pub fn tag(self) -> &'static str {
        match self {
            DType::U8 => "u8",
            DType::I8 => "i8",
            DType::U16 => "u16",
            DType::I16 => "i16",
            DType::U32 => "u32",
            DType::I32 => "i32",
            DType::U64 => "u64",
            DType::I64 => "i64",
            DType::F32 => "f32",
            DType::F64 => "f64",
        }
    }

    /// True for floating-point types (the byte-shuffle filter helps these compress).
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }
}

/// Where a rank's block sits in a distributed array: elements `start..start+len` of a
/// global array of `total` elements. Recorded so N ranks' parts can be restored on M.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GlobalRange {
    /// First global index held by this part.
    pub start: u64,
    /// Number of elements held by this part.
    pub len: u64,
    /// Length of the whole distributed array.
    pub total: u64,
}

/// What kind of bytes an object holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ObjectKind {
    /// `len` elements of `dtype`, raw little-endian, chunked at fixed size.
    Bulk {
        /// element type
        dtype: DType,
        /// number of elements
        len: u64,
        /// position in a distributed array, if this is one block of one
        #[serde(default, skip_serializing_if = "Option::is_none")]
        global: Option<GlobalRange>,
    },
    /// A value encoded with postcard (a stable, documented, compact serde format).
    Serde,
}

/// Description of one object: its name (a field path such as `params.dt`), the Rust type it
/// was written from (part of the schema checked on restore), and its kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    /// Field path, unique within a rank's part; `.`-separated for nested structs.
    pub name: String,
    /// Type name recorded for the schema check, e.g. `Vec<f64>` or `heat::Params`.
    pub type_name: String,
    /// Bulk or serde, with dtype and length for bulk.
    #[serde(flatten)]
    pub kind: ObjectKind,
}

/// An object ready to be written: its description and its bytes (borrowed when the host
/// layout already is the on-disk layout, so a bulk array is never copied just to be saved).
#[derive(Clone, Debug)]
pub struct ObjectSpec<'a> {
    /// name, type and kind
    pub info: ObjectInfo,
    /// the exact bytes to store (little-endian for bulk objects)
    pub data: Cow<'a, [u8]>,
}

/// An object read back from a repository; its bytes were verified against their digests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedObject {
    /// name, type and kind as recorded in the manifest
    pub info: ObjectInfo,
    /// the stored bytes (little-endian for bulk objects)
    pub data: Vec<u8>,
}

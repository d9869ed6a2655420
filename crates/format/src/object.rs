//! Objects: the named pieces of a rank's state. This is the contract between the `state`
//! crate (which turns user values into objects) and the `store` crate (which chunks, hashes
//! and writes them). Bulk objects are raw little-endian element bytes; serde objects are
//! postcard bytes (see docs/FORMAT.md, "Serde objects").

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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

/// How an object's value relates across the ranks of a job (format 1.2, docs/FORMAT.md).
/// Recorded by the writer from what the program declared, so that restoring on another
/// number of ranks never has to guess from the data (with one old rank every value looks
/// "the same on all ranks").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    /// This rank's own value: anything not declared otherwise. Cannot be moved to another
    /// number of ranks.
    Rank,
    /// The same value on every rank by construction (`#[checkpoint(replicated)]`): every
    /// new rank gets a copy (old ranks' copies are still compared).
    Replicated,
    /// One block of a distributed array: a bulk object with a `global` range (a `DVec`),
    /// re-cut for the new number of ranks.
    Distributed,
}

impl Sharing {
    /// The tag used in manifests (`"rank"`, `"replicated"`, `"distributed"`).
    pub fn tag(self) -> &'static str {
        match self {
            Sharing::Rank => "rank",
            Sharing::Replicated => "replicated",
            Sharing::Distributed => "distributed",
        }
    }
}

/// Description of one object: its name (a field path such as `params.dt`), the Rust type it
/// was written from (part of the schema checked on restore), its kind, and how it is
/// shared between ranks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    /// Field path, unique within a rank's part; `.`-separated for nested structs.
    pub name: String,
    /// Type name recorded for the schema check, e.g. `Vec<f64>` or `heat::Params`.
    pub type_name: String,
    /// Bulk or serde, with dtype and length for bulk.
    #[serde(flatten)]
    pub kind: ObjectKind,
    /// How the value is shared between ranks; `None` in manifests written before format
    /// 1.2, which did not record it (restoring those on another number of ranks falls back
    /// to comparing the old ranks' bytes, docs/DIST.md). Not part of the schema check: a
    /// field may be declared replicated after its checkpoints were written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharing: Option<Sharing>,
    /// Format 1.3, serde objects only: what the postcard bytes mean (field, type and
    /// variant names with variant indexes, `lazarus_state`'s layout text), compared with
    /// the restored value's so that a serde type changed inside under the same name is
    /// refused instead of misread. `None` when it says nothing the type name does not
    /// (`u64`), for a value nested too deep to trace, and in manifests written before 1.3:
    /// those are checked by name only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
}

/// Longest layout text a manifest may record (a writer folds longer ones into a digest).
pub const MAX_LAYOUT_LEN: usize = 4096;

impl ObjectInfo {
    /// The sharing a writer records for `kind` when the program declared the value
    /// replicated or not: a bulk object with a global range is always `Distributed`.
    pub fn sharing_of(kind: &ObjectKind, replicated: bool) -> Sharing {
        match kind {
            ObjectKind::Bulk {
                global: Some(_), ..
            } => Sharing::Distributed,
            _ if replicated => Sharing::Replicated,
            _ => Sharing::Rank,
        }
    }
}

/// An object ready to be written: its description and its bytes (borrowed when the host
/// layout already is the on-disk layout, so a bulk array is never copied just to be saved).
#[derive(Clone, Debug)]
pub struct ObjectSpec<'a> {
    /// name, type and kind
    pub info: ObjectInfo,
    /// the exact bytes to store (little-endian for bulk objects)
    pub data: Cow<'a, [u8]>,
    /// Optional promise of the producer about which byte ranges of `data` are unchanged
    /// since an earlier write of the same object ([`ChangeHint`]); `None` makes the store
    /// look at every byte, which is always correct.
    pub hint: Option<ChangeHint>,
}

impl<'a> ObjectSpec<'a> {
    /// An object without a change hint.
    pub fn new(info: ObjectInfo, data: impl Into<Cow<'a, [u8]>>) -> Self {
        ObjectSpec {
            info,
            data: data.into(),
            hint: None,
        }
    }

    /// The same object carrying `hint`.
    pub fn with_hint(mut self, hint: ChangeHint) -> Self {
        self.hint = Some(hint);
        self
    }
}

/// Identifies one object of one durable part write, handed out by the store to the
/// producer of a [`ChangeHint`] once that write is durable. Unique within the process (a
/// counter, never reused), meaningless in any other process and never persisted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WriteTicket(u64);

impl WriteTicket {
    /// A ticket no earlier call in this process returned.
    pub fn unique() -> WriteTicket {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        WriteTicket(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// Told by the store that the object a [`ChangeHint`] was attached to is durable, and
/// under which ticket the store remembers its chunk digests.
pub trait WrittenSink: Send + Sync {
    /// The part holding the object is durable (chunks and manifest fsynced); later hints
    /// may name `ticket` as their base. Called at most once per write, never for a write
    /// that failed.
    fn written(&self, ticket: WriteTicket);
}

/// A producer's conservative promise about a bulk object's bytes: "every page not marked
/// dirty here holds the same bytes as when the object was written under [`Self::base`]".
///
/// Pages are `page` bytes long (the last one may be shorter); bit `p % 64` of word
/// `p / 64` of the dirty bitmap is set when page `p` may have changed, and a page whose
/// word is missing counts as dirty. The store uses it to reuse the digest it computed for
/// a chunk in the base write without reading the chunk again, and only when everything
/// matches: same process, same repository and rank, same object name, same chunk size,
/// same length, and its remembered ticket for that object equal to `base`. Anything else
/// (no base, a ticket it does not hold, a length change) and the store reads and hashes
/// the bytes as without a hint, so a stale or foreign hint can cost time but not
/// correctness — unless the producer breaks the promise by changing a page it reports
/// clean, which is why only the state layer's tracked containers create hints.
///
/// Cheap to clone (shared).
#[derive(Clone)]
pub struct ChangeHint {
    inner: Arc<HintInner>,
}

struct HintInner {
    base: Option<WriteTicket>,
    len: u64,
    page: u64,
    dirty: Vec<u64>,
    sink: Option<Arc<dyn WrittenSink>>,
}

impl ChangeHint {
    /// A hint for `len` bytes in pages of `page` bytes (0 is treated as 1), relative to
    /// the write `base` (`None`: no usable earlier write, every page counts as dirty), with
    /// the dirty-page bitmap `dirty` (see the type's doc), and `sink` to be told the ticket
    /// of the durable write of these bytes.
    pub fn new(
        len: u64,
        page: u64,
        base: Option<WriteTicket>,
        dirty: Vec<u64>,
        sink: Option<Arc<dyn WrittenSink>>,
    ) -> ChangeHint {
        ChangeHint {
            inner: Arc::new(HintInner {
                base,
                len,
                page: page.max(1),
                dirty,
                sink,
            }),
        }
    }

    /// The write this hint is relative to.
    pub fn base(&self) -> Option<WriteTicket> {
        self.inner.base
    }

    /// Number of bytes the hint describes (must equal the object's length to be used).
    pub fn len(&self) -> u64 {
        self.inner.len
    }

    /// True when the hint describes no bytes.
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }

    /// True only if the hint has a base and every page overlapping `bytes` is clean;
    /// false for an empty range or one reaching past the described length.
    pub fn is_clean(&self, bytes: Range<u64>) -> bool {
        let h = &self.inner;
        if h.base.is_none() || bytes.start >= bytes.end || bytes.end > h.len {
            return false;
        }
        let first = bytes.start / h.page;
        let last = (bytes.end - 1) / h.page;
        (first..=last).all(|p| {
            let word = usize::try_from(p / 64)
                .ok()
                .and_then(|w| h.dirty.get(w))
                .copied();
            matches!(word, Some(w) if w & (1u64 << (p % 64)) == 0)
        })
    }

    /// Number of dirty pages (pages past the bitmap count as dirty).
    pub fn dirty_pages(&self) -> u64 {
        let h = &self.inner;
        let pages = h.len.div_ceil(h.page);
        (0..pages)
            .filter(|&p| !self.is_clean(p * h.page..((p + 1) * h.page).min(h.len)))
            .count() as u64
    }

    /// Passes the ticket of the durable write of these bytes to the producer.
    pub fn written(&self, ticket: WriteTicket) {
        if let Some(s) = &self.inner.sink {
            s.written(ticket);
        }
    }
}

impl fmt::Debug for ChangeHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = &self.inner;
        f.debug_struct("ChangeHint")
            .field("base", &h.base)
            .field("len", &h.len)
            .field("page", &h.page)
            .field("dirty_words", &h.dirty.len())
            .field("sink", &h.sink.is_some())
            .finish()
    }
}

/// An object read back from a repository; its bytes were verified against their digests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedObject {
    /// name, type and kind as recorded in the manifest
    pub info: ObjectInfo,
    /// the stored bytes (little-endian for bulk objects)
    pub data: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Got(Mutex<Vec<WriteTicket>>);
    impl WrittenSink for Got {
        fn written(&self, t: WriteTicket) {
            self.0.lock().unwrap().push(t);
        }
    }

    #[test]
    fn clean_needs_a_base_and_every_overlapping_page_clean() {
        // 10 pages of 4 bytes, page 3 dirty; 38 bytes so the last page is short.
        let h = ChangeHint::new(38, 4, Some(WriteTicket::unique()), vec![1 << 3], None);
        assert!(h.is_clean(0..12));
        assert!(!h.is_clean(0..13));
        assert!(!h.is_clean(12..16));
        assert!(h.is_clean(16..38));
        assert!(!h.is_clean(16..39), "past the described length");
        assert!(!h.is_clean(5..5), "empty range");
        assert_eq!(h.dirty_pages(), 1);
        let no_base = ChangeHint::new(38, 4, None, vec![0], None);
        assert!(!no_base.is_clean(0..4));
        // Missing bitmap words count as dirty: 100 pages, one word.
        let short = ChangeHint::new(400, 4, Some(WriteTicket::unique()), vec![0], None);
        assert!(short.is_clean(0..256));
        assert!(!short.is_clean(0..260));
        assert_eq!(short.dirty_pages(), 36);
    }

    #[test]
    fn tickets_are_unique_and_reach_the_sink() {
        let a = WriteTicket::unique();
        let b = WriteTicket::unique();
        assert_ne!(a, b);
        let got = Arc::new(Got::default());
        let h = ChangeHint::new(1, 1, None, vec![], Some(got.clone()));
        h.clone().written(b);
        assert_eq!(*got.0.lock().unwrap(), vec![b]);
        assert!(format!("{h:?}").contains("ChangeHint"));
    }
}

//! `StateWriter`: collects the objects of one value, named by field path.

use crate::element::{to_le_bytes, Element};
use crate::{short_type_name, Checkpoint, StateError, ROOT_NAME};
use lazarus_format::{ChangeHint, GlobalRange, ObjectInfo, ObjectKind, ObjectSpec};
use serde::Serialize;
use std::borrow::Cow;
use std::collections::HashSet;

/// Receives the objects a value saves. Bulk objects borrow the value's memory for `'a`, so
/// taking a checkpoint of a large array copies nothing until the store hashes and writes it.
///
/// Every object records how it is shared between ranks ([`Sharing`](lazarus_format::Sharing)): `distributed` for a
/// bulk object with a global range (a `DVec`), `replicated` inside
/// [`StateWriter::replicated`] (what `#[checkpoint(replicated)]` generates), `rank`
/// otherwise. Only that record decides whether a checkpoint restores on another number of
/// ranks, never the number of ranks that wrote it.
#[derive(Debug, Default)]
pub struct StateWriter<'a> {
    path: String,
    objects: Vec<ObjectSpec<'a>>,
    names: HashSet<String>,
    /// Depth of nested `replicated` scopes; > 0 marks non-distributed objects replicated.
    replicated: u32,
}

impl<'a> StateWriter<'a> {
    /// An empty writer positioned at the root.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current field path (`""` at the root).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Saves `value` under the child path `name` (so its objects are named `path.name...`).
    pub fn field<T: Checkpoint + ?Sized>(
        &mut self,
        name: &str,
        value: &'a T,
    ) -> Result<(), StateError> {
        let saved = crate::push_path(&mut self.path, name)?;
        let r = value.save(self);
        self.path.truncate(saved);
        r
    }

    /// Runs `save` with every object it pushes declared replicated: the same value on every
    /// rank by construction (parameters, a step counter every rank advances alike), so a
    /// checkpoint can give each rank of another world size a copy. Distributed objects
    /// (global range) stay distributed. Nests; the declaration is the program's promise,
    /// which a restore on another number of ranks still checks byte for byte: equal values
    /// must encode to equal bytes (a `HashMap`/`HashSet` does not: its order is random per
    /// process; use `BTreeMap`/`BTreeSet`).
    pub fn replicated<R>(&mut self, save: impl FnOnce(&mut Self) -> R) -> R {
        self.replicated += 1;
        let r = save(self);
        self.replicated -= 1;
        r
    }

    /// Saves `value` with postcard under the child path `name`; the schema records
    /// `T`'s type name without module paths (`Params`, `Option<u32>`).
    pub fn serde_field<T: Serialize + ?Sized>(
        &mut self,
        name: &str,
        value: &T,
    ) -> Result<(), StateError> {
        let saved = crate::push_path(&mut self.path, name)?;
        let r = self.serde(&short_type_name::<T>(), value);
        self.path.truncate(saved);
        r
    }

    /// Pushes one bulk object at the current path: `data` as raw little-endian bytes,
    /// with `global` when it is one block of a distributed array.
    pub fn bulk<T: Element>(
        &mut self,
        type_name: &str,
        data: &'a [T],
        global: Option<GlobalRange>,
    ) -> Result<(), StateError> {
        let kind = ObjectKind::Bulk {
            dtype: T::DTYPE,
            len: data.len() as u64,
            global,
        };
        self.push(type_name, kind, to_le_bytes(data), None, None)
    }

    /// Like [`Self::bulk`], with the producer's promise of which pages of `data` are
    /// unchanged since an earlier write (see `ChangeHint`); the store then skips reading
    /// them. Only for containers that track every write (as [`crate::DirtyVec`] does): a
    /// page reported clean that did change would be saved with its old bytes.
    pub fn bulk_hinted<T: Element>(
        &mut self,
        type_name: &str,
        data: &'a [T],
        global: Option<GlobalRange>,
        hint: ChangeHint,
    ) -> Result<(), StateError> {
        let kind = ObjectKind::Bulk {
            dtype: T::DTYPE,
            len: data.len() as u64,
            global,
        };
        self.push(type_name, kind, to_le_bytes(data), Some(hint), None)
    }

    /// Pushes one serde object at the current path, encoded with postcard 1.x, with the
    /// value's layout (field, type and variant names; crate docs, "Schema names") that
    /// [`StateReader::serde`](crate::StateReader::serde) compares at restore.
    pub fn serde<T: Serialize + ?Sized>(
        &mut self,
        type_name: &str,
        value: &T,
    ) -> Result<(), StateError> {
        let bytes = postcard::to_stdvec(value).map_err(|source| StateError::Encode {
            field: self.object_name(),
            source,
        })?;
        // The layout of a plain leaf (`u64`, `String`: the `Checkpoint` impls of this
        // crate) follows from its type name, which is checked anyway: it is neither traced
        // nor recorded, so manifests of plain counters stay as they were and saving them
        // costs nothing more. A value nested too deep to trace (`layout::MAX_DEPTH`)
        // records none either, and is checked by name only.
        let layout = if crate::impls::PLAIN_LEAVES.contains(&type_name) {
            None
        } else {
            crate::layout::layout_of(value).map_err(|message| {
                StateError::custom(
                    self.object_name(),
                    format!("cannot trace the value's layout: {message}"),
                )
            })?
        };
        self.push(
            type_name,
            ObjectKind::Serde,
            Cow::Owned(bytes),
            None,
            layout,
        )
    }

    /// The objects saved so far, in save order.
    pub fn into_objects(self) -> Vec<ObjectSpec<'a>> {
        self.objects
    }

    fn object_name(&self) -> String {
        if self.path.is_empty() {
            ROOT_NAME.to_string()
        } else {
            self.path.clone()
        }
    }

    fn push(
        &mut self,
        type_name: &str,
        kind: ObjectKind,
        data: Cow<'a, [u8]>,
        hint: Option<ChangeHint>,
        layout: Option<String>,
    ) -> Result<(), StateError> {
        let name = self.object_name();
        if !self.names.insert(name.clone()) {
            return Err(StateError::Duplicate { field: name });
        }
        let sharing = ObjectInfo::sharing_of(&kind, self.replicated > 0);
        let info = ObjectInfo {
            name,
            type_name: type_name.to_string(),
            kind,
            sharing: Some(sharing),
            layout,
        };
        self.objects.push(ObjectSpec { info, data, hint });
        Ok(())
    }
}

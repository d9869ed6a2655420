//! `StateReader`: hands stored objects back to a value, checking the schema on the way.

use crate::element::{fill_from_le, Element};
use crate::error::describe_kind;
use crate::{short_type_name, Checkpoint, StateError, ROOT_NAME};
use lazarus_format::{GlobalRange, LoadedObject, ObjectKind};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;

/// Gives a value its objects back, by field path. Every object is taken at most once;
/// [`StateReader::finish`] reports objects nobody took, so both directions of a schema
/// mismatch (a field removed, a field added) are errors naming the field.
///
/// It can be built from any list of objects — one rank's part, or another rank's, which is
/// what a redistributing type reads when restoring N ranks' data on M.
#[derive(Debug)]
pub struct StateReader {
    path: String,
    objects: BTreeMap<String, LoadedObject>,
}

impl StateReader {
    /// A reader over `objects`; two objects with the same name are an error.
    pub fn new(objects: Vec<LoadedObject>) -> Result<Self, StateError> {
        let mut map = BTreeMap::new();
        for obj in objects {
            let name = obj.info.name.clone();
            if map.insert(name.clone(), obj).is_some() {
                return Err(StateError::Duplicate { field: name });
            }
        }
        Ok(StateReader {
            path: String::new(),
            objects: map,
        })
    }

    /// The current field path (`""` at the root).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Restores `value` in place from the child path `name`.
    pub fn field<T: Checkpoint + ?Sized>(
        &mut self,
        name: &str,
        value: &mut T,
    ) -> Result<(), StateError> {
        let saved = crate::push_path(&mut self.path, name)?;
        let r = value.restore(self);
        self.path.truncate(saved);
        r
    }

    /// Restores a postcard-encoded value from the child path `name` into `value`.
    pub fn serde_field<T: Serialize + DeserializeOwned>(
        &mut self,
        name: &str,
        value: &mut T,
    ) -> Result<(), StateError> {
        let saved = crate::push_path(&mut self.path, name)?;
        let r = self.serde::<T>(&short_type_name::<T>());
        self.path.truncate(saved);
        *value = r?;
        Ok(())
    }

    /// Takes the object at the current path, whatever its kind, after checking its
    /// recorded type name. For hand-written impls that interpret the bytes themselves.
    pub fn take(&mut self, type_name: &str) -> Result<LoadedObject, StateError> {
        let name = self.object_name();
        let obj = self
            .objects
            .remove(&name)
            .ok_or_else(|| StateError::Missing {
                field: name.clone(),
            })?;
        if obj.info.type_name != type_name {
            return Err(StateError::TypeMismatch {
                field: name,
                expected: type_name.to_string(),
                found: obj.info.type_name,
            });
        }
        Ok(obj)
    }

    /// Decodes the serde object at the current path and, when the checkpoint recorded the
    /// saved value's layout (format 1.3), checks that the decoded value has the same one:
    /// a type that changed inside under the same name (a field retyped, renamed or moved,
    /// enum variants reordered) is refused with [`StateError::LayoutMismatch`] instead of
    /// restored wrong. Objects written before 1.3 are checked by type name only.
    pub fn serde<T: Serialize + DeserializeOwned>(
        &mut self,
        type_name: &str,
    ) -> Result<T, StateError> {
        let obj = self.take(type_name)?;
        let field = obj.info.name;
        if obj.info.kind != ObjectKind::Serde {
            return Err(StateError::KindMismatch {
                field,
                expected: "serde".into(),
                found: describe_kind(&obj.info.kind),
            });
        }
        let (value, rest) =
            postcard::take_from_bytes(&obj.data).map_err(|source| StateError::Decode {
                field: field.clone(),
                source,
            })?;
        if !rest.is_empty() {
            let found = obj.data.len() as u64;
            return Err(StateError::Length {
                field,
                expected: found - rest.len() as u64,
                found,
            });
        }
        if let Some(saved) = obj.info.layout {
            let restored = crate::layout::layout_of(&value).map_err(|message| {
                StateError::custom(
                    field.clone(),
                    format!("cannot trace the restored value's layout: {message}"),
                )
            })?;
            let restored = restored.unwrap_or_else(|| {
                format!(
                    "(nested deeper than {} levels, not traced)",
                    crate::layout::MAX_DEPTH
                )
            });
            if restored != saved {
                return Err(StateError::LayoutMismatch {
                    field,
                    type_name: type_name.to_string(),
                    saved,
                    restored,
                });
            }
        }
        Ok(value)
    }

    /// Restores the bulk object at the current path into `dst`, resizing it (its
    /// allocation is reused). Returns the object's global range, if it recorded one.
    pub fn bulk_into<T: Element>(
        &mut self,
        type_name: &str,
        dst: &mut Vec<T>,
    ) -> Result<Option<GlobalRange>, StateError> {
        let (obj, len, global) = self.take_bulk::<T>(type_name)?;
        dst.clear();
        dst.resize(len, T::default());
        fill_from_le(dst, &obj.data);
        Ok(global)
    }

    /// Restores the bulk object at the current path into a fixed-size `dst`; the stored
    /// length must equal `dst.len()`.
    pub fn bulk_into_slice<T: Element>(
        &mut self,
        type_name: &str,
        dst: &mut [T],
    ) -> Result<Option<GlobalRange>, StateError> {
        let (obj, len, global) = self.take_bulk::<T>(type_name)?;
        if len != dst.len() {
            return Err(StateError::Length {
                field: obj.info.name,
                expected: dst.len() as u64,
                found: len as u64,
            });
        }
        fill_from_le(dst, &obj.data);
        Ok(global)
    }

    /// Ends the restore: every object must have been taken.
    pub fn finish(self) -> Result<(), StateError> {
        let count = self.objects.len();
        match self.objects.into_keys().next() {
            None => Ok(()),
            Some(field) => Err(StateError::Unexpected { field, count }),
        }
    }

    /// Names of the objects not yet taken, sorted.
    pub fn remaining(&self) -> impl Iterator<Item = &str> {
        self.objects.keys().map(String::as_str)
    }

    fn take_bulk<T: Element>(
        &mut self,
        type_name: &str,
    ) -> Result<(LoadedObject, usize, Option<GlobalRange>), StateError> {
        let obj = self.take(type_name)?;
        let (len, global) = match &obj.info.kind {
            ObjectKind::Bulk { dtype, len, global } if *dtype == T::DTYPE => (*len, *global),
            other => {
                return Err(StateError::KindMismatch {
                    field: obj.info.name,
                    expected: format!("bulk {}", T::DTYPE.tag()),
                    found: describe_kind(other),
                })
            }
        };
        let want_bytes = len.checked_mul(T::DTYPE.size() as u64);
        let n = match (want_bytes, usize::try_from(len)) {
            (Some(b), Ok(n)) if b == obj.data.len() as u64 => n,
            _ => {
                return Err(StateError::Length {
                    field: obj.info.name,
                    expected: want_bytes.unwrap_or(u64::MAX),
                    found: obj.data.len() as u64,
                })
            }
        };
        Ok((obj, n, global))
    }

    fn object_name(&self) -> String {
        if self.path.is_empty() {
            ROOT_NAME.to_string()
        } else {
            self.path.clone()
        }
    }
}

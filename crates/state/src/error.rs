//! The one error type of the state crate.
//!
//! Policy: every error names the field path it is about (`params.dt`, `grid`), because the
//! user fixes a schema mismatch by editing that field. Nothing here is retryable: the same
//! bytes and the same type give the same error again.

use lazarus_format::ObjectKind;

/// What went wrong while turning a value into objects or objects back into a value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The value expects an object that the checkpoint does not contain.
    #[error(
        "field `{field}`: missing from the checkpoint (the type has it, the saved state does not)"
    )]
    Missing {
        /// field path
        field: String,
    },
    /// The checkpoint contains objects that the value does not expect.
    #[error("field `{field}`: present in the checkpoint but not in the type ({count} unexpected object(s) in total)")]
    Unexpected {
        /// the first unexpected field path (in sorted order)
        field: String,
        /// how many objects were unexpected
        count: usize,
    },
    /// Two objects with the same field path (two fields saved under one name, or a
    /// damaged part listing a name twice).
    #[error("field `{field}`: saved twice under the same name")]
    Duplicate {
        /// field path
        field: String,
    },
    /// The recorded type differs from the type being restored.
    #[error("field `{field}`: type mismatch: checkpoint has `{found}`, the program expects `{expected}`")]
    TypeMismatch {
        /// field path
        field: String,
        /// type name the program restores into
        expected: String,
        /// type name recorded in the checkpoint
        found: String,
    },
    /// A serde object's bytes decode into the program's type but mean something else: the
    /// layout recorded at save (field, type and variant names) differs from the restored
    /// value's. The type changed inside while its name stayed.
    #[error(
        "field `{field}`: the saved `{type_name}` does not fit the program's `{type_name}`: \
         saved as `{saved}`, reads back as `{restored}` (the type changed inside under the \
         same name; give the new version a new type name or field name, see lazarus_state's \
         \"Schema names\")"
    )]
    LayoutMismatch {
        /// field path
        field: String,
        /// the type name, equal on both sides
        type_name: String,
        /// the layout recorded when the value was saved
        saved: String,
        /// the layout of the value the stored bytes decode into
        restored: String,
    },
    /// Bulk vs serde, or another dtype.
    #[error(
        "field `{field}`: kind mismatch: checkpoint has {found}, the program expects {expected}"
    )]
    KindMismatch {
        /// field path
        field: String,
        /// expected kind, e.g. `bulk f64`
        expected: String,
        /// recorded kind
        found: String,
    },
    /// A length that does not fit: fixed-size array of another size, or a byte count that
    /// does not match the recorded element count.
    #[error("field `{field}`: length mismatch: expected {expected}, found {found}")]
    Length {
        /// field path
        field: String,
        /// expected length (elements, or bytes where stated by the caller)
        expected: u64,
        /// found length
        found: u64,
    },
    /// postcard could not encode a serde value.
    #[error("field `{field}`: cannot encode value: {source}")]
    Encode {
        /// field path
        field: String,
        /// the encoder's error
        source: postcard::Error,
    },
    /// postcard could not decode the stored bytes as the expected type.
    #[error("field `{field}`: cannot decode stored bytes: {source}")]
    Decode {
        /// field path
        field: String,
        /// the decoder's error
        source: postcard::Error,
    },
    /// A user hook (`after_restore`) or a custom `Checkpoint` impl failed.
    #[error("field `{field}`: {message}")]
    Custom {
        /// field path (empty for the root value)
        field: String,
        /// the user's explanation
        message: String,
    },
}

/// A coarse classification of [`StateError`], stable across added variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateErrorKind {
    /// The saved state and the program's type disagree (missing, extra, type, kind, length).
    Schema,
    /// Bytes could not be encoded or decoded.
    Codec,
    /// User code reported a failure.
    Custom,
}

impl StateError {
    /// A user-level failure, for `after_restore` hooks and hand-written impls.
    pub fn custom(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        StateError::Custom {
            field: field.into(),
            message: message.to_string(),
        }
    }

    /// The field path the error is about.
    pub fn field(&self) -> &str {
        match self {
            StateError::Missing { field }
            | StateError::Unexpected { field, .. }
            | StateError::Duplicate { field }
            | StateError::TypeMismatch { field, .. }
            | StateError::LayoutMismatch { field, .. }
            | StateError::KindMismatch { field, .. }
            | StateError::Length { field, .. }
            | StateError::Encode { field, .. }
            | StateError::Decode { field, .. }
            | StateError::Custom { field, .. } => field,
        }
    }

    /// The error's class.
    pub fn kind(&self) -> StateErrorKind {
        match self {
            StateError::Encode { .. } | StateError::Decode { .. } => StateErrorKind::Codec,
            StateError::Custom { .. } => StateErrorKind::Custom,
            _ => StateErrorKind::Schema,
        }
    }
}

/// Human-readable kind for error messages: `bulk f64 x 100` or `serde`.
pub(crate) fn describe_kind(kind: &ObjectKind) -> String {
    match kind {
        ObjectKind::Bulk { dtype, .. } => format!("bulk {}", dtype.tag()),
        ObjectKind::Serde => "serde".to_string(),
    }
}

//! The `FORMAT` file at the root of a repository: magic plus format version.
//!
//! Layout (12 bytes, see docs/FORMAT.md "FORMAT"):
//! `0..8` magic `LZRSREPO`, `8..10` major u16 LE, `10..12` minor u16 LE.

use crate::error::{FormatError, FormatErrorKind};

/// Magic bytes that open the `FORMAT` file.
pub const REPO_MAGIC: [u8; 8] = *b"LZRSREPO";
/// The major format version this crate writes and reads. Readers refuse other majors.
pub const FORMAT_MAJOR: u16 = 1;
/// The highest minor format version this crate writes (1.1: manifests inline in COMMIT;
/// 1.2: each object's sharing between ranks recorded in its manifest; 1.3: each serde
/// object's layout recorded in its manifest).
/// Higher minors of the same major only add optional JSON fields, which older readers
/// ignore; an addition that an older reader would misread must make that reader fail safe
/// (docs/FORMAT.md, "Versioning").
pub const FORMAT_MINOR: u16 = 3;
/// Exact length of the `FORMAT` file.
pub const REPO_FORMAT_LEN: usize = 12;

/// The decoded `FORMAT` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FormatVersion {
    /// Major version: incompatible layout changes.
    pub major: u16,
    /// Minor version: compatible additions.
    pub minor: u16,
}

impl FormatVersion {
    /// The version this crate writes.
    pub const CURRENT: FormatVersion = FormatVersion {
        major: FORMAT_MAJOR,
        minor: FORMAT_MINOR,
    };

    /// The exact 12 bytes of a `FORMAT` file for this version.
    pub fn encode(self) -> [u8; REPO_FORMAT_LEN] {
        let mut out = [0u8; REPO_FORMAT_LEN];
        out[..8].copy_from_slice(&REPO_MAGIC);
        out[8..10].copy_from_slice(&self.major.to_le_bytes());
        out[10..12].copy_from_slice(&self.minor.to_le_bytes());
        out
    }

    /// Decodes a `FORMAT` file; refuses a wrong length or magic and any major other than
    /// [`FORMAT_MAJOR`] (kind `VersionUnsupported`, naming both versions).
    pub fn decode(bytes: &[u8]) -> Result<FormatVersion, FormatError> {
        if bytes.len() < 8 || bytes[..8] != REPO_MAGIC {
            return Err(FormatError::new(
                FormatErrorKind::BadMagic,
                "FORMAT does not start with LZRSREPO: not a Lazarus repository",
            ));
        }
        if bytes.len() != REPO_FORMAT_LEN {
            return Err(FormatError::new(
                FormatErrorKind::Truncated,
                format!(
                    "FORMAT is {} bytes, expected {REPO_FORMAT_LEN}",
                    bytes.len()
                ),
            ));
        }
        let v = FormatVersion {
            major: u16::from_le_bytes([bytes[8], bytes[9]]),
            minor: u16::from_le_bytes([bytes[10], bytes[11]]),
        };
        if v.major != FORMAT_MAJOR {
            return Err(FormatError::new(
                FormatErrorKind::VersionUnsupported,
                format!(
                    "repository format {}.{} is not supported by this reader (major {FORMAT_MAJOR} only)",
                    v.major, v.minor
                ),
            ));
        }
        Ok(v)
    }
}

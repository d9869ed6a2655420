//! The self-checksummed envelope shared by manifests and COMMIT records: a 48-byte binary
//! header followed by a UTF-8 JSON body.
//!
//! ```text
//! 0..4    magic: "LZMF" (rank manifest) or "LZCM" (COMMIT)
//! 4..6    major version u16 LE (1)
//! 6..8    minor version u16 LE (0, or 1 for a COMMIT with inline manifests)
//! 8..16   body length u64 LE
//! 16..48  BLAKE3 of bytes 0..16 followed by the body (so a flipped version byte is
//!         detected too)
//! 48..    body: UTF-8 JSON, exactly `body length` bytes, nothing after it
//! ```

use crate::error::{FormatError, FormatErrorKind};
use crate::repo::FORMAT_MAJOR;

/// Envelope header length in bytes.
pub const ENVELOPE_HEADER_LEN: usize = 48;
/// Magic of a rank manifest.
pub const MANIFEST_MAGIC: [u8; 4] = *b"LZMF";
/// Magic of a COMMIT record.
pub const COMMIT_MAGIC: [u8; 4] = *b"LZCM";
/// Largest body a reader accepts.
pub const MAX_ENVELOPE_BODY: u64 = 256 << 20;

/// Wraps `body` in an envelope with the given magic, major [`FORMAT_MAJOR`] and `minor`
/// (the lowest minor that can express the record, so records that need nothing new keep
/// the exact bytes older writers produced).
pub fn seal(magic: [u8; 4], minor: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENVELOPE_HEADER_LEN + body.len());
    out.extend_from_slice(&magic);
    out.extend_from_slice(&FORMAT_MAJOR.to_le_bytes());
    out.extend_from_slice(&minor.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    let sum = checksum(&out[..16], body);
    out.extend_from_slice(&sum);
    out.extend_from_slice(body);
    out
}

/// Checks an envelope's magic, major version, exact length and body checksum, and returns
/// the body. `what` names the file kind in messages ("manifest", "COMMIT").
pub fn open<'a>(magic: [u8; 4], what: &str, file: &'a [u8]) -> Result<&'a [u8], FormatError> {
    let header = file.get(..ENVELOPE_HEADER_LEN).ok_or_else(|| {
        FormatError::new(
            FormatErrorKind::Truncated,
            format!(
                "{what} is {} bytes, shorter than its {ENVELOPE_HEADER_LEN}-byte header",
                file.len()
            ),
        )
    })?;
    if header[..4] != magic {
        return Err(FormatError::new(
            FormatErrorKind::BadMagic,
            format!(
                "{what} magic is {:?}, expected {:?}",
                String::from_utf8_lossy(&header[..4]),
                String::from_utf8_lossy(&magic)
            ),
        ));
    }
    let major = u16::from_le_bytes([header[4], header[5]]);
    let minor = u16::from_le_bytes([header[6], header[7]]);
    if major != FORMAT_MAJOR {
        return Err(FormatError::new(
            FormatErrorKind::VersionUnsupported,
            format!("{what} has format version {major}.{minor}; this reader supports major {FORMAT_MAJOR} only"),
        ));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[8..16]);
    let body_len = u64::from_le_bytes(len);
    if body_len > MAX_ENVELOPE_BODY {
        return Err(FormatError::new(
            FormatErrorKind::Invalid,
            format!("{what} body length {body_len} exceeds the limit {MAX_ENVELOPE_BODY}"),
        ));
    }
    let body = &file[ENVELOPE_HEADER_LEN..];
    if body.len() as u64 != body_len {
        return Err(FormatError::new(
            FormatErrorKind::Truncated,
            format!(
                "{what} body is {} bytes, header says {body_len}",
                body.len()
            ),
        ));
    }
    if checksum(&header[..16], body)[..] != header[16..48] {
        return Err(FormatError::new(
            FormatErrorKind::Checksum,
            format!("{what} body does not match its BLAKE3 checksum"),
        ));
    }
    Ok(body)
}

/// BLAKE3 over the first 16 header bytes and the body.
fn checksum(head: &[u8], body: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(head);
    h.update(body);
    *h.finalize().as_bytes()
}

//! Chunk files: `chunks/<first two hex digits>/<64 hex digits>`, named by the BLAKE3 of the
//! chunk's raw (uncompressed, unfiltered) bytes.
//!
//! Layout (see docs/FORMAT.md "Chunk"):
//! ```text
//! 0..4   magic "LZCK"
//! 4      codec: 0 = none, 1 = zstd (exactly one zstd frame, nothing before or after it)
//! 5      filter: 0 = none, 1 = byte-shuffle (applied before the codec)
//! 6      filter element width in bytes (1..=8 with byte-shuffle, 0 otherwise)
//! 7      chunk layout version, 1
//! 8..16  raw length, u64 LE
//! 16..   payload
//! ```

use crate::error::{FormatError, FormatErrorKind};
use crate::ids::ChunkDigest;

/// Magic bytes that open every chunk file.
pub const CHUNK_MAGIC: [u8; 4] = *b"LZCK";
/// Chunk header length in bytes.
pub const CHUNK_HEADER_LEN: usize = 16;
/// The chunk layout version written in byte 7.
pub const CHUNK_LAYOUT_VERSION: u8 = 1;
/// Largest raw length a reader accepts (bounds memory a hostile file can make us allocate).
pub const MAX_CHUNK_LEN: u64 = 256 << 20;

/// How a chunk's payload is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChunkCodec {
    /// Payload is the (filtered) raw bytes.
    None,
    /// Payload is exactly one zstd frame of the (filtered) raw bytes: no skippable frame,
    /// no second frame, no trailing bytes.
    Zstd,
}

impl ChunkCodec {
    /// The on-disk tag byte.
    pub fn tag(self) -> u8 {
        match self {
            ChunkCodec::None => 0,
            ChunkCodec::Zstd => 1,
        }
    }
}

/// The decoded 16-byte header of a chunk file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Compression of the payload.
    pub codec: ChunkCodec,
    /// Byte-shuffle element width, if the shuffle filter was applied.
    pub shuffle: Option<u8>,
    /// Length of the raw bytes once decoded.
    pub raw_len: u64,
}

impl ChunkHeader {
    /// Encodes the 16 header bytes.
    pub fn encode(&self) -> [u8; CHUNK_HEADER_LEN] {
        let mut h = [0u8; CHUNK_HEADER_LEN];
        h[..4].copy_from_slice(&CHUNK_MAGIC);
        h[4] = self.codec.tag();
        if let Some(w) = self.shuffle {
            h[5] = 1;
            h[6] = w;
        }
        h[7] = CHUNK_LAYOUT_VERSION;
        h[8..16].copy_from_slice(&self.raw_len.to_le_bytes());
        h
    }

    /// Decodes and validates the header at the start of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<ChunkHeader, FormatError> {
        let h: &[u8; CHUNK_HEADER_LEN] = bytes
            .get(..CHUNK_HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| {
                FormatError::new(
                    FormatErrorKind::Truncated,
                    format!("chunk is {} bytes, shorter than its header", bytes.len()),
                )
            })?;
        if h[..4] != CHUNK_MAGIC {
            return Err(FormatError::new(
                FormatErrorKind::BadMagic,
                "chunk magic is not LZCK",
            ));
        }
        if h[7] != CHUNK_LAYOUT_VERSION {
            return Err(FormatError::new(
                FormatErrorKind::VersionUnsupported,
                format!(
                    "chunk layout version {} (expected {CHUNK_LAYOUT_VERSION})",
                    h[7]
                ),
            ));
        }
        let codec = match h[4] {
            0 => ChunkCodec::None,
            1 => ChunkCodec::Zstd,
            c => {
                return Err(FormatError::new(
                    FormatErrorKind::Invalid,
                    format!("unknown chunk codec {c}"),
                ))
            }
        };
        let shuffle = match (h[5], h[6]) {
            (0, 0) => None,
            (1, w @ 1..=8) => Some(w),
            (f, w) => {
                return Err(FormatError::new(
                    FormatErrorKind::Invalid,
                    format!("unknown chunk filter {f} with width {w}"),
                ))
            }
        };
        let mut len = [0u8; 8];
        len.copy_from_slice(&h[8..16]);
        let raw_len = u64::from_le_bytes(len);
        if raw_len > MAX_CHUNK_LEN {
            return Err(FormatError::new(
                FormatErrorKind::Invalid,
                format!("chunk raw length {raw_len} exceeds the limit {MAX_CHUNK_LEN}"),
            ));
        }
        Ok(ChunkHeader {
            codec,
            shuffle,
            raw_len,
        })
    }
}

/// Byte-shuffle: groups byte `j` of every `width`-byte element together (all first bytes,
/// then all second bytes, ...). Trailing bytes that do not fill an element are copied last,
/// unchanged. Makes the slowly varying exponent bytes of floats contiguous for zstd.
pub fn shuffle(raw: &[u8], width: usize, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(raw.len());
    if width <= 1 {
        out.extend_from_slice(raw);
        return;
    }
    let n = raw.len() / width;
    for j in 0..width {
        out.extend(raw.chunks_exact(width).map(|e| e[j]));
    }
    out.extend_from_slice(&raw[n * width..]);
}

/// Inverse of [`shuffle`].
pub fn unshuffle(data: &[u8], width: usize, out: &mut Vec<u8>) {
    out.clear();
    if width <= 1 {
        out.extend_from_slice(data);
        return;
    }
    let n = data.len() / width;
    out.resize(n * width, 0);
    for (j, plane) in data.chunks_exact(n.max(1)).take(width).enumerate() {
        if n == 0 {
            break;
        }
        for (i, b) in plane.iter().enumerate() {
            out[i * width + j] = *b;
        }
    }
    out.extend_from_slice(&data[n * width..]);
}

/// Encodes a complete chunk file (header + payload) from raw bytes with the given codec,
/// byte-shuffling first when `shuffle` is `Some(width)` with `width` in `2..=8`.
pub fn encode_chunk(
    raw: &[u8],
    codec: ChunkCodec,
    shuffle_width: Option<u8>,
    level: i32,
) -> Vec<u8> {
    let shuffle_width = shuffle_width.filter(|w| (2..=8).contains(w));
    let header = ChunkHeader {
        codec,
        shuffle: shuffle_width,
        raw_len: raw.len() as u64,
    };
    let mut filtered = Vec::new();
    let body: &[u8] = match shuffle_width {
        Some(w) => {
            shuffle(raw, w as usize, &mut filtered);
            &filtered
        }
        None => raw,
    };
    let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + body.len());
    out.extend_from_slice(&header.encode());
    match codec {
        ChunkCodec::None => out.extend_from_slice(body),
        ChunkCodec::Zstd => {
            // Writing into a Vec cannot fail for I/O reasons; zstd only fails on bad params.
            match zstd::bulk::compress(body, level) {
                Ok(z) => out.extend_from_slice(&z),
                Err(_) => {
                    return encode_chunk(raw, ChunkCodec::None, shuffle_width, level);
                }
            }
        }
    }
    out
}

/// Decodes a complete chunk file and verifies that its raw bytes hash to `expected`.
/// Never allocates more than [`MAX_CHUNK_LEN`] bytes, whatever the input claims.
pub fn decode_chunk(file: &[u8], expected: &ChunkDigest) -> Result<Vec<u8>, FormatError> {
    let header = ChunkHeader::decode(file)?;
    let payload = file.get(CHUNK_HEADER_LEN..).unwrap_or_default();
    let raw_len = header.raw_len as usize;
    let filtered = match header.codec {
        ChunkCodec::None => {
            if payload.len() != raw_len {
                return Err(FormatError::new(
                    FormatErrorKind::Truncated,
                    format!(
                        "chunk payload is {} bytes, header says {raw_len}",
                        payload.len()
                    ),
                ));
            }
            payload.to_vec()
        }
        ChunkCodec::Zstd => {
            check_one_zstd_frame(payload)?;
            let v = zstd::bulk::decompress(payload, raw_len).map_err(|e| {
                FormatError::new(
                    FormatErrorKind::Checksum,
                    format!("zstd payload does not decode: {e}"),
                )
            })?;
            if v.len() != raw_len {
                return Err(FormatError::new(
                    FormatErrorKind::Truncated,
                    format!(
                        "zstd payload decodes to {} bytes, header says {raw_len}",
                        v.len()
                    ),
                ));
            }
            v
        }
    };
    let raw = match header.shuffle {
        Some(w) => {
            let mut out = Vec::new();
            unshuffle(&filtered, w as usize, &mut out);
            out
        }
        None => filtered,
    };
    let got = ChunkDigest::of(&raw);
    if &got != expected {
        return Err(FormatError::new(
            FormatErrorKind::Checksum,
            format!("chunk content hashes to {got}, expected {expected}"),
        ));
    }
    Ok(raw)
}

/// Magic number opening a zstd frame (0xFD2FB528, little-endian).
const ZSTD_FRAME_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// A zstd payload is exactly one zstd frame (docs/FORMAT.md, "Chunk"): it starts with the
/// frame magic (no skippable or legacy frame) and the frame ends exactly at the end of the
/// payload (no second frame, no trailing bytes). zstd itself would decode concatenated
/// frames, so two readers could otherwise disagree on what a chunk holds.
fn check_one_zstd_frame(payload: &[u8]) -> Result<(), FormatError> {
    let invalid = |msg: String| FormatError::new(FormatErrorKind::Invalid, msg);
    if payload.get(..4) != Some(&ZSTD_FRAME_MAGIC[..]) {
        return Err(invalid(format!(
            "zstd payload does not start with a zstd frame (magic 28 b5 2f fd), but {:02x?}",
            &payload[..payload.len().min(4)]
        )));
    }
    match zstd::zstd_safe::find_frame_compressed_size(payload) {
        Ok(n) if n == payload.len() => Ok(()),
        Ok(n) => Err(invalid(format!(
            "zstd payload holds {} bytes after its frame of {n} bytes: one frame only",
            payload.len() - n
        ))),
        Err(code) => Err(FormatError::new(
            FormatErrorKind::Checksum,
            format!(
                "zstd frame does not parse: {}",
                zstd::zstd_safe::get_error_name(code)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn shuffle_round_trips(data in proptest::collection::vec(any::<u8>(), 0..200), w in 1usize..=8) {
            let mut s = Vec::new();
            let mut u = Vec::new();
            shuffle(&data, w, &mut s);
            unshuffle(&s, w, &mut u);
            prop_assert_eq!(u, data);
        }

        #[test]
        fn chunk_round_trips(data in proptest::collection::vec(any::<u8>(), 0..3000), z in any::<bool>(), w in proptest::option::of(1u8..=8)) {
            let codec = if z { ChunkCodec::Zstd } else { ChunkCodec::None };
            let f = encode_chunk(&data, codec, w, 1);
            let back = decode_chunk(&f, &ChunkDigest::of(&data)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, data);
        }

        #[test]
        fn decode_chunk_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_chunk(&data, &ChunkDigest::of(b""));
        }

        #[test]
        fn any_flipped_byte_is_detected(data in proptest::collection::vec(any::<u8>(), 1..500), z in any::<bool>(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let codec = if z { ChunkCodec::Zstd } else { ChunkCodec::None };
            let mut f = encode_chunk(&data, codec, Some(8), 1);
            let i = pos.index(f.len());
            f[i] ^= 1 << bit;
            // The guarantee is "never a wrong value": a flip is either an error, or lands in
            // encoding bits that do not change what decodes (seen: a zstd frame-descriptor
            // bit), in which case the BLAKE3 check has proven the bytes are the originals.
            match decode_chunk(&f, &ChunkDigest::of(&data)) {
                Err(_) => {}
                Ok(back) => prop_assert_eq!(back, data),
            }
        }
    }
}

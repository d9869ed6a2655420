//! Chunk files are untrusted bytes: decoding must never panic or over-allocate.
#![no_main]
use lazarus_format::{decode_chunk, ChunkDigest, ChunkHeader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ChunkHeader::decode(data);
    // With the digest of the bytes themselves, and with a fixed one.
    let _ = decode_chunk(data, &ChunkDigest::of(data));
    let _ = decode_chunk(data, &ChunkDigest([0; 32]));
});

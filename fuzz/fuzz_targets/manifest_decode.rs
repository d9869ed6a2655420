//! Manifests are untrusted bytes: decoding (raw, and re-sealed with a valid checksum so the
//! JSON and consistency checks are reached) must never panic.
#![no_main]
use lazarus_format::{Manifest, FORMAT_MAJOR, FORMAT_MINOR, MANIFEST_MAGIC};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Manifest::decode(data);
    let mut file = Vec::with_capacity(48 + data.len());
    file.extend_from_slice(&MANIFEST_MAGIC);
    file.extend_from_slice(&FORMAT_MAJOR.to_le_bytes());
    file.extend_from_slice(&FORMAT_MINOR.to_le_bytes());
    file.extend_from_slice(&(data.len() as u64).to_le_bytes());
    let mut h = blake3::Hasher::new();
    h.update(&file[..16]);
    h.update(data);
    file.extend_from_slice(h.finalize().as_bytes());
    file.extend_from_slice(data);
    let _ = Manifest::decode(&file);
});

//! COMMIT records and FORMAT files are untrusted bytes: decoding must never panic; a FORMAT
//! file that decodes is exactly the encoding of its version.
#![no_main]
use lazarus_format::{CommitRecord, FormatVersion, COMMIT_MAGIC, FORMAT_MAJOR, FORMAT_MINOR};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = CommitRecord::decode(data);
    if let Ok(v) = FormatVersion::decode(data) {
        assert_eq!(&v.encode()[..], data);
    }
    let mut file = Vec::with_capacity(48 + data.len());
    file.extend_from_slice(&COMMIT_MAGIC);
    file.extend_from_slice(&FORMAT_MAJOR.to_le_bytes());
    file.extend_from_slice(&FORMAT_MINOR.to_le_bytes());
    file.extend_from_slice(&(data.len() as u64).to_le_bytes());
    let mut h = blake3::Hasher::new();
    h.update(&file[..16]);
    h.update(data);
    file.extend_from_slice(h.finalize().as_bytes());
    file.extend_from_slice(data);
    let _ = CommitRecord::decode(&file);
});

//! Every decoder of untrusted bytes on random and mutated input (the CI sample of the fuzz
//! targets in fuzz/fuzz_targets): never a panic; any flipped byte is detected.

use lazarus_format::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn manifest() -> Manifest {
    let data = b"hello world".to_vec();
    Manifest {
        checkpoint: CheckpointId(3),
        rank: Rank(1),
        chunk_size: 4,
        objects: vec![ManifestObject {
            info: ObjectInfo {
                name: "x".into(),
                type_name: "Vec<u8>".into(),
                kind: ObjectKind::Bulk {
                    dtype: DType::U8,
                    len: 11,
                    global: Some(GlobalRange {
                        start: 5,
                        len: 11,
                        total: 20,
                    }),
                },
            },
            bytes: 11,
            chunks: data
                .chunks(4)
                .map(|c| ChunkRef {
                    digest: ChunkDigest::of(c),
                    len: c.len() as u64,
                    stored: 20 + c.len() as u64,
                })
                .collect(),
        }],
    }
}

fn commit() -> CommitRecord {
    CommitRecord {
        checkpoint: CheckpointId(3),
        world_size: 2,
        step: 10,
        time_unix_ms: 1,
        app: BTreeMap::from([("k".to_string(), "v".to_string())]),
        parts: (0..2)
            .map(|r| CommitPart {
                rank: Rank(r),
                manifest_digest: ChunkDigest::of(&[r as u8]),
                logical_bytes: 11,
                stored_new_bytes: 3,
            })
            .collect(),
        writer: WriterInfo::this_host(),
    }
}

#[test]
fn records_round_trip() {
    assert_eq!(Manifest::decode(&manifest().encode()).unwrap(), manifest());
    assert_eq!(CommitRecord::decode(&commit().encode()).unwrap(), commit());
}

#[test]
fn inconsistent_manifests_are_refused() {
    let mut m = manifest();
    m.objects[0].bytes = 12;
    let e = Manifest::decode(&m.encode()).unwrap_err();
    assert_eq!(e.kind, FormatErrorKind::Invalid);
    assert!(e.msg.contains("\"x\""), "{e}");
    let mut m = manifest();
    if let ObjectKind::Bulk {
        global: Some(g), ..
    } = &mut m.objects[0].info.kind
    {
        g.total = 10;
    }
    assert_eq!(
        Manifest::decode(&m.encode()).unwrap_err().kind,
        FormatErrorKind::Invalid
    );
    let mut c = commit();
    c.world_size = 3;
    assert_eq!(
        CommitRecord::decode(&c.encode()).unwrap_err().kind,
        FormatErrorKind::Invalid
    );
}

#[test]
fn future_major_is_refused_everywhere() {
    let mut m = manifest().encode();
    m[4] = 2;
    assert_eq!(
        Manifest::decode(&m).unwrap_err().kind,
        FormatErrorKind::VersionUnsupported
    );
    let mut f = FormatVersion::CURRENT.encode();
    f[8] = 9;
    let e = FormatVersion::decode(&f).unwrap_err();
    assert_eq!(e.kind, FormatErrorKind::VersionUnsupported);
    assert!(e.msg.contains("9.0"), "{e}");
    // A newer minor of the same major is accepted.
    let mut f = FormatVersion::CURRENT.encode();
    f[10] = 7;
    assert_eq!(FormatVersion::decode(&f).unwrap().minor, 7);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = Manifest::decode(&data);
        let _ = CommitRecord::decode(&data);
        let _ = FormatVersion::decode(&data);
        let _ = ChunkHeader::decode(&data);
        let _ = decode_chunk(&data, &ChunkDigest::of(&data));
    }

    #[test]
    fn flipped_manifest_byte_is_detected(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut b = manifest().encode();
        let i = pos.index(b.len());
        b[i] ^= 1 << bit;
        prop_assert!(Manifest::decode(&b).is_err());
    }

    #[test]
    fn flipped_commit_byte_is_detected(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut b = commit().encode();
        let i = pos.index(b.len());
        b[i] ^= 1 << bit;
        prop_assert!(CommitRecord::decode(&b).is_err());
    }

    #[test]
    fn truncation_is_detected(cut in any::<prop::sample::Index>()) {
        let b = manifest().encode();
        let n = cut.index(b.len());
        prop_assert!(Manifest::decode(&b[..n]).is_err());
        let c = commit().encode();
        let n = cut.index(c.len());
        prop_assert!(CommitRecord::decode(&c[..n]).is_err());
    }

    /// A body with a valid checksum but arbitrary JSON-ish content must not panic.
    #[test]
    fn resealed_garbage_never_panics(body in "[\\[\\]{}\":,0-9a-z ]{0,200}") {
        let mut file = Vec::new();
        file.extend_from_slice(&MANIFEST_MAGIC);
        file.extend_from_slice(&FORMAT_MAJOR.to_le_bytes());
        file.extend_from_slice(&FORMAT_MINOR.to_le_bytes());
        file.extend_from_slice(&(body.len() as u64).to_le_bytes());
        let mut h = blake3::Hasher::new();
        h.update(&file[..16]);
        h.update(body.as_bytes());
        file.extend_from_slice(h.finalize().as_bytes());
        file.extend_from_slice(body.as_bytes());
        let _ = Manifest::decode(&file);
    }
}

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
                sharing: None,
                layout: None,
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
                // Rank 1's manifest rides inline (format 1.1), rank 0's is a file.
                manifest: (r == 1).then(|| lazarus_format::base64::encode(&manifest().encode())),
            })
            .collect(),
        writer: WriterInfo::this_host(),
    }
}

#[test]
fn a_commit_of_world_size_zero_is_refused() {
    let mut c = commit();
    c.world_size = 0;
    c.parts.clear();
    let e = CommitRecord::decode(&c.encode()).unwrap_err();
    assert!(e.to_string().contains("world size 0"), "{e}");
}

#[test]
fn commit_with_inline_manifest_is_minor_1_and_round_trips() {
    let c = commit();
    let bytes = c.encode();
    assert_eq!(
        u16::from_le_bytes([bytes[6], bytes[7]]),
        1,
        "inline => envelope 1.1"
    );
    let back = CommitRecord::decode(&bytes).unwrap();
    assert_eq!(back, c);
    assert!(back.parts[0].inline_manifest().is_none());
    let m = back.parts[1].inline_manifest().unwrap().unwrap();
    assert_eq!(Manifest::decode(&m).unwrap(), manifest());
    // Without inline parts the COMMIT stays byte-compatible with 1.0 writers.
    let mut plain = c.clone();
    plain.parts[1].manifest = None;
    let bytes = plain.encode();
    assert_eq!(u16::from_le_bytes([bytes[6], bytes[7]]), 0);
    assert!(!String::from_utf8_lossy(&bytes).contains("\"manifest\""));
    // Damaged inline text is a typed error, not a panic.
    let mut bad = c;
    bad.parts[1].manifest = Some("not base64!".into());
    assert!(bad.parts[1].inline_manifest().unwrap().is_err());
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
    assert!(
        e.msg
            .contains(&format!("9.{}", FormatVersion::CURRENT.minor)),
        "{e}"
    );
    // A newer minor of the same major is accepted.
    let mut f = FormatVersion::CURRENT.encode();
    f[10] = 7;
    assert_eq!(FormatVersion::decode(&f).unwrap().minor, 7);
}

/// Format 1.2: an object's sharing round-trips, raises the manifest envelope to minor 2
/// (a manifest without it keeps 1.0's bytes), and must agree with the global range.
#[test]
fn sharing_is_recorded_and_checked_against_the_global_range() {
    let plain = manifest().encode();
    assert_eq!(u16::from_le_bytes([plain[6], plain[7]]), 0);
    let mut m = manifest();
    m.objects[0].info.sharing = Some(Sharing::Distributed);
    let bytes = m.encode();
    assert_eq!(u16::from_le_bytes([bytes[6], bytes[7]]), 2);
    assert!(String::from_utf8_lossy(&bytes).contains("\"sharing\": \"distributed\""));
    assert_eq!(Manifest::decode(&bytes).unwrap(), m);
    for wrong in [Sharing::Rank, Sharing::Replicated] {
        m.objects[0].info.sharing = Some(wrong);
        let e = Manifest::decode(&m.encode()).unwrap_err();
        assert_eq!(e.kind, FormatErrorKind::Invalid);
        assert!(e.msg.contains("contradicts a global range"), "{e}");
    }
    m.objects[0].info.sharing = Some(Sharing::Distributed);
    if let ObjectKind::Bulk { global, .. } = &mut m.objects[0].info.kind {
        *global = None;
    }
    let e = Manifest::decode(&m.encode()).unwrap_err();
    assert!(e.msg.contains("needs a global range"), "{e}");
}

/// Format 1.3: a serde object's layout round-trips and raises the manifest envelope to
/// minor 3; a layout on a bulk object, an empty one or one over `MAX_LAYOUT_LEN` bytes is
/// refused naming the object.
#[test]
fn a_layout_is_recorded_for_serde_objects_only_and_bounded() {
    let mut m = manifest();
    m.objects[0].info.kind = ObjectKind::Serde;
    m.objects[0].info.layout = Some("Knobs{dt:f64,mode:Mode::Implicit#1}".into());
    let bytes = m.encode();
    assert_eq!(u16::from_le_bytes([bytes[6], bytes[7]]), 3);
    assert!(String::from_utf8_lossy(&bytes).contains("\"layout\": \"Knobs{dt:f64"));
    assert_eq!(Manifest::decode(&bytes).unwrap(), m);
    for bad in [String::new(), "x".repeat(MAX_LAYOUT_LEN + 1)] {
        m.objects[0].info.layout = Some(bad);
        let e = Manifest::decode(&m.encode()).unwrap_err();
        assert_eq!(e.kind, FormatErrorKind::Invalid);
        assert!(e.msg.contains("object \"x\": layout of"), "{e}");
    }
    let mut bulk = manifest();
    bulk.objects[0].info.layout = Some("u8".into());
    let e = Manifest::decode(&bulk.encode()).unwrap_err();
    assert!(
        e.msg
            .contains("object \"x\": a layout is recorded for serde objects only"),
        "{e}"
    );
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

    /// The FORMAT file: a valid one with any byte changed, inserted or removed decodes
    /// only to the version whose encoding it exactly is (major changes are refused).
    #[test]
    fn mutated_format_file_decodes_only_to_itself(pos in any::<prop::sample::Index>(), byte in any::<u8>(), how in 0u8..4) {
        let mut f = FormatVersion::CURRENT.encode().to_vec();
        let i = pos.index(f.len());
        match how {
            0 => f[i] ^= byte | 1,
            1 => f.insert(i, byte),
            2 => { f.remove(i); }
            _ => f.truncate(i),
        }
        if let Ok(v) = FormatVersion::decode(&f) {
            prop_assert_eq!(&v.encode()[..], &f[..]);
            prop_assert_eq!(v.major, FormatVersion::CURRENT.major);
        }
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

    /// Base64 of inline manifests: exact round trip; arbitrary text never panics and
    /// decodes only if it is the canonical encoding of what it decodes to.
    #[test]
    fn base64_round_trips_and_is_canonical(bytes in prop::collection::vec(any::<u8>(), 0..300),
                                           text in "[A-Za-z0-9+/=]{0,40}") {
        let enc = lazarus_format::base64::encode(&bytes);
        prop_assert_eq!(lazarus_format::base64::decode(&enc), Some(bytes));
        if let Some(d) = lazarus_format::base64::decode(&text) {
            prop_assert_eq!(lazarus_format::base64::encode(&d), text);
        }
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

/// docs/FORMAT.md gaps (issue #11): a zstd chunk payload is exactly one zstd frame, with
/// nothing before it (a skippable frame) or after it (a second frame, garbage). Before the
/// fix a payload of two frames that together decompress to the raw length was accepted, so
/// two readers could disagree on what a chunk holds.
#[test]
fn zstd_framing_extra_frames_or_trailing_bytes() {
    let raw: Vec<u8> = (0..4000u32).map(|i| (i % 7) as u8).collect();
    let digest = ChunkDigest::of(&raw);
    let good = encode_chunk(&raw, ChunkCodec::Zstd, None, 1);
    assert_eq!(decode_chunk(&good, &digest).unwrap(), raw);
    let header = good[..CHUNK_HEADER_LEN].to_vec();
    let frame = |b: &[u8]| zstd::bulk::compress(b, 1).unwrap();
    let with = |payload: Vec<u8>| [header.clone(), payload].concat();
    let (a, b) = raw.split_at(1000);
    // Skippable frame: magic 0x184D2A50 LE, 4-byte length, then that many bytes.
    let skippable = [
        &[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3][..],
        &frame(&raw)[..],
    ]
    .concat();
    for (what, file) in [
        ("two frames", with([frame(a), frame(b)].concat())),
        ("a skippable frame first", with(skippable)),
        ("a trailing byte", with([frame(&raw), vec![0]].concat())),
        ("an empty payload", with(Vec::new())),
    ] {
        let e = match decode_chunk(&file, &digest) {
            Ok(v) => panic!("{what}: accepted, decoding to {} bytes", v.len()),
            Err(e) => e,
        };
        assert!(
            matches!(e.kind, FormatErrorKind::Invalid | FormatErrorKind::Checksum),
            "{what}: {e}"
        );
    }
}

/// Wraps `body` in a valid envelope (checksum included), as a hostile writer could.
fn sealed(magic: &[u8; 4], body: &str) -> Vec<u8> {
    let mut head = Vec::new();
    head.extend_from_slice(magic);
    head.extend_from_slice(&1u16.to_le_bytes());
    head.extend_from_slice(&0u16.to_le_bytes());
    head.extend_from_slice(&(body.len() as u64).to_le_bytes());
    let mut h = blake3::Hasher::new();
    h.update(&head);
    h.update(body.as_bytes());
    head.extend_from_slice(h.finalize().as_bytes());
    head.extend_from_slice(body.as_bytes());
    head
}

/// docs/FORMAT.md gaps (issue #11): a JSON record with a duplicate key is invalid. Before
/// the fix the Rust decoder took the last value of a duplicated key inside an object's
/// flattened fields or in `app`, while Python's `json` keeps the last and other parsers
/// the first: two readers could read different records from the same verified bytes.
#[test]
fn duplicate_json_keys_are_refused() {
    let m = String::from_utf8(manifest().encode()[ENVELOPE_HEADER_LEN..].to_vec()).unwrap();
    let dup_len = m.replacen("\"len\": 11,", "\"len\": 11,\n      \"len\": 11,", 1);
    assert_ne!(dup_len, m);
    let e = Manifest::decode(&sealed(b"LZMF", &dup_len)).unwrap_err();
    assert!(e.msg.contains("duplicate"), "{e}");
    // Inside the flattened object fields (name, type_name, kind, dtype...).
    let dup_dtype = m.replacen(
        "\"dtype\": \"u8\",",
        "\"dtype\": \"u8\",\n      \"dtype\": \"u8\",",
        1,
    );
    assert_ne!(dup_dtype, m);
    let e = Manifest::decode(&sealed(b"LZMF", &dup_dtype)).unwrap_err();
    assert!(e.msg.contains("duplicate key \"dtype\""), "{e}");
    let c = String::from_utf8(commit().encode()[ENVELOPE_HEADER_LEN..].to_vec()).unwrap();
    let dup_app = c.replacen("\"k\": \"v\"", "\"k\": \"v\", \"k\": \"w\"", 1);
    assert_ne!(dup_app, c);
    let e = CommitRecord::decode(&sealed(b"LZCM", &dup_app)).unwrap_err();
    assert_eq!(e.kind, FormatErrorKind::Invalid);
    assert!(e.msg.contains("duplicate key \"k\""), "{e}");
    // The unchanged records still decode (the helper seals correctly).
    assert!(Manifest::decode(&sealed(b"LZMF", &m)).is_ok());
    assert!(CommitRecord::decode(&sealed(b"LZCM", &c)).is_ok());
}

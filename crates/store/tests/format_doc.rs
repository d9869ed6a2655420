//! Keeps docs/FORMAT.md honest: every `<!-- example: NAME -->` block in it is decoded here
//! and must yield the documented values. `LAZARUS_PRINT_DOC_EXAMPLES=1` prints freshly
//! encoded blocks (used once to write the doc; decoding the doc's bytes is what is tested).

use lazarus_format::*;
use std::collections::BTreeMap;

const RAW: [f64; 2] = [1.0, -2.5];

fn raw() -> Vec<u8> {
    RAW.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn example_manifest() -> Manifest {
    let d = ChunkDigest::of(&raw());
    Manifest {
        checkpoint: CheckpointId(1),
        rank: Rank(0),
        chunk_size: 1 << 20,
        objects: vec![ManifestObject {
            info: ObjectInfo {
                name: "x".into(),
                type_name: "DVec<f64>".into(),
                kind: ObjectKind::Bulk {
                    dtype: DType::F64,
                    len: 2,
                    // One rank holds the whole array: ranges tile 0..total.
                    global: Some(GlobalRange {
                        start: 0,
                        len: 2,
                        total: 2,
                    }),
                },
                sharing: Some(Sharing::Distributed),
                layout: None,
            },
            bytes: 16,
            chunks: vec![ChunkRef {
                digest: d,
                len: 16,
                stored: 32,
            }],
        }],
    }
}

fn example_commit() -> CommitRecord {
    CommitRecord {
        checkpoint: CheckpointId(1),
        world_size: 1,
        step: 100,
        time_unix_ms: 1_795_300_000_000,
        app: BTreeMap::from([("app".to_string(), "heat".to_string())]),
        parts: vec![CommitPart {
            rank: Rank(0),
            manifest_digest: ChunkDigest::of(&example_manifest().encode()),
            logical_bytes: 16,
            stored_new_bytes: 32,
            manifest: None,
        }],
        writer: WriterInfo {
            arch: "x86_64".into(),
            endian: "little".into(),
            os: "linux".into(),
            lazarus_version: "0.1.0".into(),
            lease_generation: None,
        },
    }
}

fn hex(b: &[u8]) -> String {
    b.chunks(16)
        .map(|l| {
            l.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn unhex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|t| u8::from_str_radix(t, 16).expect("hex byte"))
        .collect()
}

/// Content of the fenced block following `<!-- example: name -->`.
fn block(doc: &str, name: &str) -> String {
    let marker = format!("<!-- example: {name} -->");
    let at = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/FORMAT.md lacks example {name}"));
    let rest = &doc[at + marker.len()..];
    let open = rest.find("```").expect("fence");
    let body_start = open + rest[open..].find('\n').expect("newline") + 1;
    let close = rest[body_start..].find("\n```").expect("closing fence");
    rest[body_start..body_start + close].to_string()
}

#[test]
fn format_md_examples_decode() {
    if std::env::var("LAZARUS_PRINT_DOC_EXAMPLES").is_ok() {
        let m = example_manifest().encode();
        let c = example_commit().encode();
        println!("format:\n{}", hex(&FormatVersion::CURRENT.encode()));
        println!("chunk-digest:\n{}", ChunkDigest::of(&raw()));
        println!(
            "chunk-none:\n{}",
            hex(&encode_chunk(&raw(), ChunkCodec::None, None, 1))
        );
        println!(
            "chunk-zstd:\n{}",
            hex(&encode_chunk(&raw(), ChunkCodec::Zstd, Some(8), 1))
        );
        println!("manifest-header:\n{}", hex(&m[..48]));
        println!("manifest-body:\n{}", String::from_utf8_lossy(&m[48..]));
        println!("manifest-digest:\n{}", ChunkDigest::of(&m));
        println!("commit-header:\n{}", hex(&c[..48]));
        println!("commit-body:\n{}", String::from_utf8_lossy(&c[48..]));
    }
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/FORMAT.md"))
        .expect("docs/FORMAT.md");
    assert_eq!(
        FormatVersion::decode(&unhex(&block(&doc, "format"))).unwrap(),
        FormatVersion { major: 1, minor: 0 }
    );
    let digest = ChunkDigest::from_hex(block(&doc, "chunk-digest").trim()).expect("digest");
    assert_eq!(digest, ChunkDigest::of(&raw()));
    for name in ["chunk-none", "chunk-zstd"] {
        let bytes = decode_chunk(&unhex(&block(&doc, name)), &digest).unwrap();
        let vals: Vec<f64> = bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(vals, RAW, "{name}");
    }
    let mut m = unhex(&block(&doc, "manifest-header"));
    m.extend_from_slice(block(&doc, "manifest-body").as_bytes());
    assert_eq!(Manifest::decode(&m).unwrap(), example_manifest());
    let md = ChunkDigest::from_hex(block(&doc, "manifest-digest").trim()).expect("digest");
    assert_eq!(ChunkDigest::of(&m), md);
    // BLAKE3 over more than one 1024-byte chunk exercises the tree (parent nodes, an odd
    // last chunk carried up): input byte i is i % 251, as in BLAKE3's own test vectors.
    for len in [2049usize, 3073] {
        let input: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let want = block(&doc, &format!("blake3-{len}"));
        assert_eq!(
            ChunkDigest::of(&input).to_hex(),
            want.trim(),
            "BLAKE3 of {len} bytes"
        );
    }
    let mut c = unhex(&block(&doc, "commit-header"));
    c.extend_from_slice(block(&doc, "commit-body").as_bytes());
    let c = CommitRecord::decode(&c).unwrap();
    assert_eq!(c, example_commit());
    assert_eq!(c.parts[0].manifest_digest, md);
}

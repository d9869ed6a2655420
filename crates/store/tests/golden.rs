//! The golden repositories must decode to these exact values forever: tests/data/golden-v1
//! (format 1.0, manifests as files) and tests/data/golden-v1.1 (format 1.1, the same
//! content with every manifest inline in COMMIT). They were generated once by
//! `generate_golden` below (ignored; run it with `LAZARUS_REGEN_GOLDEN=1.1 cargo test -p
//! lazarus-store --test golden -- --ignored` only when a NEW format version is introduced,
//! into a new directory). golden-v1 was written by the 1.0 writer and is never regenerated
//! (today's writer would record FORMAT 1.1).

use lazarus_format::{CheckpointId, DType, GlobalRange, ObjectInfo, ObjectKind, ObjectSpec, Rank};
use lazarus_store::{CommitMeta, RepoOptions, RepoReader, Repository};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Params {
    dt: f64,
    name: String,
    n: u32,
    tags: Vec<i16>,
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/golden-v1")
}

fn golden_dir_1_1() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/golden-v1.1")
}

const N: u64 = 1000; // elements per rank of the distributed field

/// Element `i` (global index) of the field at checkpoint `k` (1 or 2); exact in binary.
fn field(k: u64, i: u64) -> f64 {
    if k == 2 && (100..120).contains(&i) {
        -(i as f64)
    } else {
        i as f64 * 0.25 + 0.125
    }
}

/// Pseudo-random ids (incompressible: stored raw).
fn ids(rank: u32) -> Vec<u32> {
    let mut x = 0x9e37_79b9u32 ^ rank;
    (0..64)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        })
        .collect()
}

fn params(rank: u32) -> Params {
    Params {
        dt: 0.5,
        name: format!("rank{rank}"),
        n: 7 + rank,
        tags: vec![-1, 2, -300],
    }
}

#[test]
#[ignore]
fn generate_golden() {
    // Only the 1.1 repository can be regenerated: this writer no longer writes 1.0 (the
    // 1.0 golden files are kept as they were written).
    if std::env::var("LAZARUS_REGEN_GOLDEN").as_deref() != Ok("1.1") {
        return;
    }
    let dir = golden_dir_1_1();
    let _ = std::fs::remove_dir_all(&dir);
    let mut repo = Repository::open(
        &dir,
        RepoOptions {
            chunk_size: 4096,
            ..RepoOptions::default()
        },
    )
    .unwrap();
    for k in 1..=2u64 {
        let p = repo.begin(2).unwrap();
        let w = p
            .part_writer()
            .with_inline_manifest(lazarus_format::MAX_INLINE_MANIFEST);
        let mut receipts = Vec::new();
        for rank in 0..2u32 {
            let start = rank as u64 * N;
            let f: Vec<u8> = (start..start + N)
                .flat_map(|i| field(k, i).to_le_bytes())
                .collect();
            let id: Vec<u8> = ids(rank).iter().flat_map(|x| x.to_le_bytes()).collect();
            let pc = postcard::to_stdvec(&params(rank)).unwrap();
            let objs = [
                ObjectSpec {
                    info: ObjectInfo {
                        name: "field".into(),
                        type_name: "DVec<f64>".into(),
                        kind: ObjectKind::Bulk {
                            dtype: DType::F64,
                            len: N,
                            global: Some(GlobalRange {
                                start,
                                len: N,
                                total: 2 * N,
                            }),
                        },
                        sharing: None,
                        layout: None,
                    },
                    data: f.into(),
                    hint: None,
                },
                ObjectSpec {
                    info: ObjectInfo {
                        name: "ids".into(),
                        type_name: "Vec<u32>".into(),
                        kind: ObjectKind::Bulk {
                            dtype: DType::U32,
                            len: 64,
                            global: None,
                        },
                        sharing: None,
                        layout: None,
                    },
                    data: id.into(),
                    hint: None,
                },
                ObjectSpec {
                    info: ObjectInfo {
                        name: "params".into(),
                        type_name: "golden::Params".into(),
                        kind: ObjectKind::Serde,
                        sharing: None,
                        layout: None,
                    },
                    data: pc.into(),
                    hint: None,
                },
            ];
            receipts.push(w.write(Rank(rank), &objs).unwrap());
        }
        let app = BTreeMap::from([("app".to_string(), "golden".to_string())]);
        repo.commit(p, receipts, CommitMeta { step: 10 * k, app })
            .unwrap();
    }
}

#[test]
fn golden_v1_decodes_to_known_values() {
    check_golden(&golden_dir(), 0);
}

#[test]
fn golden_v1_1_with_inline_manifests_decodes_to_known_values() {
    let dir = golden_dir_1_1();
    check_golden(&dir, 1);
    for k in ["0000000000000001", "0000000000000002"] {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("checkpoints").join(k))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec!["COMMIT"],
            "checkpoint {k}: manifests are inline"
        );
    }
    // The chunks are the very same files as in 1.0: only where manifests live changed.
    let r10 = RepoReader::open(&golden_dir()).unwrap();
    let r11 = RepoReader::open(&dir).unwrap();
    for k in 1..=2 {
        for rank in 0..2 {
            let (a, b) = (
                r10.manifest(CheckpointId(k), Rank(rank)).unwrap(),
                r11.manifest(CheckpointId(k), Rank(rank)).unwrap(),
            );
            assert_eq!(a.objects, b.objects);
        }
    }
}

fn check_golden(dir: &std::path::Path, minor: u16) {
    let r = RepoReader::open(dir).expect("golden repository present");
    assert_eq!((r.version().major, r.version().minor), (1, minor));
    let s = r.committed().unwrap();
    assert_eq!(
        s.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![CheckpointId(1), CheckpointId(2)]
    );
    assert_eq!(s.iter().map(|s| s.step).collect::<Vec<_>>(), vec![10, 20]);
    assert_eq!(s[1].app.get("app").map(String::as_str), Some("golden"));
    assert_eq!(s[0].world_size, 2);
    for k in 1..=2u64 {
        for rank in 0..2u32 {
            let objs = r.load_part(CheckpointId(k), Rank(rank)).unwrap();
            assert_eq!(objs.len(), 3);
            let start = rank as u64 * N;
            assert_eq!(
                objs[0].info.kind,
                ObjectKind::Bulk {
                    dtype: DType::F64,
                    len: N,
                    global: Some(GlobalRange {
                        start,
                        len: N,
                        total: 2 * N
                    })
                }
            );
            let f: Vec<f64> = objs[0]
                .data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect();
            let want: Vec<f64> = (start..start + N).map(|i| field(k, i)).collect();
            assert_eq!(f, want, "field of checkpoint {k} rank {rank}");
            let id: Vec<u32> = objs[1]
                .data
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            assert_eq!(id, ids(rank));
            let p: Params = postcard::from_bytes(&objs[2].data).unwrap();
            assert_eq!(p, params(rank));
            assert_eq!(objs[2].info.type_name, "golden::Params");
        }
    }
    // Hard-coded values, independent of the helper functions above.
    let o = r.load_part(CheckpointId(2), Rank(0)).unwrap();
    let at = |i: usize| f64::from_le_bytes(o[0].data[8 * i..8 * i + 8].try_into().unwrap());
    assert_eq!(
        (at(0), at(1), at(100), at(119), at(120), at(999)),
        (0.125, 0.375, -100.0, -119.0, 30.125, 249.875)
    );
    assert_eq!(&o[1].data[..4], &ids(0)[0].to_le_bytes());
    assert_eq!(&o[1].data[..4], &0x510c_4619_u32.to_le_bytes());
    let v = r.verify(&|_, _| {}).unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert_eq!(v.intact.len(), 2);
}

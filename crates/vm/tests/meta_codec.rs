//! The `vm.meta` decoder (untrusted bytes from a repository): a valid record round-trips;
//! random bytes, mutated records and records with inconsistent fields are refused with a
//! `Corrupt` error naming the field — never a panic. The module check gets random bytes
//! too. (Same decoders as `fuzz/fuzz_targets/vm_meta.rs`, on stable.)

use lazarus_vm::meta::{FileEntry, FileState, ProgramId, VmMeta, MAX_META_BYTES, VM_META_VERSION};
use lazarus_vm::runtime::{GlobalValue, RuntimeKind, UnwindRegion};
use lazarus_vm::wasi::{FdState, OutputState, Preopen, Sink, TrackedPath, WasiConfig, WasiState};
use lazarus_vm::VmErrorKind;
use proptest::prelude::*;

fn sample(pages: u64, globals: u32, pending: Vec<u8>) -> VmMeta {
    VmMeta {
        version: VM_META_VERSION,
        program: ProgramId {
            digest: "ab".repeat(32),
            name: "p.wasm".into(),
            bytes: 10,
        },
        instrumented_digest: "cd".repeat(32),
        instrumenter_version: 1,
        runtime: RuntimeKind::Wasmi,
        steps: 12345,
        exit: None,
        memory_pages: pages,
        region: Some(UnwindRegion {
            start: ((pages - 1) * 65536) as u32,
            len: 65536,
        }),
        globals: (0..globals)
            .map(|i| (format!("__lz_g{i}"), GlobalValue::I64(u64::from(i) * 7)))
            .collect(),
        wasi: WasiState {
            config: WasiConfig {
                args: vec!["p.wasm".into(), "x".into()],
                env: vec!["A=1".into()],
                preopens: vec![Preopen {
                    host: "/tmp".into(),
                    guest: ".".into(),
                }],
                seed: 9,
            },
            rng_word_pos: 1 << 70,
            monotonic_ns: 55,
            fds: vec![
                (0, FdState::Stdin),
                (1, FdState::Stdout),
                (2, FdState::Stderr),
                (
                    3,
                    FdState::Dir {
                        pre: 0,
                        rel: String::new(),
                        preopen: true,
                    },
                ),
                (
                    4,
                    FdState::File {
                        pre: 0,
                        rel: "a/b.txt".into(),
                        offset: 99,
                        read: false,
                        write: true,
                        append: false,
                        file_id: Some([2049, 77]),
                        detached: false,
                    },
                ),
            ],
            stdin_consumed: 0,
            stdout: OutputState {
                sink: Sink::Lines,
                produced: 5,
                offset: None,
                pending,
            },
            stderr: OutputState {
                sink: Sink::File { dev: 1, ino: 2 },
                produced: 0,
                offset: Some(0),
                pending: vec![],
            },
            tracked: vec![TrackedPath {
                pre: 0,
                rel: "a/b.txt".into(),
            }],
        },
        files: vec![FileEntry {
            path: TrackedPath {
                pre: 0,
                rel: "a/b.txt".into(),
            },
            state: FileState::File {
                object: "vm.file.0".into(),
                len: 3,
            },
        }],
    }
}

fn corrupt_field(m: VmMeta, field: &str) {
    let e = VmMeta::decode(&m.encode()).expect_err(field);
    assert_eq!(e.kind(), VmErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains(field), "{e} should name {field}");
}

#[test]
fn inconsistent_fields_are_refused_by_name() {
    let ok = sample(4, 3, b"par".to_vec());
    assert_eq!(VmMeta::decode(&ok.encode()).unwrap(), ok);
    let mut m = ok.clone();
    m.version = 2;
    corrupt_field(m, "version");
    let mut m = ok.clone();
    m.memory_pages = 70_000;
    corrupt_field(m, "memory_pages");
    let mut m = ok.clone();
    m.region = Some(UnwindRegion {
        start: 4 * 65536,
        len: 65536,
    });
    corrupt_field(m, "region");
    let mut m = ok.clone();
    m.region = Some(UnwindRegion {
        start: 100,
        len: 65536,
    });
    corrupt_field(m, "region");
    let mut m = ok.clone();
    m.globals.push(("memory".into(), GlobalValue::I32(0)));
    corrupt_field(m, "globals");
    let mut m = ok.clone();
    m.globals.push(m.globals[0].clone());
    corrupt_field(m, "globals");
    let mut m = ok.clone();
    m.wasi.fds.push((
        9,
        FdState::File {
            pre: 3,
            rel: "x".into(),
            offset: 0,
            read: true,
            write: false,
            append: false,
            file_id: None,
            detached: false,
        },
    ));
    corrupt_field(m, "wasi.fds");
    let mut m = ok.clone();
    m.wasi.fds.push((
        9,
        FdState::File {
            pre: 0,
            rel: "../../etc/passwd".into(),
            offset: 0,
            read: true,
            write: false,
            append: false,
            file_id: None,
            detached: false,
        },
    ));
    corrupt_field(m, "wasi.fds");
    let mut m = ok.clone();
    m.files[0].path.rel = "../outside".into();
    corrupt_field(m, "files");
    let mut m = ok.clone();
    m.files.push(m.files[0].clone());
    corrupt_field(m, "files");
    let mut m = ok.clone();
    m.program.digest = "zz".into();
    corrupt_field(m, "program.digest");
    // Regression (review): wasi.tracked was not validated at all.
    let mut m = ok.clone();
    m.wasi.tracked[0].rel = "../outside".into();
    corrupt_field(m, "wasi.tracked");
    let mut m = ok.clone();
    m.wasi.tracked[0].rel = "a/../../etc/passwd".into();
    corrupt_field(m, "wasi.tracked");
    let mut m = ok.clone();
    m.wasi.tracked[0].pre = 1;
    corrupt_field(m, "wasi.tracked");
    let mut m = ok.clone();
    m.wasi.tracked[0].rel = ".".into(); // the preopen itself
    corrupt_field(m, "wasi.tracked");
    // An unwind region ending at 4 GiB, where Asyncify's end pointer cannot reach.
    let mut m = sample(65_536, 0, vec![]);
    m.region = Some(UnwindRegion {
        start: u32::MAX - 65_535,
        len: 65_536,
    });
    corrupt_field(m, "region");
}

/// Regression (review): nothing bounded vm.meta when it was written, only when read back
/// (`MAX_META_BYTES`): under the supervisor a 33 MiB line without newline (held, stored as
/// hex) gave a checkpoint that committed, let retention drop the older ones, and was then
/// refused by every resume. The writer's encoding refuses it, naming the field sizes.
#[test]
fn oversized_meta_is_refused_at_write_not_at_resume() {
    let ok = sample(4, 1, b"held".to_vec());
    assert_eq!(VmMeta::decode(&ok.encode_checked().unwrap()).unwrap(), ok);
    let big = sample(4, 1, vec![b'x'; MAX_META_BYTES / 2 + 1]);
    // What a resume would have met:
    let e = VmMeta::decode(&big.encode()).unwrap_err();
    assert!(e.to_string().contains("over"), "{e}");
    // Refused when written instead, naming what is large.
    let e = big.encode_checked().unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("checkpoint not written"), "{msg}");
    assert!(
        msg.contains(&format!(
            "wasi.stdout.pending {} bytes",
            MAX_META_BYTES / 2 + 1
        )),
        "{msg}"
    );
    assert!(msg.contains("wasi.tracked 1 paths"), "{msg}");
}

proptest! {
    #[test]
    fn valid_records_round_trip(pages in 1u64..65_536, globals in 0u32..20, pending in proptest::collection::vec(any::<u8>(), 0..64)) {
        let m = sample(pages, globals, pending);
        prop_assert_eq!(VmMeta::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = VmMeta::decode(&bytes);
        let _ = lazarus_vm::instrument::check(&bytes);
    }

    #[test]
    fn mutated_records_never_panic_and_never_pass_unless_valid(pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let good = sample(8, 4, b"xy".to_vec()).encode();
        let mut bad = good.clone();
        let i = pos.index(bad.len());
        bad[i] = byte;
        // Either a refusal, or a record that passed validation and survives its own round
        // trip unchanged. (Not "re-encodes to the mutated bytes": vm.meta is JSON, and a
        // digit turned into a space is still valid JSON for another number; a change of the
        // stored bytes is caught by the repository's chunk digest of the `vm.meta` object,
        // not by this decoder. The
        // first version of this property failed on ~8 % of seeds, found in review.)
        if let Ok(m) = VmMeta::decode(&bad) {
            let again = VmMeta::decode(&m.encode());
            prop_assert!(
                again.as_ref().is_ok_and(|a| *a == m),
                "byte {} set to {:#04x}: the decoded record does not round-trip: {:?}",
                i,
                byte,
                again.err()
            );
        }
    }
}

/// Regression (review): docs/VM.md says unknown fields are refused, but only the outer
/// structs denied them; an unknown field in the WASI state, a descriptor, an output
/// stream, a file state, a preopen or the unwind region was silently dropped. Now every
/// object of `vm.meta`, at any depth, refuses one.
#[test]
fn unknown_field_in_any_object_is_refused() {
    fn objects(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                out.push(at.clone());
                for (k, v) in m {
                    objects(v, format!("{at}/{k}"), out);
                }
            }
            serde_json::Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    objects(v, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    let bytes = sample(4, 2, b"held".to_vec()).encode();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let mut all = Vec::new();
    objects(&v, String::new(), &mut all);
    assert!(all.len() > 15, "{all:?}");
    for at in all {
        let mut w = v.clone();
        w.pointer_mut(&at)
            .and_then(|o| o.as_object_mut())
            .unwrap()
            .insert("from_the_future".into(), serde_json::Value::from(1));
        let e = VmMeta::decode(&serde_json::to_vec(&w).unwrap()).unwrap_err();
        assert_eq!(e.kind(), VmErrorKind::Corrupt, "{at}: {e}");
    }
}

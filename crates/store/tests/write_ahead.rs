//! Parts written in two pieces (asynchronous checkpoints over their staging budget, issue
//! #16, docs/ASYNC.md): the tails of objects as durable chunks first
//! (`PartWriter::write_ahead`), the heads and the manifest later (`write_with`). The part
//! restores byte for byte as if written at once, and misuse is a clear error.

mod common;

use common::*;
use lazarus_format::{ObjectSpec, Rank};
use lazarus_store::{RepoReader, Repository, StoreErrorKind};
use std::borrow::Cow;

fn piece<'a>(o: &ObjectSpec<'a>, range: std::ops::Range<usize>) -> ObjectSpec<'a> {
    ObjectSpec {
        info: o.info.clone(),
        data: Cow::Owned(o.data[range].to_vec()),
        hint: None,
    }
}

#[test]
fn a_part_written_in_pieces_restores_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), small_opts()).unwrap(); // 4 KiB chunks
    let a = le_f64(&field(0, 1, 5000)); // 40000 bytes: 9 full chunks and a short one
    let b = le_f64(&field(0, 2, 3000));
    let c = le_f64(&field(0, 3, 100));
    let (a, b, c) = (
        bulk_f64("a", &a, None),
        bulk_f64("b", &b, None),
        bulk_f64("c", &c, None),
    );
    let p = repo.begin(1).unwrap();
    let w = p.part_writer();
    assert_eq!(w.chunk_size(), 4096);
    // a: head of 3 chunks, tail from 12288; b: all ahead (empty head); c: all in the head.
    let ahead = w
        .write_ahead(
            Rank(0),
            &[
                (piece(&a, 12288..a.data.len()), 12288),
                (piece(&b, 0..b.data.len()), 0),
            ],
        )
        .unwrap();
    assert_eq!(ahead.bytes(), (a.data.len() - 12288 + b.data.len()) as u64);
    let heads = [
        piece(&a, 0..12288),
        piece(&b, 0..0),
        piece(&c, 0..c.data.len()),
    ];
    let receipt = w.write_with(Rank(0), &heads, &ahead).unwrap();
    assert_eq!(
        receipt.logical_bytes,
        (a.data.len() + b.data.len() + c.data.len()) as u64
    );
    let id = repo
        .commit(p, vec![receipt], Default::default())
        .unwrap()
        .summary
        .id;
    let got = RepoReader::open(dir.path())
        .unwrap()
        .load_part(id, Rank(0))
        .unwrap();
    let by_name = |n: &str| got.iter().find(|o| o.info.name == n).unwrap().data.clone();
    assert_eq!(by_name("a"), a.data.to_vec());
    assert_eq!(by_name("b"), b.data.to_vec());
    assert_eq!(by_name("c"), c.data.to_vec());
}

#[test]
fn misuse_of_write_ahead_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), small_opts()).unwrap();
    let a = le_f64(&field(0, 1, 2000));
    let a = bulk_f64("a", &a, None);
    let p = repo.begin(1).unwrap();
    let w = p.part_writer();
    // A split that is not on a chunk boundary.
    let e = w
        .write_ahead(Rank(0), &[(piece(&a, 100..a.data.len()), 100)])
        .unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::InvalidArgument, "{e}");
    let ahead = w
        .write_ahead(Rank(0), &[(piece(&a, 8192..a.data.len()), 8192)])
        .unwrap();
    // A head that does not end where the tail starts.
    let e = w
        .write_with(Rank(0), &[piece(&a, 0..4096)], &ahead)
        .unwrap_err();
    assert!(e.to_string().contains("tail starts at 8192"), "{e}");
    // An object written ahead but missing from the part.
    let other = bulk_f64("other", &[0u8; 8], None);
    let e = w.write_with(Rank(0), &[other], &ahead).unwrap_err();
    assert!(
        e.to_string()
            .contains("written ahead but is not in the part"),
        "{e}"
    );
    // Chunks written ahead for another checkpoint.
    let q = repo.begin(1).unwrap();
    let e = q
        .part_writer()
        .write_with(Rank(0), &[piece(&a, 0..8192)], &ahead)
        .unwrap_err();
    assert!(e.to_string().contains("another checkpoint"), "{e}");
}

/// Remembers the ticket the store hands a hint's producer once the part is durable.
#[derive(Default)]
struct Tickets(std::sync::Mutex<Option<lazarus_format::WriteTicket>>);

impl lazarus_format::WrittenSink for Tickets {
    fn written(&self, t: lazarus_format::WriteTicket) {
        *self.0.lock().unwrap() = Some(t);
    }
}

#[test]
fn a_sparse_capture_names_unchanged_chunks_and_never_hashes_what_it_was_not_given() {
    use lazarus_format::{ChangeHint, CheckpointId, ChunkDigest};
    use lazarus_store::WrittenAhead;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let mut repo = Repository::open(dir.path(), small_opts()).unwrap(); // 4 KiB chunks
    let sink = Arc::new(Tickets::default());
    let mut bytes = le_f64(&field(0, 1, 2048)); // 16 KiB: 4 chunks
    let len = bytes.len() as u64;
    let hint = |base, dirty: u64| {
        ChangeHint::new(len, 4096, base, vec![dirty], Some(sink.clone() as Arc<_>))
    };
    // Checkpoint 1: everything written; the store remembers the chunks under a ticket.
    let p = repo.begin(1).unwrap();
    let first = bulk_f64("a", &bytes, None).with_hint(hint(None, u64::MAX));
    let r = p.part_writer().write(Rank(0), &[first]).unwrap();
    let c1 = repo
        .commit(p, vec![r], Default::default())
        .unwrap()
        .summary
        .id;
    let t1 = sink.0.lock().unwrap().expect("told the ticket");
    // Chunk 2 changes: pages 0, 1 and 3 are clean relative to checkpoint 1's write.
    bytes[2 * 4096] ^= 0xff;
    let p = repo.begin(1).unwrap();
    let w = p.part_writer();
    let obj = bulk_f64("a", &bytes, None).with_hint(hint(Some(t1), 1 << 2));
    assert!(
        w.unchanged_since(Rank(0), &obj, CheckpointId(c1.0 + 100))
            .is_none(),
        "another base than the cached part's: nothing is reused"
    );
    let u = w
        .unchanged_since(Rank(0), &obj, c1)
        .expect("chunks 0, 1, 3 unchanged");
    assert_eq!((u.reused(), u.changed_bytes(), u.base()), (3, 4096, c1));
    let mut sparse = Vec::new();
    u.copy_changed(&bytes, &mut sparse).unwrap();
    assert_eq!(sparse, bytes[8192..12288]);
    let mut ahead = WrittenAhead::default();
    ahead.reuse(u.clone()).unwrap();
    assert!(ahead.reuse(u).is_err(), "one object reused twice");
    let staged = ObjectSpec {
        data: Cow::Owned(sparse.clone()),
        ..obj.clone()
    };
    let r = w.write_with(Rank(0), &[staged], &ahead).unwrap();
    assert_eq!((r.logical_bytes, r.hinted_chunks, r.chunks), (len, 3, 4));
    let c2 = repo
        .commit(p, vec![r], Default::default())
        .unwrap()
        .summary
        .id;
    let reader = RepoReader::open(dir.path()).unwrap();
    let got = reader.load_part(c2, Rank(0)).unwrap();
    assert_eq!(got[0].data, bytes, "the part restores the whole object");
    // Checkpoint 3 reuses checkpoint 2's chunks; one of them disappears before the write:
    // the write fails naming it (it cannot hash bytes it was never given).
    let t2 = sink.0.lock().unwrap().expect("told the ticket");
    assert_ne!(t1, t2);
    let p = repo.begin(1).unwrap();
    let w = p.part_writer();
    let obj = bulk_f64("a", &bytes, None).with_hint(hint(Some(t2), 1 << 3));
    let u = w
        .unchanged_since(Rank(0), &obj, c2)
        .expect("chunks 0, 1, 2 unchanged");
    let mut sparse = Vec::new();
    u.copy_changed(&bytes, &mut sparse).unwrap();
    let mut ahead = WrittenAhead::default();
    ahead.reuse(u).unwrap();
    // A sparse object of another length than its changed chunks is refused.
    let short = ObjectSpec {
        data: Cow::Owned(sparse[..100].to_vec()),
        ..obj.clone()
    };
    let e = w.write_with(Rank(0), &[short], &ahead).unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::InvalidArgument, "{e}");
    let gone = ChunkDigest::of(&bytes[..4096]).to_string();
    let victims = files(&dir.path().join("chunks"), &gone);
    assert_eq!(victims.len(), 1, "{gone}");
    std::fs::remove_file(&victims[0]).unwrap();
    let staged = ObjectSpec {
        data: Cow::Owned(sparse),
        ..obj.clone()
    };
    let e = w.write_with(Rank(0), &[staged], &ahead).unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Missing, "{e}");
    assert!(e.to_string().contains("chunk 0 of object \"a\""), "{e}");
    assert!(
        e.to_string().contains(&c2.to_string()),
        "names the base: {e}"
    );
}

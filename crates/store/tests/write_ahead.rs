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

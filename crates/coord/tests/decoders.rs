//! The stable sample of the coordinator's fuzz targets (`fuzz/fuzz_targets/coord_*.rs`):
//! the decoders of bytes this crate takes from disk (a rank's saved channel state, read
//! at restore) and from peers (two-phase-commit messages and votes), fed random bytes and
//! mutations of valid encodings. Nothing may panic or allocate in proportion to a length
//! the bytes claim; a channel state that passes the restore check is replayable; the
//! two-phase commit keeps its guarantees whatever the peers send.

use lazarus_coord::{
    channels_object_info, fuzz_channel_state, fuzz_two_phase, ChannelState, RoundId, SavedMessage,
    ToParticipant, Unaligned, UnalignedAction, Vote, VoteMsg,
};
use lazarus_format::{CheckpointId, ChunkDigest, Epoch, Rank};
use lazarus_store::PartReceipt;
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Records the largest single allocation of the current thread (for the bound below).
struct Largest;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|c| c.set(c.get().max(size)));
}

// SAFETY: forwards every call to the system allocator unchanged; only records sizes.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note(l.size());
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note(new);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static ALLOC: Largest = Largest;

/// A decoder may reserve up to serde's cautious bound (1 MiB) from a claimed length,
/// never more.
const ALLOC_BOUND: usize = 2 << 20;

fn largest_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|c| c.set(0));
    let t = f();
    (t, LARGEST.with(Cell::get))
}

/// Decodes and checks `bytes` as a restore would, and checks what the check promises.
fn channels_property(bytes: &[u8], world: u32, epoch: Option<Epoch>) -> Result<(), TestCaseError> {
    let (got, largest) =
        largest_during(|| fuzz_channel_state(&channels_object_info(), bytes, world, epoch));
    prop_assert!(
        largest <= ALLOC_BOUND.max(4 * bytes.len()),
        "allocated {largest} bytes"
    );
    if let Ok(cs) = got {
        if let Some(e) = epoch {
            prop_assert_eq!(cs.epoch, e);
        }
        for (from, msgs) in &cs.channels {
            prop_assert!(from.0 < world);
            prop_assert!(msgs.iter().all(|m| m.epoch < cs.epoch));
        }
        let again = postcard::to_allocvec(&cs).unwrap();
        prop_assert_eq!(
            &fuzz_channel_state(&channels_object_info(), &again, world, epoch).unwrap(),
            &cs
        );
        // What passed the check replays: every saved message exactly once, in order.
        let (rec, replay) = Unaligned::restore(Rank(0), world, cs.clone()).unwrap();
        prop_assert_eq!(rec.epoch(), cs.epoch);
        let want: Vec<(Rank, SavedMessage)> = cs
            .channels
            .iter()
            .flat_map(|(r, ms)| ms.iter().map(move |m| (*r, m.clone())))
            .collect();
        let got: Vec<(Rank, SavedMessage)> = replay
            .into_iter()
            .map(|a| match a {
                UnalignedAction::Deliver { from, payload } => (from, payload),
                other => panic!("restore asked for {other:?}"),
            })
            .collect();
        prop_assert_eq!(got, want);
    }
    Ok(())
}

fn saved_message() -> impl Strategy<Value = SavedMessage> {
    (
        any::<u32>(),
        0u64..6,
        proptest::collection::vec(any::<u8>(), 0..12),
    )
        .prop_map(|(tag, e, payload)| SavedMessage {
            tag,
            epoch: Epoch(e),
            payload,
        })
}

fn channel_state() -> impl Strategy<Value = ChannelState<SavedMessage>> {
    (
        0u64..6,
        proptest::collection::btree_map(
            0u32..5,
            proptest::collection::vec(saved_message(), 1..4),
            0..4,
        ),
    )
        .prop_map(|(e, chans)| ChannelState {
            epoch: Epoch(e),
            channels: chans.into_iter().map(|(r, m)| (Rank(r), m)).collect(),
        })
}

fn receipt(rank: u32, ckpt: u64, inline: bool) -> PartReceipt {
    PartReceipt {
        rank: Rank(rank),
        checkpoint: CheckpointId(ckpt),
        manifest_digest: ChunkDigest::of(&ckpt.to_le_bytes()),
        logical_bytes: 10,
        stored_new_bytes: 10,
        chunks: 1,
        new_chunks: 1,
        cached_chunks: 0,
        hinted_chunks: 0,
        manifest: inline.then(|| vec![1, 2, 3]),
    }
}

/// One record of [`fuzz_two_phase`]'s input.
fn record(out: &mut Vec<u8>, op: u8, msg: &[u8]) {
    out.push(op);
    out.push(msg.len() as u8);
    out.extend_from_slice(msg);
}

/// A script of `world` ranks (the participant is rank 0) in which round 1 commits: the
/// coordinator starts it, the participant writes its part, every other rank votes, COMMIT
/// is written; then round 2 starts and a stale decision and a failed vote arrive.
fn committing_script(world: u8) -> Vec<u8> {
    let mut s = vec![world - 1, 0];
    let r1 = RoundId {
        epoch: Epoch(1),
        ckpt: CheckpointId(1),
    };
    record(&mut s, 0x82, &[]);
    record(
        &mut s,
        3,
        &postcard::to_allocvec(&receipt(0, 1, true)).unwrap(),
    );
    for r in 1..u32::from(world) {
        let v = VoteMsg {
            round: r1,
            from: Rank(r),
            vote: Vote::Durable(receipt(r, 1, false)),
        };
        record(&mut s, 0, &postcard::to_allocvec(&v).unwrap());
    }
    record(&mut s, 0x83, &[]);
    record(&mut s, 0x82, &[50]);
    let stale = ToParticipant::Prepare {
        round: r1,
        previous: None,
    };
    record(&mut s, 1, &postcard::to_allocvec(&stale).unwrap());
    let failed: VoteMsg<PartReceipt> = VoteMsg {
        round: r1,
        from: Rank(u32::from(world) - 1),
        vote: Vote::Failed("disk full".into()),
    };
    record(&mut s, 0x80, &postcard::to_allocvec(&failed).unwrap());
    s
}

#[test]
fn the_two_phase_script_commits() {
    for world in 1..=4 {
        assert_eq!(
            fuzz_two_phase(&committing_script(world)).unwrap().1,
            1,
            "world {world}"
        );
    }
}

#[test]
fn a_channel_state_claiming_huge_lengths_allocates_little() {
    // The recorder sees allocations (else this test proves nothing).
    let (v, largest) = largest_during(|| std::hint::black_box(vec![1u8; 3 << 20]));
    assert!(largest >= v.len());
    let mut huge = vec![5u8]; // epoch 5
    huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // u32::MAX channels
    let mut inner = vec![5u8, 1, 0]; // epoch 5, one channel, from rank 0
    inner.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // u32::MAX messages
    let mut payload = vec![5u8, 1, 0, 1, 7, 1]; // one message: tag 7, epoch 1
    payload.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // a 4 GiB payload
    for bytes in [huge, inner, payload] {
        let (got, largest) =
            largest_during(|| fuzz_channel_state(&channels_object_info(), &bytes, 4, None));
        assert!(got.is_err());
        assert!(
            largest <= ALLOC_BOUND,
            "{bytes:?}: allocated {largest} bytes"
        );
    }
}

#[test]
fn a_channel_state_of_another_type_or_world_or_epoch_is_refused() {
    let cs = ChannelState {
        epoch: Epoch(3),
        channels: vec![(
            Rank(2),
            vec![SavedMessage {
                tag: 1,
                epoch: Epoch(2),
                payload: vec![9],
            }],
        )],
    };
    let b = postcard::to_allocvec(&cs).unwrap();
    let info = channels_object_info();
    assert_eq!(fuzz_channel_state(&info, &b, 3, Some(Epoch(3))), Ok(cs));
    let e = fuzz_channel_state(&info, &b, 2, None).unwrap_err();
    assert!(e.contains("outside a world of 2"), "{e}");
    let e = fuzz_channel_state(&info, &b, 3, Some(Epoch(4))).unwrap_err();
    assert!(e.contains("in a checkpoint of epoch 4"), "{e}");
    let mut other = info.clone();
    other.type_name = "Vec<u8>".into();
    assert!(fuzz_channel_state(&other, &b, 3, None).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(
        data in proptest::collection::vec(any::<u8>(), 0..400),
        world in 1u32..6,
        epoch in proptest::option::of(0u64..6),
    ) {
        channels_property(&data, world, epoch.map(Epoch))?;
        let _ = postcard::from_bytes::<ToParticipant>(&data);
        let _ = postcard::from_bytes::<VoteMsg<PartReceipt>>(&data);
        let _ = postcard::from_bytes::<PartReceipt>(&data);
        if let Err(e) = fuzz_two_phase(&data) {
            prop_assert!(false, "{}", e);
        }
    }

    /// Valid channel states with one byte flipped, inserted or removed, or cut short.
    #[test]
    fn mutated_channel_states_decode_or_are_refused(
        cs in channel_state(),
        world in 1u32..6,
        same_epoch in any::<bool>(),
        pos in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        how in 0u8..4,
    ) {
        let mut b = postcard::to_allocvec(&cs).unwrap();
        let epoch = same_epoch.then_some(cs.epoch);
        channels_property(&b, world, epoch)?;
        let i = pos.index(b.len());
        match how {
            0 => b[i] ^= byte | 1,
            1 => b.insert(i, byte),
            2 => { b.remove(i); }
            _ => b.truncate(i),
        }
        channels_property(&b, world, epoch)?;
    }

    /// A committing run of the two-phase commit with its peers' bytes mutated.
    #[test]
    fn mutated_two_phase_messages_keep_the_guarantees(
        world in 1u8..5,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), any::<bool>()), 1..6),
    ) {
        let mut s = committing_script(world);
        for (pos, byte, insert) in edits {
            let i = pos.index(s.len());
            if insert { s.insert(i, byte) } else { s[i] ^= byte | 1 }
        }
        if let Err(e) = fuzz_two_phase(&s) {
            prop_assert!(false, "{}", e);
        }
    }
}

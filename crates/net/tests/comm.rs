//! Communicator semantics, each case run on both backends (threads, and TCP on loopback with
//! the frame MAC on and off).

use lazarus_format::{Epoch, Rank};
use lazarus_net::{
    local_comms_with, loopback_comms, Comm, ErrorKind, FrameMac, NetConfig, ReduceOp, SendBuf, Tag,
};
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

fn cfg() -> NetConfig {
    NetConfig {
        heartbeat_interval: Duration::from_millis(50),
        failure_timeout: Duration::from_millis(1000),
        connect_timeout: Duration::from_secs(10),
        // Small frames so that ordinary messages exercise fragmentation.
        max_frame: 4096,
        spin: Duration::from_micros(50),
        frame_mac: FrameMac::On,
    }
}

/// The TCP backend again with the job-wide frame MAC off (payloads outside the MAC):
/// every case must behave the same.
fn cfg_mac_off() -> NetConfig {
    NetConfig {
        frame_mac: FrameMac::Off,
        ..cfg()
    }
}

/// Runs `f` on every rank of an `n`-rank job, for each backend; returns per-backend results.
fn each_backend<R: Send>(n: u32, f: impl Fn(Comm) -> R + Send + Sync) -> Vec<Vec<R>> {
    let mut all = Vec::new();
    for (name, comms) in [
        ("local", local_comms_with(n, cfg()).unwrap()),
        ("tcp", loopback_comms(n, cfg()).unwrap()),
        (
            "tcp, frame MAC off",
            loopback_comms(n, cfg_mac_off()).unwrap(),
        ),
    ] {
        let t0 = Instant::now();
        let f = &f;
        let res: Vec<R> = std::thread::scope(|s| {
            let hs: Vec<_> = comms.into_iter().map(|c| s.spawn(move || f(c))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        eprintln!("backend {name}: {:?}", t0.elapsed());
        all.push(res);
    }
    all
}

#[test]
fn typed_point_to_point_in_order_and_any_source() {
    each_backend(3, |c| {
        let me = c.rank().0;
        if me == 0 {
            let mut from1 = Vec::new();
            let mut from2 = Vec::new();
            for _ in 0..200 {
                let (src, (r, i)): (Rank, (u32, u32)) = c.recv_any(7).unwrap();
                assert_eq!(src.0, r);
                if r == 1 {
                    from1.push(i)
                } else {
                    from2.push(i)
                }
            }
            assert_eq!(from1, (0..100).collect::<Vec<_>>());
            assert_eq!(from2, (0..100).collect::<Vec<_>>());
            let s: String = c.recv(Rank(1), 8).unwrap();
            assert_eq!(s, "x".repeat(10_000));
            assert!(c.try_recv::<u8>(None, 99).unwrap().is_none());
            let e = c
                .recv_timeout::<u8>(None, 99, Duration::from_millis(30))
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Timeout);
        } else {
            for i in 0..100u32 {
                c.send(Rank(0), 7, &(me, i)).unwrap();
            }
            if me == 1 {
                c.send(Rank(0), 8, &"x".repeat(10_000)).unwrap();
            }
        }
        c.barrier().unwrap();
    });
}

#[test]
fn bulk_slices_round_trip_and_lengths_are_checked() {
    each_backend(2, |c| {
        let data: Vec<f64> = (0..100_000).map(|i| i as f64 * 0.5).collect();
        if c.rank().0 == 0 {
            c.send_slice(Rank(1), 1, &data).unwrap();
            c.send_slice(Rank(1), 2, &[1u32, 2, 3]).unwrap();
            c.send_slice::<u8>(Rank(1), 3, &[]).unwrap();
        } else {
            let mut buf = vec![0.0f64; 100_000];
            c.recv_into(Rank(0), 1, &mut buf).unwrap();
            assert_eq!(buf, data);
            let mut short = [0u32; 2];
            let e = c.recv_into(Rank(0), 2, &mut short).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
            assert_eq!(c.recv_vec::<u8>(Rank(0), 3).unwrap(), Vec::<u8>::new());
        }
        c.barrier().unwrap();
    });
}

#[test]
fn owned_send_buffers_arrive_intact_although_their_storage_is_recycled() {
    // 40 messages of 512 KiB sent before the receiver takes any: the retransmit window holds
    // the storage of each until acknowledged, and only then may a later SendBuf reuse it. A
    // buffer recycled too early would show another message's fill value.
    const N: usize = 64 << 10;
    each_backend(2, |c| {
        if c.rank().0 == 0 {
            for i in 0..40u64 {
                let mut b = SendBuf::<u64>::recycled(N);
                b.fill(i);
                c.send_buf(Rank(1), 1, b).unwrap();
            }
            let mut own = SendBuf::<f32>::zeroed(3);
            own[1] = 2.5;
            c.send_buf(Rank(0), 2, own).unwrap();
            assert_eq!(c.recv_vec::<f32>(Rank(0), 2).unwrap(), vec![0.0, 2.5, 0.0]);
        } else {
            std::thread::sleep(Duration::from_millis(100));
            let mut buf = vec![0u64; N];
            for i in 0..40u64 {
                if i % 2 == 0 {
                    c.recv_into(Rank(0), 1, &mut buf).unwrap();
                } else {
                    buf = c.recv_vec(Rank(0), 1).unwrap();
                }
                assert!(buf.iter().all(|&x| x == i), "message {i} corrupted");
            }
        }
        c.barrier().unwrap();
    });
}

#[test]
fn collectives_give_expected_values_on_every_size() {
    for n in [1u32, 2, 3, 5, 8] {
        each_backend(n, |c| {
            let me = c.rank().0;
            let mut v = [me as i64, -(me as i64), 1];
            c.allreduce(&mut v, ReduceOp::Sum).unwrap();
            let s = (n as i64) * (n as i64 - 1) / 2;
            assert_eq!(v, [s, -s, n as i64]);
            let mut m = [me as f64];
            c.allreduce(&mut m, ReduceOp::Max).unwrap();
            assert_eq!(m[0], (n - 1) as f64);
            let mut m = [me as f64 + 1.0];
            c.reduce(Rank(n - 1), &mut m, ReduceOp::Min).unwrap();
            if me == n - 1 {
                assert_eq!(m[0], 1.0);
            }
            // Non-commutative custom op: concatenation shows the fixed rank order.
            let s = c.allreduce_with(me.to_string(), |a, b| a + &b).unwrap();
            assert_eq!(s, (0..n).map(|i| i.to_string()).collect::<String>());
            let mut b = if me == n / 2 { vec![7u8; 9000] } else { vec![] };
            c.broadcast(Rank(n / 2), &mut b).unwrap();
            assert_eq!(b, vec![7u8; 9000]);
            let mut bs = vec![me; 3];
            c.broadcast_slice(Rank(0), &mut bs).unwrap();
            assert_eq!(bs, vec![0; 3]);
            let g = c.gather(Rank(0), &(me * 10)).unwrap();
            if me == 0 {
                assert_eq!(g.unwrap(), (0..n).map(|i| i * 10).collect::<Vec<_>>());
            } else {
                assert!(g.is_none());
            }
            let ag = c.allgather(&format!("r{me}")).unwrap();
            assert_eq!(ag, (0..n).map(|i| format!("r{i}")).collect::<Vec<_>>());
            let root = Rank(n - 1);
            let vals = (c.rank() == root).then(|| (0..n).map(|i| i * i).collect::<Vec<_>>());
            assert_eq!(c.scatter(root, vals).unwrap(), me * me);
            c.barrier().unwrap();
        });
    }
}

#[test]
fn allreduce_is_bit_reproducible_across_runs_and_backends() {
    let seed = 0x5eed_u64;
    eprintln!("seed {seed}");
    let n = 6;
    let results = (0..3)
        .flat_map(|_| {
            each_backend(n, |c| {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed + c.rank().0 as u64);
                // Magnitudes spread so that summation order changes the bits.
                let mut v: Vec<f64> = (0..1000)
                    .map(|_| rng.gen::<f64>() * 10f64.powi(rng.gen_range(-8..8)))
                    .collect();
                c.allreduce(&mut v, ReduceOp::Sum).unwrap();
                v.iter().map(|x| x.to_bits()).collect::<Vec<u64>>()
            })
        })
        .flatten()
        .collect::<Vec<_>>();
    for r in &results {
        assert_eq!(r, &results[0]);
    }
}

#[test]
fn envelopes_carry_epoch_and_requeue_delivers_exactly_once() {
    each_backend(2, |c| {
        if c.rank().0 == 0 {
            c.set_epoch(Epoch(5));
            c.send_bytes(Rank(1), Tag::checkpoint(1), b"marker".to_vec())
                .unwrap();
            c.send(Rank(1), 3, &42u32).unwrap();
        } else {
            let e = c
                .recv_envelope(Some(Rank(0)), Some(Tag::checkpoint(1)))
                .unwrap();
            assert_eq!(e.epoch, Epoch(5));
            assert_eq!(e.payload, b"marker");
            let saved = c.recv_envelope(Some(Rank(0)), None).unwrap();
            assert_eq!(saved.tag, Tag::user(3));
            c.requeue(vec![saved.clone()]);
            assert_eq!(c.recv::<u32>(Rank(0), 3).unwrap(), 42);
            assert!(c.try_recv_envelope(None, None).unwrap().is_none());
        }
        c.barrier().unwrap();
    });
}

#[test]
fn finished_peer_ends_waits_instead_of_hanging() {
    each_backend(2, |c| {
        if c.rank().0 == 1 {
            drop(c);
            return;
        }
        let t0 = Instant::now();
        let e = c.recv::<u32>(Rank(1), 1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PeerFinished);
        assert_eq!(e.peer(), Some(Rank(1)));
        assert!(t0.elapsed() < Duration::from_secs(5));
    });
}

#[test]
fn panicking_thread_rank_fails_the_others_waits() {
    let r = lazarus_net::local(3, |c| {
        if c.rank().0 == 2 {
            panic!("boom");
        }
        let e = c.allreduce(&mut [1.0f64], ReduceOp::Sum);
        assert!(e.is_err());
        e.unwrap_err().kind()
    });
    let e = r.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PeerFailed);
    assert_eq!(e.peer(), Some(Rank(2)));
}

/// The binomial tree's association (`op(lower ranks, higher ranks)`, root 0), computed
/// sequentially: what every allreduce algorithm must reproduce bit for bit.
fn tree_sum(contrib: &[Vec<f64>]) -> Vec<f64> {
    let mut acc: Vec<Vec<f64>> = contrib.to_vec();
    let n = acc.len();
    let mut mask = 1;
    while mask < n {
        let mut vr = 0;
        while vr + mask < n {
            let hi = acc[vr + mask].clone();
            for (a, b) in acc[vr].iter_mut().zip(&hi) {
                *a += b;
            }
            vr += 2 * mask;
        }
        mask <<= 1;
    }
    acc.swap_remove(0)
}

#[test]
fn every_allreduce_algorithm_adds_in_the_binomial_tree_order() {
    let seed: u64 = std::env::var("LAZARUS_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x05ee_da11);
    eprintln!("seed {seed}");
    let values = |rank: u32, len: usize| -> Vec<f64> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ u64::from(rank) << 32);
        (0..len)
            .map(|_| (rng.gen::<f64>() - 0.5) * 10f64.powi(rng.gen_range(-8..8)))
            .collect()
    };
    // Small (tree or recursive doubling) and large (reduce-scatter: 64 KiB and up,
    // lengths not divisible by n) vectors, power-of-two and other world sizes.
    for n in [2u32, 3, 4, 5, 8] {
        for len in [1usize, 7, 1000, 8192, 8192 * 3 + 5] {
            let contrib: Vec<Vec<f64>> = (0..n).map(|r| values(r, len)).collect();
            let want: Vec<u64> = tree_sum(&contrib).iter().map(|x| x.to_bits()).collect();
            for per_backend in each_backend(n, |c| {
                let mut v = values(c.rank().0, len);
                c.allreduce(&mut v, ReduceOp::Sum).unwrap();
                v.iter().map(|x| x.to_bits()).collect::<Vec<u64>>()
            }) {
                for (r, got) in per_backend.iter().enumerate() {
                    assert!(
                        got == &want,
                        "n={n} len={len} rank {r} differs from tree order"
                    );
                }
            }
        }
    }
}

/// A value whose encoding fails (postcard refuses a sequence of unknown length) on the
/// ranks that hold `true`.
#[derive(Debug)]
struct Unencodable(bool);

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        if self.0 {
            s.serialize_seq(None)?.end()
        } else {
            s.serialize_u8(7)
        }
    }
}

impl<'de> serde::Deserialize<'de> for Unencodable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u8::deserialize(d).map(|_| Unencodable(false))
    }
}

/// Review: a collective that failed on one rank before its messages went out (a scatter
/// root given the wrong number of values, a value that does not encode) returned the error
/// there and left the other ranks waiting for a message that never came, or receiving
/// the failed rank's next collective in its place. Every rank now fails with the reason,
/// and the communicator stays in step (a later collective completes).
#[test]
fn a_collective_refused_on_one_rank_fails_on_every_rank() {
    each_backend(4, |c| {
        let me = c.rank().0;
        let wrong = (me == 1).then(|| vec![1u32, 2]);
        let e = c.scatter(Rank(1), wrong).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "rank {me}: {e}");
        assert!(
            e.to_string().contains("scatter got 2 values for 4 ranks"),
            "rank {me}: {e}"
        );
        let e = c.broadcast(Rank(2), &mut Unencodable(me == 2)).unwrap_err();
        assert!(
            me == 2 || e.to_string().contains("rank 2 could not take part"),
            "{e}"
        );
        let e = c.allgather(&Unencodable(me == 3)).unwrap_err();
        assert!(
            me == 3 || e.to_string().contains("rank 3"),
            "rank {me}: {e}"
        );
        let e = c.gather(Rank(0), &Unencodable(me == 1));
        match me {
            0 => assert!(e.unwrap_err().to_string().contains("rank 1"), "rank 0"),
            1 => assert!(e.is_err()),
            _ => assert!(e.unwrap().is_none()),
        }
        assert_eq!(c.allgather(&me).unwrap(), vec![0, 1, 2, 3]);
    });
}

/// Review: a collective's receive failed only when the rank it waited for had died, not
/// when another rank of the collective had. In a broadcast from rank 0 on 4 ranks, rank 0
/// sends to rank 2 first: with rank 2 dead that send fails, rank 0 never sends to rank 1,
/// and rank 1 waited for live rank 0 until rank 0 exited (for ever, had it handled its
/// error and gone on). Now every receive of a collective fails once any rank has failed.
#[test]
fn a_collective_fails_when_any_rank_failed_not_only_the_one_it_waits_for() {
    let mut comms = lazarus_net::local_comms(4).unwrap();
    let doomed = comms.remove(2);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut live = Vec::new();
    for c in comms {
        let tx = tx.clone();
        live.push(std::thread::spawn(move || {
            c.barrier().unwrap();
            // Rank 2 is marked failed in every mailbox before its thread ends.
            while c.allgather(&0u8).is_ok() {
                std::thread::sleep(Duration::from_millis(10));
            }
            let t0 = Instant::now();
            let r = c.broadcast(Rank(0), &mut 5u32);
            tx.send((c.rank().0, r.map_err(|e| e.kind()), t0.elapsed()))
                .unwrap();
            // Rank 0 stays (it could have handled its error and gone on).
            std::thread::sleep(Duration::from_secs(3));
        }));
    }
    let dead = std::thread::spawn(move || {
        doomed.barrier().unwrap();
        panic!("rank 2 dies (expected in this test)");
    });
    assert!(dead.join().is_err());
    let mut got: Vec<_> = (0..3)
        .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
        .collect();
    got.sort_by_key(|g| g.0);
    for (rank, r, took) in &got {
        assert_eq!(*r, Err(ErrorKind::PeerFailed), "rank {rank}");
        assert!(
            *took < Duration::from_secs(1),
            "rank {rank} waited {took:?}"
        );
    }
    for h in live {
        h.join().unwrap();
    }
}

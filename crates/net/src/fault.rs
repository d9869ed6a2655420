//! A seeded fault-injecting transport driving the same go-back-N windows as the TCP
//! transport, and property tests: through drops, duplicates, reordering, delays and
//! connection resets, every message is delivered exactly once and in order.

use crate::reliable::{Accept, RecvWindow, SendWindow};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Debug)]
struct Packet {
    seq: u64,
    last: bool,
    body: Vec<u8>,
}

/// Fault rates in percent per packet handled.
#[derive(Clone, Copy, Debug)]
struct Faults {
    drop: u32,
    dup: u32,
    reorder: u32,
    reset: u32,
}

/// One directed channel over a faulty link; returns the delivered messages.
fn run(seed: u64, msgs: &[Vec<u8>], faults: Faults, max_frag: usize) -> Vec<Vec<u8>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tx: SendWindow<Packet> = SendWindow::new();
    let mut rx = RecvWindow::default();
    let mut data_link: Vec<Packet> = Vec::new();
    let mut ack_link: Vec<u64> = Vec::new();
    let mut partial = Vec::new();
    let mut delivered = Vec::new();
    let mut next_msg = 0;
    let mut idle = 0u32;
    let send = |p: Packet, link: &mut Vec<Packet>, rng: &mut ChaCha8Rng| {
        if rng.gen_range(0..100) < faults.drop {
            return;
        }
        if rng.gen_range(0..100) < faults.dup {
            link.push(p.clone());
        }
        link.push(p);
    };
    for _step in 0..200_000 {
        if delivered.len() == msgs.len() {
            break;
        }
        match rng.gen_range(0..10) {
            // The application sends the next message, fragmented.
            0..=2 if next_msg < msgs.len() => {
                let m: &Vec<u8> = &msgs[next_msg];
                next_msg += 1;
                let chunks: Vec<&[u8]> = if m.is_empty() {
                    vec![&[][..]]
                } else {
                    m.chunks(max_frag).collect()
                };
                let n = chunks.len();
                for (i, c) in chunks.into_iter().enumerate() {
                    let mut p = Packet {
                        seq: 0,
                        last: i + 1 == n,
                        body: c.to_vec(),
                    };
                    p.seq = tx.push(p.clone());
                    // The stored copy carries its seq for retransmission.
                    send(p, &mut data_link, &mut rng);
                }
            }
            // The link delivers a data packet (possibly out of order: reorder/delay).
            3..=6 if !data_link.is_empty() => {
                let i = if rng.gen_range(0..100) < faults.reorder {
                    rng.gen_range(0..data_link.len())
                } else {
                    0
                };
                let p = data_link.remove(i);
                match rx.accept(p.seq) {
                    Accept::Deliver => {
                        partial.extend_from_slice(&p.body);
                        if p.last {
                            delivered.push(std::mem::take(&mut partial));
                        }
                        idle = 0;
                    }
                    Accept::Duplicate | Accept::Gap => {}
                }
                if rng.gen_range(0..100) >= faults.drop {
                    ack_link.push(rx.next_expected());
                }
            }
            // An ack arrives (acks are cumulative: any order is fine).
            7 if !ack_link.is_empty() => {
                let i = rng.gen_range(0..ack_link.len());
                tx.ack(ack_link.swap_remove(i));
            }
            // Connection reset: everything in flight is lost; on reconnect the receiver
            // tells its resume point and the sender retransmits the rest (as tcp::install).
            8 if rng.gen_range(0..100) < faults.reset => {
                data_link.clear();
                ack_link.clear();
                tx.ack(rx.next_expected());
                let again: Vec<Packet> = tx
                    .unacked()
                    .map(|(s, p)| Packet {
                        seq: *s,
                        ..p.clone()
                    })
                    .collect();
                data_link.extend(again);
            }
            _ => {
                // Retransmit timer: no progress for a while resends all unacknowledged.
                idle += 1;
                if idle > 20 {
                    idle = 0;
                    let again: Vec<Packet> = tx
                        .unacked()
                        .map(|(s, p)| Packet {
                            seq: *s,
                            ..p.clone()
                        })
                        .collect();
                    for p in again {
                        send(p, &mut data_link, &mut rng);
                    }
                }
            }
        }
    }
    delivered
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn exactly_once_in_order_through_faults(
        seed: u64,
        msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..40),
        drop in 0u32..40, dup in 0u32..40, reorder in 0u32..60, reset in 0u32..30,
        max_frag in 1usize..16,
    ) {
        eprintln!("seed {seed}");
        let got = run(seed, &msgs, Faults { drop, dup, reorder, reset }, max_frag);
        prop_assert_eq!(got, msgs);
    }
}

#[test]
fn perfect_link_needs_no_retransmission() {
    let msgs: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; i as usize]).collect();
    let f = Faults {
        drop: 0,
        dup: 0,
        reorder: 0,
        reset: 0,
    };
    assert_eq!(run(1, &msgs, f, 7), msgs);
}

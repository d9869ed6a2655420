//! The zero-copy receive path (`recv_into` posting its buffer to the transport): ordering
//! against queued messages, requeue, length mismatches and dead peers, on both backends.

use lazarus_format::Rank;
use lazarus_net::{local_comms_with, loopback_comms, Comm, ErrorKind, FrameMac, NetConfig, Tag};
use std::time::Duration;

fn cfg() -> NetConfig {
    NetConfig {
        heartbeat_interval: Duration::from_millis(50),
        failure_timeout: Duration::from_millis(1000),
        connect_timeout: Duration::from_secs(10),
        max_frame: 1 << 20,
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

fn backends(n: u32) -> Vec<(&'static str, Vec<Comm>)> {
    vec![
        ("local", local_comms_with(n, cfg()).unwrap()),
        ("tcp", loopback_comms(n, cfg()).unwrap()),
        (
            "tcp, frame MAC off",
            loopback_comms(n, cfg_mac_off()).unwrap(),
        ),
    ]
}

fn run2(f: impl Fn(Comm) + Send + Sync) {
    for (name, comms) in backends(2) {
        eprintln!("backend {name}");
        let f = &f;
        std::thread::scope(|s| {
            let hs: Vec<_> = comms.into_iter().map(|c| s.spawn(move || f(c))).collect();
            for h in hs {
                h.join().unwrap();
            }
        });
    }
}

#[test]
fn posted_receive_respects_tags_order_and_lengths() {
    run2(|c| {
        if c.rank() == Rank(1) {
            // Rank 0 is already waiting on tag 2 when tag 1 traffic arrives: tag 1 queues.
            std::thread::sleep(Duration::from_millis(30));
            c.send_slice(Rank(0), 1, &[1u32; 100]).unwrap();
            c.send_slice(Rank(0), 2, &[2u32; 50_000]).unwrap();
            // A wrong length fails that receive only; the next message is intact.
            c.send_slice(Rank(0), 3, &[3u8; 10]).unwrap();
            c.send_slice(Rank(0), 3, &[4u8; 12]).unwrap();
        } else {
            let mut b2 = vec![0u32; 50_000];
            c.recv_into(Rank(1), 2, &mut b2).unwrap();
            assert!(b2.iter().all(|x| *x == 2));
            let mut b1 = vec![0u32; 100];
            c.recv_into(Rank(1), 1, &mut b1).unwrap();
            assert!(b1.iter().all(|x| *x == 1));
            let mut b3 = [0u8; 12];
            let e = c.recv_into(Rank(1), 3, &mut b3).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
            assert!(e.to_string().contains("10 bytes"), "{e}");
            c.recv_into(Rank(1), 3, &mut b3).unwrap();
            assert_eq!(b3, [4u8; 12]);
        }
        c.barrier().unwrap();
    });
}

#[test]
fn requeue_satisfies_a_waiting_posted_receive_first() {
    run2(|c| {
        if c.rank() == Rank(1) {
            c.send_slice(Rank(0), 5, &[10u64; 4]).unwrap();
            // Sent only after rank 0 has requeued the first one.
            let () = c.recv(Rank(0), 9).unwrap();
            c.send_slice(Rank(0), 5, &[20u64; 4]).unwrap();
        } else {
            let saved = c.recv_envelope(Some(Rank(1)), Some(Tag::user(5))).unwrap();
            std::thread::scope(|s| {
                let c2 = c.clone();
                let waiter = s.spawn(move || {
                    let mut b = [0u64; 4];
                    c2.recv_into(Rank(1), 5, &mut b).unwrap();
                    b
                });
                std::thread::sleep(Duration::from_millis(20));
                c.requeue(vec![saved]);
                assert_eq!(waiter.join().unwrap(), [10u64; 4]);
            });
            c.send(Rank(1), 9, &()).unwrap();
            let mut b = [0u64; 4];
            c.recv_into(Rank(1), 5, &mut b).unwrap();
            assert_eq!(b, [20u64; 4]);
        }
        c.barrier().unwrap();
    });
}

#[test]
fn posted_receive_from_a_finished_peer_fails_instead_of_hanging() {
    for (name, comms) in backends(2) {
        eprintln!("backend {name}");
        std::thread::scope(|s| {
            for c in comms {
                s.spawn(move || {
                    if c.rank() == Rank(1) {
                        std::thread::sleep(Duration::from_millis(20));
                        drop(c);
                    } else {
                        let mut b = [0f64; 1000];
                        let e = c.recv_into(Rank(1), 1, &mut b).unwrap_err();
                        assert!(
                            matches!(e.kind(), ErrorKind::PeerFinished | ErrorKind::PeerFailed),
                            "{e}"
                        );
                        assert_eq!(e.peer(), Some(Rank(1)));
                    }
                });
            }
        });
    }
}

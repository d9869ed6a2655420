//! The communicator part of `lazarus bench levels` alone, for profiling large messages:
//! `ranks` ranks (threads) each send one `mib` MiB message to the rank half the world
//! away with `send_bytes` (of a clone, as the bench does) and receive one, all at once;
//! prints the median of `reps` rounds. Usage: `big_message [ranks] [mib] [reps]`
//! (defaults 4 256 3). `perf record -g` on it attributes the communicator's cost without
//! the checkpoint levels around it. The network settings come from the environment
//! (`LAZARUS_FRAME_MAC=off` measures without the frame MAC).

use lazarus_format::Rank;
use lazarus_net::{loopback_comms, NetConfig, Tag};
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().any(|a| a == "-h" || a == "--help") {
        println!("usage: big_message [ranks (>= 2, default 4)] [MiB per message (default 256)] [rounds (default 3)]");
        return Ok(());
    }
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d)
    };
    let (ranks, mib, reps) = (arg(1, 4) as u32, arg(2, 256), arg(3, 3));
    if ranks < 2 || reps == 0 {
        return Err("big_message: at least 2 ranks and 1 round (--help)".into());
    }
    let bytes_of =
        |rank: u32| -> Vec<u8> { (0..mib << 20).map(|i| (i as u32 ^ rank) as u8).collect() };
    let comms = loopback_comms(ranks, NetConfig::from_env()?)?;
    let times: Vec<Vec<Duration>> = std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .into_iter()
            .map(|comm| {
                s.spawn(move || {
                    let me = comm.rank().0;
                    let peer = (me + comm.size() / 2) % comm.size();
                    let data = bytes_of(me);
                    let mut t = Vec::new();
                    for _ in 0..reps {
                        comm.barrier().expect("barrier");
                        let t0 = Instant::now();
                        comm.send_bytes(Rank(peer), Tag::user(77), data.clone())
                            .expect("send");
                        let e = comm.recv_envelope(None, Some(Tag::user(77))).expect("recv");
                        t.push(t0.elapsed());
                        assert!(e.payload == bytes_of(e.src.0), "a message differs");
                    }
                    comm.barrier().expect("barrier");
                    t
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("rank")).collect()
    });
    let mut all: Vec<Duration> = (0..reps)
        .map(|i| times.iter().map(|t| t[i]).max().unwrap_or_default())
        .collect();
    println!("rounds (slowest rank): {all:?}");
    all.sort();
    println!(
        "{ranks} ranks x {mib} MiB over the communicator: median {:?}",
        all[all.len() / 2]
    );
    Ok(())
}

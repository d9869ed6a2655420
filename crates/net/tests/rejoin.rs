//! A rank of an incarnation that moved on (a partitioned rank coming back) cannot join the
//! next one: the rendezvous refuses it, and the ranks of the right incarnation still form
//! their job.

use lazarus_format::Rank;
use lazarus_net::{join, JobToken, JoinOptions, NetConfig, ReduceOp, RendezvousServer};
use std::time::Duration;

fn opts(rank: u32, incarnation: u64, coord: &str, token: &JobToken) -> JoinOptions {
    JoinOptions {
        rank: Rank(rank),
        size: 2,
        coord: coord.into(),
        token: token.clone(),
        incarnation,
        config: NetConfig {
            heartbeat_interval: Duration::from_millis(100),
            failure_timeout: Duration::from_millis(1000),
            connect_timeout: Duration::from_secs(10),
            ..NetConfig::default()
        },
        host_rendezvous: false,
        exit_with_launcher: false,
    }
}

#[test]
fn a_rank_of_an_older_incarnation_cannot_join_the_next_one() {
    let token = JobToken::random();
    let cfg = opts(0, 1, "", &token).config;
    let server = RendezvousServer::bind("127.0.0.1:0", 2, token.clone(), 1, cfg).unwrap();
    let coord = server.local_addr().to_string();
    // The stale rank 1 of incarnation 0 is refused at once (no waiting for a timeout).
    let t = std::time::Instant::now();
    let err = match join(opts(1, 0, &coord, &token)) {
        Ok(_) => panic!("a stale incarnation must be refused"),
        Err(e) => e,
    };
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    eprintln!("refused: {err}");
    // The slot is still free: the real ranks of incarnation 1 form the job.
    let (c0, c1) = std::thread::scope(|s| {
        let a = s.spawn(|| join(opts(0, 1, &coord, &token)));
        let b = s.spawn(|| join(opts(1, 1, &coord, &token)));
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    let (x0, x1) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            let mut x = [1.0f64];
            c0.allreduce(&mut x, ReduceOp::Sum).map(|()| x[0])
        });
        let b = s.spawn(|| {
            let mut x = [2.0f64];
            c1.allreduce(&mut x, ReduceOp::Sum).map(|()| x[0])
        });
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    assert_eq!((x0, x1), (3.0, 3.0));
    assert_eq!(c0.incarnation(), 1);
}

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

/// A stranger (no token) that declares a handshake frame and then trickles one byte
/// just inside each read timeout used to keep its handshake, and its place among the
/// `size + 64` handshakes in progress, as long as it liked: 66 of them kept the real
/// ranks out of the rendezvous. Now each handshake must be over within the connect
/// timeout as a whole.
#[test]
fn a_trickled_handshake_is_dropped_at_the_connect_timeout() {
    use std::io::{Read, Write};
    let token = JobToken::random();
    let mut cfg = opts(0, 0, "", &token).config;
    cfg.connect_timeout = Duration::from_millis(500);
    let server = RendezvousServer::bind("127.0.0.1:0", 2, token.clone(), 0, cfg.clone()).unwrap();
    let coord = server.local_addr().to_string();
    let strangers: Vec<std::net::TcpStream> = (0..2 + 64)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&coord).unwrap();
            s.write_all(&128u32.to_le_bytes()).unwrap();
            s
        })
        .collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        // One byte every 200 ms, inside the 500 ms read timeout, until the end.
        scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                for mut s in &strangers {
                    let _ = s.write_all(&[1]);
                }
            }
        });
        std::thread::sleep(Duration::from_millis(1500));
        // Three connect timeouts later, still trickling: every handshake was dropped.
        for (i, mut s) in strangers.iter().enumerate() {
            s.set_nonblocking(true).unwrap();
            match s.read(&mut [0u8; 64]) {
                Ok(0) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                other => {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    panic!("stranger {i}'s handshake is still open after 1.5 s: {other:?}");
                }
            }
        }
        // New strangers would be dropped the same way; the real ranks, authenticating
        // at once, form the job while the old ones still trickle.
        let o = |r| {
            let mut o = opts(r, 0, &coord, &token);
            o.config = cfg.clone();
            o.config.connect_timeout = Duration::from_secs(5);
            o
        };
        let (a, b) = (o(0), o(1));
        let a = scope.spawn(|| join(a));
        let b = scope.spawn(|| join(b));
        let r = (a.join().unwrap(), b.join().unwrap());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        r.0.expect("rank 0 joins");
        r.1.expect("rank 1 joins");
    });
}

//! Asynchronous token passing with unaligned checkpoints (`lazarus_coord::AsyncSession`).
//!
//! Every rank starts with some tokens and forwards each one, hop after hop, to a rank
//! chosen by the token itself; nobody waits for anybody, so at any instant many tokens are
//! in flight. Rank 0 takes an unaligned (Chandy-Lamport / Lai-Yang) checkpoint every few
//! dozen messages: tokens in flight across the cut are saved with the receiver's part.
//!
//! The program runs the job twice on real TCP ranks (threads on 127.0.0.1): once without
//! failure, once killing the whole job (every communicator dropped) after a few commits
//! and restarting it as a new incarnation from the repository. Each token's route and
//! value do not depend on timing, so the final checksum (sum of retired token values plus
//! the per-rank counters) must be identical; the program exits with an error otherwise.
//!
//! ```text
//! cargo run --release --example pingpong_async -- [ranks] [tokens-per-rank] [hops]
//! ```

use lazarus::net::{join, JobToken, JoinOptions, NetConfig, RendezvousServer};
use lazarus::{Checkpoint, Comm};
use lazarus_coord::{AsyncConfig, AsyncSession, AsyncStart, SessionError};
use lazarus_format::Rank;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TAG: u32 = 7;

#[derive(Clone, Copy, Debug)]
struct Params {
    ranks: u32,
    tokens: u64,
    hops: u32,
    ckpt_every: u64,
}

#[derive(Serialize, Deserialize)]
struct Token {
    id: u64,
    hop: u32,
    value: u64,
}

#[derive(Checkpoint, Default)]
struct Counters {
    received: u64,
    retired: u64,
    retired_sum: u64,
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn route(p: &Params, id: u64, hop: u32) -> Rank {
    Rank((mix(mix(id) ^ (u64::from(hop) << 40)) % u64::from(p.ranks)) as u32)
}

fn expected_received(p: &Params, me: Rank) -> u64 {
    let all = p.tokens * u64::from(p.ranks);
    (0..all)
        .map(|id| (0..p.hops).filter(|&h| route(p, id, h) == me).count() as u64)
        .sum()
}

fn comms(n: u32, incarnation: u64) -> Result<Vec<Comm>, Box<dyn std::error::Error>> {
    let config = NetConfig {
        heartbeat_interval: Duration::from_millis(100),
        failure_timeout: Duration::from_secs(2),
        ..NetConfig::default()
    };
    let token = JobToken::random();
    let server =
        RendezvousServer::bind("127.0.0.1:0", n, token.clone(), incarnation, config.clone())?;
    let coord = server.local_addr().to_string();
    let handles: Vec<_> = (0..n)
        .map(|r| {
            let o = JoinOptions {
                rank: Rank(r),
                size: n,
                coord: coord.clone(),
                token: token.clone(),
                incarnation,
                config: config.clone(),
                host_rendezvous: false,
            };
            std::thread::spawn(move || join(o))
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.join().map_err(|_| "join thread panicked")??);
    }
    Ok(out)
}

struct Crash {
    after_commits: u32,
    commits: AtomicU32,
    now: AtomicBool,
}

/// One rank; `Ok(None)` if the job was killed before it finished.
fn rank_main(
    comm: Comm,
    p: Params,
    repo: &Path,
    crash: &Crash,
) -> Result<Option<Counters>, SessionError> {
    let me = comm.rank();
    let mut c = Counters::default();
    let (mut s, start) = AsyncSession::open(comm, AsyncConfig::new(repo), &mut c)?;
    if let AsyncStart::Restored { id, replayed, .. } = &start {
        println!("{me}: restored {id}, {replayed} in-flight tokens replayed");
    } else {
        for i in 0..p.tokens {
            let id = u64::from(me.0) * p.tokens + i;
            s.send(
                route(&p, id, 0),
                TAG,
                &Token {
                    id,
                    hop: 0,
                    value: id,
                },
            )?;
        }
    }
    let want = expected_received(&p, me);
    let mut last = c.received;
    while c.received < want {
        if crash.now.load(Ordering::SeqCst) {
            return Ok(None); // killed: everything of this incarnation is thrown away
        }
        if c.received >= last + p.ckpt_every {
            last = c.received;
            if let Some(r) = s.checkpoint(&c)? {
                let n = crash.commits.fetch_add(1, Ordering::SeqCst) + 1;
                println!(
                    "{me}: checkpoint {} at {}: {:?}",
                    r.round.ckpt, r.round.epoch, r.outcome
                );
                if n == crash.after_commits {
                    println!("{me}: killing the job");
                    crash.now.store(true, Ordering::SeqCst);
                    return Ok(None);
                }
            }
        }
        let m = match s.recv(&c, Duration::from_millis(100)) {
            Ok(m) => m,
            Err(e) if e.is_retryable() => continue,
            Err(_) if crash.now.load(Ordering::SeqCst) => return Ok(None),
            Err(e) => return Err(e),
        };
        let t: Token = m.decode()?;
        c.received += 1;
        let value = mix(t.value ^ u64::from(me.0));
        if t.hop + 1 == p.hops {
            c.retired += 1;
            c.retired_sum = c.retired_sum.wrapping_add(value);
        } else {
            let hop = t.hop + 1;
            s.send(
                route(&p, t.id, hop),
                TAG,
                &Token {
                    id: t.id,
                    hop,
                    value,
                },
            )?;
        }
    }
    match s.finish(&c, Duration::from_secs(30)) {
        Ok(_) => Ok(Some(c)),
        Err(_) if crash.now.load(Ordering::SeqCst) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Runs one incarnation; `None` if it was killed.
fn incarnation(
    p: Params,
    repo: &Path,
    inc: u64,
    crash_after: u32,
) -> Result<Option<Vec<Counters>>, Box<dyn std::error::Error>> {
    let crash = Arc::new(Crash {
        after_commits: crash_after,
        commits: AtomicU32::new(0),
        now: AtomicBool::new(false),
    });
    let handles: Vec<_> = comms(p.ranks, inc)?
        .into_iter()
        .map(|comm| {
            let (repo, crash) = (repo.to_path_buf(), crash.clone());
            std::thread::spawn(move || rank_main(comm, p, &repo, &crash))
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.join().map_err(|_| "rank thread panicked")??);
    }
    Ok(out.into_iter().collect())
}

fn checksum(cs: &[Counters]) -> u64 {
    cs.iter().enumerate().fold(0u64, |acc, (r, c)| {
        mix(acc ^ c.retired_sum ^ ((r as u64) << 56) ^ (c.received << 20) ^ c.retired)
    })
}

fn job(p: Params, repo: PathBuf, crash_after: u32) -> Result<u64, Box<dyn std::error::Error>> {
    let mut inc = 0;
    loop {
        let crash = if inc == 0 { crash_after } else { 0 };
        if let Some(cs) = incarnation(p, &repo, inc, crash)? {
            let total: u64 = cs.iter().map(|c| c.retired).sum();
            if total != p.tokens * u64::from(p.ranks) {
                return Err(format!(
                    "{total} tokens retired, expected {}",
                    p.tokens * u64::from(p.ranks)
                )
                .into());
            }
            return Ok(checksum(&cs));
        }
        inc += 1;
        println!("restarting as incarnation {inc}");
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>().map_err(|_| format!("not a number: {a:?}")))
        .collect::<Result<_, _>>()?;
    let arg = |i: usize, d: u64| args.get(i).copied().unwrap_or(d);
    let p = Params {
        ranks: u32::try_from(arg(0, 4))
            .map_err(|_| "too many ranks")?
            .max(1),
        tokens: arg(1, 16).max(1),
        hops: u32::try_from(arg(2, 200))
            .map_err(|_| "too many hops")?
            .max(1),
        ckpt_every: 100,
    };
    let dir = tempfile::tempdir()?;
    let t = Instant::now();
    let clean = job(p, dir.path().join("clean"), 0)?;
    println!(
        "failure-free run: checksum {clean:016x} ({:?})",
        t.elapsed()
    );
    let t = Instant::now();
    let restarted = job(p, dir.path().join("crashed"), 2)?;
    println!(
        "killed + restarted: checksum {restarted:016x} ({:?})",
        t.elapsed()
    );
    if clean != restarted {
        return Err("checksums differ: the restart lost or duplicated a message".into());
    }
    println!("identical");
    Ok(())
}

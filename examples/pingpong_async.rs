//! Asynchronous token passing with unaligned checkpoints (`lazarus::coord::AsyncSession`)
//! that survives `kill -9` of any rank under `lazarus run`.
//!
//! Every rank starts `--tokens` tokens and forwards each one, hop after hop, to a rank
//! chosen by the token itself, for `--hops` hops; nobody waits for anybody, so at any
//! instant many tokens are in flight. Rank 0 takes an unaligned (Chandy-Lamport /
//! Lai-Yang) checkpoint every `--every` messages it receives: tokens in flight across the
//! cut are saved with the receiver's part and delivered exactly once after a restart.
//!
//! ```text
//! lazarus run -n 4 --repo /tmp/pp --max-restarts 5 --inject-kill-mtbf 2s --seed 7 -- \
//!     target/release/examples/pingpong_async --tokens 16 --hops 400 --every 200
//! ```
//!
//! Each token's route and value do not depend on timing, so the result is known without
//! any network: at the end rank 0 gathers every rank's counters, checks them against that
//! prediction (a lost, duplicated or orphaned message changes a rank's digest, and the
//! program fails naming the rank) and prints `checksum=<16 hex digits>` last. Every rank
//! also prints `r<rank> got <n>` each `--report` messages; under `lazarus run --repo` each
//! such line is released exactly once however often the job is killed. Rank 0 prints a
//! `stats ...` line (rounds, round latency, channel state) before the checksum, and its
//! measured durable-write floor on stderr.
//!
//! Rank 0 starts each round with `start_checkpoint` and keeps forwarding tokens while the
//! round runs (its decision is picked up with `take_report`); `--round-mode blocking`
//! uses `checkpoint` instead, which holds rank 0 until the round is decided, for
//! comparison.
//!
//! Outside a launcher it is a world of one (every token goes to itself). The repository is
//! `--repo DIR` or `LAZARUS_REPO` (set by `lazarus run --repo`).
// Writing to a failed stdout/stderr must not panic (issue #11 item 10).
#![deny(clippy::print_stdout, clippy::print_stderr)]

use lazarus::coord::{AsyncConfig, AsyncReport, AsyncSession, AsyncStart, AsyncStats, Outcome};
use lazarus::format::Rank;
use lazarus::Checkpoint;
use serde::{Deserialize, Serialize};
use std::error::Error;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const TAG: u32 = 7;
/// A rank that receives nothing for this long while it still expects messages reports
/// them lost (a correct run never idles this long: a dead peer fails the receive sooner).
const IDLE_LIMIT: Duration = Duration::from_secs(60);

/// The run's parameters, saved with the state so a restart with other arguments is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Params {
    ranks: u32,
    tokens: u64,
    hops: u32,
}

#[derive(Serialize, Deserialize)]
struct Token {
    id: u64,
    hop: u32,
    value: u64,
}

/// One rank's state: counters plus an order-independent digest of what it received.
#[derive(Checkpoint, Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Counters {
    received: u64,
    retired: u64,
    retired_sum: u64,
    /// wrapping sum of `mix(id, hop)` over received tokens: a duplicate or a loss changes it
    digest: u64,
    #[checkpoint(serde)]
    params: Params,
}

impl Counters {
    fn new(params: Params) -> Self {
        Counters {
            received: 0,
            retired: 0,
            retired_sum: 0,
            digest: 0,
            params,
        }
    }

    /// Applies one received token; returns the token to forward, if any.
    fn take(&mut self, me: Rank, t: &Token) -> Option<(Rank, Token)> {
        self.received += 1;
        self.digest = self
            .digest
            .wrapping_add(mix(t.id ^ (u64::from(t.hop) << 40)));
        let value = mix(t.value ^ u64::from(me.0));
        if t.hop + 1 == self.params.hops {
            self.retired += 1;
            self.retired_sum = self.retired_sum.wrapping_add(value);
            return None;
        }
        let hop = t.hop + 1;
        Some((
            route(&self.params, t.id, hop),
            Token {
                id: t.id,
                hop,
                value,
            },
        ))
    }
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

/// Every rank's final counters, computed by following each token without a network.
fn predicted(p: Params) -> Vec<Counters> {
    let mut out: Vec<Counters> = (0..p.ranks).map(|_| Counters::new(p)).collect();
    for id in 0..p.tokens * u64::from(p.ranks) {
        let mut t = Token {
            id,
            hop: 0,
            value: id,
        };
        let mut at = route(&p, id, 0);
        while let Some(c) = out.get_mut(at.0 as usize) {
            match c.take(at, &t) {
                Some((next, nt)) => (at, t) = (next, nt),
                None => break,
            }
        }
    }
    out
}

fn checksum(cs: &[Counters]) -> u64 {
    cs.iter().enumerate().fold(0u64, |acc, (r, c)| {
        mix(acc ^ c.retired_sum ^ ((r as u64) << 56) ^ (c.received << 20) ^ c.retired ^ c.digest)
    })
}

/// Validated command line.
#[derive(Debug)]
struct Args {
    repo: Option<PathBuf>,
    tokens: u64,
    hops: u32,
    every: u64,
    report: u64,
    blocking: bool,
}

fn parse_args(raw: &[String]) -> Result<Args, String> {
    let mut a = Args {
        repo: None,
        tokens: 16,
        hops: 200,
        every: 100,
        report: 0,
        blocking: false,
    };
    let mut it = raw.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("{flag} {value:?}: {e}"))
        };
        match flag.as_str() {
            "--repo" => a.repo = Some(PathBuf::from(value)),
            "--tokens" => a.tokens = num()?,
            "--hops" => a.hops = u32::try_from(num()?).map_err(|_| "--hops is too large")?,
            "--every" => a.every = num()?,
            "--report" => a.report = num()?,
            "--round-mode" => {
                a.blocking = match value.as_str() {
                    "background" => false,
                    "blocking" => true,
                    other => {
                        return Err(format!(
                            "--round-mode {other:?}: expected background or blocking"
                        ))
                    }
                }
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?} (expected --repo, --tokens, --hops, --every, \
                     --report, --round-mode)"
                ))
            }
        }
    }
    if a.tokens == 0 || a.hops == 0 {
        return Err("--tokens and --hops must be at least 1".into());
    }
    Ok(a)
}

/// What rank 0 measures about its rounds.
#[derive(Default)]
struct Rounds {
    started: u64,
    committed: u64,
    /// from the call that started a round to the moment rank 0 learned its decision
    latencies: Vec<Duration>,
}

impl Rounds {
    fn decided(&mut self, r: &AsyncReport, since: Instant) {
        self.latencies.push(since.elapsed());
        if r.outcome == Outcome::Commit {
            self.committed += 1;
        } else {
            let _ = writeln!(
                std::io::stderr(),
                "pingpong_async: checkpoint {} aborted: {:?}",
                r.round.ckpt,
                r.reason
            );
        }
    }
}

fn run(args: &Args) -> Result<Option<u64>, Box<dyn Error>> {
    let comm = lazarus::init()?;
    let me = comm.rank();
    let p = Params {
        ranks: comm.size(),
        tokens: args.tokens,
        hops: args.hops,
    };
    let cfg = AsyncConfig::from_env(args.repo.clone())
        .ok_or("no checkpoint repository: pass --repo DIR or set LAZARUS_REPO")?;
    let mut c = Counters::new(p);
    let t0 = Instant::now();
    let (mut s, start) = AsyncSession::open(comm, cfg.clone(), &mut c)?;
    if c.params != p {
        return Err(format!("the repository holds a run with {:?}, not {p:?}", c.params).into());
    }
    if let AsyncStart::Restored { id, replayed, .. } = &start {
        let _ = writeln!(
            std::io::stderr(),
            "pingpong_async: {me} restored checkpoint {id}, {replayed} in-flight tokens replayed"
        );
    } else {
        for i in 0..p.tokens {
            let id = u64::from(me.0) * p.tokens + i;
            let t = Token {
                id,
                hop: 0,
                value: id,
            };
            s.send(route(&p, id, 0), TAG, &t)?;
        }
    }
    // Every rank simulates the whole job once: its own target now, all of them at the end.
    let prediction = predicted(p);
    let want = prediction.get(me.0 as usize).map_or(0, |c| c.received);
    let mut rounds = Rounds::default();
    let mut last = c.received;
    let mut idle_since = Instant::now();
    let mut round_started = Instant::now();
    while c.received < want {
        if args.every > 0 && c.received >= last + args.every {
            let t = Instant::now();
            if args.blocking {
                last = c.received;
                if let Some(r) = s.checkpoint(&c)? {
                    rounds.started += 1;
                    rounds.decided(&r, t);
                }
            } else if s.start_checkpoint(&c)? {
                last = c.received;
                rounds.started += 1;
                round_started = t;
            } else if s.rank() != Rank(0) {
                last = c.received;
            }
            // On rank 0, an opportunity met while the previous round is still deciding
            // (its COMMIT is written in the background) is taken as soon as it is decided.
        }
        // A background round's decision arrives inside later session calls.
        if let Some(r) = s.take_report() {
            rounds.decided(&r, round_started);
        }
        let m = match s.recv(&c, Duration::from_millis(100)) {
            Ok(m) => m,
            Err(e) if e.is_retryable() && idle_since.elapsed() < IDLE_LIMIT => continue,
            Err(e) if e.is_retryable() => {
                return Err(format!(
                    "{me}: nothing received for {IDLE_LIMIT:?} with {} of {want} messages in: \
                     messages were lost",
                    c.received
                )
                .into())
            }
            Err(e) => return Err(e.into()),
        };
        idle_since = Instant::now();
        let t: Token = m.decode()?;
        if let Some((to, next)) = c.take(me, &t) {
            s.send(to, TAG, &next)?;
        }
        if args.report > 0 && c.received % args.report == 0 {
            writeln!(std::io::stdout(), "r{} got {}", me.0, c.received)?;
        }
    }
    let stats = s.stats();
    let comm = s.finish(&c, Duration::from_secs(60))?;
    let all = comm.gather(Rank(0), &(c.clone(), stats))?;
    let Some(all) = all else {
        return Ok(None);
    };
    let (got, stats): (Vec<Counters>, Vec<AsyncStats>) = all.into_iter().unzip();
    let want = prediction;
    for (r, (g, w)) in got.iter().zip(&want).enumerate() {
        if g != w {
            return Err(format!(
                "rank {r} ended with {g:?} but a failure-free run gives {w:?}: a message was \
                 lost, duplicated or orphaned"
            )
            .into());
        }
    }
    print_stats(&start, &rounds, &stats, t0.elapsed(), &cfg)?;
    Ok(Some(checksum(&got)))
}

fn print_stats(
    start: &AsyncStart,
    rounds: &Rounds,
    stats: &[AsyncStats],
    elapsed: Duration,
    cfg: &AsyncConfig,
) -> std::io::Result<()> {
    let mut lat = rounds.latencies.clone();
    lat.sort();
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
    let median = ms(lat.get(lat.len() / 2));
    let sum = |f: fn(&AsyncStats) -> u64| stats.iter().map(f).sum::<u64>();
    let restored = match start {
        AsyncStart::Restored { id, .. } => id.to_string(),
        AsyncStart::Fresh => "-".into(),
    };
    writeln!(
        std::io::stdout(),
        "stats restored={restored} replayed={} rounds={} committed={} round_ms_median={median:.1} \
         round_ms_max={:.1} saved_messages={} channel_bytes={} elapsed_ms={}",
        sum(|s| s.replayed),
        rounds.started,
        rounds.committed,
        ms(lat.last()),
        sum(|s| s.messages_saved),
        sum(|s| s.channel_bytes),
        elapsed.as_millis()
    )?;
    if rounds.started > 0 {
        let mut err = std::io::stderr();
        // Diagnostics only: a failed stderr is ignored.
        let _ = match durable_write_floor(&cfg.repo) {
            Ok(f) => writeln!(
                err,
                "pingpong_async: round median {median:.1} ms; floor (one durable small-file \
                 write, measured now on the repository's file system) {:.1} ms: {:.1}x",
                f.as_secs_f64() * 1e3,
                median / (f.as_secs_f64() * 1e3).max(1e-6)
            ),
            Err(e) => writeln!(err, "pingpong_async: floor not measured: {e}"),
        };
    }
    Ok(())
}

/// Median of 5 (write 4 KiB + fsync + rename + fsync of the directory) next to `repo`:
/// the least a durable part or COMMIT can cost on that file system.
fn durable_write_floor(repo: &std::path::Path) -> std::io::Result<Duration> {
    let dir = repo.with_extension("floor-tmp");
    std::fs::create_dir_all(&dir)?;
    let mut t = Vec::new();
    for i in 0..5 {
        let start = Instant::now();
        let tmp = dir.join(format!("f{i}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&[0u8; 4096])?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(format!("f{i}")))?;
        std::fs::File::open(&dir)?.sync_all()?;
        t.push(start.elapsed());
    }
    std::fs::remove_dir_all(&dir)?;
    t.sort();
    Ok(t[2])
}

/// `--help` text.
const USAGE: &str = "\
pingpong_async: asynchronous token passing with unaligned checkpoints

Usage: pingpong_async [--repo DIR] [--tokens N] [--hops N] [--every N] [--report N]
                      [--round-mode background|blocking]
       lazarus run -n P --repo DIR -- pingpong_async [OPTIONS]

Options:
  --repo DIR            checkpoint repository (default: $LAZARUS_REPO)
  --tokens N            tokens each rank starts (default 16)
  --hops N              hops of each token (default 200)
  --every N             rank 0 checkpoints every N messages it receives (default 100)
  --report N            print `r<rank> got <n>` every N messages (default 0: never)
  --round-mode MODE     background (rank 0 keeps working during a round) or blocking
  -h, --help            print this help

Prints checksum=<16 hex digits> last, checked against the timing-free prediction.
";

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.iter().any(|a| a == "-h" || a == "--help") {
        // A failed stdout must not panic (issue #11 item 10); the status still says it.
        let ok = write!(std::io::stdout(), "{USAGE}").is_ok();
        std::process::exit(if ok { 0 } else { 1 });
    }
    // The library's warnings (a damaged checkpoint skipped, ...) on stderr; RUST_LOG
    // overrides the level.
    lazarus::init_logging("warn");
    let result = parse_args(&raw)
        .map_err(Into::into)
        .and_then(|a| run(&a))
        // Rank 0 speaks for the job, last; a result that cannot be written is an error.
        .and_then(|sum| match sum {
            Some(sum) => writeln!(std::io::stdout(), "checksum={sum:016x}")
                .map_err(|e| format!("writing the checksum: {e}").into()),
            None => Ok(()),
        });
    if let Err(e) = result {
        let e: Box<dyn Error> = e;
        // Nowhere to report a failed stderr: the exit status still says it.
        let _ = writeln!(std::io::stderr(), "pingpong_async: error: {e}");
        std::process::exit(1);
    }
}

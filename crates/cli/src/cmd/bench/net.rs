//! `lazarus bench net`: communicator throughput and latency against raw TCP on loopback
//! measured in the same run, and allreduce scaling (TCP backend, ranks as threads; 8 MiB
//! vectors take the reduce-scatter + allgather path, 8 B the tree or recursive doubling).

use super::load_average;
use crate::cmd::CmdResult;
use lazarus::format::Rank;
use lazarus::net::{loopback_comms, Comm, NetConfig, ReduceOp, SendBuf};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Flags of `lazarus bench net`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// MiB moved per throughput measurement.
    #[arg(long, default_value_t = 512)]
    mib: usize,
    /// Round trips per latency measurement.
    #[arg(long, default_value_t = 20_000)]
    round_trips: usize,
    /// Rank counts for the allreduce table (comma-separated).
    #[arg(long, default_value = "2,4,8,16", value_delimiter = ',')]
    ranks: Vec<u32>,
    /// Allreduce repetitions per size (the median is reported).
    #[arg(long, default_value_t = 20)]
    reps: usize,
    /// Paired raw/Comm measurements of throughput and latency (medians are reported;
    /// pairing and medians keep a loaded machine from biasing one side).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

const MSG: usize = 1 << 20;

fn raw_pair() -> std::io::Result<(TcpStream, TcpStream)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let a = TcpStream::connect(l.local_addr()?)?;
    let (b, _) = l.accept()?;
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    Ok((a, b))
}

/// Bytes per second of 1 MiB writes over raw loopback TCP.
fn raw_throughput(mib: usize) -> std::io::Result<f64> {
    let (mut a, mut b) = raw_pair()?;
    let rx = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = vec![0u8; MSG];
        for _ in 0..mib {
            b.read_exact(&mut buf)?;
        }
        b.write_all(&[1])
    });
    let buf = vec![7u8; MSG];
    let t0 = Instant::now();
    for _ in 0..mib {
        a.write_all(&buf)?;
    }
    let mut done = [0u8];
    a.read_exact(&mut done)?;
    let dt = t0.elapsed();
    rx.join()
        .map_err(|_| std::io::Error::other("receiver panicked"))??;
    Ok((mib * MSG) as f64 / dt.as_secs_f64())
}

/// One-way latency of an 8-byte ping-pong over raw TCP (blocking reads).
fn raw_latency(n: usize) -> std::io::Result<Duration> {
    let (mut a, mut b) = raw_pair()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let mut x = [0u8; 8];
        for _ in 0..n {
            b.read_exact(&mut x)?;
            b.write_all(&x)?;
        }
        Ok(())
    });
    let mut x = [0u8; 8];
    let t0 = Instant::now();
    for i in 0..n {
        a.write_all(&(i as u64).to_le_bytes())?;
        a.read_exact(&mut x)?;
    }
    let dt = t0.elapsed();
    echo.join()
        .map_err(|_| std::io::Error::other("echo panicked"))??;
    Ok(dt / (2 * n as u32))
}

fn pair(comms: Vec<Comm>) -> Result<(Comm, Comm), String> {
    let mut it = comms.into_iter();
    match (it.next(), it.next()) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err("expected two communicators".into()),
    }
}

/// How the throughput run hands 1 MiB messages to the communicator.
#[derive(Clone, Copy)]
enum SendPath {
    /// `send_slice`: one copy into a buffer the retransmit window keeps.
    Copying,
    /// `send_buf`: the program's own [`SendBuf`] is kept by the window (zero copies). Like
    /// the raw TCP side, the run does not rewrite the message between sends.
    Owned,
}

fn comm_throughput(
    mib: usize,
    path: SendPath,
) -> Result<f64, Box<dyn std::error::Error + Send + Sync>> {
    let (a, b) = pair(loopback_comms(2, NetConfig::default())?)?;
    let window = 32;
    let rx = std::thread::spawn(move || -> lazarus::net::Result<()> {
        let mut buf = vec![0f64; MSG / 8];
        for i in 0..mib {
            b.recv_into(Rank(0), 1, &mut buf)?;
            if (i + 1) % window == 0 || i + 1 == mib {
                b.send(Rank(0), 2, &())?;
            }
        }
        Ok(())
    });
    let data = vec![1.5f64; MSG / 8];
    let t0 = Instant::now();
    for i in 0..mib {
        match path {
            SendPath::Copying => a.send_slice(Rank(1), 1, &data)?,
            SendPath::Owned => a.send_buf(Rank(1), 1, SendBuf::<f64>::recycled(MSG / 8))?,
        }
        // Bounded run-ahead, like a real application's flow control.
        if (i + 1) % window == 0 || i + 1 == mib {
            a.recv::<()>(Rank(1), 2)?;
        }
    }
    let dt = t0.elapsed();
    rx.join().map_err(|_| "receiver panicked")??;
    Ok((mib * MSG) as f64 / dt.as_secs_f64())
}

fn comm_latency(n: usize) -> Result<Duration, Box<dyn std::error::Error + Send + Sync>> {
    let (a, b) = pair(loopback_comms(2, NetConfig::default())?)?;
    let echo = std::thread::spawn(move || -> lazarus::net::Result<()> {
        let mut x = [0u64; 1];
        for _ in 0..n {
            b.recv_into(Rank(0), 1, &mut x)?;
            b.send_slice(Rank(0), 1, &x)?;
        }
        Ok(())
    });
    let mut x = [0u64; 1];
    let t0 = Instant::now();
    for i in 0..n {
        a.send_slice(Rank(1), 1, &[i as u64])?;
        a.recv_into(Rank(1), 1, &mut x)?;
    }
    let dt = t0.elapsed();
    echo.join().map_err(|_| "echo panicked")??;
    Ok(dt / (2 * n as u32))
}

/// Median time of one allreduce of `len` f64 on `n` ranks.
fn allreduce_time(
    n: u32,
    len: usize,
    reps: usize,
) -> Result<Duration, Box<dyn std::error::Error + Send + Sync>> {
    let comms = loopback_comms(n, NetConfig::default())?;
    let times = std::thread::scope(|s| -> Result<Vec<Duration>, String> {
        let hs: Vec<_> = comms
            .into_iter()
            .map(|c| {
                s.spawn(move || -> lazarus::net::Result<Vec<Duration>> {
                    let mut v = vec![c.rank().0 as f64; len];
                    let mut t = Vec::with_capacity(reps);
                    c.barrier()?;
                    for _ in 0..reps {
                        let t0 = Instant::now();
                        c.allreduce(&mut v, ReduceOp::Sum)?;
                        c.barrier()?;
                        t.push(t0.elapsed());
                    }
                    Ok(t)
                })
            })
            .collect();
        let mut first = None;
        for h in hs {
            let t = h
                .join()
                .map_err(|_| "rank panicked".to_string())?
                .map_err(|e| e.to_string())?;
            first.get_or_insert(t);
        }
        first.ok_or_else(|| "no ranks".to_string())
    })?;
    let mut times = times;
    times.sort();
    Ok(times.get(times.len() / 2).copied().unwrap_or_default())
}

/// Runs the benchmark and prints measured ratios.
pub fn main(a: Args) -> CmdResult {
    outln!(
        "lazarus bench net: loopback, {} MiB per throughput run, {} round trips, {} cores, load {}",
        a.mib,
        a.round_trips,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average().unwrap_or_else(|| "unknown".into())
    )?;
    let (mut bw_owned, mut bw_copy, mut lat) = (Vec::new(), Vec::new(), Vec::new());
    let mut raw_bws = Vec::new();
    let mut raw_lats = Vec::new();
    for i in 0..a.repeat.max(1) {
        // Rotate which side goes first so slow drift in machine load cancels out.
        let mut raw_bw = 0.0;
        let (mut owned_bw, mut copy_bw) = (0.0, 0.0);
        for k in 0..3 {
            match (i + k) % 3 {
                0 => raw_bw = raw_throughput(a.mib)?,
                1 => owned_bw = comm_throughput(a.mib, SendPath::Owned)?,
                _ => copy_bw = comm_throughput(a.mib, SendPath::Copying)?,
            }
        }
        let (raw_lat, comm_lat) = if i % 2 == 0 {
            let r = raw_latency(a.round_trips)?;
            (r, comm_latency(a.round_trips)?)
        } else {
            let c = comm_latency(a.round_trips)?;
            (raw_latency(a.round_trips)?, c)
        };
        let (rl, cl) = (raw_lat.as_secs_f64() * 1e6, comm_lat.as_secs_f64() * 1e6);
        outln!(
            "  run {i}: 1 MiB raw {:.2} GB/s, send_buf {:.2} GB/s ({:.2}x), send_slice {:.2} GB/s ({:.2}x); 8 B raw {rl:.1} us, Comm {cl:.1} us ({:.2}x)",
            raw_bw / 1e9,
            owned_bw / 1e9,
            owned_bw / raw_bw,
            copy_bw / 1e9,
            copy_bw / raw_bw,
            cl / rl
        )?;
        bw_owned.push(owned_bw / raw_bw);
        bw_copy.push(copy_bw / raw_bw);
        lat.push(cl / rl);
        raw_bws.push(raw_bw);
        raw_lats.push(rl);
    }
    outln!(
        "throughput 1 MiB msgs: median ratio Comm/raw TCP {:.2}x with send_buf (zero-copy; target >= 0.80x), {:.2}x with send_slice (one copy); raw median {:.2} GB/s",
        median(bw_owned),
        median(bw_copy),
        median(raw_bws) / 1e9
    )?;
    outln!(
        "latency 8 B one-way: median ratio Comm/raw TCP {:.2}x (target <= 1.50x; raw median {:.1} us)",
        median(lat),
        median(raw_lats)
    )?;
    outln!(
        "allreduce (sum, f64, TCP backend, ranks as threads, median of {}):",
        a.reps
    )?;
    outln!(
        "{:>6} {:>14} {:>14} {:>16}",
        "ranks",
        "8 B",
        "8 MiB",
        "8 MiB alg. GB/s"
    )?;
    for &n in &a.ranks {
        let small = allreduce_time(n, 1, a.reps)?;
        let big = allreduce_time(n, (8 << 20) / 8, a.reps.min(5))?;
        outln!(
            "{:>6} {:>11.1} us {:>11.2} ms {:>16.2}",
            n,
            small.as_secs_f64() * 1e6,
            big.as_secs_f64() * 1e3,
            (8 << 20) as f64 / big.as_secs_f64() / 1e9
        )?;
    }
    outln!(
        "load at end: {}",
        load_average().unwrap_or_else(|| "unknown".into())
    )?;
    Ok(ExitCode::SUCCESS)
}

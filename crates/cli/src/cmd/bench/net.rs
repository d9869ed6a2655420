//! `lazarus bench net`: communicator throughput and latency against raw TCP on loopback
//! measured in the same run, and allreduce scaling (TCP backend, ranks as threads; 8 MiB
//! vectors take the reduce-scatter + allgather path, 8 B the tree or recursive doubling).
//!
//! Throughput has two limits: raw TCP, and raw TCP whose two ends also compute the frame
//! MAC over every byte ("raw+MAC": the same keyed BLAKE3, pieces and trailer as a `Comm`
//! connection, `lazarus::net::wire::mac_only_stream`), which is what any authenticated
//! transport on the same cores could reach. The communicator runs with the job-wide frame
//! MAC on (the default) and off (`FrameMac::Off`); every variant also reports the CPU time
//! the whole process spent per byte moved, which a loaded machine distorts far less than
//! the wall-clock rate.

use super::{load_average, median, process_cpu};
use crate::cmd::CmdResult;
use lazarus::format::Rank;
use lazarus::net::wire::mac_only_stream;
use lazarus::net::{loopback_comms, Comm, FrameMac, NetConfig, ReduceOp, SendBuf};
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

const MSG: usize = 1 << 20;

/// One throughput measurement: wall-clock rate and process CPU time per byte.
#[derive(Clone, Copy, Debug, Default)]
struct Rate {
    bytes_per_s: f64,
    cpu_ns_per_byte: f64,
}

impl Rate {
    /// `mib` MiB moved since the wall clock read `t0` and the process CPU clock `cpu0`.
    fn since(mib: usize, t0: Instant, cpu0: Duration) -> Rate {
        let bytes = (mib * MSG) as f64;
        Rate {
            bytes_per_s: bytes / t0.elapsed().as_secs_f64(),
            cpu_ns_per_byte: process_cpu().saturating_sub(cpu0).as_secs_f64() * 1e9 / bytes,
        }
    }
}

fn raw_pair() -> std::io::Result<(TcpStream, TcpStream)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let a = TcpStream::connect(l.local_addr()?)?;
    let (b, _) = l.accept()?;
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    Ok((a, b))
}

/// 1 MiB writes over raw loopback TCP; with `mac`, both ends also compute the frame MAC
/// over every message (the sender before its write, the receiver as the bytes arrive) and
/// the receiver checks it.
fn raw_throughput(mib: usize, mac: bool) -> std::io::Result<Rate> {
    let (mut a, mut b) = raw_pair()?;
    let (mut tx, mut rx) = mac_only_stream();
    let receiver = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = vec![0u8; MSG];
        for _ in 0..mib {
            if mac {
                rx.read(&mut b, &mut buf)?;
            } else {
                b.read_exact(&mut buf)?;
            }
        }
        b.write_all(&[1])
    });
    let buf = vec![7u8; MSG];
    let (t0, cpu0) = (Instant::now(), process_cpu());
    for _ in 0..mib {
        if mac {
            tx.write(&mut a, &buf)?;
        } else {
            a.write_all(&buf)?;
        }
    }
    let mut done = [0u8];
    a.read_exact(&mut done)?;
    let r = Rate::since(mib, t0, cpu0);
    receiver
        .join()
        .map_err(|_| std::io::Error::other("receiver panicked"))??;
    Ok(r)
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

fn config(frame_mac: FrameMac) -> NetConfig {
    NetConfig {
        frame_mac,
        ..NetConfig::default()
    }
}

fn comm_throughput(
    mib: usize,
    path: SendPath,
    frame_mac: FrameMac,
) -> Result<Rate, Box<dyn std::error::Error + Send + Sync>> {
    let (a, b) = pair(loopback_comms(2, config(frame_mac))?)?;
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
    let (t0, cpu0) = (Instant::now(), process_cpu());
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
    let r = Rate::since(mib, t0, cpu0);
    rx.join().map_err(|_| "receiver panicked")??;
    Ok(r)
}

fn comm_latency(
    n: usize,
    frame_mac: FrameMac,
) -> Result<Duration, Box<dyn std::error::Error + Send + Sync>> {
    let (a, b) = pair(loopback_comms(2, config(frame_mac))?)?;
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

#[derive(Clone, Copy)]
enum Variant {
    Raw { mac: bool },
    Comm(SendPath, FrameMac),
}

/// The throughput variants, each measured once per run in a rotating order.
const VARIANTS: [(&str, Variant); 6] = [
    ("raw TCP", Variant::Raw { mac: false }),
    ("raw TCP + frame MAC", Variant::Raw { mac: true }),
    (
        "Comm send_buf, MAC on",
        Variant::Comm(SendPath::Owned, FrameMac::On),
    ),
    (
        "Comm send_slice, MAC on",
        Variant::Comm(SendPath::Copying, FrameMac::On),
    ),
    (
        "Comm send_buf, MAC off",
        Variant::Comm(SendPath::Owned, FrameMac::Off),
    ),
    (
        "Comm send_slice, MAC off",
        Variant::Comm(SendPath::Copying, FrameMac::Off),
    ),
];
const RAW: usize = 0;
const RAW_MAC: usize = 1;
const BUF_ON: usize = 2;
const SLICE_ON: usize = 3;
const BUF_OFF: usize = 4;
const SLICE_OFF: usize = 5;

fn measure(v: Variant, mib: usize) -> Result<Rate, Box<dyn std::error::Error + Send + Sync>> {
    Ok(match v {
        Variant::Raw { mac } => raw_throughput(mib, mac)?,
        Variant::Comm(path, frame_mac) => comm_throughput(mib, path, frame_mac)?,
    })
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
    let runs = a.repeat.max(1);
    // rates[variant][run]
    let mut rates = vec![Vec::with_capacity(runs); VARIANTS.len()];
    let (mut raw_lats, mut lat_on, mut lat_off) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        // Rotate which variant goes first so slow drift in machine load cancels out.
        let mut run = [Rate::default(); VARIANTS.len()];
        for k in 0..VARIANTS.len() {
            let j = (i + k) % VARIANTS.len();
            run[j] = measure(VARIANTS[j].1, a.mib)?;
        }
        let mut lats = [Duration::ZERO; 3];
        for k in 0..3 {
            let j = (i + k) % 3;
            lats[j] = match j {
                0 => raw_latency(a.round_trips)?,
                1 => comm_latency(a.round_trips, FrameMac::On)?,
                _ => comm_latency(a.round_trips, FrameMac::Off)?,
            };
        }
        let us = lats.map(|d| d.as_secs_f64() * 1e6);
        let gb = |j: usize| run[j].bytes_per_s / 1e9;
        let x = |j: usize, limit: usize| run[j].bytes_per_s / run[limit].bytes_per_s;
        outln!(
            "  run {i}: 1 MiB raw {:.2} GB/s, raw+MAC {:.2} ({:.2}x raw); MAC on: send_buf {:.2} ({:.2}x raw, {:.2}x raw+MAC), send_slice {:.2} ({:.2}x raw+MAC); MAC off: send_buf {:.2} ({:.2}x raw), send_slice {:.2} ({:.2}x raw)",
            gb(RAW),
            gb(RAW_MAC),
            x(RAW_MAC, RAW),
            gb(BUF_ON),
            x(BUF_ON, RAW),
            x(BUF_ON, RAW_MAC),
            gb(SLICE_ON),
            x(SLICE_ON, RAW_MAC),
            gb(BUF_OFF),
            x(BUF_OFF, RAW),
            gb(SLICE_OFF),
            x(SLICE_OFF, RAW),
        )?;
        outln!(
            "         8 B one-way: raw {:.1} us, Comm MAC on {:.1} us ({:.2}x), MAC off {:.1} us ({:.2}x)",
            us[0],
            us[1],
            us[1] / us[0],
            us[2],
            us[2] / us[0]
        )?;
        for (j, r) in run.iter().enumerate() {
            rates[j].push(*r);
        }
        raw_lats.push(us[0]);
        lat_on.push(us[1] / us[0]);
        lat_off.push(us[2] / us[0]);
    }
    // Ratios are taken per run (the pair shares the machine's load), then the median.
    let ratio = |j: usize, limit: usize| -> f64 {
        let v: Vec<f64> = (0..runs)
            .map(|i| rates[j][i].bytes_per_s / rates[limit][i].bytes_per_s)
            .collect();
        median(&v)
    };
    let med = |j: usize, f: fn(&Rate) -> f64| median(&rates[j].iter().map(f).collect::<Vec<_>>());
    outln!("1 MiB messages, median of {runs} paired runs (CPU: whole process, per byte moved):")?;
    outln!(
        "  {:<26} {:>11} {:>11} {:>9} {:>9}",
        "",
        "rate",
        "CPU",
        "/raw",
        "/raw+MAC"
    )?;
    for (j, (name, v)) in VARIANTS.iter().enumerate() {
        let vs_mac = match v {
            Variant::Comm(_, FrameMac::On) => format!("{:.2}x", ratio(j, RAW_MAC)),
            _ => "-".into(),
        };
        outln!(
            "  {name:<26} {:>6.2} GB/s {:>6.3} ns/B {:>8.2}x {:>9}",
            med(j, |r| r.bytes_per_s) / 1e9,
            med(j, |r| r.cpu_ns_per_byte),
            ratio(j, RAW),
            vs_mac,
        )?;
    }
    outln!(
        "throughput 1 MiB msgs: median ratio Comm/raw TCP {:.2}x with send_buf (zero-copy; target >= 0.80x), {:.2}x with send_slice (one copy); frame MAC on: raw+MAC limit {:.2}x raw, Comm/raw+MAC {:.2}x send_buf, {:.2}x send_slice; frame MAC off: Comm/raw TCP {:.2}x send_buf, {:.2}x send_slice",
        ratio(BUF_ON, RAW),
        ratio(SLICE_ON, RAW),
        ratio(RAW_MAC, RAW),
        ratio(BUF_ON, RAW_MAC),
        ratio(SLICE_ON, RAW_MAC),
        ratio(BUF_OFF, RAW),
        ratio(SLICE_OFF, RAW),
    )?;
    // The same ratios in CPU time per byte (limit / Comm): what the wall-clock ratio is on
    // a machine where both ends are CPU-bound on the same cores, and far less sensitive to
    // the share of the cores a loaded machine happens to give each variant.
    let cpu_ratio = |j: usize, limit: usize| -> f64 {
        let v: Vec<f64> = (0..runs)
            .map(|i| rates[limit][i].cpu_ns_per_byte / rates[j][i].cpu_ns_per_byte)
            .collect();
        median(&v)
    };
    outln!(
        "throughput by CPU per byte (limit/Comm): frame MAC on: send_buf {:.2}x raw+MAC ({:.2}x raw), send_slice {:.2}x raw+MAC; frame MAC off: send_buf {:.2}x raw, send_slice {:.2}x raw; raw+MAC {:.2}x raw; MAC cost per byte (both ends): {:.3} ns in Comm, {:.3} ns over raw TCP",
        cpu_ratio(BUF_ON, RAW_MAC),
        cpu_ratio(BUF_ON, RAW),
        cpu_ratio(SLICE_ON, RAW_MAC),
        cpu_ratio(BUF_OFF, RAW),
        cpu_ratio(SLICE_OFF, RAW),
        cpu_ratio(RAW_MAC, RAW),
        med(BUF_ON, |r| r.cpu_ns_per_byte) - med(BUF_OFF, |r| r.cpu_ns_per_byte),
        med(RAW_MAC, |r| r.cpu_ns_per_byte) - med(RAW, |r| r.cpu_ns_per_byte),
    )?;
    outln!(
        "latency 8 B one-way: median ratio Comm/raw TCP {:.2}x with the frame MAC on, {:.2}x off (target <= 1.50x; raw median {:.1} us)",
        median(&lat_on),
        median(&lat_off),
        median(&raw_lats)
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

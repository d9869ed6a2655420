//! Test helper for the runtime's process tests (not a user tool). Modes:
//! `ring` — pass a token around, allreduce, print the sum;
//! `die <victim> <recv|allreduce>` — the victim SIGKILLs itself after a barrier while the
//! others block in recv (from the victim) or allreduce; survivors print their error, exit 3;
//! `stall <victim>` — the victim SIGSTOPs itself (heartbeats stop), the others sleep;
//! `exit <rank> <code>` — that rank exits with code, the others sleep;
//! `allreduce` — barrier, then a small and a 1 MiB allreduce checked against the closed
//! form; prints `ok rank=<r> size=<n> sum=<s>` (used under a real `mpirun`);
//! `spam <lines> <long>` — every rank prints `r<rank> l<i> <filler>` lines as fast as it
//! can, one line of `<long>` bytes, and a line on stderr, then `done r<rank>` after a
//! barrier (output forwarding through launchers);
//! `sleep <secs>` — barrier, then sleep (ranks to be killed from outside);
//! `late <rank> <ms>` — that rank sleeps before it joins, then every rank runs `ring`.

use lazarus_format::Rank;
use lazarus_net::ReduceOp;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let num = |i: usize| arg(i).parse::<u32>().unwrap_or(0);
    if arg(0) == "late" && std::env::var("LAZARUS_RANK").ok() == Some(arg(1)) {
        std::thread::sleep(std::time::Duration::from_millis(u64::from(num(2))));
    }
    let comm = match lazarus_net::init() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("init failed: {e}");
            return ExitCode::from(4);
        }
    };
    let me = comm.rank().0;
    let n = comm.size();
    let result = (|| -> lazarus_net::Result<()> {
        match arg(0).as_str() {
            "ring" | "late" => {
                let next = Rank((me + 1) % n);
                let prev = Rank((me + n - 1) % n);
                let hops: u32 = if me == 0 {
                    comm.send(next, 1, &1u32)?;
                    comm.recv(prev, 1)?
                } else {
                    let h: u32 = comm.recv(prev, 1)?;
                    comm.send(next, 1, &(h + 1))?;
                    h
                };
                let mut s = [me as f64];
                comm.allreduce(&mut s, ReduceOp::Sum)?;
                println!(
                    "ok hops={hops} sum={} incarnation={}",
                    s[0],
                    comm.incarnation()
                );
            }
            "die" => {
                let victim = num(1);
                comm.barrier()?;
                if me == victim {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    // SAFETY: signalling ourselves.
                    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
                }
                let t0 = std::time::Instant::now();
                let r = if arg(2) == "recv" {
                    comm.recv::<u32>(Rank(victim), 9).map(|_| ())
                } else {
                    comm.allreduce(&mut [1.0f64], ReduceOp::Sum)
                        .and_then(|_| comm.allreduce(&mut [1.0f64], ReduceOp::Sum))
                };
                if let Err(e) = r {
                    println!("error after {:?}: {e}", t0.elapsed());
                    return Err(e);
                }
            }
            "stall" => {
                let victim = num(1);
                comm.barrier()?;
                if me == victim {
                    // SAFETY: signalling ourselves.
                    unsafe { libc::kill(libc::getpid(), libc::SIGSTOP) };
                }
                // Only the launcher's heartbeat watch can notice a stopped rank here.
                std::thread::sleep(std::time::Duration::from_secs(30));
            }
            "exit" => {
                if me == num(1) {
                    std::process::exit(num(2) as i32);
                }
                std::thread::sleep(std::time::Duration::from_secs(60));
            }
            "allreduce" => {
                comm.barrier()?;
                let mut small = [f64::from(me) + 1.0];
                comm.allreduce(&mut small, ReduceOp::Sum)?;
                let want = f64::from(n) * f64::from(n + 1) / 2.0;
                // Large enough for the reduce-scatter + allgather path.
                let mut big = vec![u64::from(me) + 1; 1 << 17];
                comm.allreduce(&mut big, ReduceOp::Sum)?;
                let bad = big.iter().filter(|x| **x as f64 != want).count();
                if small[0] != want || bad > 0 {
                    eprintln!(
                        "rank {me}: wrong sums: small {}, {bad} bad elements",
                        small[0]
                    );
                    std::process::exit(5);
                }
                println!("ok rank={me} size={n} sum={}", small[0]);
            }
            "spam" => {
                use std::io::Write;
                let lines = num(1);
                let long = num(2) as usize;
                let mut out = std::io::stdout().lock();
                for i in 0..lines {
                    let fill = "x".repeat((i % 97) as usize);
                    let _ = writeln!(out, "r{me} l{i} {fill}");
                }
                let _ = writeln!(out, "r{me} long {}", "y".repeat(long));
                let _ = out.flush();
                drop(out);
                eprintln!("r{me} on stderr [1,0]<stdout>: 0: not a tag");
                comm.barrier()?;
                println!("done r{me}");
            }
            "sleep" => {
                comm.barrier()?;
                println!("sleeping r{me}");
                std::thread::sleep(std::time::Duration::from_secs(u64::from(num(1))));
            }
            m => eprintln!("unknown mode {m:?}"),
        }
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rank {me}: {e}");
            ExitCode::from(3)
        }
    }
}

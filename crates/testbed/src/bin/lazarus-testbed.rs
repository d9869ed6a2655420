//! `lazarus-testbed hosts K [--sshd]`: creates K network-namespace hosts (with a real sshd
//! on each with `--sshd`), prints their addresses and the agent that runs commands on
//! them, and removes everything when its standard input ends (Enter, Ctrl-D, or the end of
//! a pipe). For trying multi-host runs by hand:
//!
//! ```sh
//! lazarus-testbed hosts 4 &    # prints HOSTS=... AGENT=...
//! lazarus run -n 8 --launcher mpirun --rsh-agent $AGENT --hosts $HOSTS \
//!     --launcher-arg=--mca --launcher-arg=rtc --launcher-arg=^hwloc --repo r -- prog
//! ```

use std::io::Read;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (k, sshd) = match args.as_slice() {
        [cmd, k] if cmd == "hosts" => (k.parse::<usize>().ok(), false),
        [cmd, k, s] if cmd == "hosts" && s == "--sshd" => (k.parse::<usize>().ok(), true),
        _ => (None, false),
    };
    let Some(k) = k else {
        eprintln!("usage: lazarus-testbed hosts K [--sshd]");
        std::process::exit(2);
    };
    let mut c = match lazarus_testbed::Cluster::new(k) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lazarus-testbed: {e}");
            std::process::exit(1);
        }
    };
    if sshd {
        if let Err(e) = c.start_sshd() {
            eprintln!("lazarus-testbed: {e}");
            std::process::exit(1);
        }
    }
    println!("HOSTS={}", c.host_names().join(","));
    println!("AGENT={}", c.ssh_agent().unwrap_or(c.agent()).display());
    println!("HEAD={}", c.head_addr());
    for (i, h) in c.hosts().iter().enumerate() {
        println!(
            "# host {i}: {} netns {} link {} node dir {}",
            h.addr,
            h.netns,
            h.link,
            h.node_dir.display()
        );
    }
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

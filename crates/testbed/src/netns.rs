//! K hosts as Linux network namespaces: each with its own network stack, one veth link to
//! a bridge in the root namespace (the head node, where the supervisor runs), an address
//! in a private /24 the test bed picks, and its own node-local directory. A remote-shell
//! agent script (`agent HOST COMMAND…`, like `ssh`) runs commands inside a host: Open MPI
//! uses it as `plm_rsh_agent`, the ssh engine as its `ssh`.
//!
//! Two agents: [`Cluster::agent`] enters the namespace directly (`ip netns exec`), so what
//! it starts stays a descendant of the caller, in the same process tree; with
//! [`Cluster::start_sshd`] every host runs a real `sshd` and [`Cluster::ssh_agent`] is a
//! real `ssh`: what a host runs is a child of *its* sshd, so cutting its link really cuts
//! it off (nothing reaches it through the process tree), as on separate machines.

use crate::Unavailable;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Where test beds keep their state (one directory per test bed).
const STATE_ROOT: &str = "/tmp/lazarus-testbed";
/// Every name a test bed creates starts with this.
const PREFIX: &str = "lzt";

/// One host of a [`Cluster`].
#[derive(Clone, Debug)]
pub struct Host {
    /// Network namespace name.
    pub netns: String,
    /// Its address: also its host name for the engines (`--hosts`).
    pub addr: Ipv4Addr,
    /// The root-namespace end of its link (taken down to cut the host off).
    pub link: String,
    /// Its node-local directory (`LAZARUS_NODE_DIR` and `TMPDIR` of its processes).
    pub node_dir: PathBuf,
}

/// K hosts on a private bridge; removed on drop.
#[derive(Debug)]
pub struct Cluster {
    id: String,
    bridge: String,
    head: Ipv4Addr,
    hosts: Vec<Host>,
    dir: PathBuf,
    agent: PathBuf,
    ssh_agent: Option<PathBuf>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip_out(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks existence.
    pid > 0 && unsafe { libc::kill(pid as i32, 0) } == 0
}

/// Pids of the processes in namespace `ns`.
fn netns_pids(ns: &str) -> Vec<u32> {
    ip_out(&["netns", "pids", ns])
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// SIGKILLs every process in `ns` until none is left (bounded); returns how many.
fn kill_netns(ns: &str) -> usize {
    let mut killed = 0;
    for _ in 0..100 {
        let pids = netns_pids(ns);
        if pids.is_empty() {
            break;
        }
        for p in pids {
            // SAFETY: a process inside a namespace this test bed created.
            if unsafe { libc::kill(p as i32, libc::SIGKILL) } == 0 {
                killed += 1;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    killed
}

/// Removes what the test bed `id` created (namespaces, bridge, state directory).
fn teardown(id: &str, dir: &Path) {
    let ns_prefix = format!("{PREFIX}{id}h");
    for line in ip_out(&["netns", "list"]).lines() {
        let Some(ns) = line.split_whitespace().next() else {
            continue;
        };
        if ns.starts_with(&ns_prefix) {
            kill_netns(ns);
            let _ = ip(&["netns", "del", ns]);
        }
    }
    for k in 0..64 {
        let link = format!("{PREFIX}{id}h{k}");
        if ip_out(&["link", "show", &link]).contains(&link) {
            let _ = ip(&["link", "del", &link]);
        }
    }
    let bridge = format!("{PREFIX}{id}b");
    let _ = ip(&["link", "del", &bridge]);
    let _ = std::fs::remove_dir_all(dir);
}

/// Tears down test beds whose owning process is gone (a SIGKILLed test run).
fn sweep_dead_owners() {
    let Ok(dirs) = std::fs::read_dir(STATE_ROOT) else {
        return;
    };
    for d in dirs.flatten() {
        let owner = std::fs::read_to_string(d.path().join("owner"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if owner.is_some_and(|p| !alive(p)) {
            let id = d.file_name().to_string_lossy().into_owned();
            teardown(&id, &d.path());
        }
    }
}

impl Cluster {
    /// Creates `k` hosts (1..=50). Needs root and iproute2.
    pub fn new(k: usize) -> Result<Cluster, Unavailable> {
        if !(1..=50).contains(&k) {
            return Err(Unavailable(format!("{k} hosts: 1..=50 supported")));
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Unavailable("network namespaces need root".into()));
        }
        if crate::which("ip").is_none() {
            return Err(Unavailable("`ip` (iproute2) is not installed".into()));
        }
        sweep_dead_owners();
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        // A short id (interface names have at most 15 bytes) unique on this machine.
        let used = ip_out(&["link", "show"]) + &ip_out(&["netns", "list"]);
        let mut x = std::process::id()
            .wrapping_mul(2_654_435_761)
            .wrapping_add(seq.wrapping_mul(40_503))
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
        let id = loop {
            let id = format!("{:04x}", x & 0xffff);
            if !used.contains(&format!("{PREFIX}{id}")) && !Path::new(STATE_ROOT).join(&id).exists()
            {
                break id;
            }
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        };
        // A /24 in 10.213.0.0/16 no interface of this machine uses.
        let addrs = ip_out(&["-4", "-o", "addr", "show"]);
        let third = (0..=255u32)
            .map(|i| ((x >> 16) + i) % 254 + 1)
            .find(|t| !addrs.contains(&format!("10.213.{t}.")))
            .ok_or_else(|| Unavailable("no free /24 in 10.213.0.0/16".into()))?
            as u8;
        let dir = Path::new(STATE_ROOT).join(&id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Unavailable(format!("creating {}: {e}", dir.display())))?;
        std::fs::write(dir.join("owner"), std::process::id().to_string())
            .map_err(|e| Unavailable(format!("writing {}: {e}", dir.display())))?;
        let mut c = Cluster {
            bridge: format!("{PREFIX}{id}b"),
            head: Ipv4Addr::new(10, 213, third, 1),
            hosts: Vec::new(),
            agent: dir.join("agent"),
            ssh_agent: None,
            dir,
            id,
        };
        // From here on, Drop removes whatever was created.
        c.build(k, third).map_err(Unavailable)?;
        Ok(c)
    }

    fn build(&mut self, k: usize, third: u8) -> Result<(), String> {
        let br = self.bridge.clone();
        let head = format!("{}/24", self.head);
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&["addr", "add", &head, "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 0..k {
            let ns = format!("{PREFIX}{}h{i}", self.id);
            let link = ns.clone();
            let peer = format!("{PREFIX}{}p{i}", self.id);
            let addr = Ipv4Addr::new(10, 213, third, 2 + i as u8);
            let node_dir = self.dir.join(format!("host{i}"));
            std::fs::create_dir_all(&node_dir)
                .map_err(|e| format!("creating {}: {e}", node_dir.display()))?;
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &link, "type", "veth", "peer", "name", &peer])?;
            ip(&["link", "set", &link, "master", &br, "up"])?;
            ip(&["link", "set", &peer, "netns", &ns])?;
            let inside = |args: &[&str]| {
                let mut a = vec!["netns", "exec", &ns, "ip"];
                a.extend_from_slice(args);
                ip(&a)
            };
            inside(&["link", "set", &peer, "name", "eth0"])?;
            inside(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            inside(&["link", "set", "eth0", "up"])?;
            inside(&["link", "set", "lo", "up"])?;
            self.hosts.push(Host {
                netns: ns,
                addr,
                link,
                node_dir,
            });
        }
        self.write_agent()
    }

    fn write_agent(&self) -> Result<(), String> {
        let mut cases = String::new();
        for h in &self.hosts {
            cases.push_str(&format!(
                "    {}) ns={} dir={} ;;\n",
                h.addr,
                h.netns,
                h.node_dir.display()
            ));
        }
        let script = format!(
            "#!/bin/sh\n\
             # Test bed {id}: runs a command on a host (a network namespace), like\n\
             # `ssh HOST COMMAND...`; stdin, stdout and stderr pass through.\n\
             while [ \"${{1#-}}\" != \"$1\" ]; do shift; done\n\
             host=$1; shift\n\
             case \"$host\" in\n{cases}    *) echo \"testbed agent: unknown host $host\" >&2; exit 255 ;;\n\
             esac\n\
             exec ip netns exec \"$ns\" env LAZARUS_NODE_DIR=\"$dir\" TMPDIR=\"$dir\" /bin/sh -c \"$*\"\n",
            id = self.id
        );
        std::fs::write(&self.agent, script)
            .map_err(|e| format!("writing {}: {e}", self.agent.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.agent, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", self.agent.display()))
    }

    /// The hosts.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The hosts' names for `--hosts` (their addresses).
    pub fn host_names(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.addr.to_string()).collect()
    }

    /// The head node's address on the bridge (where the supervisor is reached).
    pub fn head_addr(&self) -> Ipv4Addr {
        self.head
    }

    /// The remote-shell agent: `agent HOST COMMAND…` runs COMMAND in HOST's namespace.
    pub fn agent(&self) -> &Path {
        &self.agent
    }

    /// Starts a real `sshd` on every host (root login with a key of this test bed only);
    /// returns the ssh agent (`ssh-agent HOST COMMAND…`, a real `ssh`). Idempotent.
    pub fn start_sshd(&mut self) -> Result<PathBuf, Unavailable> {
        if let Some(a) = &self.ssh_agent {
            return Ok(a.clone());
        }
        for b in ["sshd", "ssh", "ssh-keygen"] {
            if crate::which(b).is_none() {
                return Err(Unavailable(format!(
                    "{b} is not installed (apt-get install openssh-server openssh-client)"
                )));
            }
        }
        let sshd = crate::which("sshd").unwrap_or_default();
        let d = self.dir.join("ssh");
        let fail = |what: &str, e: String| Unavailable(format!("sshd test bed: {what}: {e}"));
        std::fs::create_dir_all(&d).map_err(|e| fail("mkdir", e.to_string()))?;
        // sshd's privilege separation directory (machine-wide, empty, harmless).
        std::fs::create_dir_all("/run/sshd").map_err(|e| fail("/run/sshd", e.to_string()))?;
        for key in ["id", "host_key"] {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(key))
                .stdin(Stdio::null())
                .output()
                .map_err(|e| fail("ssh-keygen", e.to_string()))?;
            if !out.status.success() {
                return Err(fail(
                    "ssh-keygen",
                    String::from_utf8_lossy(&out.stderr).into(),
                ));
            }
        }
        std::fs::copy(d.join("id.pub"), d.join("authorized_keys"))
            .map_err(|e| fail("authorized_keys", e.to_string()))?;
        for (i, h) in self.hosts.iter().enumerate() {
            let conf = d.join(format!("sshd{i}.conf"));
            let text = format!(
                "ListenAddress {addr}\nPort 22\nHostKey {d}/host_key\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nPidFile {d}/sshd{i}.pid\nLogLevel ERROR\n\
                 MaxStartups 200:30:400\nMaxSessions 200\n\
                 SetEnv LAZARUS_NODE_DIR={nd} TMPDIR={nd}\n",
                addr = h.addr,
                d = d.display(),
                nd = h.node_dir.display()
            );
            std::fs::write(&conf, text).map_err(|e| fail("sshd config", e.to_string()))?;
            let out = Command::new("ip")
                .args(["netns", "exec", &h.netns])
                .arg(&sshd)
                .arg("-f")
                .arg(&conf)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| fail("starting sshd", e.to_string()))?;
            if !out.status.success() {
                return Err(fail(
                    "starting sshd",
                    String::from_utf8_lossy(&out.stderr).into(),
                ));
            }
        }
        let client = d.join("config");
        std::fs::write(
            &client,
            format!(
                "Host *\n  User root\n  IdentityFile {d}/id\n  IdentitiesOnly yes\n  \
                 StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  BatchMode yes\n  \
                 LogLevel ERROR\n  ConnectTimeout 10\n",
                d = d.display()
            ),
        )
        .map_err(|e| fail("ssh config", e.to_string()))?;
        let agent = self.dir.join("ssh-agent");
        std::fs::write(
            &agent,
            format!("#!/bin/sh\nexec ssh -F {} \"$@\"\n", client.display()),
        )
        .map_err(|e| fail("agent", e.to_string()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| fail("agent", e.to_string()))?;
        // Wait until every sshd answers a command.
        for h in &self.hosts {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                let ok = Command::new(&agent)
                    .arg(h.addr.to_string())
                    .arg("true")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    return Err(fail("sshd did not answer", h.addr.to_string()));
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        self.ssh_agent = Some(agent.clone());
        Ok(agent)
    }

    /// The ssh agent, once [`Cluster::start_sshd`] ran.
    pub fn ssh_agent(&self) -> Option<&Path> {
        self.ssh_agent.as_deref()
    }

    /// Cuts host `i` off the network (its processes keep running).
    pub fn link_down(&self, i: usize) -> Result<(), String> {
        ip(&["link", "set", &self.host(i)?.link, "down"])
    }

    /// Reconnects host `i`.
    pub fn link_up(&self, i: usize) -> Result<(), String> {
        let h = self.host(i)?;
        ip(&["link", "set", &h.link, "master", &self.bridge])?;
        ip(&["link", "set", &h.link, "up"])
    }

    /// Pids of the processes on host `i`.
    pub fn pids(&self, i: usize) -> Vec<u32> {
        self.hosts
            .get(i)
            .map(|h| netns_pids(&h.netns))
            .unwrap_or_default()
    }

    /// A host failure: SIGKILLs every process on host `i` and deletes its node-local
    /// files. Returns the number of processes killed.
    pub fn kill_host(&self, i: usize) -> usize {
        let Some(h) = self.hosts.get(i) else {
            return 0;
        };
        let n = kill_netns(&h.netns);
        if let Ok(entries) = std::fs::read_dir(&h.node_dir) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
        n
    }

    fn host(&self, i: usize) -> Result<&Host, String> {
        self.hosts
            .get(i)
            .ok_or_else(|| format!("no host {i} (test bed has {})", self.hosts.len()))
    }

    /// The index of the host with address `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.hosts.iter().position(|h| h.addr.to_string() == name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        teardown(&self.id, &self.dir);
    }
}

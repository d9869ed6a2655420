//! A real S3-compatible server for tests: the one `.ci/run` started (it exports
//! `LAZARUS_TEST_S3_ENDPOINT` and creates the bucket), else a `moto_server` started here on a
//! free loopback port (killed with the test process), else a loud skip — or a failure under
//! `CI=true`. Tests that kill or restart the server start their own with [`Moto::start`].
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Endpoint of the CI's server, e.g. `http://127.0.0.1:45123`.
pub const ENDPOINT_ENV: &str = "LAZARUS_TEST_S3_ENDPOINT";
/// Bucket on it (default `lazarus-test`).
pub const BUCKET_ENV: &str = "LAZARUS_TEST_S3_BUCKET";

/// Where to reach a server with a bucket.
#[derive(Clone, Debug)]
pub struct Server {
    pub endpoint: String,
    pub bucket: String,
}

/// A moto server process owned by the test (killed on drop and when the test process dies).
pub struct Moto {
    pub port: u16,
    child: Option<Child>,
}

impl Moto {
    /// Starts `moto_server` on `port` (a free one when `None`) and waits until it answers.
    /// `None` when moto is not installed.
    pub fn start(port: Option<u16>) -> Option<Moto> {
        let have = Command::new("python3")
            .args(["-c", "import moto.server, flask"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !have {
            return None;
        }
        let port = port.unwrap_or_else(free_port);
        let mut c = Command::new("python3");
        c.args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: prctl only sets a flag of the child about to exec.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        // The death signal fires when the *thread* that forked exits, not the process: fork
        // from a thread that lives as long as the test process.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(c.spawn());
            loop {
                std::thread::park();
            }
        });
        let child = rx.recv().ok()?.ok()?;
        let m = Moto {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if http(port, "GET", "/").is_some() {
                return Some(m);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("moto_server on port {port} did not answer within 60 s");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates `bucket` (moto accepts an unsigned request).
    pub fn create_bucket(&self, bucket: &str) {
        let status = http(self.port, "PUT", &format!("/{bucket}"));
        assert!(
            matches!(status, Some(200) | Some(409)),
            "creating bucket {bucket} on port {}: {status:?}",
            self.port
        );
    }

    /// SIGKILLs the server (its in-memory objects are gone).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free loopback port (bound and released; moto binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One plain HTTP/1.1 request; the status code, or `None` when nothing answers.
pub fn http(port: u16, method: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The shared server of this test process, or `None` (after a loud message) when there is
/// none; panics under `CI=true` when there is none.
pub fn server() -> Option<Server> {
    static SERVER: OnceLock<Option<(Server, Option<Moto>)>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let bucket = std::env::var(BUCKET_ENV).unwrap_or_else(|_| "lazarus-test".into());
            if let Ok(endpoint) = std::env::var(ENDPOINT_ENV) {
                return Some((Server { endpoint, bucket }, None));
            }
            match Moto::start(None) {
                Some(m) => {
                    m.create_bucket(&bucket);
                    let endpoint = m.endpoint();
                    Some((Server { endpoint, bucket }, Some(m)))
                }
                None => {
                    assert!(
                        !lazarus_testbed::in_ci(),
                        "under CI but no S3 server: {ENDPOINT_ENV} is unset and moto_server \
                         cannot be started (.ci/run installs moto[server])"
                    );
                    eprintln!(
                        "\n*** SKIPPING S3 TESTS: no S3 server ({ENDPOINT_ENV} unset and \
                         moto is not installed; `pip install 'moto[server]'` to run them) ***\n"
                    );
                    None
                }
            }
        })
        .as_ref()
        .map(|(s, _)| s.clone())
}

/// A prefix no other test uses.
pub fn unique_prefix(name: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{name}-{}-{t}-{n}", std::process::id())
}

/// The environment a child process needs to reach `server` as `s3://bucket/...`.
pub fn env_for(server: &Server) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", server.endpoint.clone()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_ALLOW_HTTP", "true".into()),
    ]
}

/// Config of a repository under `prefix` on `server`, with a short lease for tests.
pub fn config(server: &Server, prefix: &str) -> lazarus_store::S3Config {
    lazarus_store::S3Config {
        bucket: server.bucket.clone(),
        prefix: prefix.to_string(),
        endpoint: Some(server.endpoint.clone()),
        region: "us-east-1".into(),
        credentials: Some(("test".into(), "test".into(), None)),
        allow_http: true,
        op_timeout: Duration::from_secs(10),
        concurrency: 16,
        lease: lazarus_store::LeaseConfig {
            ttl: Duration::from_secs(30),
            renew_every: Duration::from_secs(2),
            max_clock_skew: Duration::from_secs(10),
            commit_margin: Duration::from_secs(10),
        },
    }
}

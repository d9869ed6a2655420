//! Attack review #7: a server that answers every conditional PUT of `LOCK` with 412 (and
//! every GET with 404) was sent GET+PUT in a tight loop until the acquire deadline, and the
//! error said only "lost the race for the lease".

mod common;

use common::fake_s3::fake_s3_with;
use common::s3::{config, Server};
use common::small_opts;
use lazarus_store::{LeaseConfig, RepoOptions, Repository, S3Backend};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

static PUTS: AtomicUsize = AtomicUsize::new(0);

#[test]
fn lease_acquire_backs_off_on_a_server_that_always_answers_412() {
    let endpoint = fake_s3_with(|req| {
        if req.starts_with("PUT") {
            PUTS.fetch_add(1, Ordering::SeqCst);
            (
                "HTTP/1.1 412 Precondition Failed\r\nContent-Length: 0\r\n".into(),
                0,
            )
        } else {
            ("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n".into(), 0)
        }
    });
    let server = Server {
        endpoint,
        bucket: "lazarus-test".into(),
    };
    let mut cfg = config(&server, "lease412");
    cfg.op_timeout = Duration::from_secs(1);
    let lease = LeaseConfig {
        ttl: Duration::from_secs(2),
        renew_every: Duration::from_millis(300),
        max_clock_skew: Duration::from_secs(1),
        commit_margin: Duration::from_millis(900),
    };
    cfg.lease = lease.clone();
    let b = Arc::new(S3Backend::open(cfg).unwrap());
    let t = Instant::now();
    let e = Repository::open_backend(
        b,
        RepoOptions {
            lease: Some(lease),
            ..small_opts()
        },
    )
    .unwrap_err();
    let (puts, took) = (PUTS.load(Ordering::SeqCst), t.elapsed());
    assert!(puts < 50, "{puts} PUTs in {took:?}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert!(e.to_string().contains("412"), "{e}");
    assert!(e.to_string().contains("LOCK"), "{e}");
}

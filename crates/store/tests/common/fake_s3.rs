//! A fake S3 server on 127.0.0.1 for hostile-server tests: a thread per connection, each
//! request answered by a closure (status line and headers; ETag and Last-Modified added).
#![allow(dead_code)]

use super::s3::{config, Server};
use lazarus_store::S3Backend;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::Duration;

/// A one-route S3 server on 127.0.0.1: answers every request with a 200 announcing
/// `content_length` bytes, then sends `body_len` bytes (in frames of at most 1 MiB, the
/// first two apart in time so the client sees two frames), then serves the next request
/// of the connection (a body shorter than announced holds it). Returns its endpoint.
pub fn fake_s3(content_length: u64, body_len: u64) -> String {
    fake_s3_with(move |_| {
        (
            format!("HTTP/1.1 200 OK\r\nContent-Length: {content_length}\r\n"),
            body_len,
        )
    })
}

/// [`fake_s3`] answering each request (its request line and headers) with `answer`'s
/// status line and headers (ETag and Last-Modified are added) and that many body bytes.
pub fn fake_s3_with(answer: impl Fn(&str) -> (String, u64) + Send + Sync + 'static) -> String {
    let answer = std::sync::Arc::new(answer);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut request = String::new();
                    while r.read_line(&mut request).is_ok_and(|n| n > 0) {
                        if request.ends_with("\r\n\r\n") {
                            break;
                        }
                    }
                    if request.is_empty() {
                        return;
                    }
                    // Skip a request body (a PUT's), so the next request parses.
                    let body: u64 = request
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if std::io::copy(&mut (&mut r).take(body), &mut std::io::sink()).is_err() {
                        return;
                    }
                    let (status, body_len) = answer(&request);
                    let body_len = if request.starts_with("HEAD") {
                        0
                    } else {
                        body_len
                    };
                    let head = format!(
                        "{status}ETag: \"e1\"\r\nLast-Modified: Mon, 07 Dec 2026 00:00:00 GMT\r\n\r\n"
                    );
                    if s.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    let frame = vec![b'x'; 1 << 20];
                    let mut left = body_len;
                    let mut first = true;
                    while left > 0 {
                        let n = left.min(if first { 100 } else { 1 << 20 });
                        if s.write_all(&frame[..n as usize])
                            .and_then(|_| s.flush())
                            .is_err()
                        {
                            return;
                        }
                        if first {
                            std::thread::sleep(Duration::from_millis(100));
                            first = false;
                        }
                        left -= n;
                    }
                }
            });
        }
    });
    endpoint
}

pub fn fake_backend(endpoint: String) -> S3Backend {
    let server = Server {
        endpoint,
        bucket: "lazarus-test".into(),
    };
    let mut cfg = config(&server, "caps");
    cfg.op_timeout = Duration::from_secs(10);
    S3Backend::open(cfg).unwrap()
}

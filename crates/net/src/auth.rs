//! Job token and the mutual HMAC-SHA256 challenge-response run on every connection before
//! any other frame is accepted. The token itself never crosses the wire.
//!
//! Both sides send `Hello{job id, rank, incarnation, nonce}`; each then sends
//! `Proof = HMAC(token, "lazarus-auth-v1" | sender rank | receiver rank | receiver nonce |
//! sender nonce | incarnation)`. Binding both ranks and both nonces stops replay and
//! reflection; the job id (a hash of the token) lets a peer of another job be refused
//! with a clear message before any proof is computed.

use crate::error::{ErrorKind, NetError, Result};
use crate::wire::{self, Frame, Hello};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{Read, Write};

/// The rank value the coordinator (rendezvous server) uses in its Hello.
pub(crate) const COORD_RANK: u32 = u32::MAX;

/// The shared secret of a job. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct JobToken(Vec<u8>);

impl fmt::Debug for JobToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JobToken(<redacted>)")
    }
}

impl JobToken {
    /// A token from its text form; refuses an empty token.
    pub fn new(text: &str) -> Result<Self> {
        if text.is_empty() {
            return Err(NetError::new(ErrorKind::Config, "job token is empty"));
        }
        Ok(JobToken(text.as_bytes().to_vec()))
    }

    /// A fresh random token (32 bytes as 64 hex characters), for launchers.
    pub fn random() -> Self {
        let mut b = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut b);
        JobToken(
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<String>()
                .into_bytes(),
        )
    }

    /// The token's text, to hand to child processes through `LAZARUS_JOB_TOKEN`.
    pub fn expose(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }

    /// Public identifier of the job: the first 8 bytes of SHA-256 of a label and the token.
    pub fn job_id(&self) -> [u8; 8] {
        let mut h = Sha256::new();
        h.update(b"lazarus-job-id-v1\0");
        h.update(&self.0);
        let d = h.finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&d[..8]);
        id
    }

    fn proof(
        &self,
        from: u32,
        to: u32,
        their_nonce: &[u8; 32],
        my_nonce: &[u8; 32],
        inc: u64,
    ) -> Result<Hmac<Sha256>> {
        // HMAC accepts keys of any length; the error arm exists only in the type.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .map_err(|_| NetError::new(ErrorKind::Config, "job token unusable as HMAC key"))?;
        m.update(b"lazarus-auth-v1");
        m.update(&from.to_le_bytes());
        m.update(&to.to_le_bytes());
        m.update(their_nonce);
        m.update(my_nonce);
        m.update(&inc.to_le_bytes());
        Ok(m)
    }
}

/// Who is on the other end of an authenticated connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PeerHello {
    pub rank: u32,
    pub incarnation: u64,
}

/// Runs the handshake as `me` on `stream` (whose timeouts the caller has set).
///
/// `expect` restricts the peer's rank when known. The error names `peer_addr`.
pub(crate) fn handshake<S: Read + Write>(
    stream: &mut S,
    token: &JobToken,
    me: u32,
    incarnation: u64,
    expect: Option<u32>,
    peer_addr: &str,
) -> Result<PeerHello> {
    let ctx = |e: NetError| NetError::new(e.kind(), format!("handshake with {peer_addr}: {e}"));
    let io = |e: std::io::Error| NetError::io(format!("handshake with {peer_addr}"), e);
    let mut nonce = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut nonce);
    let hello = Hello {
        job: token.job_id(),
        rank: me,
        incarnation,
        nonce,
    };
    wire::write_frame(stream, &Frame::Hello(hello)).map_err(io)?;
    let mut buf = Vec::new();
    // Handshake frames are tiny: refuse anything bigger before allocating.
    wire::read_frame(stream, 128, &mut buf).map_err(io)?;
    let theirs = match wire::decode(&buf).map_err(ctx)? {
        Frame::Hello(h) => h,
        other => {
            return Err(ctx(NetError::new(
                ErrorKind::Protocol,
                format!("expected hello, got {other:?}"),
            )))
        }
    };
    if theirs.job != hello.job {
        return Err(ctx(NetError::new(
            ErrorKind::Auth,
            "peer belongs to another job (job id mismatch)",
        )));
    }
    if theirs.incarnation != incarnation {
        return Err(ctx(NetError::new(
            ErrorKind::Auth,
            format!(
                "peer is incarnation {}, we are {incarnation}",
                theirs.incarnation
            ),
        )));
    }
    if let Some(r) = expect {
        if theirs.rank != r {
            return Err(ctx(NetError::new(
                ErrorKind::Auth,
                format!("expected rank {r}, peer says {}", theirs.rank),
            )));
        }
    }
    let mine = token.proof(me, theirs.rank, &theirs.nonce, &nonce, incarnation)?;
    let tag: [u8; 32] = mine.finalize().into_bytes().into();
    wire::write_frame(stream, &Frame::Proof(tag)).map_err(io)?;
    wire::read_frame(stream, 128, &mut buf).map_err(io)?;
    let proof = match wire::decode(&buf).map_err(ctx)? {
        Frame::Proof(p) => p,
        other => {
            return Err(ctx(NetError::new(
                ErrorKind::Protocol,
                format!("expected proof, got {other:?}"),
            )))
        }
    };
    let expected = token.proof(theirs.rank, me, &nonce, &theirs.nonce, incarnation)?;
    expected.verify_slice(&proof).map_err(|_| {
        ctx(NetError::new(
            ErrorKind::Auth,
            "peer does not know the job token (bad HMAC proof)",
        ))
    })?;
    Ok(PeerHello {
        rank: theirs.rank,
        incarnation: theirs.incarnation,
    })
}

/// Runs the responder side of the handshake against arbitrary peer bytes (for the fuzz
/// target `handshake`): must return an error or a peer, never panic or over-allocate.
#[doc(hidden)]
pub fn fuzz_handshake(input: &[u8]) -> bool {
    struct Duplex<'a> {
        input: &'a [u8],
    }
    impl Read for Duplex<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(buf)
        }
    }
    impl Write for Duplex<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let Ok(token) = JobToken::new("fuzz") else {
        return false;
    };
    handshake(&mut Duplex { input }, &token, 0, 0, None, "fuzz").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn pair(ta: &str, tb: &str) -> (Result<PeerHello>, Result<PeerHello>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let tb = JobToken::new(tb).unwrap();
        let h = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            handshake(&mut s, &tb, 1, 0, Some(0), "server")
        });
        let (mut s, _) = l.accept().unwrap();
        let ta = JobToken::new(ta).unwrap();
        let a = handshake(&mut s, &ta, 0, 0, None, "client");
        drop(s);
        (a, h.join().unwrap())
    }

    #[test]
    fn same_token_authenticates_both_ways() {
        let (a, b) = pair("secret", "secret");
        assert_eq!(a.unwrap().rank, 1);
        assert_eq!(b.unwrap().rank, 0);
    }

    #[test]
    fn wrong_token_is_refused_as_auth() {
        let (a, _b) = pair("secret", "other");
        assert_eq!(a.unwrap_err().kind(), ErrorKind::Auth);
    }

    proptest::proptest! {
        #[test]
        fn handshake_never_panics_on_garbage(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = fuzz_handshake(&bytes);
        }
    }

    #[test]
    fn debug_redacts_token() {
        let t = JobToken::new("hunter2").unwrap();
        assert!(!format!("{t:?}").contains("hunter2"));
        assert_ne!(JobToken::random(), JobToken::random());
    }
}

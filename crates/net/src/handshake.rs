//! The connection handshake (wire version 2): mutual authentication bound to both ranks,
//! both nonces, the job, the incarnation and the direction, as a pure state machine plus a
//! thin blocking driver.
//!
//! ```text
//! dialer D (rank d)                               listener L (rank l)
//!   Hello::Dial{from d, to l, nonce nd}  ──────►  checks: version, to == l, d may dial l
//!                                                 (else Refused, close: no nonce, no proof)
//!                                        ◄──────  Hello::Challenge{nonce nl}
//!   Proof{inc, mac, dialer_proof(T)}     ──────►  verifies, then same inc and frame MAC
//!                                                 setting (else Refused, close)
//!                                        ◄──────  Proof{inc, mac, listener_proof(T)}
//!   verifies; both: session keys from T           T = (job id, incarnation, frame MAC
//!                                                      setting, d, l, nd, nl)
//! ```
//!
//! What this buys (docs/RUNTIME.md, "Threat model"): before the dialer has proven that it
//! knows the token the listener sends only a random nonce, and only to a dialer rank that
//! may dial it; so an unauthenticated peer learns nothing about the job and obtains no
//! proof it could forward (the relay of issue #11) or send back (reflection). A dialer
//! proof covers the role, both ranks and both fresh nonces, so it is good for exactly one
//! connection to one listener; a recorded handshake replays nowhere. Session keys are
//! fresh per connection, so frames of one connection are worthless on any other.

use crate::auth::{FrameMac, JobKeys, JobToken, Opener, Sealer, Transcript};
use crate::error::{ErrorKind, NetError, Result};
use crate::wire::{self, Frame, Hello, Proof, Refusal, VERSION};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};

/// The largest handshake frame (a dial hello is 48 bytes); refused before allocating.
const MAX_HANDSHAKE_FRAME: u32 = 128;

/// Bounds the handshakes in progress on one listener: every rank of the world may be
/// dialing it at once (startup, a network blip), plus slack; more can only be a peer
/// holding connections open to exhaust the listener's threads. Each handshake is also
/// bounded in time by the connect timeout (the caller's socket timeouts).
///
/// When every place is taken, a new connection takes the place of the oldest handshake in
/// progress *of the address holding the most places* (its socket is shut down), rather
/// than being refused: a stranger that keeps opening connections (no token needed)
/// otherwise held every place as they freed up, and a real rank's dial, retried every few
/// milliseconds, kept landing behind its queue (found in review). So one flooding address
/// (an IPv6 /64) pushes out its own connections, not those of ranks on other hosts; a
/// flood from the ranks' own host, or from as many addresses as there are places opening
/// a place's worth of connections per handshake round trip, still keeps dials out (a
/// denial of service, docs/RUNTIME.md "Security").
#[derive(Debug)]
pub(crate) struct Gate {
    state: Arc<Mutex<GateState>>,
    max: usize,
}

#[derive(Debug, Default)]
struct GateState {
    next: u64,
    /// The handshakes in progress, oldest first: a ticket's number, the peer's address
    /// and the socket.
    open: VecDeque<(u64, std::net::IpAddr, TcpStream)>,
}

/// A handshake's place in a [`Gate`], given back when dropped (drop it as soon as the
/// handshake is over: until then the connection may be shut down for a newer one).
#[derive(Debug)]
pub(crate) struct Ticket {
    id: u64,
    state: Arc<Mutex<GateState>>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.open.retain(|(id, _, _)| *id != self.id);
    }
}

impl Gate {
    /// A gate for a listener of a world of `size` ranks.
    pub(crate) fn new(size: u32) -> Self {
        Gate {
            state: Arc::default(),
            max: size as usize + 64,
        }
    }

    /// A place for the handshake on `stream` from `peer`, shutting down the oldest
    /// handshake in progress of the address holding the most places if every place is
    /// taken; `None` (close the connection) only when the socket cannot be shared.
    pub(crate) fn enter(&self, stream: &TcpStream, peer: std::net::IpAddr) -> Option<Ticket> {
        let handle = stream.try_clone().ok()?;
        let peer = source(peer);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while st.open.len() >= self.max {
            let mut held: std::collections::HashMap<std::net::IpAddr, usize> = Default::default();
            for (_, ip, _) in &st.open {
                *held.entry(*ip).or_default() += 1;
            }
            let most = held.values().copied().max().unwrap_or(0);
            // The oldest of the busiest address (`open` is oldest first).
            let victim = st
                .open
                .iter()
                .position(|(_, ip, _)| held.get(ip) == Some(&most));
            match victim.and_then(|i| st.open.remove(i)) {
                Some((_, _, s)) => {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                }
                None => break,
            }
        }
        st.next += 1;
        let id = st.next;
        st.open.push_back((id, peer, handle));
        Some(Ticket {
            id,
            state: self.state.clone(),
        })
    }
}

/// The source a connection counts against in a [`Gate`]: its address, an IPv4 address
/// mapped into IPv6 as the IPv4 one, and an IPv6 address by its /64 (one host can use any
/// address of its /64 at no cost).
fn source(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip.to_canonical() {
        std::net::IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            std::net::IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

/// Who this side is: the job's keys, its rank (or the coordinator's), incarnation and
/// frame MAC setting.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    pub(crate) keys: JobKeys,
    pub(crate) me: u32,
    pub(crate) incarnation: u64,
    pub(crate) frame_mac: FrameMac,
}

impl Identity {
    pub(crate) fn new(token: &JobToken, me: u32, incarnation: u64, frame_mac: FrameMac) -> Self {
        Identity {
            keys: token.keys(),
            me,
            incarnation,
            frame_mac,
        }
    }

    /// The transcript of a connection between `dialer` and `listener` under our job,
    /// incarnation and frame MAC setting.
    fn transcript(&self, dialer: u32, listener: u32, dn: [u8; 32], ln: [u8; 32]) -> Transcript {
        Transcript {
            job: self.keys.job,
            incarnation: self.incarnation,
            frame_mac: self.frame_mac,
            dialer,
            listener,
            dialer_nonce: dn,
            listener_nonce: ln,
        }
    }
}

/// An authenticated connection's state: the peer and the two directions' frame MACs.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) peer: u32,
    pub(crate) tx: Sealer,
    pub(crate) rx: Opener,
}

/// A handshake that failed: why, and what to tell the peer before closing.
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) error: NetError,
    pub(crate) reply: Option<Frame<'static>>,
}

fn fail(kind: ErrorKind, msg: impl Into<String>, reply: Option<Frame<'static>>) -> Failed {
    Failed {
        error: NetError::new(kind, msg),
        reply,
    }
}

/// How a rank is named in messages (the coordinator has no rank).
pub(crate) fn rank_name(r: u32) -> String {
    if r == crate::auth::COORD_RANK {
        "the coordinator".into()
    } else {
        format!("rank {r}")
    }
}

fn frame_name(f: &Frame<'_>) -> &'static str {
    match f {
        Frame::Hello(Hello::Dial { .. }) => "a dial hello",
        Frame::Hello(Hello::Challenge { .. }) => "a challenge",
        Frame::Proof(_) => "a proof",
        Frame::Refused(_) => "a refusal",
        Frame::Resume(_) => "a resume frame",
        Frame::Data(..) => "a data frame",
        Frame::Ack(_) => "an ack",
        Frame::Heartbeat(_) => "a heartbeat",
        Frame::Bye => "a goodbye",
        Frame::Control(_) => "a control frame",
    }
}

/// The protocol-version mismatch error, when `body` is a Hello of another version.
fn other_version(body: &[u8], who: &str) -> Option<NetError> {
    match wire::hello_version(body) {
        Some(v) if v != VERSION => Some(NetError::new(
            ErrorKind::Protocol,
            format!(
                "{who} speaks wire protocol version {v}, this process speaks version \
                 {VERSION}: every rank of a job must run the same Lazarus release"
            ),
        )),
        _ => None,
    }
}

/// The dialer before the listener's challenge.
#[derive(Debug)]
pub(crate) struct Dialer {
    id: Identity,
    peer: u32,
    nonce: [u8; 32],
}

impl Dialer {
    /// Starts dialing `peer` with a fresh `nonce`; returns the Dial hello to send.
    pub(crate) fn new(id: Identity, peer: u32, nonce: [u8; 32]) -> (Self, Frame<'static>) {
        let hello = Frame::Hello(Hello::Dial {
            from: id.me,
            to: peer,
            nonce,
        });
        (Dialer { id, peer, nonce }, hello)
    }

    /// The listener's answer to the Dial: a challenge gets our proof.
    pub(crate) fn on_challenge(
        self,
        body: &[u8],
    ) -> std::result::Result<(DialerProved, Frame<'static>), Failed> {
        let who = rank_name(self.peer);
        let frame = match wire::decode(body) {
            Ok(f) => f,
            Err(e) => {
                let error = other_version(body, &who).unwrap_or_else(|| {
                    NetError::new(e.kind(), format!("malformed answer to our dial: {e}"))
                });
                return Err(Failed { error, reply: None });
            }
        };
        let nonce = match frame {
            Frame::Hello(Hello::Challenge { nonce }) => nonce,
            Frame::Refused(r) => return Err(refused(&self.id, self.peer, r)),
            other => {
                return Err(fail(
                    ErrorKind::Protocol,
                    format!("expected a challenge, got {}", frame_name(&other)),
                    None,
                ))
            }
        };
        let t = self.id.transcript(self.id.me, self.peer, self.nonce, nonce);
        let proof = Frame::Proof(Proof {
            incarnation: self.id.incarnation,
            frame_mac: self.id.frame_mac,
            mac: t.dialer_proof(&self.id.keys),
        });
        Ok((DialerProved { id: self.id, t }, proof))
    }
}

/// What a refusal tells the dialer.
fn refused(id: &Identity, peer: u32, r: Refusal) -> Failed {
    let who = rank_name(peer);
    let me = rank_name(id.me);
    let msg = match r {
        Refusal::NotAllowed => format!(
            "{who} refuses to be dialed by {me} (only a higher rank of the world dials a \
             lower one; is another process listening at this address?)"
        ),
        Refusal::Auth => format!(
            "{who} refused our proof: it holds another job token (is a process of another \
             job listening at this address?)"
        ),
        Refusal::Incarnation(theirs) => format!(
            "{who} is incarnation {theirs}, this process is incarnation {}: ranks of \
             different incarnations never talk (one of them belongs to an older run)",
            id.incarnation
        ),
        Refusal::Malformed => format!("{who} found our handshake malformed"),
        Refusal::FrameMac(theirs) => mismatch_message(&who, theirs, &me, id.frame_mac),
    };
    // A refusal comes before any key is agreed: say so, so that whoever diagnoses a
    // failed start does not take a forged one for the truth.
    let msg = format!(
        "{msg} (refusals are not authenticated: a process on the network path could have sent it)"
    );
    fail(ErrorKind::Auth, msg, None)
}

/// The dialer after sending its proof.
#[derive(Debug)]
pub(crate) struct DialerProved {
    id: Identity,
    t: Transcript,
}

impl DialerProved {
    /// The listener's proof completes the handshake.
    pub(crate) fn on_proof(self, body: &[u8]) -> std::result::Result<Session, Failed> {
        let peer = self.t.listener;
        let p = match wire::decode(body) {
            Ok(Frame::Proof(p)) => p,
            Ok(Frame::Refused(r)) => return Err(refused(&self.id, peer, r)),
            Ok(other) => {
                return Err(fail(
                    ErrorKind::Protocol,
                    format!("expected the listener's proof, got {}", frame_name(&other)),
                    None,
                ))
            }
            Err(e) => {
                return Err(fail(
                    e.kind(),
                    format!("malformed listener proof: {e}"),
                    None,
                ))
            }
        };
        let expected = self.t.listener_proof(&self.id.keys);
        if p.incarnation != self.id.incarnation
            || p.frame_mac != self.id.frame_mac
            || !crate::auth::tags_equal(&expected, &p.mac)
        {
            // The listener answered a proof only a token holder can make with one that
            // does not verify: it is not who we meant to reach.
            return Err(fail(
                ErrorKind::Auth,
                format!(
                    "the listener's proof does not verify: it does not know the job token, \
                     so it is not {}",
                    rank_name(peer)
                ),
                Some(Frame::Refused(Refusal::Auth)),
            ));
        }
        let (tx, rx) = self.t.session(&self.id.keys, true);
        Ok(Session { peer, tx, rx })
    }
}

/// The listener's first step: a Dial from a rank that may dial us gets a challenge;
/// anything else is refused before we send a single byte that depends on the job.
pub(crate) fn on_dial(
    id: Identity,
    may_dial: &dyn Fn(u32) -> std::result::Result<(), String>,
    body: &[u8],
    nonce: [u8; 32],
) -> std::result::Result<(ListenerChallenged, Frame<'static>), Failed> {
    let challenge = Frame::Hello(Hello::Challenge { nonce });
    let frame = match wire::decode(body) {
        Ok(f) => f,
        Err(e) => {
            // A peer of another version gets our Hello (a nonce and our version, nothing
            // else), so that it too can say which versions disagree.
            if let Some(error) = other_version(body, "the dialer") {
                return Err(Failed {
                    error,
                    reply: Some(challenge),
                });
            }
            return Err(fail(
                e.kind(),
                format!("malformed dial: {e}"),
                Some(Frame::Refused(Refusal::Malformed)),
            ));
        }
    };
    let (from, to, dialer_nonce) = match frame {
        Frame::Hello(Hello::Dial { from, to, nonce }) => (from, to, nonce),
        other => {
            return Err(fail(
                ErrorKind::Protocol,
                format!("expected a dial hello, got {}", frame_name(&other)),
                Some(Frame::Refused(Refusal::Malformed)),
            ))
        }
    };
    let not_allowed = |m: String| {
        fail(
            ErrorKind::Auth,
            m,
            Some(Frame::Refused(Refusal::NotAllowed)),
        )
    };
    if to != id.me {
        return Err(not_allowed(format!(
            "{} wants to reach {}, this is {}",
            rank_name(from),
            rank_name(to),
            rank_name(id.me)
        )));
    }
    if let Err(why) = may_dial(from) {
        return Err(not_allowed(format!(
            "{} may not dial {}: {why}",
            rank_name(from),
            rank_name(id.me)
        )));
    }
    let t = id.transcript(from, id.me, dialer_nonce, nonce);
    Ok((ListenerChallenged { id, t }, challenge))
}

/// Two token holders whose frame MAC settings differ: what each side reports.
fn mismatch_message(who: &str, theirs: FrameMac, me: &str, ours: FrameMac) -> String {
    format!(
        "{who} runs with frame MAC {theirs}, {me} with {ours} \
         ({}): every rank of a job and its launcher must use the same setting; a \
         connection between the two is refused, never downgraded",
        crate::config::ENV_FRAME_MAC
    )
}

/// The listener after its challenge, waiting for the dialer's proof.
#[derive(Debug)]
pub(crate) struct ListenerChallenged {
    id: Identity,
    t: Transcript,
}

impl ListenerChallenged {
    /// The dialer's proof: if it verifies, our proof and the session; otherwise a refusal.
    pub(crate) fn on_proof(
        self,
        body: &[u8],
    ) -> std::result::Result<(Session, Frame<'static>), Failed> {
        let p = match wire::decode(body) {
            Ok(Frame::Proof(p)) => p,
            Ok(other) => {
                return Err(fail(
                    ErrorKind::Protocol,
                    format!("expected the dialer's proof, got {}", frame_name(&other)),
                    Some(Frame::Refused(Refusal::Malformed)),
                ))
            }
            Err(e) => {
                return Err(fail(
                    e.kind(),
                    format!("malformed dialer proof: {e}"),
                    Some(Frame::Refused(Refusal::Malformed)),
                ))
            }
        };
        // The proof is checked under the incarnation and frame MAC setting the dialer
        // claims, so that a token holder of another incarnation or setting is told apart
        // from a stranger; either way only a proof under our own is accepted (the claim
        // is inside the proof: changed in flight, it fails as a forgery, so nobody can
        // downgrade a connection to an unauthenticated payload).
        let claimed = Transcript {
            incarnation: p.incarnation,
            frame_mac: p.frame_mac,
            ..self.t
        };
        if !crate::auth::tags_equal(&claimed.dialer_proof(&self.id.keys), &p.mac) {
            return Err(fail(
                ErrorKind::Auth,
                "the dialer's proof does not verify: it does not know the job token \
                 (another job?)",
                Some(Frame::Refused(Refusal::Auth)),
            ));
        }
        if p.incarnation != self.id.incarnation {
            return Err(fail(
                ErrorKind::Auth,
                format!(
                    "the dialer proved the job token but is incarnation {}, this process \
                     is incarnation {}: a rank of another incarnation is refused",
                    p.incarnation, self.id.incarnation
                ),
                Some(Frame::Refused(Refusal::Incarnation(self.id.incarnation))),
            ));
        }
        if p.frame_mac != self.id.frame_mac {
            return Err(fail(
                ErrorKind::Auth,
                format!(
                    "the dialer proved the job token, but {}",
                    mismatch_message(
                        &rank_name(self.t.dialer),
                        p.frame_mac,
                        &rank_name(self.id.me),
                        self.id.frame_mac,
                    )
                ),
                Some(Frame::Refused(Refusal::FrameMac(self.id.frame_mac))),
            ));
        }
        let proof = Frame::Proof(Proof {
            incarnation: self.id.incarnation,
            frame_mac: self.id.frame_mac,
            mac: self.t.listener_proof(&self.id.keys),
        });
        let (tx, rx) = self.t.session(&self.id.keys, false);
        Ok((
            Session {
                peer: self.t.dialer,
                tx,
                rx,
            },
            proof,
        ))
    }
}

/// An I/O error of a handshake step; its text is part of the message because a refused or
/// truncated handshake is diagnosed from logs, which show the message only.
fn io_error(ctx: &str, step: &str, e: std::io::Error) -> NetError {
    NetError::io(format!("{ctx}: {step}: {e}"), e)
}

/// Runs the dialer's side on `s` (whose timeouts the caller has set) towards `peer`
/// listening at `addr`. Errors name the rank and the address.
pub(crate) fn dial<S: Read + Write>(
    s: &mut S,
    id: &Identity,
    peer: u32,
    addr: &str,
) -> Result<Session> {
    let ctx = format!("handshake with {} at {addr}", rank_name(peer));
    let io = |step: &str, e: std::io::Error| io_error(&ctx, step, e);
    let end = |s: &mut S, f: Failed| {
        if let Some(r) = &f.reply {
            let _ = wire::write_plain(s, r);
        }
        f.error.context(&ctx)
    };
    let (d, hello) = Dialer::new(id.clone(), peer, crate::auth::nonce());
    wire::write_plain(s, &hello).map_err(|e| io("sending the dial", e))?;
    let mut buf = Vec::new();
    wire::read_plain(s, MAX_HANDSHAKE_FRAME, &mut buf).map_err(|e| {
        io(
            "waiting for the challenge (the listener closes on refusal)",
            e,
        )
    })?;
    let (d, proof) = d.on_challenge(&buf).map_err(|f| end(s, f))?;
    wire::write_plain(s, &proof).map_err(|e| io("sending our proof", e))?;
    wire::read_plain(s, MAX_HANDSHAKE_FRAME, &mut buf).map_err(|e| {
        io(
            "waiting for the listener's proof (it closes when it refuses ours)",
            e,
        )
    })?;
    d.on_proof(&buf).map_err(|f| end(s, f))
}

/// A socket whose reads and writes must all be over by one instant: each call gets the
/// time left as its socket timeout. A per-call timeout alone let a stranger trickle one
/// byte just inside each timeout and keep its handshake, and its place among the
/// handshakes in progress, for as long as it liked: `size + 64` such connections kept
/// the real ranks out (regression: `a_trickled_handshake_is_dropped_at_the_connect_timeout`).
pub(crate) struct Deadline<'a> {
    stream: &'a std::net::TcpStream,
    until: std::time::Instant,
}

impl<'a> Deadline<'a> {
    /// `stream` with `within` from now for the whole exchange.
    pub(crate) fn new(stream: &'a std::net::TcpStream, within: std::time::Duration) -> Self {
        Self::until(stream, std::time::Instant::now() + within)
    }

    /// `stream` with the whole exchange over by `until` (a deadline the caller's connect
    /// already counted against).
    pub(crate) fn until(stream: &'a std::net::TcpStream, until: std::time::Instant) -> Self {
        Deadline { stream, until }
    }

    fn left(&self) -> std::io::Result<std::time::Duration> {
        let left = self
            .until
            .saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the handshake did not finish within the connect timeout",
            ));
        }
        Ok(left)
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.set_read_timeout(Some(self.left()?))?;
        (&mut &*self.stream).read(buf)
    }
}

impl Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.set_write_timeout(Some(self.left()?))?;
        (&mut &*self.stream).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        (&mut &*self.stream).flush()
    }
}

/// Runs the listener's side on an accepted `s` from `addr`; `may_dial` says whether a
/// claimed dialer rank may dial us (and why not). Errors name the address and, once
/// known, the claimed rank.
pub(crate) fn accept<S: Read + Write>(
    s: &mut S,
    id: &Identity,
    may_dial: &dyn Fn(u32) -> std::result::Result<(), String>,
    addr: &str,
) -> Result<Session> {
    let mut ctx = format!("handshake with {addr}");
    let end = |s: &mut S, ctx: &str, f: Failed| {
        if let Some(r) = &f.reply {
            let _ = wire::write_plain(s, r);
        }
        f.error.context(ctx)
    };
    let mut buf = Vec::new();
    wire::read_plain(s, MAX_HANDSHAKE_FRAME, &mut buf)
        .map_err(|e| io_error(&ctx, "reading the dial", e))?;
    if let Ok(Frame::Hello(Hello::Dial { from, .. })) = wire::decode(&buf) {
        ctx = format!("handshake with {addr} (claims {})", rank_name(from));
    }
    let (l, challenge) =
        on_dial(id.clone(), may_dial, &buf, crate::auth::nonce()).map_err(|f| end(s, &ctx, f))?;
    wire::write_plain(s, &challenge).map_err(|e| io_error(&ctx, "sending the challenge", e))?;
    wire::read_plain(s, MAX_HANDSHAKE_FRAME, &mut buf)
        .map_err(|e| io_error(&ctx, "reading the dialer's proof", e))?;
    let (session, proof) = l.on_proof(&buf).map_err(|f| end(s, &ctx, f))?;
    wire::write_plain(s, &proof).map_err(|e| io_error(&ctx, "sending our proof", e))?;
    Ok(session)
}

/// Runs both sides of the handshake against arbitrary peer bytes (for the fuzz target
/// `handshake`): must return an error or a session, never panic or over-allocate.
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
    let Ok(token) = JobToken::new("fuzz-token-fuzz-token") else {
        return false;
    };
    let listener = Identity::new(&token, 0, 0, FrameMac::On);
    let any = |_: u32| Ok(());
    let a = accept(&mut Duplex { input }, &listener, &any, "fuzz").is_ok();
    let dialer = Identity::new(&token, 1, 0, FrameMac::On);
    let b = dial(&mut Duplex { input }, &dialer, 0, "fuzz").is_ok();
    a || b
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;

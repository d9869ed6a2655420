//! TCP full-mesh transport: one authenticated connection per pair of ranks (the higher rank
//! dials), every frame sealed with the connection's session keys (`handshake`, `auth`),
//! go-back-N reliability on top (see `reliable`), reconnect (always a full handshake, so
//! fresh keys) with retransmission, heartbeats and failure detection.
//!
//! Deadlock rule: a reader thread never blocks on a writer's lock. Acks it receives go to
//! an atomic; acks it sends use `try_lock` (data frames piggyback acks anyway).

use crate::auth::{JobToken, Opener};
use crate::comm::Transport;
use crate::config::NetConfig;
use crate::error::{ErrorKind, NetError, Result};
use crate::handshake::{self, Identity, Session};
use crate::mailbox::{Envelope, Mailbox, PeerState};
use crate::reliable::{Accept, RecvWindow, SendWindow};
use crate::wire::{self, Conn, DataHeader, Frame, DATA_HEADER_LEN, FLAG_LAST, MAC_LEN};
use lazarus_format::{Epoch, Rank};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Frames a receiver may take before it must acknowledge (bounds retransmit buffers).
const ACK_EVERY_FRAMES: u32 = 64;
/// Bytes a receiver may take before it must acknowledge.
const ACK_EVERY_BYTES: usize = 4 << 20;

struct Frag {
    hdr: DataHeader,
    payload: Arc<Vec<u8>>,
    start: usize,
    end: usize,
}

impl Drop for Frag {
    /// A fragment leaves the window only once acknowledged: the last fragment of a message
    /// hands the buffer back to the pool.
    fn drop(&mut self) {
        if self.payload.capacity() >= crate::pool::MIN_POOLED {
            if let Some(v) = Arc::into_inner(std::mem::take(&mut self.payload)) {
                crate::pool::give(v);
            }
        }
    }
}

struct Out {
    stream: Option<Conn>,
    gen: u64,
    window: SendWindow<Frag>,
}

struct In {
    window: RecvWindow,
    gen: u64,
}

/// A message being reassembled from its fragments.
#[derive(Default)]
struct Reassembly {
    /// The delivered fragments' bytes (empty between messages: a fragment that is not
    /// the last is never empty).
    bytes: Vec<u8>,
    /// The first fragment's tag, epoch and incarnation, which every later one must carry.
    of: Option<(crate::Tag, u64, u64)>,
}

struct Peer {
    rank: Rank,
    out: Mutex<Out>,
    inbound: Mutex<In>,
    /// The delivered fragments of the message being reassembled (empty between
    /// messages). Kept across reconnects: the resume point follows its last fragment. A
    /// reader holds this lock for a whole Data frame, while it reads the next fragment
    /// straight into the end of the message (see `on_data`); lock order `reassembly` ->
    /// `inbound` -> mailbox.
    reassembly: Mutex<Reassembly>,
    /// Peer's cumulative ack of our frames, never beyond `sent` ([`Peer::note_ack`]).
    acked: AtomicU64,
    /// The sequence number our next frame to this peer gets (the send window's), for
    /// acks read without the `out` lock.
    sent: AtomicU64,
    /// An ack past `sent` was logged once (a buggy peer would flood the log).
    over_acked: AtomicBool,
    /// Mirror of `inbound.window.next_expected()`, for acks sent without that lock.
    recv_next: AtomicU64,
    last_seen: Mutex<Instant>,
    down_since: Mutex<Option<Instant>>,
    bye: AtomicBool,
    reconnecting: AtomicBool,
    /// The last large message from this peer went straight into a posted buffer: the
    /// receiver is streaming, so the next one is worth a short wait for its post.
    streaming: AtomicBool,
}

impl Peer {
    /// Records the peer's cumulative ack `a`, clamped to what was sent: the stored value
    /// is applied to frames pushed later too, so an ack past them (a buggy peer's
    /// `u64::MAX`) acknowledged every later frame before it was sent, and a reconnect
    /// then did not retransmit them (found in review). A frame is pushed before it is
    /// written, so an honest ack never exceeds `sent` when it arrives.
    fn note_ack(&self, a: u64) {
        let sent = self.sent.load(Ordering::Acquire);
        if a > sent && !self.over_acked.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                "{}: acknowledged frame {a} of which only {sent} were sent; taken as {sent}",
                self.rank
            );
        }
        self.acked.fetch_max(a.min(sent), Ordering::AcqRel);
    }
}

/// How long a reader waits for the receiver to post its buffer for the next large message
/// of a stream (the receiver is usually just returning from the previous `recv_into`).
/// Without it, a large message that arrives a few microseconds before its receive is
/// posted goes through a pooled vector and costs the receiver a full extra copy.
const POST_WAIT: Duration = Duration::from_micros(50);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections leave their data consistent at every await-free step; a panic
    // elsewhere must not take the transport down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) struct Shared {
    me: Rank,
    size: u32,
    incarnation: u64,
    id: Identity,
    config: NetConfig,
    mailbox: Arc<Mailbox>,
    peers: Vec<Peer>,
    addrs: Vec<SocketAddr>,
    shutdown: AtomicBool,
    /// Handshakes in progress on accepted connections.
    handshakes: Arc<handshake::Gate>,
    control: Mutex<Option<Conn>>,
    /// Keeps a rendezvous server hosted by this rank alive as long as the communicator.
    _server: Option<crate::rdv::RendezvousServer>,
}

pub(crate) struct TcpTransport {
    shared: Arc<Shared>,
}

pub(crate) struct MeshParams {
    pub me: Rank,
    pub size: u32,
    pub incarnation: u64,
    pub token: JobToken,
    pub config: NetConfig,
    pub mailbox: Arc<Mailbox>,
    pub addrs: Vec<SocketAddr>,
    pub listener: TcpListener,
    pub control: Option<Conn>,
    pub server: Option<crate::rdv::RendezvousServer>,
}

impl TcpTransport {
    /// Connects the full mesh; returns once every peer is connected or fails in time.
    pub(crate) fn connect(p: MeshParams) -> Result<Self> {
        let now = Instant::now();
        let peers = (0..p.size)
            .map(|r| Peer {
                rank: Rank(r),
                out: Mutex::new(Out {
                    stream: None,
                    gen: 0,
                    window: SendWindow::new(),
                }),
                inbound: Mutex::new(In {
                    window: RecvWindow::default(),
                    gen: 0,
                }),
                reassembly: Mutex::new(Reassembly::default()),
                acked: AtomicU64::new(0),
                sent: AtomicU64::new(0),
                over_acked: AtomicBool::new(false),
                recv_next: AtomicU64::new(0),
                last_seen: Mutex::new(now),
                down_since: Mutex::new(None),
                bye: AtomicBool::new(false),
                reconnecting: AtomicBool::new(false),
                streaming: AtomicBool::new(false),
            })
            .collect();
        let shared = Arc::new(Shared {
            me: p.me,
            size: p.size,
            incarnation: p.incarnation,
            id: Identity::new(&p.token, p.me.0, p.incarnation, p.config.frame_mac),
            config: p.config,
            mailbox: p.mailbox,
            peers,
            addrs: p.addrs,
            shutdown: AtomicBool::new(false),
            handshakes: Arc::new(handshake::Gate::new(p.size)),
            control: Mutex::new(p.control),
            _server: p.server,
        });
        let s2 = shared.clone();
        p.listener
            .set_nonblocking(true)
            .map_err(|e| NetError::io("listener nonblocking", e))?;
        spawn("lazarus-accept", move || accept_loop(p.listener, s2))?;
        let deadline = Instant::now() + shared.config.connect_timeout;
        for r in 0..shared.me.0 {
            let peer = Rank(r);
            loop {
                match dial(&shared, peer) {
                    Ok(()) => break,
                    Err(e) if Instant::now() < deadline => {
                        tracing::debug!("{}: dialing {peer} failed, retrying: {e}", shared.me);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => {
                        shared.shutdown.store(true, Ordering::Release);
                        return Err(NetError::new(
                            ErrorKind::Timeout,
                            format!(
                                "could not connect within {:?}: {e}",
                                shared.config.connect_timeout
                            ),
                        )
                        .with_peer(peer));
                    }
                }
            }
        }
        // Wait for the higher ranks to dial us.
        for peer in shared.peers.iter().filter(|p| p.rank != shared.me) {
            while lock(&peer.out).stream.is_none() {
                if Instant::now() >= deadline {
                    shared.shutdown.store(true, Ordering::Release);
                    return Err(NetError::new(
                        ErrorKind::Timeout,
                        format!(
                            "peer did not connect within {:?}",
                            shared.config.connect_timeout
                        ),
                    )
                    .with_peer(peer.rank));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        // The host counts this rank's silence from its first heartbeat on (rdv.rs): send
        // it now, not one interval later, so a rank that stops right after joining is
        // still seen to stop.
        beat_control(&shared);
        let s3 = shared.clone();
        spawn("lazarus-heartbeat", move || heartbeat_loop(s3))?;
        Ok(TcpTransport { shared })
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(|_| ())
        .map_err(|e| NetError::io(format!("spawn {name}"), e))
}

/// A handshake's socket: blocking, no Nagle, the connect timeout on every read and write.
pub(crate) fn prepare(stream: &TcpStream, config: &NetConfig) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(config.connect_timeout))?;
    stream.set_write_timeout(Some(config.connect_timeout))
}

fn dial(shared: &Arc<Shared>, peer: Rank) -> Result<()> {
    let addr = *shared
        .addrs
        .get(peer.index())
        .ok_or_else(|| NetError::new(ErrorKind::InvalidArgument, "no address").with_peer(peer))?;
    // One deadline for the connect and the handshake together.
    let deadline = Instant::now() + shared.config.connect_timeout;
    let s = TcpStream::connect_timeout(&addr, shared.config.connect_timeout)
        .map_err(|e| NetError::io(format!("connect {addr}"), e).with_peer(peer))?;
    prepare(&s, &shared.config).map_err(|e| NetError::io("socket options", e))?;
    let addr = addr.to_string();
    // One deadline for the whole exchange, as on the listener's side: per-read timeouts
    // alone let a listener that trickles bytes hold the dial ~90 times longer (review).
    let session = handshake::dial(
        &mut handshake::Deadline::until(&s, deadline),
        &shared.id,
        peer.0,
        &addr,
    )
    .map_err(|e| e.with_peer(peer))?;
    prepare(&s, &shared.config).map_err(|e| NetError::io("socket options", e))?;
    install(shared, peer, s, session, &addr)
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.shutdown.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((s, addr)) => {
                let Some(ticket) = shared.handshakes.enter(&s, addr.ip()) else {
                    tracing::warn!(
                        "{}: closing connection from {addr}: cannot track it",
                        shared.me
                    );
                    continue;
                };
                let sh = shared.clone();
                let _ = spawn("lazarus-handshake", move || {
                    if let Err(e) = accept_one(&sh, s, addr, ticket) {
                        tracing::warn!("{}: refused connection from {addr}: {e}", sh.me);
                    }
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                tracing::warn!("{}: accept failed: {e}", shared.me);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The listener's side of one connection; `ticket` (its place among the handshakes in
/// progress) is given back once the handshake is over.
fn accept_one(
    shared: &Arc<Shared>,
    s: TcpStream,
    addr: SocketAddr,
    ticket: handshake::Ticket,
) -> Result<()> {
    prepare(&s, &shared.config).map_err(|e| NetError::io("socket options", e))?;
    let (me, size) = (shared.me.0, shared.size);
    // Checked on the claimed rank before the listener sends anything but a refusal.
    let may_dial = |from: u32| {
        if from > me && from < size {
            Ok(())
        } else {
            Err(format!(
                "of a pair of ranks the higher one dials, and the world has {}",
                lazarus_format::count(size, "rank")
            ))
        }
    };
    let addr = addr.to_string();
    let timeout = shared.config.connect_timeout;
    let session = handshake::accept(
        &mut handshake::Deadline::new(&s, timeout),
        &shared.id,
        &may_dial,
        &addr,
    )?;
    drop(ticket);
    // The deadline shortened the socket's timeouts: back to what `prepare` set.
    prepare(&s, &shared.config).map_err(|e| NetError::io("socket options", e))?;
    install(shared, Rank(session.peer), s, session, &addr)
}

/// After authentication: exchange resume points (sealed: a forged resume point would
/// acknowledge frames the peer never received), retransmit, start the reader.
fn install(
    shared: &Arc<Shared>,
    peer: Rank,
    mut s: TcpStream,
    session: Session,
    addr: &str,
) -> Result<()> {
    let Session { mut tx, mut rx, .. } = session;
    let p = shared
        .peers
        .get(peer.index())
        .ok_or_else(|| NetError::new(ErrorKind::InvalidArgument, "no such peer").with_peer(peer))?;
    if !matches!(shared.mailbox.peer_state(peer), PeerState::Alive) {
        return Err(NetError::new(
            ErrorKind::PeerFailed,
            "peer already declared failed or finished",
        )
        .with_peer(peer));
    }
    let io = |e: std::io::Error| NetError::io(format!("resume with {addr}"), e).with_peer(peer);
    let (gen, my_next) = {
        let mut inb = lock(&p.inbound);
        inb.gen += 1;
        (inb.gen, inb.window.next_expected())
    };
    wire::write_sealed(&mut s, &mut tx, &Frame::Resume(my_next)).map_err(io)?;
    let mut buf = Vec::new();
    wire::read_sealed(&mut s, &mut rx, 64, &mut buf).map_err(io)?;
    let their_next = match wire::decode(&buf)? {
        Frame::Resume(n) => n,
        f => {
            return Err(
                NetError::new(ErrorKind::Protocol, format!("expected resume, got {f:?}"))
                    .with_peer(peer),
            )
        }
    };
    s.set_read_timeout(Some(shared.config.heartbeat_interval))
        .map_err(io)?;
    // A write that makes no progress for a heartbeat interval gives up and the connection
    // is marked down (the frames stay in the window and are retransmitted after the
    // reconnect). With the failure timeout here, a sender blocked on a connection the peer
    // no longer reads held the `out` lock until the failure timeout had passed, so
    // `mark_down` and the reconnect could only start once the peer was already declared
    // failed (pinned by `large_streamed_receives_survive_resets_and_keep_order`).
    s.set_write_timeout(Some(shared.config.heartbeat_interval))
        .map_err(io)?;
    let reader = s.try_clone().map_err(io)?;
    // The reader of the new connection starts BEFORE we retransmit. Both sides retransmit
    // their whole unacknowledged window here; with the reader started afterwards, two
    // windows larger than the socket buffers left both sides blocked in `write` with
    // nobody reading (write-write deadlock) until the write timeout failed the attempt,
    // and every retry did the same. The reader needs no `out` lock (acks go through
    // `try_lock`), so it drains the peer's retransmission while we hold `out` for ours.
    // Until `out.gen` is `gen` below, its `mark_down(gen)` is a no-op; a failure of this
    // connection during the retransmission is then reported by the failing write (a
    // reader that gives up shuts the socket down first: `give_up`).
    let sh = shared.clone();
    let reader_addr = addr.to_string();
    spawn("lazarus-reader", move || {
        read_loop(sh, peer, reader, rx, gen, reader_addr)
    })?;
    let mut out = lock(&p.out);
    // Lock order `out` -> `inbound` (nothing takes `out` while holding `inbound`).
    if lock(&p.inbound).gen != gen {
        // A newer connection arrived while we exchanged resume points: it owns both
        // directions now (our reader stops on the generation check). Installing ours
        // would leave a stream nobody reads.
        let _ = s.shutdown(Shutdown::Both);
        return Err(
            NetError::new(ErrorKind::Protocol, "superseded by a newer connection").with_peer(peer),
        );
    }
    p.note_ack(their_next);
    out.window.ack(their_next);
    let ack = p.recv_next.load(Ordering::Acquire);
    let mut retransmit = || -> std::io::Result<()> {
        for (seq, f) in out.window.unacked() {
            let h = DataHeader {
                seq: *seq,
                ack,
                ..f.hdr
            };
            let body = f.payload.get(f.start..f.end).unwrap_or(&[]);
            wire::write_data(&mut s, &mut tx, &h, body)?;
        }
        Ok(())
    };
    if let Err(e) = retransmit() {
        // Nothing was installed: the old stream (if any) and "down since" stay as they
        // were, so the failure timeout keeps running; the reader stops on the closed
        // socket and the dialer retries.
        let _ = s.shutdown(Shutdown::Both);
        return Err(io(e));
    }
    if let Some(old) = out.stream.replace(Conn { s, tx }) {
        let _ = old.s.shutdown(Shutdown::Both);
    }
    out.gen = gen;
    *lock(&p.down_since) = None;
    *lock(&p.last_seen) = Instant::now();
    Ok(())
}

/// Writes `frame`; a failure may have left part of it on the wire, so the stream is shut
/// down at once, before the caller releases the `out` lock: not one more byte may follow
/// on a desynchronised stream (the peer would read our next frame's bytes as the rest of
/// this one, e.g. a garbage cumulative ack that drops unreceived frames from its window).
fn write_or_close(
    c: &mut Conn,
    w: impl FnOnce(&mut Conn) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let r = w(c);
    if r.is_err() {
        let _ = c.s.shutdown(Shutdown::Both);
    }
    r
}

/// The reader found its connection unusable (a frame that does not verify or follows no
/// protocol, a broken socket): shut the socket down at once, then mark the peer down. The
/// shutdown matters while `install` has not finished: `mark_down` of a generation not yet
/// installed is a no-op, and without it a stream nobody reads would be installed (found
/// by `recorded_handshakes_and_frames_replay_nowhere`: a bad frame right after the resume
/// exchange left the connection open and unread).
fn give_up(shared: &Arc<Shared>, peer: Rank, gen: u64, s: &TcpStream) {
    let _ = s.shutdown(Shutdown::Both);
    mark_down(shared, peer, gen);
}

fn mark_down(shared: &Arc<Shared>, peer: Rank, gen: u64) {
    let Some(p) = shared.peers.get(peer.index()) else {
        return;
    };
    let mut out = lock(&p.out);
    mark_down_held(shared, p, &mut out, gen);
}

/// [`mark_down`] by a thread that holds `out` and keeps it: a sender whose write failed
/// in the middle of a message goes on pushing the message's other fragments into the
/// window under the same lock. Releasing it there let another thread's message into the
/// window between two fragments, and the receiver reassembled the two as one message
/// under the second's tag, every MAC valid (found in review).
fn mark_down_held(shared: &Arc<Shared>, p: &Peer, out: &mut Out, gen: u64) {
    let peer = p.rank;
    {
        if out.gen != gen {
            return; // a newer connection already replaced this one
        }
        if let Some(c) = out.stream.take() {
            let _ = c.s.shutdown(Shutdown::Both);
        }
        // Under the `out` lock, like `install`'s reset of it: marked after the lock was
        // released, a reconnect that completed in between would be followed by a stale
        // "down since", and the live connection declared failed a timeout later.
        lock(&p.down_since).get_or_insert_with(Instant::now);
    }
    // The reconnect thread waits for `out` until the caller releases it.
    if shared.me > peer && !p.reconnecting.swap(true, Ordering::AcqRel) {
        let sh = shared.clone();
        let _ = spawn("lazarus-reconnect", move || reconnect_loop(sh, peer));
    }
}

fn reconnect_loop(shared: Arc<Shared>, peer: Rank) {
    let Some(p) = shared.peers.get(peer.index()) else {
        return;
    };
    let down = || {
        !shared.shutdown.load(Ordering::Acquire)
            && matches!(shared.mailbox.peer_state(peer), PeerState::Alive)
            && lock(&p.out).stream.is_none()
    };
    loop {
        while down() {
            match dial(&shared, peer) {
                Ok(()) => {
                    tracing::info!("{}: reconnected to {peer}", shared.me);
                    break;
                }
                Err(e) => {
                    tracing::debug!("{}: reconnect to {peer} failed: {e}", shared.me);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        p.reconnecting.store(false, Ordering::Release);
        // A reset between our successful dial and clearing the flag found the flag set
        // and spawned nobody: take that job over.
        if !down() || p.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
    }
}

fn declare_failed(shared: &Shared, peer: Rank, why: String) {
    if !matches!(shared.mailbox.peer_state(peer), PeerState::Alive) {
        return;
    }
    tracing::warn!("{}: {peer} declared failed: {why}", shared.me);
    shared.mailbox.set_peer(peer, PeerState::Failed(why));
    if let Some(p) = shared.peers.get(peer.index()) {
        if let Some(c) = lock(&p.out).stream.take() {
            let _ = c.s.shutdown(Shutdown::Both);
        }
    }
}

/// A failed ack write marks the connection down like any other failed write (it was
/// ignored, and the next frame then followed a partly written ack; see `write_or_close`).
fn try_send_ack(shared: &Arc<Shared>, p: &Peer) {
    if let Ok(out) = p.out.try_lock() {
        let ack = p.recv_next.load(Ordering::Acquire);
        send_control(shared, p, out, &Frame::Ack(ack));
    }
}

/// Writes a control frame (ack or heartbeat) on `p`'s current connection, if any, with the
/// `out` lock held; releases the lock, then marks the connection down if the write failed
/// (a partly written frame desynchronises the stream).
fn send_control(shared: &Arc<Shared>, p: &Peer, mut out: MutexGuard<'_, Out>, frame: &Frame) {
    let gen = out.gen;
    let failed = match out.stream.as_mut() {
        Some(c) => write_or_close(c, |c| c.send(frame)).is_err(),
        None => false,
    };
    drop(out);
    if failed {
        mark_down(shared, p.rank, gen);
    }
}

/// What the reader does after a frame.
enum Flow {
    Continue,
    Stop,
}

fn read_loop(
    shared: Arc<Shared>,
    peer: Rank,
    mut s: TcpStream,
    rx: Opener,
    gen: u64,
    addr: String,
) {
    let Some(p) = shared.peers.get(peer.index()) else {
        return;
    };
    let mut rd = wire::FrameReader::new(rx);
    let mut acks = (0u32, 0usize);
    let stop = || shared.shutdown.load(Ordering::Acquire) || lock(&p.inbound).gen != gen;
    let lost = |e: std::io::Error, s: &TcpStream| {
        if e.kind() == std::io::ErrorKind::InvalidData {
            tracing::warn!(
                "{}: closing connection from {peer} at {addr}: {e}",
                shared.me
            );
        } else {
            tracing::debug!("{}: connection to {peer} at {addr} lost: {e}", shared.me);
        }
        if !shared.shutdown.load(Ordering::Acquire) && !p.bye.load(Ordering::Acquire) {
            give_up(&shared, peer, gen, s);
        }
    };
    loop {
        if stop() {
            return;
        }
        let next = match rd.next(&mut s, shared.config.max_frame, &stop) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return lost(e, &s),
        };
        *lock(&p.last_seen) = Instant::now();
        let flow = match next {
            wire::Next::Data(head, n) => {
                let h = match wire::decode(&head) {
                    Ok(Frame::Data(h, _)) => h,
                    Ok(other) => {
                        tracing::warn!("{}: {peer} sent a malformed {other:?}", shared.me);
                        give_up(&shared, peer, gen, &s);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(
                            "{}: closing connection from {peer} at {addr}: {e}",
                            shared.me
                        );
                        give_up(&shared, peer, gen, &s);
                        return;
                    }
                };
                match on_data(&shared, p, gen, &addr, h, n, &mut rd, &mut s, &stop) {
                    Ok(f) => {
                        acks.0 += 1;
                        acks.1 += n;
                        if acks.0 >= ACK_EVERY_FRAMES || acks.1 >= ACK_EVERY_BYTES {
                            acks = (0, 0);
                            try_send_ack(&shared, p);
                        }
                        f
                    }
                    Err(e) => return lost(e, &s),
                }
            }
            wire::Next::Small => on_control(&shared, p, gen, &addr, rd.body(), &s),
        };
        if let Flow::Stop = flow {
            return;
        }
    }
}

/// Non-data frames.
fn on_control(
    shared: &Arc<Shared>,
    p: &Peer,
    gen: u64,
    addr: &str,
    body: &[u8],
    s: &TcpStream,
) -> Flow {
    let peer = p.rank;
    let frame = match wire::decode(body) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(
                "{}: closing connection from {peer} at {addr}: {e}",
                shared.me
            );
            give_up(shared, peer, gen, s);
            return Flow::Stop;
        }
    };
    match frame {
        Frame::Ack(a) => {
            p.note_ack(a);
        }
        Frame::Heartbeat(a) => {
            p.note_ack(a);
            // Answering lets a finishing peer learn promptly that we hold its data.
            try_send_ack(shared, p);
        }
        Frame::Bye => {
            p.bye.store(true, Ordering::Release);
            shared.mailbox.set_peer(peer, PeerState::Finished);
            return Flow::Stop;
        }
        other => {
            tracing::warn!(
                "{}: closing connection from {peer} at {addr}: unexpected {other:?}",
                shared.me
            );
            give_up(shared, peer, gen, s);
            return Flow::Stop;
        }
    }
    Flow::Continue
}

/// The effects of a Data header whose frame MAC has verified: its piggybacked ack; and a
/// check that the peer stamps our incarnation (the handshake bound it; a mismatch is a
/// bug or a protocol violation, and closes the connection).
fn verified(
    shared: &Arc<Shared>,
    p: &Peer,
    gen: u64,
    addr: &str,
    h: &DataHeader,
    s: &TcpStream,
) -> Flow {
    if h.incarnation != shared.incarnation {
        tracing::warn!(
            "{}: closing connection from {} at {addr}: data of incarnation {}, ours is {}",
            shared.me,
            p.rank,
            h.incarnation,
            shared.incarnation
        );
        give_up(shared, p.rank, gen, s);
        return Flow::Stop;
    }
    p.note_ack(h.ack);
    Flow::Continue
}

/// A peer's stream whose every read that returns bytes counts as a sign of life: the
/// payload of a frame (up to `max_frame`, 64 MiB by default) can take longer than the
/// failure timeout on a slow or shared link, and a live peer was declared failed half-way
/// through one (found in review: only frame boundaries counted). The bytes are not yet
/// authenticated when they count; a frame that fails its MAC closes the connection, so
/// forged bytes can at most delay the detection by the time they take to fill a frame.
struct Heard<'a> {
    s: &'a mut TcpStream,
    last_seen: &'a Mutex<Instant>,
}

impl<'a> Heard<'a> {
    fn new(s: &'a mut TcpStream, p: &'a Peer) -> Self {
        Heard {
            s,
            last_seen: &p.last_seen,
        }
    }
}

impl std::io::Read for Heard<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.s.read(buf)?;
        if n > 0 {
            *lock(self.last_seen) = Instant::now();
        }
        Ok(n)
    }
}

/// One Data frame whose `n` payload bytes are still in the stream. A whole message that
/// is the next in sequence and matches a posted `recv_into` is read straight into the
/// caller's buffer; anything else goes through a (pooled) vector and the mailbox queue.
/// An `Err` means the connection is lost (nothing was delivered from this frame).
#[allow(clippy::too_many_arguments)]
fn on_data(
    shared: &Arc<Shared>,
    p: &Peer,
    gen: u64,
    addr: &str,
    h: DataHeader,
    n: usize,
    rd: &mut wire::FrameReader,
    s: &mut TcpStream,
    stop: &dyn Fn() -> bool,
) -> std::io::Result<Flow> {
    let peer = p.rank;
    // Nothing in `h` is authenticated until the payload and its MAC have been read: it
    // only decides where the bytes go. Its effects (`verified`) come after.
    if h.src != peer.0 {
        tracing::warn!(
            "{}: closing connection from {peer} at {addr}: data claims src {}",
            shared.me,
            h.src
        );
        give_up(shared, peer, gen, s);
        return Ok(Flow::Stop);
    }
    // Held until this frame is dealt with. A reader of an older connection that is still
    // in a frame holds it too; it gives up at its next read timeout at the latest (`stop`
    // sees the newer generation), and a fragment it appended is cut off again.
    let mut partial = lock(&p.reassembly);
    let direct = {
        let inb = lock(&p.inbound);
        if inb.gen != gen {
            return Ok(Flow::Stop);
        }
        h.flags & FLAG_LAST != 0 && partial.bytes.is_empty() && inb.window.next_expected() == h.seq
    };
    if direct && n > 0 {
        let mut claim = shared.mailbox.claim(peer, h.tag, n);
        if n >= crate::pool::MIN_POOLED {
            if claim.is_none() && p.streaming.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                while claim.is_none() && t0.elapsed() < POST_WAIT {
                    std::thread::yield_now();
                    claim = shared.mailbox.claim(peer, h.tag, n);
                }
            }
            p.streaming.store(claim.is_some(), Ordering::Relaxed);
        }
        if let Some(mut claim) = claim {
            // On an error (a MAC that does not verify included) the claim drops
            // uncompleted: the bytes in the buffer are not delivered.
            rd.read_into(&mut Heard::new(s, p), claim.buf(), stop)?;
            if let Flow::Stop = verified(shared, p, gen, addr, &h, s) {
                return Ok(Flow::Stop);
            }
            let mut inb = lock(&p.inbound);
            if inb.gen != gen {
                return Ok(Flow::Stop); // the claim drops: the slot waits for the resend
            }
            return match inb.window.accept(h.seq) {
                Accept::Deliver => {
                    p.recv_next
                        .store(inb.window.next_expected(), Ordering::Release);
                    claim.complete();
                    Ok(Flow::Continue)
                }
                // Cannot happen (only this thread advances the window of this
                // generation); treated like any protocol violation.
                Accept::Duplicate | Accept::Gap => {
                    drop(inb);
                    drop(claim);
                    give_up(shared, peer, gen, s);
                    Ok(Flow::Stop)
                }
            };
        }
    }
    if h.flags & FLAG_LAST == 0 || !partial.bytes.is_empty() {
        return on_fragment(shared, p, gen, addr, h, n, rd, s, stop, &mut partial);
    }
    // A whole message in one frame: its own (pooled) buffer is handed over, no copy.
    let payload = rd.read_vec(&mut Heard::new(s, p), n, stop)?;
    if let Flow::Stop = verified(shared, p, gen, addr, &h, s) {
        crate::pool::give(payload);
        return Ok(Flow::Stop);
    }
    let mut inb = lock(&p.inbound);
    if inb.gen != gen {
        return Ok(Flow::Stop);
    }
    match inb.window.accept(h.seq) {
        Accept::Deliver => {
            p.recv_next
                .store(inb.window.next_expected(), Ordering::Release);
            // Pushed under the `inbound` lock (order `inbound` -> mailbox, as for
            // `claim.complete()` above): released first, a reader of an older
            // connection that had accepted message i could be preempted before its
            // push while the new connection's reader accepted and pushed message i+1,
            // and the receiver got i+1 in place of i (seen under load ~20 with resets).
            shared.mailbox.push(Envelope {
                src: peer,
                tag: h.tag,
                epoch: Epoch(h.epoch),
                incarnation: h.incarnation,
                payload,
            });
            Ok(Flow::Continue)
        }
        Accept::Duplicate => {
            crate::pool::give(payload);
            Ok(Flow::Continue)
        }
        Accept::Gap => {
            drop(inb);
            gap(shared, p, gen, addr, &h, s);
            Ok(Flow::Stop)
        }
    }
}

fn gap(shared: &Arc<Shared>, p: &Peer, gen: u64, addr: &str, h: &DataHeader, s: &TcpStream) {
    tracing::warn!(
        "{}: closing connection from {} at {addr}: sequence gap at {}",
        shared.me,
        p.rank,
        h.seq
    );
    give_up(shared, p.rank, gen, s);
}

/// Drops a fragment that was not delivered from the reassembly; with no fragment of the
/// message left, its memory too (up to a frame per peer would stay reserved otherwise).
fn cut_back(partial: &mut Reassembly, base: usize) {
    if base == 0 {
        *partial = Reassembly::default();
    } else {
        partial.bytes.truncate(base);
    }
}

/// A Data frame that is part of a message of several fragments (`partial` holds the
/// delivered ones, if any): its payload is read straight onto the end of `partial` and
/// stays there only if its MAC verifies and the window delivers it; otherwise `partial`
/// is cut back to what it was. The last fragment hands `partial` over as the message,
/// trimmed to its length.
///
/// Why: read into a buffer of its own and appended afterwards, every fragment was copied
/// once more into the regrown message (fresh memory, slow first-touch faults on this
/// VM), and the reader did not read its socket for the length of that copy.
#[allow(clippy::too_many_arguments)]
fn on_fragment(
    shared: &Arc<Shared>,
    p: &Peer,
    gen: u64,
    addr: &str,
    h: DataHeader,
    n: usize,
    rd: &mut wire::FrameReader,
    s: &mut TcpStream,
    stop: &dyn Fn() -> bool,
    partial: &mut Reassembly,
) -> std::io::Result<Flow> {
    let base = partial.bytes.len();
    if let Err(e) = rd.read_append(&mut Heard::new(s, p), &mut partial.bytes, n, stop) {
        // `read_append` has cut `partial` back to `base` already; this frees it.
        cut_back(partial, base);
        return Err(e);
    }
    if let Flow::Stop = verified(shared, p, gen, addr, &h, s) {
        cut_back(partial, base);
        return Ok(Flow::Stop);
    }
    let mut inb = lock(&p.inbound);
    if inb.gen != gen {
        cut_back(partial, base);
        return Ok(Flow::Stop);
    }
    let of = (h.tag, h.epoch, h.incarnation);
    if inb.window.next_expected() == h.seq && partial.of.is_some_and(|o| o != of) {
        // Fragments of two messages: a bug of the sender's (it once let another
        // thread's message in between), never reassembled into one. Refused before the
        // window moves: every retry fails the same way, until the peer is declared
        // failed.
        cut_back(partial, base);
        drop(inb);
        tracing::warn!(
            "{}: closing connection from {} at {addr}: a fragment of another message (tag {:?}) inside a message of tag {:?}",
            shared.me,
            p.rank,
            h.tag,
            partial.of.map(|o| o.0)
        );
        give_up(shared, p.rank, gen, s);
        return Ok(Flow::Stop);
    }
    match inb.window.accept(h.seq) {
        Accept::Deliver => {
            p.recv_next
                .store(inb.window.next_expected(), Ordering::Release);
            partial.of = Some(of);
            if h.flags & FLAG_LAST != 0 {
                let mut body = std::mem::take(&mut partial.bytes);
                partial.of = None;
                // The amortized growth may have left up to the message's length again
                // as spare capacity; a large buffer shrinks in place (no copy).
                body.shrink_to_fit();
                // Under the `inbound` lock, as in `on_data`.
                shared.mailbox.push(Envelope {
                    src: p.rank,
                    tag: h.tag,
                    epoch: Epoch(h.epoch),
                    incarnation: h.incarnation,
                    payload: body,
                });
            }
            Ok(Flow::Continue)
        }
        Accept::Duplicate => {
            cut_back(partial, base);
            Ok(Flow::Continue)
        }
        Accept::Gap => {
            cut_back(partial, base);
            drop(inb);
            gap(shared, p, gen, addr, &h, s);
            Ok(Flow::Stop)
        }
    }
}

fn heartbeat_loop(shared: Arc<Shared>) {
    let cfg = shared.config.clone();
    while !shared.shutdown.load(Ordering::Acquire) {
        std::thread::sleep(cfg.heartbeat_interval);
        for p in shared.peers.iter().filter(|p| p.rank != shared.me) {
            if p.bye.load(Ordering::Acquire)
                || !matches!(shared.mailbox.peer_state(p.rank), PeerState::Alive)
            {
                continue;
            }
            if let Ok(mut out) = p.out.try_lock() {
                let acked = p.acked.load(Ordering::Acquire);
                out.window.ack(acked);
                let ack = p.recv_next.load(Ordering::Acquire);
                send_control(&shared, p, out, &Frame::Heartbeat(ack));
            }
            let silent = lock(&p.last_seen).elapsed();
            let down = *lock(&p.down_since);
            if let Some(d) = down {
                if d.elapsed() > cfg.failure_timeout {
                    declare_failed(
                        &shared,
                        p.rank,
                        format!(
                            "connection lost and not re-established within {:?}",
                            cfg.failure_timeout
                        ),
                    );
                }
            } else if silent > cfg.failure_timeout {
                declare_failed(&shared, p.rank, format!("no heartbeat for {silent:?}"));
            }
        }
        beat_control(&shared);
    }
}

/// One heartbeat to the rendezvous host on the control connection, if any.
fn beat_control(shared: &Shared) {
    let mut control = lock(&shared.control);
    if let Some(Err(e)) = control.as_mut().map(|c| c.send(&Frame::Heartbeat(0))) {
        // A sealed stream cannot skip a frame (the MAC counter moved on): close it, so
        // the rendezvous host sees a lost connection rather than a bad MAC later.
        // Expected when the rendezvous host is gone (`loopback_comms` drops it).
        tracing::debug!("{}: control connection lost: {e}", shared.me);
        if let Some(c) = control.take() {
            let _ = c.s.shutdown(Shutdown::Both);
        }
    }
}

impl Transport for TcpTransport {
    fn send(&self, to: Rank, env: Envelope) -> Result<()> {
        let sh = &self.shared;
        let p = sh.peers.get(to.index()).ok_or_else(|| {
            NetError::new(ErrorKind::InvalidArgument, "rank out of range").with_peer(to)
        })?;
        let max_payload = (sh.config.max_frame as usize)
            .saturating_sub(DATA_HEADER_LEN + MAC_LEN)
            .max(1);
        let total = env.payload.len();
        let payload = Arc::new(env.payload);
        let mut out = lock(&p.out);
        let acked = p.acked.load(Ordering::Acquire);
        out.window.ack(acked);
        let mut start = 0;
        loop {
            let end = (start + max_payload).min(total);
            let hdr = DataHeader {
                flags: if end == total { FLAG_LAST } else { 0 },
                tag: env.tag,
                src: sh.me.0,
                incarnation: env.incarnation,
                epoch: env.epoch.0,
                seq: 0,
                ack: 0,
            };
            let seq = out.window.push(Frag {
                hdr,
                payload: payload.clone(),
                start,
                end,
            });
            p.sent.store(seq + 1, Ordering::Release);
            let gen = out.gen;
            if let Some(c) = out.stream.as_mut() {
                #[cfg(test)]
                if tests::a_write_failure_is_injected() {
                    let _ = c.s.shutdown(Shutdown::Both);
                }
                let h = DataHeader {
                    seq,
                    ack: p.recv_next.load(Ordering::Acquire),
                    ..hdr
                };
                let body = payload.get(start..end).unwrap_or(&[]);
                if let Err(e) =
                    write_or_close(c, |c| wire::write_data(&mut c.s, &mut c.tx, &h, body))
                {
                    // Kept in the window: retransmitted after the reconnect. The lock
                    // stays held to the message's last fragment (`mark_down_held`).
                    tracing::debug!("{}: write to {to} failed: {e}", sh.me);
                    mark_down_held(sh, p, &mut out, gen);
                    #[cfg(test)]
                    tests::after_a_failed_write();
                }
            }
            start = end;
            if start >= total {
                break;
            }
        }
        Ok(())
    }

    #[cfg(test)]
    fn inject_reset(&self) {
        for p in self.shared.peers.iter() {
            if let Some(c) = lock(&p.out).stream.as_ref() {
                let _ = c.s.shutdown(Shutdown::Both);
            }
        }
    }

    #[cfg(test)]
    fn addrs(&self) -> Vec<SocketAddr> {
        self.shared.addrs.clone()
    }

    fn finalize(&self) {
        let sh = &self.shared;
        let deadline = Instant::now() + sh.config.failure_timeout;
        // Wait until peers hold everything we sent (they ack on heartbeats at the latest).
        for p in sh.peers.iter().filter(|p| p.rank != sh.me) {
            loop {
                let done = {
                    let mut out = lock(&p.out);
                    let a = p.acked.load(Ordering::Acquire);
                    out.window.ack(a);
                    out.window.all_acked()
                };
                if done
                    || p.bye.load(Ordering::Acquire)
                    || !matches!(
                        sh.mailbox.peer_state(p.rank),
                        PeerState::Alive | PeerState::Finished
                    )
                    || Instant::now() >= deadline
                {
                    break;
                }
                let out = lock(&p.out);
                let ack = p.recv_next.load(Ordering::Acquire);
                send_control(sh, p, out, &Frame::Heartbeat(ack));
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        sh.shutdown.store(true, Ordering::Release);
        for p in sh.peers.iter().filter(|p| p.rank != sh.me) {
            if let Some(mut c) = lock(&p.out).stream.take() {
                let _ = c.send(&Frame::Bye);
                let _ = c.s.shutdown(Shutdown::Write);
            }
        }
        if let Some(mut c) = lock(&sh.control).take() {
            let _ = c.send(&Frame::Bye);
            let _ = c.s.shutdown(Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{loopback_comms, Comm, NetConfig};
    use lazarus_format::Rank;
    use std::io::{Read, Write};
    use std::time::Duration;

    fn cfg() -> NetConfig {
        NetConfig {
            heartbeat_interval: Duration::from_millis(50),
            failure_timeout: Duration::from_millis(2000),
            connect_timeout: Duration::from_secs(10),
            max_frame: 4096,
            spin: Duration::from_micros(20),
            frame_mac: crate::FrameMac::On,
        }
    }

    /// Resets both ranks' connections `times` times, one every `every`, stopping early
    /// once `stop` is set (the resetter thread of the reset tests).
    fn reset_repeatedly(
        c0: Comm,
        c1: Comm,
        times: usize,
        every: Duration,
        stop: Option<&std::sync::atomic::AtomicBool>,
    ) {
        for _ in 0..times {
            if stop.is_some_and(|d| d.load(std::sync::atomic::Ordering::Acquire)) {
                break;
            }
            std::thread::sleep(every);
            c0.transport_for_tests().unwrap().inject_reset();
            c1.transport_for_tests().unwrap().inject_reset();
        }
    }

    #[test]
    fn connection_resets_lose_and_duplicate_nothing() {
        let comms = loopback_comms(3, cfg()).unwrap();
        let n_msgs = 1500u32;
        std::thread::scope(|s| {
            let c0 = comms[0].clone();
            let c1 = comms[1].clone();
            // Moves its clones in and drops them when done, so a failed rank cannot keep
            // the others waiting forever.
            s.spawn(move || reset_repeatedly(c0, c1, 15, Duration::from_millis(7), None));
            let hs: Vec<_> = comms
                .into_iter()
                .map(|c: Comm| {
                    s.spawn(move || {
                        if c.rank() == Rank(2) {
                            for i in 0..n_msgs {
                                // Sizes spanning several frames exercise mid-message resets.
                                let v = vec![i; (i as usize * 7) % 3000];
                                c.send(Rank(0), 1, &v).unwrap();
                                c.send(Rank(1), 1, &v).unwrap();
                            }
                        } else {
                            for i in 0..n_msgs {
                                let v: Vec<u32> = c.recv(Rank(2), 1).unwrap();
                                assert_eq!(v.len(), (i as usize * 7) % 3000);
                                assert!(v.iter().all(|x| *x == i), "message {i} out of order");
                            }
                            assert!(c.try_recv_envelope(None, None).unwrap().is_none());
                        }
                        c.barrier().unwrap();
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
        });
    }

    /// Messages of many fragments and odd sizes (max_frame 4096), reassembled straight
    /// into the message (`on_fragment`) while both sides' connections are reset: every
    /// message arrives once, in order, byte-identical, in a buffer of exactly its length
    /// (the amortized growth of the reassembly is trimmed before delivery). Interleaved
    /// single-frame messages take the other path and must not disturb a reassembly.
    #[test]
    fn fragmented_messages_survive_resets_byte_identical_and_exact_size() {
        let comms = loopback_comms(2, cfg()).unwrap();
        let n_msgs = 1600usize;
        // Bytes, not words: sizes that end mid-fragment and mid-word.
        let sizes = [40_961usize, 3, 0, 12_289, 4_000, 99_999, 8_191, 1];
        let msg = |i: usize| -> Vec<u8> {
            let n = sizes[i % sizes.len()];
            (0..n)
                .map(|k| (k as u64 * 0x9e37_79b9 + i as u64 * 7919).to_le_bytes()[3])
                .collect()
        };
        std::thread::scope(|s| {
            let c0 = comms[0].clone();
            let c1 = comms[1].clone();
            s.spawn(move || reset_repeatedly(c0, c1, 12, Duration::from_millis(6), None));
            let hs: Vec<_> = comms
                .into_iter()
                .map(|c: Comm| {
                    s.spawn(move || {
                        let tag = crate::Tag::user(5);
                        if c.rank() == Rank(1) {
                            for i in 0..n_msgs {
                                c.send_bytes(Rank(0), tag, msg(i)).unwrap();
                            }
                        } else {
                            for i in 0..n_msgs {
                                let e = c.recv_envelope(Some(Rank(1)), Some(tag)).unwrap();
                                let want = msg(i);
                                assert_eq!(e.payload.len(), want.len(), "message {i} length");
                                assert!(e.payload == want, "message {i} differs");
                                assert_eq!(
                                    e.payload.capacity(),
                                    e.payload.len(),
                                    "message {i} over-allocated"
                                );
                            }
                            assert!(c.try_recv_envelope(None, None).unwrap().is_none());
                        }
                        c.barrier().unwrap();
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
        });
    }

    type Hook = Box<dyn FnOnce() + Send>;
    /// A thread's injected failure: its next write in `send` fails (its connection is
    /// shut down first), then `hook` runs, right where the old code released `out`.
    struct Injected {
        thread: std::thread::ThreadId,
        armed: bool,
        hook: Option<Hook>,
    }
    static INJECTED: std::sync::Mutex<Option<Injected>> = std::sync::Mutex::new(None);

    fn mine(i: &Option<Injected>) -> bool {
        i.as_ref()
            .is_some_and(|i| i.thread == std::thread::current().id())
    }

    pub(super) fn a_write_failure_is_injected() -> bool {
        let mut i = super::lock(&INJECTED);
        mine(&i) && i.as_mut().is_some_and(|i| std::mem::take(&mut i.armed))
    }

    pub(super) fn after_a_failed_write() {
        let hook = {
            let mut i = super::lock(&INJECTED);
            match mine(&i) {
                true => i.as_mut().and_then(|i| i.hook.take()),
                false => None,
            }
        };
        if let Some(hook) = hook {
            hook();
        }
    }

    /// Deterministic form of the test below: the sender's first write of a message of 8
    /// fragments fails (its connection was reset) and, right then, another thread sends a
    /// one-frame message to the same peer. Both arrive whole, each under its own tag (the
    /// old code delivered the first fragment and the other message merged under the
    /// other's tag, and the rest of the message as a message of its own).
    #[test]
    fn a_message_sent_while_another_thread_s_write_fails_is_not_merged_into_it() {
        let comms = loopback_comms(2, cfg()).unwrap();
        let big: Vec<u8> = (0..30_001u32).map(|k| (k * 7) as u8).collect();
        let small = vec![0xabu8; 33];
        let (tx, rx) = std::sync::mpsc::channel();
        let (c1, small2) = (comms[1].clone(), small.clone());
        let hook: Hook = Box::new(move || {
            std::thread::spawn(move || {
                c1.send_bytes(Rank(0), crate::Tag::user(7), small2).unwrap();
                let _ = tx.send(());
            });
            // With the lock held (the fix) the other send waits for this one: go on.
            let _ = rx.recv_timeout(Duration::from_millis(200));
        });
        *super::lock(&INJECTED) = Some(Injected {
            thread: std::thread::current().id(),
            armed: true,
            hook: Some(hook),
        });
        comms[1]
            .send_bytes(Rank(0), crate::Tag::user(6), big.clone())
            .unwrap();
        let injected = super::lock(&INJECTED).take();
        assert!(
            injected.is_some_and(|i| i.hook.is_none()),
            "no write failed"
        );
        let mut got = [None, None];
        for _ in 0..2 {
            let e = comms[0].recv_envelope(Some(Rank(1)), None).unwrap();
            let k = usize::from(e.tag == crate::Tag::user(7));
            got[k] = Some(e.payload);
        }
        assert!(
            got[0].as_ref() == Some(&big),
            "the 8-fragment message: {:?}",
            got[0].as_ref().map(Vec::len)
        );
        assert_eq!(got[1].as_ref(), Some(&small));
    }

    /// Two threads send to the same peer while both sides' connections are reset: one
    /// sends messages of many fragments (max_frame 4096), the other one-frame messages
    /// under another tag. Every message arrives whole, under its own tag. A sender whose
    /// write failed mid-message released its lock for the reconnect, the other thread's
    /// message got between two fragments in the window, and the receiver delivered the
    /// two merged under the second one's tag, MACs all valid (found in review).
    #[test]
    fn messages_of_two_sender_threads_never_merge_through_resets() {
        let comms = loopback_comms(2, cfg()).unwrap();
        let n_msgs = 2000usize;
        // Tag 6: messages of 8 fragments; tags 7 to 9: one frame, a sender thread each.
        let tags = [6u32, 7, 8, 9];
        let done = std::sync::atomic::AtomicBool::new(false);
        let msg = |tag: u32, i: usize| -> Vec<u8> {
            let n = if tag == 6 { 30_001 } else { 33 };
            (0..n)
                .map(|k| (k as u64 * 31 + i as u64 * 7 + u64::from(tag)) as u8)
                .collect()
        };
        std::thread::scope(|s| {
            let (c0, c1, done) = (comms[0].clone(), comms[1].clone(), &done);
            // Resets for as long as messages flow (at most ~3 s).
            s.spawn(move || reset_repeatedly(c0, c1, 1500, Duration::from_millis(2), Some(done)));
            for tag in tags {
                let c = comms[1].clone();
                s.spawn(move || {
                    for i in 0..n_msgs {
                        c.send_bytes(Rank(0), crate::Tag::user(tag), msg(tag, i))
                            .unwrap();
                    }
                });
            }
            let c = comms[0].clone();
            s.spawn(move || {
                let mut next = [0usize; 4];
                for _ in 0..tags.len() * n_msgs {
                    let e = c.recv_envelope(Some(Rank(1)), None).unwrap();
                    let k = tags
                        .iter()
                        .position(|t| crate::Tag::user(*t) == e.tag)
                        .expect("a tag of the test");
                    let (tag, i) = (tags[k], &mut next[k]);
                    let whole = e.payload == msg(tag, *i);
                    if !whole {
                        done.store(true, std::sync::atomic::Ordering::Release);
                    }
                    assert!(whole, "tag {tag} message {i}: {} bytes", e.payload.len());
                    *i += 1;
                }
                done.store(true, std::sync::atomic::Ordering::Release);
            });
        });
    }

    #[test]
    fn direct_receives_survive_resets_and_keep_order() {
        // Sizes: empty, small, exactly one frame, several frames (max_frame 4096).
        direct_receives_under_resets(cfg(), 400, &[0, 1, 7, 500, 531, 1200, 3000], 12);
    }

    #[test]
    fn large_streamed_receives_keep_order_and_content() {
        // Single-frame messages of 64 KiB and more take the direct path with the reader's
        // short wait for the next post (`POST_WAIT`); one size is fragmented. No injected
        // resets (the test below has them; a loaded machine causes some here too).
        let c = NetConfig {
            max_frame: 1 << 20,
            ..cfg()
        };
        direct_receives_under_resets(c, 120, &[8192, 8192, 20_000, 8200, 200_000, 8192], 0);
    }

    /// Was `#[ignore]`d as a known bug (1 failure in 20 runs at load ~10); three causes
    /// fixed, see docs/RUNTIME.md "Resets with large messages". Load-sensitive: to stress
    /// it, run several copies of the test binary at once.
    #[test]
    fn large_streamed_receives_survive_resets_and_keep_order() {
        // Single-frame messages of 64 KiB and more take the direct path with the reader's
        // short wait for the next post (`POST_WAIT`); one size is fragmented.
        let c = NetConfig {
            max_frame: 1 << 20,
            ..cfg()
        };
        direct_receives_under_resets(c, 120, &[8192, 8192, 20_000, 8200, 200_000, 8192], 12);
    }

    /// The same with the job-wide frame MAC off: payloads outside the MAC take the same
    /// direct, queued, fragmented and retransmitted paths.
    #[test]
    fn large_streamed_receives_survive_resets_with_the_frame_mac_off() {
        let c = NetConfig {
            max_frame: 1 << 20,
            frame_mac: crate::FrameMac::Off,
            ..cfg()
        };
        direct_receives_under_resets(c, 120, &[8192, 8192, 20_000, 8200, 200_000, 8192], 12);
    }

    /// Rank 1 streams `n_msgs` u64 messages of the given element counts (cycled) to rank
    /// 0, alternating `send_slice` and `send_buf`, while both sides' connections are reset
    /// `resets` times; rank 0 receives them with `recv_into`,
    /// sometimes late (queued path), sometimes first (direct path), and checks every word.
    fn direct_receives_under_resets(
        config: NetConfig,
        n_msgs: u64,
        sizes: &[usize],
        resets: usize,
    ) {
        use rand::{Rng, SeedableRng};
        let seed: u64 = std::env::var("LAZARUS_TEST_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0x5eed_0003);
        eprintln!("seed {seed}");
        let comms = loopback_comms(2, config).unwrap();
        let size = |i: u64| sizes[(i % sizes.len() as u64) as usize];
        std::thread::scope(|s| {
            let c0 = comms[0].clone();
            let c1 = comms[1].clone();
            s.spawn(move || reset_repeatedly(c0, c1, resets, Duration::from_millis(5), None));
            let hs: Vec<_> = comms
                .into_iter()
                .map(|c: Comm| {
                    s.spawn(move || {
                        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                        if c.rank() == Rank(1) {
                            for i in 0..n_msgs {
                                // Every other message goes zero-copy: the window then owns
                                // the program's (recycled) buffer across the resets.
                                if i % 2 == 1 {
                                    let mut b = crate::SendBuf::<u64>::recycled(size(i));
                                    for (k, x) in b.iter_mut().enumerate() {
                                        *x = i * 10_000 + k as u64;
                                    }
                                    c.send_buf(Rank(0), 1, b).unwrap();
                                    continue;
                                }
                                let v: Vec<u64> =
                                    (0..size(i) as u64).map(|k| i * 10_000 + k).collect();
                                c.send_slice(Rank(0), 1, &v).unwrap();
                            }
                        } else {
                            for i in 0..n_msgs {
                                // Sometimes let messages pile up (queued path), sometimes
                                // wait first (direct path).
                                if rng.gen_bool(0.2) {
                                    std::thread::sleep(Duration::from_micros(
                                        rng.gen_range(0..2000),
                                    ));
                                }
                                let mut buf = vec![0u64; size(i)];
                                c.recv_into(Rank(1), 1, &mut buf)
                                    .unwrap_or_else(|e| panic!("message {i}: {e}"));
                                for (k, x) in buf.iter().enumerate() {
                                    assert_eq!(*x, i * 10_000 + k as u64, "message {i} word {k}");
                                }
                            }
                            assert!(c.try_recv_envelope(None, None).unwrap().is_none());
                        }
                        c.barrier().unwrap();
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
        });
    }

    #[test]
    fn garbage_and_wrong_token_connections_are_closed_and_the_job_goes_on() {
        let comms = loopback_comms(2, cfg()).unwrap();
        let addrs = comms[0].transport_for_tests().unwrap().addrs();
        let target = addrs[0];
        // Garbage bytes.
        let mut g = std::net::TcpStream::connect(target).unwrap();
        g.write_all(&[0xff; 64]).unwrap();
        g.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut sink = Vec::new();
        let _ = g.read_to_end(&mut sink); // returns once the rank closes the connection
                                          // A peer with another token (another job) claiming to be rank 1.
        let other = crate::JobToken::new("not-this-job").unwrap();
        let mut w = std::net::TcpStream::connect(target).unwrap();
        w.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let id = crate::handshake::Identity::new(&other, 1, 0, crate::FrameMac::On);
        let e = crate::handshake::dial(&mut w, &id, 0, "test").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Auth);
        // An oversized length prefix.
        let mut big = std::net::TcpStream::connect(target).unwrap();
        big.write_all(&u32::MAX.to_le_bytes()).unwrap();
        // The real job still works.
        std::thread::scope(|s| {
            for c in comms {
                s.spawn(move || {
                    let mut x = [1u64];
                    c.allreduce(&mut x, crate::ReduceOp::Sum).unwrap();
                    assert_eq!(x[0], 2);
                });
            }
        });
    }
}

//! Rendezvous: ranks register their listening address with a small server (run by the
//! launcher, or by rank 0 under srun/mpirun), receive the full address table, then keep an
//! authenticated control connection with heartbeats both ways: the host notices a dead
//! rank, and a rank notices a dead (or unreachable) host (`watch.rs`).
//!
//! The server is a listener of the same handshake as the mesh (`handshake.rs`, with the
//! coordinator's pseudo-rank): it answers only a dial from a rank of the world, proves
//! itself only after the rank has, and every frame after that is sealed, so nobody without
//! the token can register, read the address table, or forge a heartbeat or a goodbye.

use crate::auth::{JobToken, COORD_RANK};
use crate::config::NetConfig;
use crate::error::{ErrorKind, NetError, Result};
use crate::handshake::{self, Identity, Session};
use crate::wire::{self, Conn, Frame};
use serde::{Deserialize, Serialize};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Control messages carried in `Control` frames (postcard).
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Ctl {
    Register { rank: u32, size: u32, addr: String },
    Table { addrs: Vec<String> },
}

/// A rank's state as seen by the rendezvous host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Not registered yet.
    Pending,
    /// Registered and heartbeating.
    Running,
    /// Said goodbye (its communicator was dropped).
    Finished,
    /// Its control connection closed without a goodbye.
    LostConnection,
    /// No heartbeat for longer than the failure timeout.
    MissedHeartbeats,
}

/// One rank as the rendezvous host sees it ([`RendezvousServer::snapshot`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankView {
    /// Its state.
    pub state: Liveness,
    /// The mesh address it registered (`ip:port`), once registered.
    pub addr: Option<String>,
    /// Time since its last frame (registration, heartbeat) reached the host.
    pub silent: Duration,
}

struct Slot {
    addr: Option<String>,
    stream: Option<Conn>,
    last_seen: Instant,
    state: Liveness,
    /// The rank's heartbeats began (its first one arrived). Before that it is waiting for
    /// the table or building its mesh and sends nothing: its silence then is no failure
    /// (found in review: a rank registered 3 s before the last one was reported as
    /// missing heartbeats, and the job failed on every start with such a gap). Its death
    /// then still shows: the control connection closes; a rank stuck there is bounded by
    /// the connect timeout of its peers, and by [`Slot::state_now`]'s longer bound.
    beating: bool,
}

impl Slot {
    /// The state with missed heartbeats evaluated now: silence longer than the failure
    /// timeout once the rank's heartbeats began, or, once the table went out
    /// (`table_sent`, when `last_seen` restarts), longer than the connect timeout plus the
    /// failure timeout without them beginning (its mesh must be up within the connect
    /// timeout: a rank stopped before then is named, not only the peers that time out
    /// waiting for it). Before the table, waiting is all a rank can do.
    fn state_now(&self, config: &NetConfig, table_sent: bool) -> Liveness {
        let limit = match (self.beating, table_sent) {
            (true, _) => config.failure_timeout,
            (false, true) => config.connect_timeout + config.failure_timeout,
            (false, false) => return self.state.clone(),
        };
        if self.state == Liveness::Running && self.last_seen.elapsed() > limit {
            Liveness::MissedHeartbeats
        } else {
            self.state.clone()
        }
    }
}

struct Shared {
    size: u32,
    id: Identity,
    config: NetConfig,
    slots: Mutex<Vec<Slot>>,
    shutdown: AtomicBool,
    handshakes: handshake::Gate,
    /// The table went out: from now on the host heartbeats every control connection (not
    /// before: a rank reads exactly one frame, the table, before its watcher starts).
    table_sent: AtomicBool,
}

impl Shared {
    fn slots(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The rendezvous server. Dropping it stops accepting and closes control connections.
pub struct RendezvousServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl std::fmt::Debug for RendezvousServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RendezvousServer({})", self.addr)
    }
}

impl RendezvousServer {
    /// Listens on `addr` (e.g. `127.0.0.1:0`) for a job of `size` ranks.
    pub fn bind(
        addr: &str,
        size: u32,
        token: JobToken,
        incarnation: u64,
        config: NetConfig,
    ) -> Result<Self> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| NetError::io(format!("rendezvous: bind {addr}"), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| NetError::io("rendezvous: local address", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| NetError::io("rendezvous: nonblocking", e))?;
        let now = Instant::now();
        let shared = Arc::new(Shared {
            size,
            id: Identity::new(&token, COORD_RANK, incarnation, config.frame_mac),
            config,
            slots: Mutex::new(
                (0..size)
                    .map(|_| Slot {
                        addr: None,
                        stream: None,
                        last_seen: now,
                        state: Liveness::Pending,
                        beating: false,
                    })
                    .collect(),
            ),
            shutdown: AtomicBool::new(false),
            handshakes: handshake::Gate::new(size),
            table_sent: AtomicBool::new(false),
        });
        let s2 = shared.clone();
        std::thread::Builder::new()
            .name("lazarus-rdv".into())
            .spawn(move || accept_loop(listener, s2))
            .map_err(|e| NetError::io("rendezvous: spawn thread", e))?;
        Ok(RendezvousServer {
            shared,
            addr: local,
        })
    }

    /// The address ranks must use as `LAZARUS_COORD`.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Each rank's view from the host, in rank order: state (missed heartbeats evaluated
    /// now), registered mesh address, and time since its last frame.
    pub fn snapshot(&self) -> Vec<RankView> {
        self.shared
            .slots()
            .iter()
            .map(|s| RankView {
                state: s.state_now(
                    &self.shared.config,
                    self.shared.table_sent.load(Ordering::Acquire),
                ),
                addr: s.addr.clone(),
                silent: s.last_seen.elapsed(),
            })
            .collect()
    }

    /// Each rank's state, in rank order (missed heartbeats evaluated now).
    pub fn liveness(&self) -> Vec<Liveness> {
        self.shared
            .slots()
            .iter()
            .map(|s| {
                s.state_now(
                    &self.shared.config,
                    self.shared.table_sent.load(Ordering::Acquire),
                )
            })
            .collect()
    }
}

impl Drop for RendezvousServer {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        for s in self.shared.slots().iter_mut() {
            if let Some(c) = s.stream.take() {
                let _ = c.s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.shutdown.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let Some(ticket) = shared.handshakes.enter(&stream, peer.ip()) else {
                    tracing::warn!("rendezvous: closing connection from {peer}: cannot track it");
                    continue;
                };
                let s2 = shared.clone();
                let _ = std::thread::Builder::new()
                    .name("lazarus-rdv-conn".into())
                    .spawn(move || {
                        if let Err(e) = serve(stream, peer, &s2, ticket) {
                            if !s2.shutdown.load(Ordering::Acquire) {
                                tracing::warn!("rendezvous: connection from {peer} closed: {e}");
                            }
                        }
                    });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                tracing::warn!("rendezvous: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// One rank's connection; `ticket` is its place among the handshakes in progress, given
/// back once the handshake is over (the control phase lasts as long as the job).
fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    ticket: handshake::Ticket,
) -> Result<()> {
    let io = |e: std::io::Error| NetError::io(format!("rendezvous peer {peer}"), e);
    crate::tcp::prepare(&stream, &shared.config).map_err(io)?;
    let size = shared.size;
    let may_dial = |from: u32| {
        if from < size {
            Ok(())
        } else {
            Err(format!(
                "the world has {}",
                lazarus_format::count(size, "rank")
            ))
        }
    };
    let Session {
        peer: who,
        tx,
        mut rx,
    } = handshake::accept(
        &mut handshake::Deadline::new(&stream, shared.config.connect_timeout),
        &shared.id,
        &may_dial,
        &peer.to_string(),
    )?;
    drop(ticket);
    // The deadline shortened the socket's timeouts: back to the connect timeout.
    crate::tcp::prepare(&stream, &shared.config).map_err(io)?;
    let mut buf = Vec::new();
    wire::read_sealed(&mut stream, &mut rx, 64 << 10, &mut buf).map_err(io)?;
    let reg = match wire::decode(&buf)? {
        Frame::Control(b) => postcard::from_bytes::<Ctl>(b).map_err(|e| {
            NetError::new(
                ErrorKind::Protocol,
                format!("bad register from {peer}: {e}"),
            )
        })?,
        f => {
            return Err(NetError::new(
                ErrorKind::Protocol,
                format!("expected register from {peer}, got {f:?}"),
            ))
        }
    };
    let (rank, addr) = match reg {
        Ctl::Register { rank, size, addr } if rank == who && size == shared.size && rank < size => {
            (rank, addr)
        }
        other => {
            return Err(NetError::new(
                ErrorKind::Protocol,
                format!(
                    "register from {peer} inconsistent with its authenticated rank {who} / \
                     world size {}: {other:?}",
                    shared.size
                ),
            ))
        }
    };
    {
        let mut slots = shared.slots();
        let slot = slots
            .get_mut(rank as usize)
            .ok_or_else(|| NetError::new(ErrorKind::Protocol, "rank out of range"))?;
        if slot.state != Liveness::Pending {
            return Err(NetError::new(
                ErrorKind::Protocol,
                format!("rank {rank} registered twice (from {peer})"),
            ));
        }
        slot.addr = Some(addr);
        slot.stream = Some(Conn {
            s: stream.try_clone().map_err(io)?,
            tx,
        });
        slot.state = Liveness::Running;
        slot.last_seen = Instant::now();
        if slots.iter().all(|s| s.addr.is_some()) {
            let addrs: Vec<String> = slots
                .iter()
                .map(|s| s.addr.clone().unwrap_or_default())
                .collect();
            let msg = postcard::to_allocvec(&Ctl::Table { addrs })
                .map_err(|e| NetError::new(ErrorKind::Codec, e.to_string()))?;
            for (i, s) in slots.iter_mut().enumerate() {
                if let Some(c) = s.stream.as_mut() {
                    if let Err(e) = c.send(&Frame::Control(&msg)) {
                        tracing::warn!("rendezvous: sending the table to rank {i} failed: {e}");
                    }
                }
                // Silence before a rank's first heartbeat counts from when it has its
                // table (`state_now`), not from the first rank's: the sends are in turn.
                s.last_seen = Instant::now();
            }
            shared.table_sent.store(true, Ordering::Release);
        }
    }
    // Control phase: heartbeats both ways until goodbye or loss. The frame reader keeps the
    // framing across read timeouts and checks every frame's MAC.
    let hb = shared.config.heartbeat_interval;
    stream.set_read_timeout(Some(hb)).map_err(io)?;
    // A rank that stopped reading (stuck, partitioned) must not block this thread: its
    // heartbeat write gives up after one interval.
    stream.set_write_timeout(Some(hb)).map_err(io)?;
    let mut beat: Option<Instant> = None;
    let mut rd = wire::FrameReader::new(rx);
    let stop = || shared.shutdown.load(Ordering::Acquire);
    loop {
        if stop() {
            return Ok(());
        }
        if shared.table_sent.load(Ordering::Acquire) && beat.is_none_or(|b| b.elapsed() >= hb) {
            beat = Some(Instant::now());
            // Under the slots lock, like the table: writes to one stream never interleave.
            let mut slots = shared.slots();
            if let Some(c) = slots.get_mut(rank as usize).and_then(|s| s.stream.as_mut()) {
                if let Err(e) = c.send(&Frame::Heartbeat(0)) {
                    tracing::debug!("rendezvous: heartbeat to rank {rank} ({peer}) failed: {e}");
                }
            }
        }
        let next = rd.next(&mut stream, 256, &stop);
        let mut slots = shared.slots();
        let Some(slot) = slots.get_mut(rank as usize) else {
            return Ok(());
        };
        let frame = match next {
            Ok(wire::Next::Small) => wire::decode(rd.body()),
            Ok(wire::Next::Data(..)) => Err(NetError::new(
                ErrorKind::Protocol,
                "a data frame on the control connection",
            )),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => {
                if slot.state == Liveness::Running {
                    slot.state = Liveness::LostConnection;
                    if e.kind() == std::io::ErrorKind::InvalidData {
                        tracing::warn!(
                            "rendezvous: closing rank {rank}'s control connection ({peer}): {e}"
                        );
                    } else {
                        tracing::debug!(
                            "rendezvous: rank {rank} ({peer}) control connection lost: {e}"
                        );
                    }
                }
                return Ok(());
            }
        };
        match frame {
            Ok(Frame::Heartbeat(_)) => {
                slot.last_seen = Instant::now();
                slot.beating = true;
            }
            Ok(Frame::Bye) => {
                slot.state = Liveness::Finished;
                return Ok(());
            }
            other => {
                slot.state = Liveness::LostConnection;
                return Err(NetError::new(
                    ErrorKind::Protocol,
                    format!("rank {rank} ({peer}) sent {other:?}"),
                ));
            }
        }
    }
}

/// Client side: registers `listen` with the coordinator and returns the address table, the
/// control connection (kept for heartbeats) and the MAC state of the frames the host sends
/// on it after the table (its heartbeats, read by `watch.rs`).
pub(crate) fn register(
    coord: &str,
    me: u32,
    size: u32,
    token: &JobToken,
    incarnation: u64,
    config: &NetConfig,
    listen_for: impl FnOnce(&TcpStream) -> Result<String>,
) -> Result<(Vec<SocketAddr>, Conn, crate::auth::Opener)> {
    let deadline = Instant::now() + config.connect_timeout;
    let stream = loop {
        // Bounded by the time left: a plain connect to an unreachable host waits for the
        // system's own timeout (~2 minutes on Linux), past `connect_timeout` (review).
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let attempt = coord.to_socket_addrs().and_then(|addrs| {
            let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
            for a in addrs {
                match TcpStream::connect_timeout(&a, left) {
                    Ok(s) => return Ok(s),
                    Err(e) => last = e,
                }
            }
            Err(last)
        });
        match attempt {
            Ok(s) => break s,
            Err(e) => {
                if Instant::now() >= deadline {
                    return Err(NetError::new(
                        ErrorKind::Timeout,
                        format!(
                            "could not reach coordinator {coord} within {:?}: {e}",
                            config.connect_timeout
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let io = |e: std::io::Error| NetError::io(format!("coordinator {coord}"), e);
    crate::tcp::prepare(&stream, config).map_err(io)?;
    let id = Identity::new(token, me, incarnation, config.frame_mac);
    // The one deadline, not a fresh timeout: registering takes at most the connect
    // timeout, connect and handshake together.
    let Session { tx, mut rx, .. } = handshake::dial(
        &mut handshake::Deadline::until(&stream, deadline),
        &id,
        COORD_RANK,
        coord,
    )?;
    // The deadline shortened the socket's timeouts: back to the connect timeout.
    crate::tcp::prepare(&stream, config).map_err(io)?;
    let addr = listen_for(&stream)?;
    let msg = postcard::to_allocvec(&Ctl::Register {
        rank: me,
        size,
        addr,
    })
    .map_err(|e| NetError::new(ErrorKind::Codec, e.to_string()))?;
    let mut conn = Conn { s: stream, tx };
    conn.send(&Frame::Control(&msg)).map_err(io)?;
    let stream = &mut conn.s;
    let remaining = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream.set_read_timeout(Some(remaining)).map_err(io)?;
    let mut buf = Vec::new();
    wire::read_sealed(stream, &mut rx, 16 << 20, &mut buf).map_err(|e| {
        NetError::io(
            format!("waiting for all {size} ranks to register at {coord}"),
            e,
        )
    })?;
    let addrs = match wire::decode(&buf)? {
        Frame::Control(b) => match postcard::from_bytes::<Ctl>(b) {
            Ok(Ctl::Table { addrs }) => addrs,
            other => {
                return Err(NetError::new(
                    ErrorKind::Protocol,
                    format!("expected table from {coord}, got {other:?}"),
                ))
            }
        },
        f => {
            return Err(NetError::new(
                ErrorKind::Protocol,
                format!("expected table from {coord}, got {f:?}"),
            ))
        }
    };
    if addrs.len() != size as usize {
        return Err(NetError::new(
            ErrorKind::Protocol,
            format!(
                "table has {} for {}",
                lazarus_format::count(addrs.len() as u64, "entry"),
                lazarus_format::count(size, "rank")
            ),
        ));
    }
    let addrs = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            a.parse::<SocketAddr>().map_err(|_| {
                NetError::new(
                    ErrorKind::Protocol,
                    format!("bad address {a:?} for rank {i}"),
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    stream.set_read_timeout(None).map_err(io)?;
    Ok((addrs, conn, rx))
}

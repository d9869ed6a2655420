//! The receive side of a communicator: arrived messages in arrival order (hence in order per
//! source), peer liveness, and a wait that spins briefly before blocking.

use crate::error::{ErrorKind, NetError, Result};
use crate::wire::Tag;
use lazarus_format::{Epoch, Rank};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One received message with its full header, as the checkpoint layer needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Sending rank.
    pub src: Rank,
    /// Tag (user, collective or checkpoint space).
    pub tag: Tag,
    /// The sender's checkpoint epoch at send time.
    pub epoch: Epoch,
    /// The sender's incarnation.
    pub incarnation: u64,
    /// The message bytes.
    pub payload: Vec<u8>,
}

/// Liveness of a peer as seen by this rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PeerState {
    Alive,
    Finished,
    Failed(String),
}

struct State {
    queue: VecDeque<Envelope>,
    peers: Vec<PeerState>,
}

pub(crate) struct Mailbox {
    state: Mutex<State>,
    cv: Condvar,
    arrivals: AtomicU64,
    spin: Duration,
}

/// Which messages a receive accepts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Match {
    pub src: Option<Rank>,
    pub tag: Option<Tag>,
}

impl Match {
    fn hits(&self, e: &Envelope) -> bool {
        let tag_ok = match self.tag {
            Some(t) => t == e.tag,
            // Wildcards never steal internal collective traffic.
            None => e.tag.space() != crate::wire::TagSpace::Collective,
        };
        self.src.is_none_or(|s| s == e.src) && tag_ok
    }
}

impl Mailbox {
    pub(crate) fn new(size: usize, spin: Duration) -> Self {
        Mailbox {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                peers: vec![PeerState::Alive; size],
            }),
            cv: Condvar::new(),
            arrivals: AtomicU64::new(0),
            spin,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue half-updated (every
        // critical section is a single push/remove), so poisoning is safe to ignore.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn push(&self, e: Envelope) {
        let mut s = self.lock();
        s.queue.push_back(e);
        self.arrivals.fetch_add(1, Ordering::Release);
        drop(s);
        self.cv.notify_all();
    }

    /// Puts saved envelopes back in front of everything queued, in their given order.
    pub(crate) fn requeue(&self, envs: Vec<Envelope>) {
        let mut s = self.lock();
        for e in envs.into_iter().rev() {
            s.queue.push_front(e);
        }
        self.arrivals.fetch_add(1, Ordering::Release);
        drop(s);
        self.cv.notify_all();
    }

    /// Marks a peer; a failure is sticky (a later Bye does not hide it).
    pub(crate) fn set_peer(&self, r: Rank, st: PeerState) {
        let mut s = self.lock();
        if let Some(p) = s.peers.get_mut(r.index()) {
            if !matches!(p, PeerState::Failed(_)) {
                *p = st;
            }
        }
        self.arrivals.fetch_add(1, Ordering::Release);
        drop(s);
        self.cv.notify_all();
    }

    pub(crate) fn peer_state(&self, r: Rank) -> PeerState {
        self.lock()
            .peers
            .get(r.index())
            .cloned()
            .unwrap_or(PeerState::Alive)
    }

    fn take(s: &mut State, m: &Match) -> Option<Envelope> {
        let i = s.queue.iter().position(|e| m.hits(e))?;
        s.queue.remove(i)
    }

    /// Why a receive matching `m` can never complete, if so.
    fn hopeless(s: &State, m: &Match, me: Rank) -> Option<NetError> {
        let check = |r: usize, p: &PeerState| -> Option<NetError> {
            let rank = Rank(r as u32);
            match p {
                PeerState::Failed(why) => {
                    Some(NetError::new(ErrorKind::PeerFailed, why.clone()).with_peer(rank))
                }
                _ => None,
            }
        };
        match m.src {
            Some(src) => {
                let p = s.peers.get(src.index())?;
                if let Some(e) = check(src.index(), p) {
                    return Some(e);
                }
                (*p == PeerState::Finished && src != me).then(|| {
                    NetError::new(
                        ErrorKind::PeerFinished,
                        "peer finished without sending a matching message",
                    )
                    .with_peer(src)
                })
            }
            None => {
                for (i, p) in s.peers.iter().enumerate() {
                    if let Some(e) = check(i, p) {
                        return Some(e);
                    }
                }
                let others_done = s
                    .peers
                    .iter()
                    .enumerate()
                    .all(|(i, p)| i == me.index() || *p == PeerState::Finished);
                (others_done && s.peers.len() > 1)
                    .then(|| NetError::new(ErrorKind::PeerFinished, "every peer has finished"))
            }
        }
    }

    /// Non-blocking receive; `Err` only when the receive can never complete.
    pub(crate) fn try_recv(&self, m: &Match, me: Rank) -> Result<Option<Envelope>> {
        let mut s = self.lock();
        if let Some(e) = Self::take(&mut s, m) {
            return Ok(Some(e));
        }
        match Self::hopeless(&s, m, me) {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// Blocking receive: returns the first matching message, or an error as soon as the
    /// awaited peer (any peer, for a wildcard) has failed, or `Timeout` at `deadline`.
    pub(crate) fn recv(&self, m: &Match, me: Rank, deadline: Option<Instant>) -> Result<Envelope> {
        loop {
            let seen = self.arrivals.load(Ordering::Acquire);
            if let Some(e) = self.try_recv(m, me)? {
                return Ok(e);
            }
            // Spin briefly: a wake-up through the condvar costs tens of microseconds here.
            let t0 = Instant::now();
            // Yielding while spinning lets the transport's reader thread run on this core.
            while self.arrivals.load(Ordering::Acquire) == seen && t0.elapsed() < self.spin {
                std::thread::yield_now();
            }
            if self.arrivals.load(Ordering::Acquire) != seen {
                continue;
            }
            let s = self.lock();
            if self.arrivals.load(Ordering::Acquire) != seen {
                continue;
            }
            // Periodic re-check bounds the wait even if a notification were missed.
            let mut wait = Duration::from_millis(100);
            if let Some(d) = deadline {
                let now = Instant::now();
                if now >= d {
                    return Err(NetError::new(ErrorKind::Timeout, "receive timed out"));
                }
                wait = wait.min(d - now);
            }
            let _unused = self
                .cv
                .wait_timeout(s, wait)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

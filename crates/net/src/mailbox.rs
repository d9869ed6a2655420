//! The receive side of a communicator: arrived messages in arrival order (hence in order per
//! source), peer liveness, and a wait that spins briefly before blocking.

use crate::error::{ErrorKind, NetError, Result};
use crate::wire::Tag;
use lazarus_format::{Epoch, Rank};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    /// Receives waiting with their own buffer (see [`Mailbox::recv_posted`]), oldest first.
    slots: Vec<Slot>,
    next_slot: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// Nobody is writing the buffer; the owner may withdraw the slot.
    Waiting,
    /// A transport thread is writing the buffer; the owner must not return.
    Filling,
    /// The buffer holds a whole message.
    Done,
}

/// The caller's buffer, shared with the transport thread that fills it.
struct BufPtr(*mut u8);
// SAFETY: the pointer is only dereferenced by the one thread holding the `Filling` claim,
// while the owning thread is blocked in `recv_posted` (which never returns while a slot is
// `Filling`); the mailbox lock orders the hand-over in both directions.
unsafe impl Send for BufPtr {}

struct Slot {
    id: u64,
    m: Match,
    ptr: BufPtr,
    len: usize,
    state: SlotState,
}

/// What [`Mailbox::recv_posted`] produced.
pub(crate) enum Posted {
    /// The transport wrote the message straight into the caller's buffer.
    Filled,
    /// The message came through the queue; the caller copies it.
    Queued(Envelope),
}

/// A transport thread's exclusive right to fill one posted buffer. Dropping it without
/// [`Claim::complete`] hands the slot back (the message was not delivered).
pub(crate) struct Claim<'a> {
    mb: &'a Mailbox,
    id: u64,
    ptr: *mut u8,
    len: usize,
    done: bool,
}

impl Claim<'_> {
    /// The posted buffer, exactly as long as the message payload.
    pub(crate) fn buf(&mut self) -> &mut [u8] {
        // SAFETY: see `BufPtr`: the owner is blocked until this claim completes or is
        // dropped, and no other claim on this slot can exist while it is `Filling`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// The buffer now holds the whole message: wake its owner.
    pub(crate) fn complete(mut self) {
        self.done = true;
        self.mb.finish_claim(self.id, SlotState::Done);
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.mb.finish_claim(self.id, SlotState::Waiting);
        }
    }
}

pub(crate) struct Mailbox {
    state: Mutex<State>,
    cv: Condvar,
    arrivals: AtomicU64,
    /// Threads blocked on `cv`: pushes skip the futex wake-up syscall when nobody sleeps.
    sleepers: AtomicUsize,
    /// Upper bound of the spin ([`NetConfig::spin`](crate::NetConfig)).
    spin: Duration,
    /// Current spin budget in nanoseconds, adapted between 0 and `spin` (see
    /// [`Mailbox::wait_for_arrival`]).
    spin_budget: AtomicU64,
}

/// A yield that keeps the caller off the CPU longer than this means other threads were
/// waiting for it: the machine is oversubscribed and spinning only steals their time.
const OVERSUBSCRIBED_YIELD: Duration = Duration::from_micros(30);
/// Spin budget granted again after a wait that spinning would have caught.
const MIN_REGROW_NS: u64 = 2_000;

/// Which messages a receive accepts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Match {
    pub src: Option<Rank>,
    pub tag: Option<Tag>,
}

impl Match {
    fn hits(&self, e: &Envelope) -> bool {
        self.hits_parts(e.src, e.tag)
    }
    fn hits_parts(&self, src: Rank, tag: Tag) -> bool {
        let tag_ok = match self.tag {
            Some(t) => t == tag,
            // Wildcards never steal internal collective traffic, nor the messages of an
            // aligned checkpoint round running in the background.
            None => match tag.space() {
                crate::wire::TagSpace::Collective => false,
                crate::wire::TagSpace::Checkpoint => {
                    !Tag::CHECKPOINT_PRIVATE.contains(&tag.value())
                }
                crate::wire::TagSpace::User => true,
            },
        };
        self.src.is_none_or(|s| s == src) && tag_ok
    }
}

impl Mailbox {
    pub(crate) fn new(size: usize, spin: Duration) -> Self {
        Mailbox {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                peers: vec![PeerState::Alive; size],
                slots: Vec::new(),
                next_slot: 0,
            }),
            cv: Condvar::new(),
            arrivals: AtomicU64::new(0),
            sleepers: AtomicUsize::new(0),
            spin,
            spin_budget: AtomicU64::new(spin.as_nanos().min(u128::from(u64::MAX)) as u64),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue half-updated (every
        // critical section is a single push/remove), so poisoning is safe to ignore.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self) {
        // A sleeper registers under the lock before it waits and re-checks `arrivals`
        // under that lock, so a zero here means nobody can miss this arrival.
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            self.cv.notify_all();
        }
    }

    pub(crate) fn push(&self, e: Envelope) {
        let mut s = self.lock();
        s.queue.push_back(e);
        self.arrivals.fetch_add(1, Ordering::SeqCst);
        drop(s);
        self.wake();
    }

    /// Claims the oldest posted receive that the message `(src, tag)` of `len` bytes would
    /// satisfy, provided no queued message must be delivered to it first.
    pub(crate) fn claim(&self, src: Rank, tag: Tag, len: usize) -> Option<Claim<'_>> {
        let mut s = self.lock();
        let st = &mut *s;
        let slot = st
            .slots
            .iter_mut()
            .find(|sl| sl.state == SlotState::Waiting && sl.m.hits_parts(src, tag))?;
        if slot.len != len || st.queue.iter().any(|e| slot.m.hits(e)) {
            return None;
        }
        slot.state = SlotState::Filling;
        Some(Claim {
            mb: self,
            id: slot.id,
            ptr: slot.ptr.0,
            len,
            done: false,
        })
    }

    fn finish_claim(&self, id: u64, to: SlotState) {
        let mut s = self.lock();
        if let Some(sl) = s.slots.iter_mut().find(|sl| sl.id == id) {
            sl.state = to;
        }
        self.arrivals.fetch_add(1, Ordering::SeqCst);
        drop(s);
        self.wake();
    }

    /// Blocking receive into `dst`: either a transport fills `dst` directly (no
    /// intermediate buffer) or the matching message is taken from the queue. Same
    /// failure rules as [`Mailbox::recv`] (without deadline).
    pub(crate) fn recv_posted(&self, m: &Match, me: Rank, dst: &mut [u8]) -> Result<Posted> {
        let id = {
            let mut s = self.lock();
            if let Some(e) = Self::take(&mut s, m) {
                return Ok(Posted::Queued(e));
            }
            if let Some(e) = Self::hopeless(&s, m, me) {
                return Err(e);
            }
            let id = s.next_slot;
            s.next_slot += 1;
            s.slots.push(Slot {
                id,
                m: *m,
                ptr: BufPtr(dst.as_mut_ptr()),
                len: dst.len(),
                state: SlotState::Waiting,
            });
            id
        };
        // Withdraws the slot on every way out, waiting for a transport that is writing
        // into `dst` (it must not outlive this call).
        struct Withdraw<'a>(&'a Mailbox, u64);
        impl Drop for Withdraw<'_> {
            fn drop(&mut self) {
                let mut s = self.0.lock();
                loop {
                    let i = s.slots.iter().position(|sl| sl.id == self.1);
                    match i.and_then(|i| s.slots.get(i).map(|sl| (i, sl.state))) {
                        Some((_, SlotState::Filling)) => {
                            self.0.sleepers.fetch_add(1, Ordering::SeqCst);
                            s = self
                                .0
                                .cv
                                .wait_timeout(s, Duration::from_millis(10))
                                .unwrap_or_else(|p| p.into_inner())
                                .0;
                            self.0.sleepers.fetch_sub(1, Ordering::SeqCst);
                        }
                        Some((i, _)) => {
                            s.slots.remove(i);
                            return;
                        }
                        None => return,
                    }
                }
            }
        }
        let _withdraw = Withdraw(self, id);
        loop {
            let seen = self.arrivals.load(Ordering::SeqCst);
            {
                let mut s = self.lock();
                let state = s.slots.iter().find(|sl| sl.id == id).map(|sl| sl.state);
                // The slot leaves under the same lock as the decision, so no transport can
                // claim it in between.
                let outcome = match state {
                    Some(SlotState::Done) => Some(Ok(Posted::Filled)),
                    Some(SlotState::Waiting) | None => match Self::take(&mut s, m) {
                        Some(e) => Some(Ok(Posted::Queued(e))),
                        None => Self::hopeless(&s, m, me).map(Err),
                    },
                    Some(SlotState::Filling) => None,
                };
                if let Some(o) = outcome {
                    s.slots.retain(|sl| sl.id != id);
                    return o;
                }
            }
            self.wait_for_arrival(seen, None)?;
        }
    }

    /// Spins, then sleeps, until `arrivals` moves past `seen` (or 100 ms pass, or the
    /// deadline); `Timeout` only at the deadline.
    ///
    /// The spin is adaptive, because spinning only pays when the message comes soon and a
    /// core is free: a wait that outlasts the spin halves the budget (a bulk receive or a
    /// slow peer stops burning the CPU the transport needs), a wait shorter than `spin`
    /// grows it again (to twice that wait at least, up to `spin`), and a `yield` that kept
    /// us off the CPU
    /// for more than [`OVERSUBSCRIBED_YIELD`] (more runnable threads than cores, e.g. 16
    /// ranks on 2 cores) ends the spin at once.
    fn wait_for_arrival(&self, seen: u64, deadline: Option<Instant>) -> Result<()> {
        let max = self.spin.as_nanos().min(u128::from(u64::MAX)) as u64;
        let budget = Duration::from_nanos(self.spin_budget.load(Ordering::Relaxed).min(max));
        let t0 = Instant::now();
        let mut last = t0;
        let mut crowded = false;
        // Yielding while spinning lets the transport's reader thread run on this core.
        while self.arrivals.load(Ordering::SeqCst) == seen && last - t0 < budget {
            std::thread::yield_now();
            let now = Instant::now();
            if now - last > OVERSUBSCRIBED_YIELD {
                crowded = true;
                break;
            }
            last = now;
        }
        if self.arrivals.load(Ordering::SeqCst) != seen {
            return Ok(());
        }
        let r = self.block_for_arrival(seen, deadline);
        let waited = t0.elapsed();
        let b = budget.as_nanos() as u64;
        let waited = waited.as_nanos().min(u128::from(u64::MAX)) as u64;
        let next = if !crowded && waited <= max {
            // Spinning as long as this wait (plus margin) would have caught it.
            (2 * b).max(2 * waited).max(MIN_REGROW_NS).min(max)
        } else {
            b / 2
        };
        self.spin_budget.store(next, Ordering::Relaxed);
        r
    }

    /// The blocking half of [`Mailbox::wait_for_arrival`].
    fn block_for_arrival(&self, seen: u64, deadline: Option<Instant>) -> Result<()> {
        let s = self.lock();
        // Periodic re-check bounds the wait even if a notification were missed.
        let mut wait = Duration::from_millis(100);
        if let Some(d) = deadline {
            let now = Instant::now();
            if now >= d {
                return Err(NetError::new(ErrorKind::Timeout, "receive timed out"));
            }
            wait = wait.min(d - now);
        }
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        if self.arrivals.load(Ordering::SeqCst) == seen {
            let _unused = self
                .cv
                .wait_timeout(s, wait)
                .unwrap_or_else(|p| p.into_inner());
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }

    /// Puts saved envelopes back in front of everything queued, in their given order.
    pub(crate) fn requeue(&self, envs: Vec<Envelope>) {
        let mut s = self.lock();
        for e in envs.into_iter().rev() {
            s.queue.push_front(e);
        }
        self.arrivals.fetch_add(1, Ordering::SeqCst);
        drop(s);
        self.wake();
    }

    /// Marks a peer; a failure is sticky (a later Bye does not hide it).
    pub(crate) fn set_peer(&self, r: Rank, st: PeerState) {
        let mut s = self.lock();
        if let Some(p) = s.peers.get_mut(r.index()) {
            if !matches!(p, PeerState::Failed(_)) {
                *p = st;
            }
        }
        self.arrivals.fetch_add(1, Ordering::SeqCst);
        drop(s);
        self.wake();
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
                // A collective involves every rank: once any of them failed, the message
                // awaited may never be sent (its sender's own send to the dead rank
                // failed first), so every receive of the collective fails, as the
                // `Comm` docs promise (found in review: a rank waited for a live sender
                // that had given up, for ever if that sender handled its error and went on).
                if m.tag
                    .is_some_and(|t| t.space() == crate::wire::TagSpace::Collective)
                {
                    for (i, p) in s.peers.iter().enumerate() {
                        if let Some(e) = check(i, p) {
                            return Some(e);
                        }
                    }
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
            let seen = self.arrivals.load(Ordering::SeqCst);
            if let Some(e) = self.try_recv(m, me)? {
                return Ok(e);
            }
            self.wait_for_arrival(seen, deadline)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(src: u32) -> Envelope {
        Envelope {
            src: Rank(src),
            tag: Tag::user(1),
            epoch: Epoch(0),
            incarnation: 0,
            payload: vec![1, 2, 3],
        }
    }

    #[test]
    fn wildcard_tags_never_take_collective_or_private_checkpoint_messages() {
        let mb = Mailbox::new(2, Duration::from_micros(10));
        let with = |tag| Envelope { tag, ..env(1) };
        mb.push(with(Tag::collective(3)));
        mb.push(with(Tag::checkpoint(0x100)));
        mb.push(with(Tag::checkpoint(0x1ff)));
        mb.push(with(Tag::checkpoint(0x300)));
        mb.push(with(Tag::checkpoint(0x3ff)));
        let any = Match {
            src: None,
            tag: None,
        };
        assert!(mb.try_recv(&any, Rank(0)).unwrap().is_none());
        mb.push(with(Tag::checkpoint(0x4C5A_5500)));
        mb.push(with(Tag::user(9)));
        let got: Vec<Tag> = (0..2)
            .map(|_| mb.try_recv(&any, Rank(0)).unwrap().unwrap().tag)
            .collect();
        assert_eq!(got, vec![Tag::checkpoint(0x4C5A_5500), Tag::user(9)]);
        // Named receives still get them.
        for tag in [
            Tag::collective(3),
            Tag::checkpoint(0x100),
            Tag::checkpoint(0x1ff),
            Tag::checkpoint(0x300),
            Tag::checkpoint(0x3ff),
        ] {
            let m = Match {
                src: None,
                tag: Some(tag),
            };
            assert!(mb.try_recv(&m, Rank(0)).unwrap().is_some(), "{tag:?}");
        }
    }

    #[test]
    fn long_waits_shrink_the_spin_and_still_deliver() {
        let mb = std::sync::Arc::new(Mailbox::new(2, Duration::from_micros(100)));
        let m = Match {
            src: Some(Rank(1)),
            tag: None,
        };
        for _ in 0..3 {
            let before = mb.spin_budget.load(Ordering::Relaxed);
            let mb2 = mb.clone();
            let t = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                mb2.push(env(1));
            });
            let e = mb.recv(&m, Rank(0), None).unwrap();
            assert_eq!(e.payload, vec![1, 2, 3]);
            t.join().unwrap();
            // A 20 ms wait can never be caught by a 100 us spin: the budget halves.
            assert!(mb.spin_budget.load(Ordering::Relaxed) <= before / 2);
        }
        // A zero budget still delivers (pure blocking wait) and bounded waits time out.
        let e = mb
            .recv(
                &m,
                Rank(0),
                Some(Instant::now() + Duration::from_millis(30)),
            )
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
    }
}

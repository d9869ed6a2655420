//! The communicator: typed point-to-point messages, the bulk numeric path, the envelope
//! level used by the checkpoint protocol, and the handle shared by all backends.

use crate::config::NetConfig;
use crate::error::{ErrorKind, NetError, Result};
use crate::mailbox::{Envelope, Mailbox, Match, PeerState, Posted};
use crate::scalar::{self, Scalar};
use crate::sendbuf::SendBuf;
use crate::wire::Tag;
use lazarus_format::{Epoch, Rank};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a backend moves an envelope to another rank.
pub(crate) trait Transport: Send + Sync {
    /// Hands `env` to rank `to` (never this rank). Eager: does not wait for a receive.
    fn send(&self, to: Rank, env: Envelope) -> Result<()>;
    /// Called once when the last handle is dropped: flush what is unacknowledged (bounded
    /// by the failure timeout) and tell peers this rank is done.
    fn finalize(&self);
    /// Test hook: breaks every connection as a network fault would (not a clean close).
    #[cfg(test)]
    fn inject_reset(&self) {}
    /// Test hook: listening addresses of all ranks.
    #[cfg(test)]
    fn addrs(&self) -> Vec<std::net::SocketAddr> {
        Vec::new()
    }
}

pub(crate) struct Inner {
    pub(crate) rank: Rank,
    pub(crate) size: u32,
    pub(crate) incarnation: u64,
    epoch: AtomicU64,
    coll_seq: AtomicU32,
    pub(crate) mailbox: Arc<Mailbox>,
    transport: Option<Box<dyn Transport>>,
    pub(crate) config: NetConfig,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(t) = &self.transport {
            t.finalize();
        }
    }
}

/// A handle on this rank's view of the job: cheap to clone, `Send + Sync`.
///
/// Messages between a pair of ranks are delivered exactly once and in send order, whatever
/// the transport below does. Every blocking call returns an error naming the peer within
/// about [`NetConfig::failure_timeout`] once the peer it waits for has died (for wildcard
/// receives and collectives: once any peer has died). Collectives must be called in the
/// same order by every rank and not concurrently from several threads of one rank.
#[derive(Clone)]
pub struct Comm {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Comm")
            .field("rank", &self.inner.rank)
            .field("size", &self.inner.size)
            .field("incarnation", &self.inner.incarnation)
            .finish()
    }
}

fn codec(e: postcard::Error) -> NetError {
    NetError::new(ErrorKind::Codec, format!("postcard: {e}"))
}

impl Comm {
    pub(crate) fn from_parts(
        rank: Rank,
        size: u32,
        incarnation: u64,
        mailbox: Arc<Mailbox>,
        transport: Option<Box<dyn Transport>>,
        config: NetConfig,
    ) -> Self {
        Comm {
            inner: Arc::new(Inner {
                rank,
                size,
                incarnation,
                epoch: AtomicU64::new(0),
                coll_seq: AtomicU32::new(0),
                mailbox,
                transport,
                config,
            }),
        }
    }

    /// A world of one rank: every operation works, collectives are identities.
    pub fn solo() -> Self {
        let c = NetConfig::default();
        Comm::from_parts(Rank(0), 1, 0, Arc::new(Mailbox::new(1, c.spin)), None, c)
    }

    /// This rank.
    pub fn rank(&self) -> Rank {
        self.inner.rank
    }
    /// Number of ranks in the job.
    pub fn size(&self) -> u32 {
        self.inner.size
    }
    /// The job's incarnation (restart count), carried in every header.
    pub fn incarnation(&self) -> u64 {
        self.inner.incarnation
    }
    /// The configuration in force.
    pub fn config(&self) -> &NetConfig {
        &self.inner.config
    }
    /// Sets the checkpoint epoch stamped on every message sent from now on.
    pub fn set_epoch(&self, e: Epoch) {
        self.inner.epoch.store(e.0, Ordering::Release);
    }
    /// The current checkpoint epoch.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.inner.epoch.load(Ordering::Acquire))
    }

    fn check_rank(&self, r: Rank) -> Result<()> {
        if r.0 >= self.inner.size {
            return Err(NetError::new(
                ErrorKind::InvalidArgument,
                format!("{r} out of range for world size {}", self.inner.size),
            ));
        }
        Ok(())
    }

    // ---- envelope level -------------------------------------------------------------

    /// Sends raw bytes under `tag` (user or checkpoint space) to `to`.
    pub fn send_bytes(&self, to: Rank, tag: Tag, payload: Vec<u8>) -> Result<()> {
        self.check_rank(to)?;
        let env = Envelope {
            src: self.inner.rank,
            tag,
            epoch: self.epoch(),
            incarnation: self.inner.incarnation,
            payload,
        };
        if to == self.inner.rank {
            self.inner.mailbox.push(env);
            return Ok(());
        }
        match self.inner.mailbox.peer_state(to) {
            PeerState::Failed(why) => {
                return Err(NetError::new(ErrorKind::PeerFailed, why).with_peer(to))
            }
            PeerState::Finished => {
                return Err(
                    NetError::new(ErrorKind::PeerFinished, "peer has finished").with_peer(to)
                )
            }
            PeerState::Alive => {}
        }
        match &self.inner.transport {
            Some(t) => t.send(to, env),
            None => Err(NetError::new(ErrorKind::InvalidArgument, "no transport")),
        }
    }

    fn matcher(&self, src: Option<Rank>, tag: Option<Tag>) -> Result<Match> {
        if let Some(s) = src {
            self.check_rank(s)?;
        }
        Ok(Match { src, tag })
    }

    /// Blocking receive of the first envelope matching `src` and `tag` (`None` = any; a
    /// wildcard tag never matches internal collective traffic nor the aligned checkpoint
    /// round's messages, [`Tag::CHECKPOINT_PRIVATE`]).
    pub fn recv_envelope(&self, src: Option<Rank>, tag: Option<Tag>) -> Result<Envelope> {
        let m = self.matcher(src, tag)?;
        self.inner.mailbox.recv(&m, self.inner.rank, None)
    }

    /// Like [`Comm::recv_envelope`] but gives up with `Timeout` after `timeout`.
    pub fn recv_envelope_timeout(
        &self,
        src: Option<Rank>,
        tag: Option<Tag>,
        timeout: Duration,
    ) -> Result<Envelope> {
        let m = self.matcher(src, tag)?;
        self.inner
            .mailbox
            .recv(&m, self.inner.rank, Some(Instant::now() + timeout))
    }

    /// Non-blocking receive: `Ok(None)` if nothing matching has arrived yet.
    pub fn try_recv_envelope(
        &self,
        src: Option<Rank>,
        tag: Option<Tag>,
    ) -> Result<Option<Envelope>> {
        let m = self.matcher(src, tag)?;
        self.inner.mailbox.try_recv(&m, self.inner.rank)
    }

    /// Re-injects saved envelopes (e.g. in-flight messages captured in a checkpoint) ahead
    /// of everything queued; each is delivered exactly once by later receives.
    pub fn requeue(&self, envelopes: Vec<Envelope>) {
        self.inner.mailbox.requeue(envelopes);
    }

    // ---- typed values (postcard) ------------------------------------------------------

    /// Sends a serde value under a user tag.
    pub fn send<T: Serialize + ?Sized>(&self, to: Rank, tag: u32, value: &T) -> Result<()> {
        let bytes = postcard::to_allocvec(value).map_err(codec)?;
        self.send_bytes(to, Tag::user(tag), bytes)
    }

    /// Receives a serde value from `from` under a user tag.
    pub fn recv<T: DeserializeOwned>(&self, from: Rank, tag: u32) -> Result<T> {
        let e = self.recv_envelope(Some(from), Some(Tag::user(tag)))?;
        postcard::from_bytes(&e.payload).map_err(|e| codec(e).with_peer(from))
    }

    /// Receives a serde value from any rank under a user tag.
    pub fn recv_any<T: DeserializeOwned>(&self, tag: u32) -> Result<(Rank, T)> {
        let e = self.recv_envelope(None, Some(Tag::user(tag)))?;
        let v = postcard::from_bytes(&e.payload).map_err(|x| codec(x).with_peer(e.src))?;
        Ok((e.src, v))
    }

    /// Non-blocking typed receive (`from = None` for any source).
    pub fn try_recv<T: DeserializeOwned>(
        &self,
        from: Option<Rank>,
        tag: u32,
    ) -> Result<Option<(Rank, T)>> {
        match self.try_recv_envelope(from, Some(Tag::user(tag)))? {
            None => Ok(None),
            Some(e) => {
                let v = postcard::from_bytes(&e.payload).map_err(|x| codec(x).with_peer(e.src))?;
                Ok(Some((e.src, v)))
            }
        }
    }

    /// Typed receive bounded by `timeout` (`from = None` for any source).
    pub fn recv_timeout<T: DeserializeOwned>(
        &self,
        from: Option<Rank>,
        tag: u32,
        timeout: Duration,
    ) -> Result<(Rank, T)> {
        let e = self.recv_envelope_timeout(from, Some(Tag::user(tag)), timeout)?;
        let v = postcard::from_bytes(&e.payload).map_err(|x| codec(x).with_peer(e.src))?;
        Ok((e.src, v))
    }

    // ---- bulk numeric path ------------------------------------------------------------

    /// Sends a numeric slice as raw little-endian bytes.
    ///
    /// The bytes are copied once, into a recycled buffer that the retransmit window keeps
    /// until the peer acknowledges it (the caller may reuse `data` as soon as this returns).
    /// To skip that copy, build the message in a [`SendBuf`] and use [`Comm::send_buf`].
    pub fn send_slice<T: Scalar>(&self, to: Rank, tag: u32, data: &[T]) -> Result<()> {
        self.send_bytes(to, Tag::user(tag), scalar::to_le_bytes(data))
    }

    /// Sends a [`SendBuf`] without copying it: the retransmit window keeps the storage until
    /// the peer acknowledges it, then it is recycled for the next [`SendBuf`]. The receiver
    /// sees the same message as from [`Comm::send_slice`] (any receive of numeric data works).
    pub fn send_buf<T: Scalar>(&self, to: Rank, tag: u32, buf: SendBuf<T>) -> Result<()> {
        self.send_bytes(to, Tag::user(tag), buf.into_wire_bytes())
    }

    /// Receives exactly `buf.len()` elements from `from`; a length mismatch is an error.
    ///
    /// When the message has not arrived yet, the TCP backend reads it from the socket
    /// straight into `buf` (no intermediate buffer); otherwise it is copied from the queue.
    pub fn recv_into<T: Scalar>(&self, from: Rank, tag: u32, buf: &mut [T]) -> Result<()> {
        self.recv_into_tag(from, Tag::user(tag), buf)
    }

    /// [`Comm::recv_into`] under any tag (collectives use their own tag space).
    pub(crate) fn recv_into_tag<T: Scalar>(
        &self,
        from: Rank,
        tag: Tag,
        buf: &mut [T],
    ) -> Result<()> {
        self.check_rank(from)?;
        let m = Match {
            src: Some(from),
            tag: Some(tag),
        };
        // Raw bytes are the wire format only on little-endian hosts.
        if cfg!(target_endian = "little") && from != self.inner.rank && !buf.is_empty() {
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(buf);
            return match self.inner.mailbox.recv_posted(&m, self.inner.rank, bytes)? {
                Posted::Filled => Ok(()),
                Posted::Queued(e) => {
                    let r = scalar::from_le_bytes(&e.payload, buf).map_err(|x| x.with_peer(from));
                    crate::pool::give(e.payload);
                    r
                }
            };
        }
        let e = self.inner.mailbox.recv(&m, self.inner.rank, None)?;
        let r = scalar::from_le_bytes(&e.payload, buf).map_err(|x| x.with_peer(from));
        crate::pool::give(e.payload);
        r
    }

    /// Receives a numeric message of any length from `from`.
    pub fn recv_vec<T: Scalar>(&self, from: Rank, tag: u32) -> Result<Vec<T>> {
        let e = self.recv_envelope(Some(from), Some(Tag::user(tag)))?;
        let n = scalar::elements::<T>(&e.payload).map_err(|x| x.with_peer(from))?;
        let mut v = vec![T::zeroed(); n];
        scalar::from_le_bytes(&e.payload, &mut v)?;
        Ok(v)
    }

    // ---- internals shared with collectives ----------------------------------------------

    #[cfg(test)]
    pub(crate) fn transport_for_tests(&self) -> Option<&dyn Transport> {
        self.inner.transport.as_deref()
    }

    pub(crate) fn next_collective_tag(&self) -> Tag {
        Tag::collective(self.inner.coll_seq.fetch_add(1, Ordering::AcqRel))
    }

    pub(crate) fn coll_recv(&self, from: Rank, tag: Tag) -> Result<Vec<u8>> {
        let m = Match {
            src: Some(from),
            tag: Some(tag),
        };
        Ok(self.inner.mailbox.recv(&m, self.inner.rank, None)?.payload)
    }
}

//! The wire format: length-prefixed frames. Public so that fuzzers and tools can decode
//! untrusted bytes exactly as the runtime does.
//!
//! Every frame is `len: u32 LE` (length of what follows, `1..=max_frame`) then the body,
//! whose first byte is the [`Frame`] kind. All integers are little-endian with explicit
//! width. The handshake frames (kinds 1, 2, 9) travel as they are; every frame after the
//! handshake is *sealed*: `len` also counts a [`MAC_LEN`]-byte trailer after the body, the
//! BLAKE3 keyed hash of `counter u64 || len || body` under the direction's session key
//! (`auth.rs`; the counter is the frame's index on this connection in this direction and
//! is not sent). A job running with [`FrameMac::Off`] leaves the payload of Data frames
//! out of the hash (`len || data header` only); every other frame is hashed whole.
//!
//! | kind | name      | body after the kind byte                                              |
//! |------|-----------|-----------------------------------------------------------------------|
//! | 1    | Hello     | magic `LZRS`, version u16, role u8, then role 1 (dial): from rank u32, to rank u32, nonce `[32]`; role 2 (challenge): nonce `[32]` |
//! | 2    | Proof     | incarnation u64, frame MAC setting u8 (1 on, 2 off), proof `[32]`     |
//! | 9    | Refused   | reason u8 (1 rank may not dial, 2 authentication, 3 incarnation + the listener's incarnation u64, 4 malformed, 5 frame MAC setting + the listener's u8) |
//! | 3    | Resume    | next expected sequence number u64 (sealed, like all below)            |
//! | 4    | Data      | flags u8, tag space u8, tag u32, src u32, incarnation u64, epoch u64, seq u64, ack u64, payload |
//! | 5    | Ack       | cumulative ack u64 (next expected sequence number)                    |
//! | 6    | Heartbeat | cumulative ack u64                                                    |
//! | 7    | Bye       | (empty)                                                               |
//! | 8    | Control   | postcard-encoded rendezvous message                                   |
//!
//! Hello keeps the layout `kind 1, magic, version` of every protocol version, so peers of
//! different versions both report "wire version X, expected Y" instead of garbage.

use crate::auth::FrameMac;
use crate::auth::{Opener, Sealer};
use crate::error::{ErrorKind, NetError, Result};
use std::io::{IoSlice, Read, Write};

/// Magic bytes opening every Hello.
pub const MAGIC: [u8; 4] = *b"LZRS";
/// Wire protocol version; a peer with another version is refused. Version 2: mutual
/// authentication bound to both ranks and the role, sealed frames (issue #11). Version 3:
/// the proofs carry and bind the job's [`FrameMac`] setting. Version 4: the messages of
/// the serde collectives (broadcast, gather, allgather, scatter) open with a mark, `1`
/// and the value or `0` and why the sender cannot take part (a version 3 rank would read
/// the mark as the start of the value).
pub const VERSION: u16 = 4;
/// Length of the MAC trailer of a sealed frame (and of a handshake proof).
pub const MAC_LEN: usize = 32;
/// Size of a Data frame's body before the payload.
pub const DATA_HEADER_LEN: usize = 43;
/// Flag bit of a Data frame: this fragment ends a message.
pub const FLAG_LAST: u8 = 1;

/// The namespace of a tag: user tags can never collide with internal traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TagSpace {
    /// Tags chosen by the application.
    User,
    /// Internal collective operations.
    Collective,
    /// The checkpoint protocol (crate `coord`).
    Checkpoint,
}

impl TagSpace {
    fn code(self) -> u8 {
        match self {
            TagSpace::User => 0,
            TagSpace::Collective => 1,
            TagSpace::Checkpoint => 2,
        }
    }
    fn from_code(c: u8) -> Result<Self> {
        match c {
            0 => Ok(TagSpace::User),
            1 => Ok(TagSpace::Collective),
            2 => Ok(TagSpace::Checkpoint),
            _ => Err(NetError::new(
                ErrorKind::Protocol,
                format!("unknown tag space {c}"),
            )),
        }
    }
}

/// A message tag: a namespace and a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag {
    space: TagSpace,
    value: u32,
}

impl Tag {
    /// Checkpoint-space values that a wildcard-tag receive never matches, like collective
    /// traffic: the aligned runtime's (`lazarus_coord`, `0x100..0x200`) and the fast
    /// levels' (`lazarus_levels`, `0x300..0x400`), whose rounds run on a background thread
    /// while the program receives on the same communicator (asynchronous checkpoints,
    /// docs/ASYNC.md, docs/LEVELS.md). Other checkpoint values stay visible to wildcards
    /// (`AsyncSession` receives its markers that way). Only the receiving side consults
    /// the range (tag values on the wire are unchanged), and all ranks run one build.
    pub const CHECKPOINT_PRIVATE: std::ops::Range<u32> = 0x100..0x400;

    /// An application tag.
    pub fn user(value: u32) -> Self {
        Tag {
            space: TagSpace::User,
            value,
        }
    }
    /// A tag of the checkpoint protocol (reserved for crate `coord`). Values in
    /// [`Tag::CHECKPOINT_PRIVATE`] are never matched by a wildcard-tag receive.
    pub fn checkpoint(value: u32) -> Self {
        Tag {
            space: TagSpace::Checkpoint,
            value,
        }
    }
    pub(crate) fn collective(value: u32) -> Self {
        Tag {
            space: TagSpace::Collective,
            value,
        }
    }
    /// The tag's namespace.
    pub fn space(self) -> TagSpace {
        self.space
    }
    /// The tag's number within its namespace.
    pub fn value(self) -> u32 {
        self.value
    }
}

/// The header of a Data frame (one fragment of a message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHeader {
    /// `FLAG_LAST` when this fragment ends its message.
    pub flags: u8,
    /// The message tag.
    pub tag: Tag,
    /// Sending rank.
    pub src: u32,
    /// Sender's incarnation (restart count of the job).
    pub incarnation: u64,
    /// Sender's checkpoint epoch when the message was sent.
    pub epoch: u64,
    /// Per-(src,dst) sequence number of this fragment.
    pub seq: u64,
    /// Cumulative acknowledgement of the reverse direction (next expected sequence).
    pub ack: u64,
}

impl DataHeader {
    /// Appends the body prefix (kind byte included) of a Data frame.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(4);
        out.push(self.flags);
        out.push(self.tag.space.code());
        out.extend_from_slice(&self.tag.value.to_le_bytes());
        out.extend_from_slice(&self.src.to_le_bytes());
        out.extend_from_slice(&self.incarnation.to_le_bytes());
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.ack.to_le_bytes());
    }
}

/// The first message in each direction of a connection: the dialer's request and the
/// listener's challenge. Neither says anything about the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hello {
    /// Dialer to listener: who dials whom, and the dialer's fresh nonce.
    Dial {
        /// The dialer's claimed rank.
        from: u32,
        /// The rank the dialer wants to reach (`u32::MAX` for the coordinator).
        to: u32,
        /// Fresh random value.
        nonce: [u8; 32],
    },
    /// Listener to dialer, once the claimed ranks are acceptable: its fresh nonce.
    Challenge {
        /// Fresh random value.
        nonce: [u8; 32],
    },
}

/// A handshake proof: the keyed hash of the transcript for the sender's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proof {
    /// The sender's incarnation. The proof covers it; a listener reveals its own only
    /// after the dialer's proof verified.
    pub incarnation: u64,
    /// The sender's frame MAC setting, also covered by the proof (so it cannot be changed
    /// in flight, e.g. to downgrade a connection).
    pub frame_mac: FrameMac,
    /// `BLAKE3-keyed(auth key, label || transcript)`.
    pub mac: [u8; 32],
}

/// Why a listener closes a connection during the handshake (sent before closing, so an
/// honest peer gets a clear error; none of them tells an unauthenticated peer anything
/// it did not know).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The claimed dialer rank may not dial this rank (only a higher rank of the world
    /// dials a lower one), or the dialer wanted another rank.
    NotAllowed,
    /// The dialer's proof did not verify: another token, another job.
    Auth,
    /// The dialer proved the token but is of another incarnation; the listener's is
    /// attached (it may tell an authenticated peer).
    Incarnation(u64),
    /// A message that does not follow the protocol.
    Malformed,
    /// The dialer proved the token but runs with another frame MAC setting; the
    /// listener's is attached.
    FrameMac(FrameMac),
}

/// One decoded frame; borrows its payload from the read buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Connection opening (both directions).
    Hello(Hello),
    /// A handshake proof.
    Proof(Proof),
    /// The listener refuses the connection.
    Refused(Refusal),
    /// After authentication: the next sequence number the sender expects from us.
    Resume(u64),
    /// A message fragment.
    Data(DataHeader, &'a [u8]),
    /// Cumulative acknowledgement.
    Ack(u64),
    /// Liveness with a cumulative acknowledgement.
    Heartbeat(u64),
    /// Orderly end: the sender will send nothing more.
    Bye,
    /// Rendezvous message.
    Control(&'a [u8]),
}

struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(NetError::new(
                ErrorKind::Protocol,
                format!("frame truncated in {what}"),
            ));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.arr::<1>(what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    fn end(self, what: &str) -> Result<()> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(NetError::new(
                ErrorKind::Protocol,
                format!("{} trailing bytes after {what}", self.b.len()),
            ))
        }
    }
}

fn frame_mac(code: u8) -> Result<FrameMac> {
    FrameMac::from_code(code).ok_or_else(|| {
        NetError::new(
            ErrorKind::Protocol,
            format!("unknown frame MAC setting {code}"),
        )
    })
}

/// Decodes one frame body (without the length prefix). Never panics on any input.
pub fn decode(body: &[u8]) -> Result<Frame<'_>> {
    let mut c = Cursor { b: body };
    let kind = c.u8("kind")?;
    let f = match kind {
        1 => {
            let magic: [u8; 4] = c.arr("magic")?;
            if magic != MAGIC {
                return Err(NetError::new(ErrorKind::Protocol, "bad magic in hello"));
            }
            let version = u16::from_le_bytes(c.arr("version")?);
            if version != VERSION {
                return Err(NetError::new(
                    ErrorKind::Protocol,
                    format!("wire version {version}, expected {VERSION}"),
                ));
            }
            let h = match c.u8("hello role")? {
                1 => Hello::Dial {
                    from: c.u32("dialer rank")?,
                    to: c.u32("listener rank")?,
                    nonce: c.arr("nonce")?,
                },
                2 => Hello::Challenge {
                    nonce: c.arr("nonce")?,
                },
                r => {
                    return Err(NetError::new(
                        ErrorKind::Protocol,
                        format!("unknown hello role {r}"),
                    ))
                }
            };
            c.end("hello")?;
            Frame::Hello(h)
        }
        2 => {
            let p = Proof {
                incarnation: c.u64("proof incarnation")?,
                frame_mac: frame_mac(c.u8("proof frame MAC setting")?)?,
                mac: c.arr("proof")?,
            };
            c.end("proof")?;
            Frame::Proof(p)
        }
        9 => {
            let r = match c.u8("refusal reason")? {
                1 => Refusal::NotAllowed,
                2 => Refusal::Auth,
                3 => Refusal::Incarnation(c.u64("refusal incarnation")?),
                4 => Refusal::Malformed,
                5 => Refusal::FrameMac(frame_mac(c.u8("refusal frame MAC setting")?)?),
                r => {
                    return Err(NetError::new(
                        ErrorKind::Protocol,
                        format!("unknown refusal reason {r}"),
                    ))
                }
            };
            c.end("refusal")?;
            Frame::Refused(r)
        }
        3 => {
            let n = c.u64("resume")?;
            c.end("resume")?;
            Frame::Resume(n)
        }
        4 => {
            let flags = c.u8("flags")?;
            if flags & !FLAG_LAST != 0 {
                return Err(NetError::new(
                    ErrorKind::Protocol,
                    format!("unknown data flags {flags:#x}"),
                ));
            }
            let space = TagSpace::from_code(c.u8("tag space")?)?;
            let value = c.u32("tag")?;
            let h = DataHeader {
                flags,
                tag: Tag { space, value },
                src: c.u32("src")?,
                incarnation: c.u64("incarnation")?,
                epoch: c.u64("epoch")?,
                seq: c.u64("seq")?,
                ack: c.u64("ack")?,
            };
            Frame::Data(h, c.b)
        }
        5 => {
            let a = c.u64("ack")?;
            c.end("ack")?;
            Frame::Ack(a)
        }
        6 => {
            let a = c.u64("heartbeat")?;
            c.end("heartbeat")?;
            Frame::Heartbeat(a)
        }
        7 => {
            c.end("bye")?;
            Frame::Bye
        }
        8 => Frame::Control(c.b),
        k => {
            return Err(NetError::new(
                ErrorKind::Protocol,
                format!("unknown frame kind {k}"),
            ))
        }
    };
    Ok(f)
}

/// Appends a complete frame (length prefix included) for anything but Data payloads.
pub fn encode(frame: &Frame<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    match frame {
        Frame::Hello(h) => {
            out.push(1);
            out.extend_from_slice(&MAGIC);
            out.extend_from_slice(&VERSION.to_le_bytes());
            match h {
                Hello::Dial { from, to, nonce } => {
                    out.push(1);
                    out.extend_from_slice(&from.to_le_bytes());
                    out.extend_from_slice(&to.to_le_bytes());
                    out.extend_from_slice(nonce);
                }
                Hello::Challenge { nonce } => {
                    out.push(2);
                    out.extend_from_slice(nonce);
                }
            }
        }
        Frame::Proof(p) => {
            out.push(2);
            out.extend_from_slice(&p.incarnation.to_le_bytes());
            out.push(p.frame_mac.code());
            out.extend_from_slice(&p.mac);
        }
        Frame::Refused(r) => {
            out.push(9);
            match r {
                Refusal::NotAllowed => out.push(1),
                Refusal::Auth => out.push(2),
                Refusal::Incarnation(i) => {
                    out.push(3);
                    out.extend_from_slice(&i.to_le_bytes());
                }
                Refusal::Malformed => out.push(4),
                Refusal::FrameMac(m) => {
                    out.push(5);
                    out.push(m.code());
                }
            }
        }
        Frame::Resume(n) => {
            out.push(3);
            out.extend_from_slice(&n.to_le_bytes());
        }
        Frame::Data(h, p) => {
            h.encode(out);
            out.extend_from_slice(p);
        }
        Frame::Ack(a) => {
            out.push(5);
            out.extend_from_slice(&a.to_le_bytes());
        }
        Frame::Heartbeat(a) => {
            out.push(6);
            out.extend_from_slice(&a.to_le_bytes());
        }
        Frame::Bye => out.push(7),
        Frame::Control(p) => {
            out.push(8);
            out.extend_from_slice(p);
        }
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// An authenticated connection's sending half: the socket and the MAC of our direction.
/// Every frame written on `s` goes through `tx`, under the owner's lock, so frames leave
/// in the order of their MAC counters.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) s: std::net::TcpStream,
    pub(crate) tx: Sealer,
}

impl Conn {
    /// Writes one small frame, sealed.
    pub(crate) fn send(&mut self, frame: &Frame<'_>) -> std::io::Result<()> {
        write_sealed(&mut self.s, &mut self.tx, frame)
    }
}

/// Writes one handshake frame (Hello, Proof, Refused): the only frames sent unsealed.
pub(crate) fn write_plain(w: &mut impl Write, frame: &Frame<'_>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(64);
    encode(frame, &mut buf);
    w.write_all(&buf)
}

/// Seals the unsealed frame that starts at `out[start]` (as [`encode`] wrote it): counts
/// the MAC in its length prefix and appends the MAC.
pub(crate) fn seal_frame(tx: &mut Sealer, out: &mut Vec<u8>, start: usize) {
    let len = (out.len() - start - 4 + MAC_LEN) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let mac = tx.seal(&[&out[start..]]);
    out.extend_from_slice(&mac);
}

/// Writes one small frame, sealed.
pub(crate) fn write_sealed(
    w: &mut impl Write,
    tx: &mut Sealer,
    frame: &Frame<'_>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(64 + MAC_LEN);
    encode(frame, &mut buf);
    seal_frame(tx, &mut buf, 0);
    w.write_all(&buf)
}

/// Writes a sealed Data frame without copying the payload into a frame buffer: the MAC is
/// computed over the payload where it lies (in one `update`: BLAKE3 hashes 16 chunks at a
/// time only within one), then header, payload and MAC leave in one vectored write (one
/// syscall, one segment train, no extra syscall or copy for the trailer), as a
/// concatenation would, minus the copy.
pub(crate) fn write_data(
    w: &mut impl Write,
    tx: &mut Sealer,
    h: &DataHeader,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(4 + DATA_HEADER_LEN);
    let len = (DATA_HEADER_LEN + payload.len() + MAC_LEN) as u32;
    head.extend_from_slice(&len.to_le_bytes());
    h.encode(&mut head);
    let mac = tx.seal_data(&head, payload);
    let mut bufs = [
        IoSlice::new(&head),
        IoSlice::new(payload),
        IoSlice::new(&mac),
    ];
    write_all_vectored(w, &mut bufs)
}

/// `Write::write_all_vectored` (unstable in std): loops until every slice is written.
fn write_all_vectored(w: &mut impl Write, mut bufs: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "failed to write whole frame",
                ))
            }
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Size of a [`FrameReader`]'s staging buffer: several small frames per syscall.
const READER_BUF: usize = 64 << 10;

/// A payload read straight into its destination is MACed in pieces that end where the
/// hasher's input reaches a multiple of this. BLAKE3 hashes up to 16 chunks of 1 KiB at
/// once only within one `update`, and only over runs of chunks aligned to their own size
/// in its input: pieces as the socket returns them (a segment, or whatever a read
/// happened to get) hashed ~10x slower at 1.4 KiB than at 64 KiB, and 64 KiB pieces that
/// start at an arbitrary offset ~1.5-2x slower than aligned ones (docs/PERFORMANCE.md,
/// "Frame MAC"). 64 KiB read a moment ago are still in the cache.
const HASH_BATCH: usize = 64 << 10;

/// Feeds `h` the part of `data[*hashed..arrived]` that ends on a [`HASH_BATCH`] boundary
/// of the hasher's input, or all of it when `last`.
fn hash_arrived(
    h: &mut blake3::Hasher,
    data: &[u8],
    hashed: &mut usize,
    arrived: usize,
    last: bool,
) {
    let end = if last {
        arrived
    } else {
        // `h.count()` is the input position of `data[*hashed]`.
        let pos = h.count() as usize;
        let boundary = (pos + arrived - *hashed) / HASH_BATCH * HASH_BATCH;
        *hashed + boundary.saturating_sub(pos)
    };
    if let Some(piece) = data.get(*hashed..end).filter(|p| !p.is_empty()) {
        h.update(piece);
        *hashed = end;
    }
}

/// What [`FrameReader::next`] found.
pub(crate) enum Next {
    /// A Data frame: its header bytes (kind byte included) and the payload length still
    /// to be read with [`FrameReader::read_into`] or [`FrameReader::read_vec`], which also
    /// check the frame's MAC. Nothing in the header is authenticated before that.
    Data([u8; DATA_HEADER_LEN], usize),
    /// Any other frame, its MAC verified; its body is [`FrameReader::body`].
    Small,
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn invalid(m: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, m)
}

/// Checks a sealed frame's length prefix: within `max` and with room for the MAC.
fn check_len(len: u32, max: u32) -> std::io::Result<usize> {
    if len == 0 || len > max {
        return Err(invalid(format!("frame length {len} outside 1..={max}")));
    }
    let len = len as usize;
    if len <= MAC_LEN {
        return Err(invalid(format!(
            "frame of {len} bytes has no room for its {MAC_LEN}-byte MAC"
        )));
    }
    Ok(len)
}

/// Incremental reader of sealed frames over a stream with a read timeout.
///
/// Why: reading a length, then a header, then a payload costs three syscalls per message;
/// staging what the socket has lets one `read` carry the prefix, the header and (for small
/// messages) the payload, and lets a large payload go straight into its destination.
/// A read timeout between frames is returned (so the caller can check for shutdown); a
/// timeout in the middle of a frame is retried until `stop()` says to give up, so the
/// stream never loses its framing. Every frame's MAC is checked (a payload's as it
/// arrives, while it is hot in the cache); a frame that fails is an `InvalidData` error
/// and the connection must be dropped.
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    small: std::ops::Range<usize>,
    rx: Opener,
    /// MAC state of the Data frame whose payload is still to be read.
    pending: Option<blake3::Hasher>,
}

impl FrameReader {
    pub(crate) fn new(rx: Opener) -> Self {
        FrameReader {
            buf: vec![0; READER_BUF],
            start: 0,
            end: 0,
            small: 0..0,
            rx,
            pending: None,
        }
    }

    /// Makes at least `k` (<= READER_BUF) bytes available from `start`.
    fn ensure(
        &mut self,
        r: &mut impl Read,
        k: usize,
        at_boundary: bool,
        stop: &dyn Fn() -> bool,
    ) -> std::io::Result<()> {
        if self.start + k > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while self.end - self.start < k {
            let spare = self.buf.get_mut(self.end..).unwrap_or_default();
            match r.read(spare) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed",
                    ))
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => {
                    if (at_boundary && self.start == self.end) || stop() {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads the next frame's prefix; refuses lengths of 0, above `max`, or without room
    /// for the MAC. A small frame is read whole and its MAC checked here.
    pub(crate) fn next(
        &mut self,
        r: &mut impl Read,
        max: u32,
        stop: &dyn Fn() -> bool,
    ) -> std::io::Result<Next> {
        if self.pending.is_some() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the previous data frame's payload was not read",
            ));
        }
        self.ensure(r, 5, true, stop)?;
        let b = &self.buf[self.start..self.end];
        let len = check_len(u32::from_le_bytes([b[0], b[1], b[2], b[3]]), max)?;
        let kind = b[4];
        if kind == 4 {
            if len < DATA_HEADER_LEN + MAC_LEN {
                return Err(invalid(format!(
                    "data frame of {len} bytes has no full header and MAC"
                )));
            }
            self.ensure(r, 4 + DATA_HEADER_LEN, false, stop)?;
            let mut head = [0u8; DATA_HEADER_LEN];
            let from = self.start + 4;
            head.copy_from_slice(&self.buf[from..from + DATA_HEADER_LEN]);
            let mut h = self.rx.start();
            h.update(&self.buf[self.start..from + DATA_HEADER_LEN]);
            self.pending = Some(h);
            self.start += 4 + DATA_HEADER_LEN;
            return Ok(Next::Data(head, len - DATA_HEADER_LEN - MAC_LEN));
        }
        if len + 4 > READER_BUF {
            return Err(invalid(format!(
                "{len}-byte frame of kind {kind} is too long"
            )));
        }
        self.ensure(r, 4 + len, false, stop)?;
        let body_end = self.start + 4 + len - MAC_LEN;
        let mut h = self.rx.start();
        h.update(&self.buf[self.start..body_end]);
        self.rx
            .verify(&h, &self.buf[body_end..body_end + MAC_LEN])?;
        self.small = self.start + 4..body_end;
        self.start += 4 + len;
        Ok(Next::Small)
    }

    /// The body of the frame [`Next::Small`] announced (MAC removed).
    pub(crate) fn body(&self) -> &[u8] {
        self.buf.get(self.small.clone()).unwrap_or_default()
    }

    fn take_pending(&mut self) -> std::io::Result<blake3::Hasher> {
        self.pending.take().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "payload read without a data frame header",
            )
        })
    }

    /// Reads the MAC trailer of the Data frame whose payload `h` has absorbed and checks it.
    fn finish(
        &mut self,
        r: &mut impl Read,
        h: blake3::Hasher,
        stop: &dyn Fn() -> bool,
    ) -> std::io::Result<()> {
        self.ensure(r, MAC_LEN, false, stop)?;
        let mac = self.start..self.start + MAC_LEN;
        self.start += MAC_LEN;
        self.rx.verify(&h, &self.buf[mac])
    }

    /// Fills `dst` with the next `dst.len()` payload bytes (what is staged is copied, the
    /// rest is read from the socket straight into `dst`, hashed piece by piece as it
    /// arrives), then checks the frame's MAC. On an error `dst` holds unauthenticated
    /// bytes and must not be delivered.
    pub(crate) fn read_into(
        &mut self,
        r: &mut impl Read,
        dst: &mut [u8],
        stop: &dyn Fn() -> bool,
    ) -> std::io::Result<()> {
        let mut h = self.take_pending()?;
        let staged = (self.end - self.start).min(dst.len());
        dst[..staged].copy_from_slice(&self.buf[self.start..self.start + staged]);
        self.start += staged;
        let mac = self.rx.covers_payload().then_some(&mut h);
        fill_hashed(r, dst, staged, mac, stop)?;
        self.finish(r, h, stop)
    }

    /// Reads the next `n` payload bytes into a (pooled) vector of exactly that length,
    /// without zero-filling it first, then checks the frame's MAC.
    pub(crate) fn read_vec(
        &mut self,
        r: &mut impl Read,
        n: usize,
        stop: &dyn Fn() -> bool,
    ) -> std::io::Result<Vec<u8>> {
        let mut v = crate::pool::take(n);
        self.read_append(r, &mut v, n, stop)?;
        Ok(v)
    }

    /// Appends the next `n` payload bytes to `v` (without zero-filling the new space
    /// first), then checks the frame's MAC. On an error `v` is truncated back to its
    /// length on entry: nothing unauthenticated stays in it.
    ///
    /// Why: a fragment of a large message goes straight into the message being
    /// reassembled. Read into a buffer of its own and then appended, every byte was
    /// copied once more, into fresh memory (slow first-touch faults), and the reader did
    /// not read its socket while it copied a 64 MiB fragment (the sender's write could
    /// stall past its timeout and force a reconnect). `n` is bounded by the frame length
    /// [`FrameReader::next`] checked against `max_frame`, so at most that much is
    /// reserved before the MAC has verified; the capacity `v` grows to is amortized
    /// (at most twice its verified length plus `n`).
    pub(crate) fn read_append(
        &mut self,
        r: &mut impl Read,
        v: &mut Vec<u8>,
        n: usize,
        stop: &dyn Fn() -> bool,
    ) -> std::io::Result<()> {
        let base = v.len();
        let r = self.append(r, v, n, stop);
        if r.is_err() {
            v.truncate(base);
        }
        r
    }

    fn append(
        &mut self,
        r: &mut impl Read,
        v: &mut Vec<u8>,
        n: usize,
        stop: &dyn Fn() -> bool,
    ) -> std::io::Result<()> {
        let mut h = self.take_pending()?;
        let mac_payload = self.rx.covers_payload();
        let (base, end) = (v.len(), v.len().saturating_add(n));
        v.try_reserve(n).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                format!("{n}-byte payload: {e}"),
            )
        })?;
        let staged = (self.end - self.start).min(n);
        v.extend_from_slice(&self.buf[self.start..self.start + staged]);
        self.start += staged;
        let mut hashed = 0;
        loop {
            if mac_payload {
                let got = v.len() - base;
                let new = v.get(base..).unwrap_or_default();
                hash_arrived(&mut h, new, &mut hashed, got, v.len() >= end);
            }
            if v.len() >= end {
                break;
            }
            let want = (end - v.len()) as u64;
            match r.by_ref().take(want).read_to_end(v) {
                Ok(_) if v.len() < end => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("frame ended after {} of {n} payload bytes", v.len() - base),
                    ))
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) && !stop() => {}
                Err(e) => return Err(e),
            }
        }
        self.finish(r, h, stop)
    }
}

/// Reads `dst[filled..]` from `r`, feeding `mac` (if any) all of `dst` in aligned pieces
/// as they arrive (see [`HASH_BATCH`]). A read timeout is retried until `stop()`.
fn fill_hashed(
    r: &mut impl Read,
    dst: &mut [u8],
    filled: usize,
    mut mac: Option<&mut blake3::Hasher>,
    stop: &dyn Fn() -> bool,
) -> std::io::Result<()> {
    let (mut off, mut hashed) = (filled, 0);
    loop {
        if let Some(h) = mac.as_deref_mut() {
            hash_arrived(h, dst, &mut hashed, off, off == dst.len());
        }
        let Some(rest) = dst.get_mut(off..).filter(|r| !r.is_empty()) else {
            return Ok(());
        };
        match r.read(rest) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("frame ended {} bytes early", rest.len()),
                ))
            }
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) && !stop() => {}
            Err(e) => return Err(e),
        }
    }
}

/// The frame MAC alone over a plain byte stream, for `lazarus bench net`'s "authenticated
/// raw TCP" limit: the keyed BLAKE3 of a data frame (same key schedule, same per-message
/// counter, same pieces, same 32-byte trailer in the same vectored write) with none of a
/// connection's framing, reliability or hand-off to the application. Returns the sending
/// and the receiving end of one direction.
#[doc(hidden)]
pub fn mac_only_stream() -> (MacOnlyWriter, MacOnlyReader) {
    let ((tx, _), (_, rx)) = crate::auth::fixed_sessions(3, FrameMac::On);
    (MacOnlyWriter(tx), MacOnlyReader(rx))
}

/// See [`mac_only_stream`].
#[doc(hidden)]
#[derive(Debug)]
pub struct MacOnlyWriter(Sealer);

impl MacOnlyWriter {
    /// Writes `payload` and its MAC (computed over `payload` where it lies).
    pub fn write(&mut self, w: &mut impl Write, payload: &[u8]) -> std::io::Result<()> {
        let mac = self.0.seal_data(&[], payload);
        write_all_vectored(w, &mut [IoSlice::new(payload), IoSlice::new(&mac)])
    }
}

/// See [`mac_only_stream`].
#[doc(hidden)]
#[derive(Debug)]
pub struct MacOnlyReader(Opener);

impl MacOnlyReader {
    /// Reads `dst.len()` bytes straight into `dst`, hashing them as they arrive, then the
    /// MAC; an error if it does not verify.
    pub fn read(&mut self, r: &mut impl Read, dst: &mut [u8]) -> std::io::Result<()> {
        let mut h = self.0.start();
        fill_hashed(r, dst, 0, Some(&mut h), &|| false)?;
        let mut tag = [0u8; MAC_LEN];
        r.read_exact(&mut tag)?;
        self.0.verify(&h, &tag)
    }
}

/// Reads one handshake frame body into `buf` (resized); refuses lengths of 0 or above
/// `max` before allocating.
pub(crate) fn read_plain(r: &mut impl Read, max: u32, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len == 0 || len > max {
        return Err(invalid(format!("frame length {len} outside 1..={max}")));
    }
    buf.clear();
    buf.resize(len as usize, 0);
    r.read_exact(buf)
}

/// Reads one sealed frame's body into `buf` (MAC checked and removed); refuses lengths of
/// 0, above `max` or without room for the MAC before allocating. For the few frames read
/// outside a [`FrameReader`] (the resume exchange, the rendezvous registration): a read
/// timeout in the middle of the frame loses the framing, so the caller must treat any
/// error as the end of the connection.
pub(crate) fn read_sealed(
    r: &mut impl Read,
    rx: &mut Opener,
    max: u32,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    let mut prefix = [0u8; 4];
    r.read_exact(&mut prefix)?;
    let len = check_len(u32::from_le_bytes(prefix), max)?;
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf)?;
    let body = len - MAC_LEN;
    let mut h = rx.start();
    h.update(&prefix);
    h.update(&buf[..body]);
    rx.verify(&h, &buf[body..])?;
    buf.truncate(body);
    Ok(())
}

/// Runs the sealed-frame reader over arbitrary bytes twice (for the fuzz target
/// `frame_decode`): as they are (no frame may pass its MAC), and as a sequence of frame
/// bodies (`n: u8` then `n` bytes, repeated) that are sealed first, so that what follows
/// the MAC check (lengths, kinds, data headers, `decode`) sees arbitrary bodies. Returns
/// the number of frames read; must never panic or over-allocate.
#[doc(hidden)]
pub fn fuzz_sealed_frames(input: &[u8]) -> usize {
    let never = || false;
    let drain = |rx: Opener, mut r: &[u8]| {
        let mut rd = FrameReader::new(rx);
        let mut n = 0;
        loop {
            match rd.next(&mut r, 1 << 16, &never) {
                Ok(Next::Small) => {
                    let _ = decode(rd.body());
                }
                Ok(Next::Data(head, len)) => {
                    let _ = decode(&head);
                    if rd.read_vec(&mut r, len, &never).is_err() {
                        return n;
                    }
                }
                Err(_) => return n,
            }
            n += 1;
        }
    };
    let ((_, rx), _) = crate::auth::fixed_sessions(1, FrameMac::On);
    let mut total = drain(rx, input);
    for mode in [FrameMac::On, FrameMac::Off] {
        // Sealed with the dialer's key, read with the listener's.
        let ((mut tx, _), (_, rx)) = crate::auth::fixed_sessions(2, mode);
        let mut sealed = Vec::new();
        let mut rest = input;
        while let Some((&n, tail)) = rest.split_first() {
            let body = tail.get(..n as usize).unwrap_or(tail);
            rest = &tail[body.len()..];
            let start = sealed.len();
            sealed.extend_from_slice(&[0; 4]);
            sealed.extend_from_slice(body);
            if let Ok(Frame::Data(h, p)) = decode(body) {
                // A data body as `write_data` seals it (the payload covered or not).
                sealed.truncate(start);
                let _ = write_data(&mut sealed, &mut tx, &h, p);
            } else {
                seal_frame(&mut tx, &mut sealed, start);
            }
        }
        total += drain(rx, &sealed);
    }
    total
}

/// The version a Hello of any protocol version announces, when `body` starts like one
/// (kind 1, magic): lets a peer of another version be answered and named clearly.
pub fn hello_version(body: &[u8]) -> Option<u16> {
    match body {
        [1, m0, m1, m2, m3, v0, v1, ..] if [*m0, *m1, *m2, *m3] == MAGIC => {
            Some(u16::from_le_bytes([*v0, *v1]))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn body(f: &Frame<'_>) -> Vec<u8> {
        let mut v = Vec::new();
        encode(f, &mut v);
        v.split_off(4)
    }

    /// An owned frame, for strategies.
    #[derive(Clone, Debug)]
    enum Owned {
        Hello(Hello),
        Proof(Proof),
        Refused(Refusal),
        Resume(u64),
        Ack(u64),
        Heartbeat(u64),
        Bye,
        Control(Vec<u8>),
        Data(DataHeader, Vec<u8>),
    }

    impl Owned {
        fn frame(&self) -> Frame<'_> {
            match self {
                Owned::Hello(h) => Frame::Hello(*h),
                Owned::Proof(p) => Frame::Proof(*p),
                Owned::Refused(r) => Frame::Refused(*r),
                Owned::Resume(n) => Frame::Resume(*n),
                Owned::Ack(n) => Frame::Ack(*n),
                Owned::Heartbeat(n) => Frame::Heartbeat(*n),
                Owned::Bye => Frame::Bye,
                Owned::Control(b) => Frame::Control(b),
                Owned::Data(h, p) => Frame::Data(*h, p),
            }
        }
    }

    fn header() -> impl Strategy<Value = DataHeader> {
        (
            0u8..2,
            0u8..3,
            any::<u32>(),
            any::<u32>(),
            any::<[u64; 4]>(),
        )
            .prop_map(
                |(flags, space, value, src, [incarnation, epoch, seq, ack])| DataHeader {
                    flags,
                    tag: Tag {
                        space: TagSpace::from_code(space).unwrap(),
                        value,
                    },
                    src,
                    incarnation,
                    epoch,
                    seq,
                    ack,
                },
            )
    }

    fn payload() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => proptest::collection::vec(any::<u8>(), 0..200),
            1 => (0usize..600_000, any::<u8>()).prop_map(|(n, b)| {
                (0..n).map(|i| (i as u8).wrapping_mul(31) ^ b).collect()
            }),
        ]
    }

    fn any_frame() -> impl Strategy<Value = Owned> {
        prop_oneof![
            (any::<u32>(), any::<u32>(), any::<[u8; 32]>())
                .prop_map(|(from, to, nonce)| Owned::Hello(Hello::Dial { from, to, nonce })),
            any::<[u8; 32]>().prop_map(|nonce| Owned::Hello(Hello::Challenge { nonce })),
            (any::<u64>(), any::<bool>(), any::<[u8; 32]>()).prop_map(|(incarnation, off, mac)| {
                Owned::Proof(Proof {
                    incarnation,
                    frame_mac: if off { FrameMac::Off } else { FrameMac::On },
                    mac,
                })
            }),
            prop_oneof![
                Just(Refusal::NotAllowed),
                Just(Refusal::Auth),
                Just(Refusal::Malformed),
                Just(Refusal::FrameMac(FrameMac::On)),
                Just(Refusal::FrameMac(FrameMac::Off)),
                any::<u64>().prop_map(Refusal::Incarnation),
            ]
            .prop_map(Owned::Refused),
            any::<u64>().prop_map(Owned::Resume),
            any::<u64>().prop_map(Owned::Ack),
            any::<u64>().prop_map(Owned::Heartbeat),
            Just(Owned::Bye),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Owned::Control),
            (header(), payload()).prop_map(|(h, p)| Owned::Data(h, p)),
        ]
    }

    fn session(seed: u8) -> ((Sealer, Opener), (Sealer, Opener)) {
        crate::auth::fixed_sessions(seed, FrameMac::On)
    }

    /// The sealed byte stream of `frames`, and where each frame starts.
    fn seal_all(tx: &mut Sealer, frames: &[Owned]) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        let mut starts = Vec::new();
        for f in frames {
            starts.push(out.len());
            match f {
                Owned::Data(h, p) => write_data(&mut out, tx, h, p).unwrap(),
                other => write_sealed(&mut out, tx, &other.frame()).unwrap(),
            }
        }
        (out, starts)
    }

    /// Hands out `data` in pieces of the given sizes (cycled), like a socket.
    struct Chunked<'a> {
        data: &'a [u8],
        sizes: Vec<usize>,
        i: usize,
    }

    impl Read for Chunked<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let k = self.sizes[self.i % self.sizes.len()].max(1);
            self.i += 1;
            let n = k.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// Reads sealed frames until the stream ends or fails: the frames (as unsealed bodies)
    /// and the error that ended it (`UnexpectedEof` at a clean end).
    fn read_all(rx: Opener, r: &mut impl Read) -> (Vec<Vec<u8>>, std::io::Error) {
        let mut rd = FrameReader::new(rx);
        let mut got = Vec::new();
        let never = || false;
        loop {
            match rd.next(r, 1 << 20, &never) {
                Ok(Next::Small) => got.push(rd.body().to_vec()),
                Ok(Next::Data(head, n)) => {
                    // Alternate the two payload paths.
                    let p = if got.len() % 2 == 0 {
                        rd.read_vec(r, n, &never)
                    } else {
                        let mut v = vec![0u8; n];
                        rd.read_into(r, &mut v, &never).map(|()| v)
                    };
                    match p {
                        Ok(p) => {
                            let mut b = head.to_vec();
                            b.extend_from_slice(&p);
                            got.push(b);
                        }
                        Err(e) => return (got, e),
                    }
                }
                Err(e) => return (got, e),
            }
        }
    }

    /// `read_append` puts a verified payload after what the vector held and leaves the
    /// vector exactly as it was when the frame fails (a flipped payload bit, a flipped
    /// MAC bit, a stream cut in the payload or in the MAC), however the socket splits it.
    #[test]
    fn read_append_appends_verified_payloads_and_cuts_back_failed_ones() {
        let h = DataHeader {
            flags: 0,
            tag: Tag::user(3),
            src: 1,
            incarnation: 0,
            epoch: 0,
            seq: 0,
            ack: 0,
        };
        let payload: Vec<u8> = (0..300_007u32).map(|i| (i * 7 + 1) as u8).collect();
        let never = || false;
        let prefix: Vec<u8> = (0..70_001u32).map(|i| (i % 251) as u8).collect();
        // Damage at: none, payload start/middle/end, MAC; cut in the payload, in the MAC.
        let frame_len = 4 + DATA_HEADER_LEN + payload.len() + MAC_LEN;
        let damages = [
            None,
            Some((4 + DATA_HEADER_LEN, false)),
            Some((4 + DATA_HEADER_LEN + 150_000, false)),
            Some((frame_len - MAC_LEN - 1, false)),
            Some((frame_len - 5, false)),
            Some((4 + DATA_HEADER_LEN + 200_000, true)),
            Some((frame_len - 3, true)),
        ];
        for (k, damage) in damages.into_iter().enumerate() {
            for sizes in [vec![1 << 20], vec![1460, 9000, 65_536], vec![7]] {
                let ((mut tx, _), (_, rx)) = session(2);
                let mut bytes = Vec::new();
                write_data(&mut bytes, &mut tx, &h, &payload).unwrap();
                match damage {
                    Some((at, true)) => bytes.truncate(at),
                    Some((at, false)) => bytes[at] ^= 0x10,
                    None => {}
                }
                let mut r = Chunked {
                    data: &bytes,
                    sizes: sizes.clone(),
                    i: 0,
                };
                let mut rd = FrameReader::new(rx);
                let Ok(Next::Data(_, n)) = rd.next(&mut r, 1 << 20, &never) else {
                    panic!("case {k}: no data frame");
                };
                assert_eq!(n, payload.len());
                let mut v = prefix.clone();
                let res = rd.read_append(&mut r, &mut v, n, &never);
                if damage.is_none() {
                    res.unwrap();
                    assert_eq!(&v[..prefix.len()], &prefix[..]);
                    assert_eq!(&v[prefix.len()..], &payload[..]);
                    // Amortized growth: at most twice what it holds.
                    assert!(v.capacity() <= 2 * v.len(), "case {k}: {}", v.capacity());
                } else {
                    assert!(res.is_err(), "case {k} {sizes:?}: a damaged frame verified");
                    assert_eq!(v, prefix, "case {k} {sizes:?}: unverified bytes kept");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn every_frame_kind_round_trips(f in any_frame()) {
            let b = body(&f.frame());
            prop_assert_eq!(decode(&b).unwrap(), f.frame());
        }

        /// The fuzz target's two passes: raw bytes never pass a MAC; sealed arbitrary
        /// bodies all come out (each decoded or refused) unless one breaks the framing.
        #[test]
        fn sealed_arbitrary_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let n = fuzz_sealed_frames(&bytes);
            prop_assert!(n <= bytes.len());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
            let _ = hello_version(&bytes);
            let _ = read_plain(&mut &bytes[..], 1 << 20, &mut Vec::new());
            let ((_, mut rx), _) = session(1);
            let _ = read_sealed(&mut &bytes[..], &mut rx, 1 << 20, &mut Vec::new());
            let ((_, rx), _) = session(1);
            let (got, _) = read_all(rx, &mut &bytes[..]);
            prop_assert!(got.is_empty(), "random bytes passed a MAC");
        }

        #[test]
        fn mutated_frames_never_panic(f in any_frame(), idx: usize, val: u8) {
            let mut b = body(&f.frame());
            let n = b.len();
            b[idx % n] = val;
            let _ = decode(&b);
            b.truncate(idx % n);
            let _ = decode(&b);
        }

        /// Sealed frames of every kind and size come out of the reader exactly as they
        /// went in, however the socket splits the bytes.
        #[test]
        fn sealed_frames_round_trip_through_the_reader(
            frames in proptest::collection::vec(any_frame(), 1..12),
            sizes in proptest::collection::vec(1usize..70_000, 1..8),
            off: bool,
        ) {
            let mode = if off { FrameMac::Off } else { FrameMac::On };
            let ((mut tx, _), (_, rx)) = crate::auth::fixed_sessions(1, mode);
            let (bytes, _) = seal_all(&mut tx, &frames);
            let (got, end) = read_all(rx, &mut Chunked { data: &bytes, sizes, i: 0 });
            prop_assert_eq!(end.kind(), std::io::ErrorKind::UnexpectedEof);
            prop_assert_eq!(got.len(), frames.len());
            for (g, f) in got.iter().zip(&frames) {
                prop_assert_eq!(g, &body(&f.frame()));
            }
        }

        /// One flipped bit anywhere, or a cut anywhere: the frames before it come out
        /// intact, the damaged one and everything after never do.
        #[test]
        fn damaged_sealed_streams_never_yield_a_wrong_frame(
            frames in proptest::collection::vec(any_frame(), 1..8),
            at: usize, bit in 0u8..8, cut: bool,
        ) {
            let ((mut tx, _), (_, rx)) = session(1);
            let (mut bytes, starts) = seal_all(&mut tx, &frames);
            let at = at % bytes.len();
            if cut {
                bytes.truncate(at);
            } else {
                bytes[at] ^= 1 << bit;
            }
            let damaged = starts.iter().rposition(|s| *s <= at).unwrap();
            let (got, end) = read_all(rx, &mut &bytes[..]);
            prop_assert!(got.len() <= damaged, "{} frames read, frame {damaged} damaged", got.len());
            for (g, f) in got.iter().zip(&frames) {
                prop_assert_eq!(g, &body(&f.frame()));
            }
            // A flipped length prefix may make the reader wait for bytes that never
            // come (the end of the stream here, the failure timeout on a socket).
            prop_assert!(matches!(end.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof), "{}", end);
        }

        /// Reordered, replayed, reflected or spliced-in frames fail their MAC.
        #[test]
        fn moved_frames_fail_their_mac(
            frames in proptest::collection::vec(any_frame(), 2..6),
            how in 0u8..4, i: usize,
        ) {
            let ((mut tx, _), (mut l_tx, l_rx)) = session(1);
            let (bytes, starts) = seal_all(&mut tx, &frames);
            let piece = |k: usize| {
                let end = starts.get(k + 1).copied().unwrap_or(bytes.len());
                bytes[starts[k]..end].to_vec()
            };
            let i = i % (frames.len() - 1);
            let mut stream: Vec<u8> = (0..i).flat_map(piece).collect();
            match how {
                // Swap frames i and i+1.
                0 => { stream.extend(piece(i + 1)); stream.extend(piece(i)); }
                // Replay frame i (or an earlier one) at position i+1.
                1 => { stream.extend(piece(i)); stream.extend(piece(i / 2)); }
                // Drop frame i.
                2 => { stream.extend(piece(i + 1)); }
                // Splice in frame i of another connection (same token, other nonces).
                _ => {
                    let ((mut tx2, _), _) = session(2);
                    let (other, starts2) = seal_all(&mut tx2, &frames);
                    let end = starts2.get(i + 1).copied().unwrap_or(other.len());
                    stream.extend_from_slice(&other[starts2[i]..end]);
                }
            }
            let (got, end) = read_all(l_rx, &mut &stream[..]);
            prop_assert!(got.len() <= i + usize::from(how == 1), "{} frames read", got.len());
            prop_assert_eq!(end.kind(), std::io::ErrorKind::InvalidData);
            // Reflection: the listener's own first frame fed back to the listener.
            let (own, _) = seal_all(&mut l_tx, &frames[..1]);
            let (_, (_, l_rx_again)) = session(1);
            let (got, end) = read_all(l_rx_again, &mut &own[..]);
            prop_assert!(got.is_empty());
            prop_assert_eq!(end.kind(), std::io::ErrorKind::InvalidData);
        }
    }

    /// However the socket splits a payload, the reader hashes it in pieces that end on
    /// `HASH_BATCH` boundaries of the hasher's input (BLAKE3's wide SIMD path), and the
    /// result is the hash of the whole.
    #[test]
    fn arrived_payload_is_hashed_in_aligned_pieces() {
        let data: Vec<u8> = (0..700_000u32).map(|i| (i * 7) as u8).collect();
        let mut rng = rand::thread_rng();
        for _ in 0..50 {
            let mut h = blake3::Hasher::new();
            h.update(&[1; 55]);
            let (mut arrived, mut hashed) = (0, 0);
            while arrived < data.len() {
                arrived = (arrived + rand::Rng::gen_range(&mut rng, 1..90_000)).min(data.len());
                let before = hashed;
                hash_arrived(&mut h, &data, &mut hashed, arrived, false);
                assert!(hashed <= arrived);
                if hashed != before {
                    assert_eq!(h.count() % HASH_BATCH as u64, 0);
                }
                assert!(
                    arrived - hashed < HASH_BATCH,
                    "{} bytes held back",
                    arrived - hashed
                );
            }
            hash_arrived(&mut h, &data, &mut hashed, arrived, true);
            let mut whole = blake3::Hasher::new();
            whole.update(&[1; 55]);
            whole.update(&data);
            assert_eq!(h.finalize(), whole.finalize());
        }
    }

    #[test]
    fn limits_hold_and_other_versions_are_named() {
        let mut big = Vec::new();
        big.extend_from_slice(&(2000u32).to_le_bytes());
        big.resize(2004, 0);
        assert!(read_plain(&mut &big[..], 1000, &mut Vec::new()).is_err());
        assert!(decode(&[99]).is_err());
        assert!(decode(&[]).is_err());
        // A sealed frame too short to hold its MAC is refused before anything is read.
        let ((_, mut rx), _) = session(1);
        let short = [5u8, 0, 0, 0, 6, 0, 0, 0, 0];
        let e = read_sealed(&mut &short[..], &mut rx, 1 << 20, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("no room for its"), "{e}");
        // A version 1 Hello (kind 1, magic, version 1, job id, rank, incarnation, nonce).
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&MAGIC);
        v1.extend_from_slice(&1u16.to_le_bytes());
        v1.extend_from_slice(&[0; 8 + 4 + 8 + 32]);
        assert_eq!(hello_version(&v1), Some(1));
        let e = decode(&v1).unwrap_err();
        assert!(e.to_string().contains("wire version 1, expected 4"), "{e}");
        let ours = body(&Frame::Hello(Hello::Challenge { nonce: [0; 32] }));
        assert_eq!(hello_version(&ours), Some(VERSION));
        // A version 2 peer (same hello, a proof without the frame MAC setting).
        let mut v2 = ours.clone();
        v2[5..7].copy_from_slice(&2u16.to_le_bytes());
        let e = decode(&v2).unwrap_err();
        assert!(e.to_string().contains("wire version 2, expected 4"), "{e}");
        // A version 3 peer (the collectives' messages without their mark).
        let mut v3 = ours.clone();
        v3[5..7].copy_from_slice(&3u16.to_le_bytes());
        let e = decode(&v3).unwrap_err();
        assert!(e.to_string().contains("wire version 3, expected 4"), "{e}");
        // A proof or refusal naming a setting that does not exist.
        let mut p = body(&Frame::Proof(Proof {
            incarnation: 1,
            frame_mac: FrameMac::Off,
            mac: [0; 32],
        }));
        p[9] = 7;
        let e = decode(&p).unwrap_err();
        assert!(e.to_string().contains("unknown frame MAC setting 7"), "{e}");
        let e = decode(&[9, 5, 0]).unwrap_err();
        assert!(e.to_string().contains("unknown frame MAC setting 0"), "{e}");
    }
}

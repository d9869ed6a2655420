//! The wire format: length-prefixed frames. Public so that fuzzers and tools can decode
//! untrusted bytes exactly as the runtime does.
//!
//! Every frame is `len: u32 LE` (length of the body, `1..=max_frame`) then the body, whose
//! first byte is the [`Frame`] kind. All integers are little-endian with explicit width.
//!
//! | kind | name      | body after the kind byte                                              |
//! |------|-----------|-----------------------------------------------------------------------|
//! | 1    | Hello     | magic `LZRS`, version u16, job id `[8]`, rank u32, incarnation u64, nonce `[32]` |
//! | 2    | Proof     | HMAC-SHA256 `[32]`                                                      |
//! | 3    | Resume    | next expected sequence number u64                                     |
//! | 4    | Data      | flags u8, tag space u8, tag u32, src u32, incarnation u64, epoch u64, seq u64, ack u64, payload |
//! | 5    | Ack       | cumulative ack u64 (next expected sequence number)                    |
//! | 6    | Heartbeat | cumulative ack u64                                                    |
//! | 7    | Bye       | (empty)                                                               |
//! | 8    | Control   | postcard-encoded rendezvous message                                   |

use crate::error::{ErrorKind, NetError, Result};
use std::io::{IoSlice, Read, Write};

/// Magic bytes opening every Hello.
pub const MAGIC: [u8; 4] = *b"LZRS";
/// Wire protocol version; a peer with another version is refused.
pub const VERSION: u16 = 1;
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
    /// An application tag.
    pub fn user(value: u32) -> Self {
        Tag {
            space: TagSpace::User,
            value,
        }
    }
    /// A tag of the checkpoint protocol (reserved for crate `coord`).
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

/// The Hello that opens every connection in both directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Identifies the job (derived from the token; not secret-revealing).
    pub job: [u8; 8],
    /// Sender's rank (`u32::MAX` for the coordinator).
    pub rank: u32,
    /// Sender's incarnation.
    pub incarnation: u64,
    /// Fresh random challenge.
    pub nonce: [u8; 32],
}

/// One decoded frame; borrows its payload from the read buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Connection opening.
    Hello(Hello),
    /// Answer to the peer's challenge.
    Proof([u8; 32]),
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

impl Frame<'_> {
    #[cfg(test)]
    pub(crate) fn into_owned_hello(self) -> Option<Hello> {
        match self { Frame::Hello(h) => Some(h), _ => None }
    }
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
            let h = Hello {
                job: c.arr("job id")?,
                rank: c.u32("rank")?,
                incarnation: c.u64("incarnation")?,
                nonce: c.arr("nonce")?,
            };
            c.end("hello")?;
            Frame::Hello(h)
        }
        2 => {
            let m = c.arr("proof")?;
            c.end("proof")?;
            Frame::Proof(m)
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
            out.extend_from_slice(&h.job);
            out.extend_from_slice(&h.rank.to_le_bytes());
            out.extend_from_slice(&h.incarnation.to_le_bytes());
            out.extend_from_slice(&h.nonce);
        }
        Frame::Proof(m) => {
            out.push(2);
            out.extend_from_slice(m);
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

/// Writes one small frame.
pub(crate) fn write_frame(w: &mut impl Write, frame: &Frame<'_>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(64);
    encode(frame, &mut buf);
    w.write_all(&buf)
}

/// Writes a Data frame without copying the payload into a frame buffer: header and payload
/// leave in one vectored write (one syscall, one segment train), as a concatenation would,
/// minus the copy.
pub(crate) fn write_data(
    w: &mut impl Write,
    h: &DataHeader,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(4 + DATA_HEADER_LEN);
    let len = (DATA_HEADER_LEN + payload.len()) as u32;
    head.extend_from_slice(&len.to_le_bytes());
    h.encode(&mut head);
    let mut bufs = [IoSlice::new(&head), IoSlice::new(payload)];
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

/// What [`FrameReader::next`] found.
pub(crate) enum Next {
    /// A Data frame: its header bytes (kind byte included) and the payload length still
    /// to be read with [`FrameReader::read_into`] or [`FrameReader::read_vec`].
    Data([u8; DATA_HEADER_LEN], usize),
    /// Any other frame; its body is [`FrameReader::body`].
    Small,
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Incremental frame reader over a stream with a read timeout.
///
/// Why: reading a length, then a header, then a payload costs three syscalls per message;
/// staging what the socket has lets one `read` carry the prefix, the header and (for small
/// messages) the payload, and lets a large payload go straight into its destination.
/// A read timeout between frames is returned (so the caller can check for shutdown); a
/// timeout in the middle of a frame is retried until `stop()` says to give up, so the
/// stream never loses its framing.
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    small: std::ops::Range<usize>,
}

impl FrameReader {
    pub(crate) fn new() -> Self {
        FrameReader {
            buf: vec![0; READER_BUF],
            start: 0,
            end: 0,
            small: 0..0,
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

    /// Reads the next frame's prefix; refuses lengths of 0 or above `max`.
    pub(crate) fn next(
        &mut self,
        r: &mut impl Read,
        max: u32,
        stop: &dyn Fn() -> bool,
    ) -> std::io::Result<Next> {
        self.ensure(r, 5, true, stop)?;
        let b = &self.buf[self.start..self.end];
        let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let kind = b[4];
        let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
        if len == 0 || len > max {
            return Err(bad(format!("frame length {len} outside 1..={max}")));
        }
        let len = len as usize;
        if kind == 4 {
            if len < DATA_HEADER_LEN {
                return Err(bad(format!("data frame of {len} bytes has no full header")));
            }
            self.ensure(r, 4 + DATA_HEADER_LEN, false, stop)?;
            let mut head = [0u8; DATA_HEADER_LEN];
            let from = self.start + 4;
            head.copy_from_slice(&self.buf[from..from + DATA_HEADER_LEN]);
            self.start += 4 + DATA_HEADER_LEN;
            return Ok(Next::Data(head, len - DATA_HEADER_LEN));
        }
        if len + 4 > READER_BUF {
            return Err(bad(format!("{len}-byte frame of kind {kind} is too long")));
        }
        self.ensure(r, 4 + len, false, stop)?;
        self.small = self.start + 4..self.start + 4 + len;
        self.start += 4 + len;
        Ok(Next::Small)
    }

    /// The body of the frame [`Next::Small`] announced.
    pub(crate) fn body(&self) -> &[u8] {
        self.buf.get(self.small.clone()).unwrap_or_default()
    }

    /// Fills `dst` with the next `dst.len()` payload bytes: what is staged is copied, the
    /// rest is read from the socket straight into `dst`.
    pub(crate) fn read_into(
        &mut self,
        r: &mut impl Read,
        dst: &mut [u8],
        stop: &dyn Fn() -> bool,
    ) -> std::io::Result<()> {
        let staged = (self.end - self.start).min(dst.len());
        let (now, rest) = dst.split_at_mut(staged);
        now.copy_from_slice(&self.buf[self.start..self.start + staged]);
        self.start += staged;
        let mut off = 0;
        while off < rest.len() {
            match r.read(&mut rest[off..]) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("frame ended {} bytes early", rest.len() - off),
                    ))
                }
                Ok(n) => off += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) && !stop() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads the next `n` payload bytes into a (pooled) vector of exactly that length,
    /// without zero-filling it first.
    pub(crate) fn read_vec(
        &mut self,
        r: &mut impl Read,
        n: usize,
        stop: &dyn Fn() -> bool,
    ) -> std::io::Result<Vec<u8>> {
        let mut v = crate::pool::take(n);
        let staged = (self.end - self.start).min(n);
        v.extend_from_slice(&self.buf[self.start..self.start + staged]);
        self.start += staged;
        while v.len() < n {
            let want = (n - v.len()) as u64;
            match r.by_ref().take(want).read_to_end(&mut v) {
                Ok(_) if v.len() < n => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("frame ended after {} of {n} payload bytes", v.len()),
                    ))
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) && !stop() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(v)
    }
}

/// Reads one frame body into `buf` (resized); refuses lengths of 0 or above `max`.
pub(crate) fn read_frame(r: &mut impl Read, max: u32, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len == 0 || len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame length {len} outside 1..={max}"),
        ));
    }
    buf.clear();
    buf.resize(len as usize, 0);
    r.read_exact(buf)
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

    proptest! {
        #[test]
        fn data_frames_round_trip(flags in 0u8..2, space in 0u8..3, tag: u32, src: u32,
                                  inc: u64, ep: u64, seq: u64, ack: u64,
                                  payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let h = DataHeader { flags, tag: Tag { space: TagSpace::from_code(space).unwrap(), value: tag },
                src, incarnation: inc, epoch: ep, seq, ack };
            let f = Frame::Data(h, &payload);
            let b = body(&f);
            prop_assert_eq!(decode(&b).unwrap(), f);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
            let _ = read_frame(&mut &bytes[..], 1 << 20, &mut Vec::new());
        }

        #[test]
        fn mutated_frames_never_panic(seed: u64, idx: usize, val: u8) {
            let h = Hello { job: seed.to_le_bytes(), rank: 3, incarnation: 1, nonce: [7; 32] };
            let mut b = body(&Frame::Hello(h));
            let n = b.len();
            b[idx % n] = val;
            let _ = decode(&b);
            b.truncate(idx % n);
            let _ = decode(&b);
        }
    }

    #[test]
    fn small_frames_round_trip_and_limits_hold() {
        let h = Hello {
            job: [1; 8],
            rank: 2,
            incarnation: 9,
            nonce: [3; 32],
        };
        for f in [
            Frame::Hello(h),
            Frame::Proof([5; 32]),
            Frame::Resume(7),
            Frame::Ack(8),
            Frame::Heartbeat(9),
            Frame::Bye,
            Frame::Control(b"xyz"),
        ] {
            assert_eq!(decode(&body(&f)).unwrap(), f);
        }
        let mut big = Vec::new();
        big.extend_from_slice(&(2000u32).to_le_bytes());
        big.resize(2004, 0);
        assert!(read_frame(&mut &big[..], 1000, &mut Vec::new()).is_err());
        assert!(decode(&[99]).is_err());
        assert!(decode(&[]).is_err());
    }
}

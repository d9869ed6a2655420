#!/usr/bin/env python3
"""Standalone reader of Lazarus checkpoint repositories (format 1.x), numpy only.

Written from docs/FORMAT.md alone (not from the Rust code), so it checks that the
specification is sufficient. It verifies everything the format lets a reader verify:

* FORMAT magic and major version;
* the BLAKE3 checksum of every COMMIT and manifest envelope, and each manifest's BLAKE3
  against the COMMIT's ``manifest_digest`` (format 1.1: a manifest may be stored inline in
  COMMIT, base64 in ``parts[r].manifest``, instead of as ``rank-<r>.manifest``);
* the BLAKE3 of every chunk's raw bytes against its file name.

A repository in an S3 bucket (``s3://bucket/prefix``) is read the same way after copying
it to a directory (``aws s3 sync s3://bucket/prefix ./repo``; docs/STORAGE.md).

BLAKE3 is not in hashlib, so this file carries its own implementation (written from the
BLAKE3 specification; vectorised over 1 KiB chunks with numpy, ~10-50 MB/s). Pass
``verify=False`` (CLI ``--no-verify``) to skip chunk digests on large repositories;
envelope checksums are always checked (they are small).

Byte order: every binary field is decoded with an explicit little-endian format
(``struct`` ``'<'``, numpy ``'<f8'`` ...), never the host's native order, so this reader
gives the same values on a big-endian or 32-bit host. Arrays are returned in the host's
native byte order (converted from little-endian), ready for arithmetic.

Compression: chunks with codec 0 (none) need numpy only. Codec 1 (zstd) needs the
``zstandard`` package from PyPI or the stdlib ``compression.zstd`` (Python >= 3.14); when
neither is present, reading such a chunk raises ``LazarusFormatError`` naming the chunk and
suggesting ``pip install zstandard`` (or writing the repository with codec "none").
The byte-shuffle filter is undone with numpy.

API::

    repo = open_repo("path/to/repo")
    repo.checkpoints()                     # [CheckpointInfo(id, step, world_size, ...)]
    a = repo.load(name="field")            # newest intact checkpoint, whole distributed array
    a = repo.load(checkpoint=2, name="ids", rank=1)   # one rank's part
    parts = repo.load(name="ids")          # non-distributed object: list indexed by rank

CLI::

    python3 tools/lazarus_reader.py REPO [--checkpoint ID] [--field NAME] [--rank R]
        [--dump-npy OUT.npy] [--dump-raw OUT.bin] [--digest] [--no-verify]

Without ``--field`` it prints a summary of the repository; with it, the array's shape,
dtype and statistics. ``--digest`` prints the SHA-256 of the array's little-endian bytes
``--dump-all DIR`` writes every object of the checkpoint (see --help),
``--dump-npy`` saves it with ``numpy.save``, ``--dump-raw`` writes its little-endian
bytes (what the Rust test compares bit for bit). Serde objects are dumped as their bytes.
``--dump-all`` refuses an object name that is not one safe file name (it never escapes
one) and never follows a link planted in DIR. Exit statuses: 0 ok, 1 output not written,
2 repository damaged or unreadable, 3 usage error or not found (see ``--help`` and
docs/FORMAT.md, "Independent readers").

Every repository file is opened without following symbolic links or blocking on FIFOs,
must be a regular file and at most the format's maximum size for its kind; any refusal
names the file and counts as damage of that file.
"""

import argparse
import hashlib
import base64
import errno
import json
import os
import re
import stat
import struct
import sys

import numpy as np

__all__ = [
    "LazarusFormatError",
    "LazarusNotFound",
    "Repo",
    "CheckpointInfo",
    "ObjectInfo",
    "open_repo",
    "blake3",
    "Postcard",
]

SUPPORTED_MAJOR = 1
MAX_ENVELOPE_BODY = 256 << 20  # bytes of JSON a manifest or COMMIT body may have

# dtype tag -> little-endian numpy dtype. Never a native-order type.
DTYPES = {
    "u8": "<u1",
    "i8": "<i1",
    "u16": "<u2",
    "i16": "<i2",
    "u32": "<u4",
    "i32": "<i4",
    "u64": "<u8",
    "i64": "<i8",
    "f32": "<f4",
    "f64": "<f8",
}

MAX_RAW_CHUNK = 256 << 20
# Largest file of each kind a reader reads (the format's maxima; a larger file is damage,
# refused before its bytes are read): FORMAT is 12 bytes; an envelope (manifest, COMMIT) is
# its 48-byte header and at most MAX_ENVELOPE_BODY bytes of JSON; a chunk is its 16-byte
# header and at most zstd's compress bound of MAX_RAW_CHUNK raw bytes (a zstd frame may be
# slightly larger than its input: ZSTD_COMPRESSBOUND(n) = n + n/256 + a constant).
MAX_FORMAT_FILE = 4096  # FORMAT is exactly 12 bytes; any other length is refused below
MAX_ENVELOPE_FILE = 48 + MAX_ENVELOPE_BODY
MAX_CHUNK_FILE = 16 + MAX_RAW_CHUNK + (MAX_RAW_CHUNK >> 8) + (128 << 10)
_ID_RE = re.compile(r"^[0-9]{16}$")
_RANK_RE = re.compile(r"^rank-(0|[1-9][0-9]*)\.manifest$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class LazarusFormatError(Exception):
    """A repository file is missing, malformed or corrupt. The message names the file."""

    def __init__(self, path, msg, missing=False):
        super().__init__("%s: %s" % (path, msg))
        self.path = path
        self.missing = missing  # the file does not exist (ENOENT)


class LazarusNotFound(LazarusFormatError):
    """What was asked for is not in the repository (a checkpoint id that is not committed,
    a rank outside the world size, an object name no rank has). Not damage: ``load`` never
    falls back to an older checkpoint on it. The CLI exits with status 3 on it."""


# ----------------------------------------------------------------------------- BLAKE3

_IV = np.array(
    [
        0x6A09E667,
        0xBB67AE85,
        0x3C6EF372,
        0xA54FF53A,
        0x510E527F,
        0x9B05688C,
        0x1F83D9AB,
        0x5BE0CD19,
    ],
    dtype=np.uint32,
)
_PERM = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8]
_CHUNK_START, _CHUNK_END, _PARENT, _ROOT = 1, 2, 4, 8
_CHUNK_LEN, _BLOCK_LEN = 1024, 64


def _rotr(x, n):
    return (x >> np.uint32(n)) | (x << np.uint32(32 - n))


def _compress(cv, m, counter, block_len, flags):
    """BLAKE3 compression of many blocks at once.

    cv: list of 8 uint32 arrays (n,); m: list of 16 uint32 arrays; counter: uint64 array;
    block_len, flags: uint32 arrays. Returns the 8 chaining-value words.
    """
    n = cv[0].shape[0]
    s = list(cv) + [np.full(n, _IV[i], dtype=np.uint32) for i in range(4)]
    s += [
        (counter & np.uint64(0xFFFFFFFF)).astype(np.uint32),
        (counter >> np.uint64(32)).astype(np.uint32),
        block_len.astype(np.uint32),
        flags.astype(np.uint32),
    ]
    m = list(m)

    def g(a, b, c, d, x, y):
        s[a] = s[a] + s[b] + x
        s[d] = _rotr(s[d] ^ s[a], 16)
        s[c] = s[c] + s[d]
        s[b] = _rotr(s[b] ^ s[c], 12)
        s[a] = s[a] + s[b] + y
        s[d] = _rotr(s[d] ^ s[a], 8)
        s[c] = s[c] + s[d]
        s[b] = _rotr(s[b] ^ s[c], 7)

    for r in range(7):
        g(0, 4, 8, 12, m[0], m[1])
        g(1, 5, 9, 13, m[2], m[3])
        g(2, 6, 10, 14, m[4], m[5])
        g(3, 7, 11, 15, m[6], m[7])
        g(0, 5, 10, 15, m[8], m[9])
        g(1, 6, 11, 12, m[10], m[11])
        g(2, 7, 8, 13, m[12], m[13])
        g(3, 4, 9, 14, m[14], m[15])
        if r < 6:
            m = [m[i] for i in _PERM]
    return [s[i] ^ s[i + 8] for i in range(8)]


def blake3(data):
    """BLAKE3-256 (unkeyed, default output length) of ``data``; returns 32 bytes.

    The 1 KiB chunks are compressed in parallel (numpy lanes); the tree is then reduced
    level by level, pairing neighbours and carrying an odd last node up, which builds the
    same left-complete tree as the reference implementation's chaining-value stack.
    """
    data = bytes(data)
    n_chunks = max(1, -(-len(data) // _CHUNK_LEN))
    padded = np.zeros(n_chunks * _CHUNK_LEN, dtype=np.uint8)
    padded[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    # Message words are little-endian u32 whatever the host's order.
    words = padded.view("<u4").astype(np.uint32).reshape(n_chunks, 16, 16)
    last_len = len(data) - (n_chunks - 1) * _CHUNK_LEN  # bytes in the last chunk
    last_blocks = max(1, -(-last_len // _BLOCK_LEN))
    cv = [np.full(n_chunks, _IV[i], dtype=np.uint32) for i in range(8)]
    counter = np.arange(n_chunks, dtype=np.uint64)
    is_last_chunk = np.arange(n_chunks) == n_chunks - 1
    for b in range(16):
        active = ~is_last_chunk | (b < last_blocks)
        if not active.any():
            break
        blen = np.full(n_chunks, _BLOCK_LEN, dtype=np.uint32)
        if b == last_blocks - 1:
            blen[-1] = last_len - b * _BLOCK_LEN
        flags = np.zeros(n_chunks, dtype=np.uint32)
        if b == 0:
            flags |= _CHUNK_START
        ends = (b == 15) | (is_last_chunk & (b == last_blocks - 1))
        flags[ends] |= _CHUNK_END
        if n_chunks == 1 and b == last_blocks - 1:
            flags |= _ROOT
        m = [words[:, b, i] for i in range(16)]
        new = _compress(cv, m, counter, blen, flags)
        cv = [np.where(active, new[i], cv[i]) for i in range(8)]
    nodes = np.stack(cv, axis=1)  # (n, 8)
    while nodes.shape[0] > 1:
        pairs = nodes.shape[0] // 2
        left = nodes[0 : 2 * pairs : 2]
        right = nodes[1 : 2 * pairs : 2]
        root = nodes.shape[0] == 2
        m = [left[:, i] for i in range(8)] + [right[:, i] for i in range(8)]
        key = [np.full(pairs, _IV[i], dtype=np.uint32) for i in range(8)]
        flags = np.full(pairs, _PARENT | (_ROOT if root else 0), dtype=np.uint32)
        out = _compress(
            key,
            m,
            np.zeros(pairs, dtype=np.uint64),
            np.full(pairs, _BLOCK_LEN, dtype=np.uint32),
            flags,
        )
        parents = np.stack(out, axis=1)
        if nodes.shape[0] % 2:
            parents = np.concatenate([parents, nodes[-1:]], axis=0)
        nodes = parents
    return nodes[0].astype("<u4").tobytes()


# ----------------------------------------------------------------------------- postcard


class Postcard:
    """Minimal cursor over postcard 1.x bytes, for decoding serde objects by hand.

    postcard has no schema in the data: the caller reads fields in the Rust struct's
    order. Unsigned integers > u8 are LEB128 varints, signed ones zigzag varints, floats
    little-endian IEEE-754, strings and sequences a varint length then the items.
    """

    def __init__(self, data, name="object"):
        self.data = bytes(data)
        self.pos = 0
        self.name = name

    def _take(self, n):
        if self.pos + n > len(self.data):
            raise LazarusFormatError(self.name, "postcard data ends early at byte %d" % self.pos)
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def u8(self):
        return self._take(1)[0]

    def bool(self):
        return self.u8() != 0

    def varint(self):
        """An unsigned LEB128 varint (u16/u32/u64/usize, lengths)."""
        v, shift = 0, 0
        while True:
            b = self.u8()
            v |= (b & 0x7F) << shift
            if b < 0x80:
                return v
            shift += 7
            if shift > 63:
                raise LazarusFormatError(self.name, "varint too long at byte %d" % self.pos)

    def zigzag(self):
        """A signed (zigzag) varint (i16/i32/i64/isize)."""
        v = self.varint()
        return (v >> 1) ^ -(v & 1)

    def f32(self):
        return struct.unpack("<f", self._take(4))[0]

    def f64(self):
        return struct.unpack("<d", self._take(8))[0]

    def str(self):
        n = self.varint()
        try:
            return self._take(n).decode("utf-8")
        except UnicodeDecodeError as e:
            raise LazarusFormatError(self.name, "string is not UTF-8: %s" % e)

    def at_end(self):
        return self.pos == len(self.data)


# ----------------------------------------------------------------------------- decoding


def _read(path, limit):
    """The bytes of the regular file `path`, at most `limit` of them (the format's maximum
    for that kind of file). Like the Rust readers' ``open_regular``: a symbolic link is
    refused, not followed (``O_NOFOLLOW``); a FIFO does not block the open (``O_NONBLOCK``)
    and, like a directory, socket or device, is refused after ``fstat``; a file larger than
    `limit` is refused before it is read. Every refusal is a LazarusFormatError naming
    `path`, so it counts as damage of that file."""
    flags = (
        os.O_RDONLY
        | getattr(os, "O_NOFOLLOW", 0)
        | getattr(os, "O_NONBLOCK", 0)
        | getattr(os, "O_CLOEXEC", 0)
        | getattr(os, "O_BINARY", 0)
    )
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise LazarusFormatError(path, "is a symbolic link (refused, never followed)")
        if e.errno == errno.ENOENT:
            raise LazarusFormatError(path, "cannot read: %s" % e.strerror, missing=True)
        raise LazarusFormatError(path, "cannot read: %s" % e.strerror)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            m = st.st_mode
            what = (
                "a directory" if stat.S_ISDIR(m)
                else "a FIFO" if stat.S_ISFIFO(m)
                else "a socket" if stat.S_ISSOCK(m)
                else "a device" if stat.S_ISCHR(m) or stat.S_ISBLK(m)
                else "not a regular file"
            )
            raise LazarusFormatError(path, "is %s, not a regular file (refused)" % what)
        if st.st_size > limit:
            raise LazarusFormatError(
                path,
                "file is %d bytes, larger than the format's maximum %d for it" % (st.st_size, limit),
            )
        chunks, n = [], 0
        while n <= limit:  # the file may grow while it is read: never more than limit + 1
            b = os.read(fd, min(limit + 1 - n, 1 << 24))
            if not b:
                break
            chunks.append(b)
            n += len(b)
        if n > limit:
            raise LazarusFormatError(
                path, "file is larger than the format's maximum %d for it" % limit
            )
        return b"".join(chunks)
    except OSError as e:
        raise LazarusFormatError(path, "cannot read: %s" % e.strerror)
    finally:
        os.close(fd)


def _envelope(path, magic, raw=None):
    """Checks a 48-byte LZMF/LZCM envelope and returns its JSON body (decoded). `raw` is
    the file's bytes when they do not come from `path` (a manifest inline in COMMIT)."""
    if raw is None:
        raw = _read(path, MAX_ENVELOPE_FILE)
    if len(raw) < 48:
        raise LazarusFormatError(path, "%d bytes, shorter than the 48-byte header" % len(raw))
    if raw[:4] != magic:
        raise LazarusFormatError(path, "magic %r, expected %r" % (raw[:4], magic))
    major, minor, body_len = struct.unpack_from("<HHQ", raw, 4)
    if major != 1:
        raise LazarusFormatError(
            path, "envelope version %d.%d is not supported by this reader" % (major, minor)
        )
    if body_len > MAX_ENVELOPE_BODY:
        raise LazarusFormatError(
            path, "body length %d exceeds the envelope limit %d" % (body_len, MAX_ENVELOPE_BODY)
        )
    if len(raw) != 48 + body_len:
        raise LazarusFormatError(
            path, "file is %d bytes, header says 48 + %d" % (len(raw), body_len)
        )
    if blake3(raw[:16] + raw[48:]) != raw[16:48]:
        raise LazarusFormatError(path, "checksum mismatch (the file is corrupt)")
    try:
        body = json.loads(raw[48:].decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as e:
        raise LazarusFormatError(path, "body is not UTF-8 JSON: %s" % e)
    if not isinstance(body, dict):
        raise LazarusFormatError(path, "body is not a JSON object")
    return raw, body


def _no_duplicate_keys(pairs):
    """A JSON object with a duplicate key is invalid (FORMAT.md): parsers disagree on it."""
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError("duplicate key %r" % k)
        out[k] = v
    return out


def _field(path, obj, key, kind):
    if key not in obj:
        raise LazarusFormatError(path, "missing field `%s`" % key)
    v = obj[key]
    if kind == "u64":
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 64:
            raise LazarusFormatError(path, "field `%s` is not a u64: %r" % (key, v))
    elif kind == "str" and not isinstance(v, str):
        raise LazarusFormatError(path, "field `%s` is not a string" % key)
    elif kind == "list" and not isinstance(v, list):
        raise LazarusFormatError(path, "field `%s` is not an array" % key)
    elif kind == "dict" and not isinstance(v, dict):
        raise LazarusFormatError(path, "field `%s` is not an object" % key)
    return v


ZSTD_FRAME_MAGIC = b"\x28\xb5\x2f\xfd"


def _zstd_decompress(payload, raw_len, path):
    """Exactly one zstd frame, nothing before or after it (FORMAT.md, "Chunk")."""
    if payload[:4] != ZSTD_FRAME_MAGIC:
        raise LazarusFormatError(
            path, "zstd payload does not start with a zstd frame (magic 28 b5 2f fd)"
        )
    try:
        import zstandard  # type: ignore

        try:
            return zstandard.ZstdDecompressor().decompress(
                payload, max_output_size=raw_len, allow_extra_data=False
            )
        except zstandard.ZstdError as e:
            raise LazarusFormatError(path, "zstd payload does not decode: %s" % e)
    except ImportError:
        pass
    try:
        from compression import zstd  # type: ignore  # Python >= 3.14

        d = zstd.ZstdDecompressor()
        try:
            out = d.decompress(payload, max_length=raw_len + 1)
        except zstd.ZstdError as e:
            raise LazarusFormatError(path, "zstd payload does not decode: %s" % e)
        if not d.eof:
            raise LazarusFormatError(path, "zstd frame is truncated or too large")
        if d.unused_data:
            raise LazarusFormatError(
                path, "%d bytes after the zstd frame: one frame only" % len(d.unused_data)
            )
        return out
    except ImportError:
        raise LazarusFormatError(
            path,
            "chunk is zstd-compressed and no zstd decoder is available: "
            "`pip install zstandard` (or use Python >= 3.14), or write the repository "
            "with codec none",
        )


def decode_chunk(path, raw_file, expect_digest=None, verify=True):
    """Decodes one chunk file's bytes into its raw bytes (see FORMAT.md, "Chunk")."""
    if len(raw_file) < 16:
        raise LazarusFormatError(path, "chunk is %d bytes, shorter than its header" % len(raw_file))
    magic, codec, filt, width, layout, raw_len = struct.unpack_from("<4sBBBBQ", raw_file, 0)
    if magic != b"LZCK":
        raise LazarusFormatError(path, "chunk magic %r, expected b'LZCK'" % magic)
    if layout != 1:
        raise LazarusFormatError(path, "chunk layout version %d is not supported" % layout)
    if raw_len > MAX_RAW_CHUNK:
        raise LazarusFormatError(path, "raw length %d exceeds 256 MiB" % raw_len)
    payload = raw_file[16:]
    if codec == 0:
        filtered = payload
    elif codec == 1:
        filtered = _zstd_decompress(payload, raw_len, path)
    else:
        raise LazarusFormatError(path, "unknown codec %d" % codec)
    if len(filtered) != raw_len:
        raise LazarusFormatError(
            path, "payload decodes to %d bytes, header says %d" % (len(filtered), raw_len)
        )
    if filt == 0:
        if width != 0:
            raise LazarusFormatError(path, "filter none with element width %d" % width)
        raw = bytes(filtered)
    elif filt == 1:
        if not 2 <= width <= 8:
            raise LazarusFormatError(path, "byte-shuffle width %d outside 2..8" % width)
        n = raw_len // width
        f = np.frombuffer(filtered, dtype=np.uint8)
        body = f[: n * width].reshape(width, n).T.reshape(-1)
        raw = body.tobytes() + bytes(f[n * width :])
    else:
        raise LazarusFormatError(path, "unknown filter %d" % filt)
    if verify and expect_digest is not None and blake3(raw).hex() != expect_digest:
        raise LazarusFormatError(path, "BLAKE3 of the decoded bytes does not match the name")
    return raw


class CheckpointInfo:
    """One committed checkpoint (from its COMMIT record)."""

    def __init__(self, id, step, world_size, time_unix_ms, app, parts, writer):
        self.id = id
        self.step = step
        self.world_size = world_size
        self.time_unix_ms = time_unix_ms
        self.app = app
        self.parts = parts  # [{rank, manifest_digest, logical_bytes, stored_new_bytes}]
        self.writer = writer

    def __repr__(self):
        return "CheckpointInfo(id=%d, step=%d, world_size=%d)" % (
            self.id,
            self.step,
            self.world_size,
        )


class ObjectInfo:
    """One object of one rank's manifest."""

    def __init__(self, rank, d, path):
        self.rank = rank
        self.name = _field(path, d, "name", "str")
        self.type_name = _field(path, d, "type_name", "str")
        self.kind = _field(path, d, "kind", "str")
        self.bytes = _field(path, d, "bytes", "u64")
        self.chunks = _field(path, d, "chunks", "list")
        self.dtype = None
        self.len = None
        self.global_range = None  # (start, len, total) in elements (scalars)
        where = "%s (object `%s`)" % (path, self.name)
        if self.kind == "bulk":
            self.dtype = _field(where, d, "dtype", "str")
            if self.dtype not in DTYPES:
                raise LazarusFormatError(where, "unknown dtype %r" % self.dtype)
            self.len = _field(where, d, "len", "u64")
            g = d.get("global")
            if g is not None:
                if not isinstance(g, dict):
                    raise LazarusFormatError(where, "field `global` is not an object")
                self.global_range = tuple(
                    _field(where, g, k, "u64") for k in ("start", "len", "total")
                )
                start, glen, total = self.global_range
                if glen != self.len or start + glen > total:
                    raise LazarusFormatError(
                        where, "global range %r does not fit len %d" % (g, self.len)
                    )
            if self.len * np.dtype(DTYPES[self.dtype]).itemsize != self.bytes:
                raise LazarusFormatError(
                    where, "%d x %s is not %d bytes" % (self.len, self.dtype, self.bytes)
                )
        elif self.kind != "serde":
            raise LazarusFormatError(where, "unknown kind %r" % self.kind)
        # Format 1.3: what a serde object's postcard bytes mean (docs/FORMAT.md, "Serde
        # objects"); None when not recorded. This reader does not decode postcard, so it
        # only checks the field's shape and shows it.
        self.layout = d.get("layout")
        if self.layout is not None:
            try:
                # A JSON `\ud800` escape decodes to a lone surrogate, which has no UTF-8.
                size = len(self.layout.encode()) if isinstance(self.layout, str) else 0
            except UnicodeEncodeError:
                size = 0
            if not 1 <= size <= 4096:
                raise LazarusFormatError(where, "field `layout` is not a string of 1..4096 bytes")
            if self.kind != "serde":
                raise LazarusFormatError(where, "a layout is recorded for serde objects only")
        # Format 1.2: how the value is shared between ranks; None when not recorded.
        self.sharing = d.get("sharing")
        if self.sharing is not None:
            if self.sharing not in ("rank", "replicated", "distributed"):
                raise LazarusFormatError(where, "unknown sharing %r" % (self.sharing,))
            if (self.sharing == "distributed") != (self.global_range is not None):
                raise LazarusFormatError(
                    where, "sharing %r disagrees with the global range" % self.sharing
                )
        total = 0
        for c in self.chunks:
            if not isinstance(c, dict):
                raise LazarusFormatError(where, "chunk entry is not an object")
            dg = _field(where, c, "digest", "str")
            if not _HEX64.match(dg):
                raise LazarusFormatError(where, "chunk digest %r is not 64 hex digits" % dg)
            total += _field(where, c, "len", "u64")
        if total != self.bytes:
            raise LazarusFormatError(
                where, "chunk lengths add up to %d, not %d bytes" % (total, self.bytes)
            )

    def row_width(self):
        """Scalars per row: N for a `DVec<[T; N]>`, else 1."""
        m = re.search(r"\[[a-z0-9]+; *([0-9]+)\]", self.type_name)
        return int(m.group(1)) if m and int(m.group(1)) > 0 else 1


class Repo:
    """An open repository (read-only; never takes the writer's LOCK)."""

    def __init__(self, path, verify=True):
        self.path = path
        self.verify = verify
        fmt_path = os.path.join(path, "FORMAT")
        raw = _read(fmt_path, MAX_FORMAT_FILE)
        if len(raw) != 12 or raw[:8] != b"LZRSREPO":
            raise LazarusFormatError(fmt_path, "not a Lazarus repository FORMAT file")
        self.major, self.minor = struct.unpack_from("<HH", raw, 8)
        if self.major != SUPPORTED_MAJOR:
            raise LazarusFormatError(
                fmt_path,
                "repository format %d.%d is not supported by this reader (%d.x)"
                % (self.major, self.minor, SUPPORTED_MAJOR),
            )
        self._manifests = {}
        # Committed checkpoints whose COMMIT does not decode: id -> message naming the file.
        self.damaged = {}
        # Entries named like checkpoints that are not (symbolic links), warned about once.
        self._ignored = set()

    def _ckpt_dir(self, cid):
        return os.path.join(self.path, "checkpoints", "%016d" % cid)

    def checkpoints(self):
        """Usable committed checkpoints, oldest first (FORMAT.md: "Which checkpoints
        exist"). A directory without COMMIT is unfinished: left out silently. A COMMIT that
        exists but does not decode makes its checkpoint damaged: left out, reported on
        stderr naming the file and the reason (once per Repo), and recorded in
        ``self.damaged`` (id -> message)."""
        root = os.path.join(self.path, "checkpoints")
        try:
            st = os.stat(root)  # followed, like the Rust readers' listing
        except FileNotFoundError:
            return []
        except OSError as e:
            raise LazarusFormatError(root, "cannot read: %s" % e.strerror)
        if not stat.S_ISDIR(st.st_mode):
            what = "a regular file" if stat.S_ISREG(st.st_mode) else "a special file"
            raise LazarusFormatError(
                root, "is %s, not a directory: the repository cannot be read" % what
            )
        try:
            names = sorted(os.listdir(root))
        except OSError as e:
            raise LazarusFormatError(root, "cannot list: %s" % e.strerror)
        out = []
        for name in names:
            if not _ID_RE.match(name):
                continue
            entry = os.path.join(root, name)
            try:
                mode = os.lstat(entry).st_mode
            except OSError:
                continue  # removed since the listing (a writer's GC)
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                # Like the Rust listing: a symbolic link named like a checkpoint (into
                # another repository, say) is not one; ignored, never followed. A regular
                # file stays listed and fails as damaged below, naming it.
                if entry not in self._ignored:
                    self._ignored.add(entry)
                    print(
                        "lazarus_reader: %s: neither a directory nor a file (a symbolic "
                        "link?); ignored" % entry,
                        file=sys.stderr,
                    )
                continue
            cid = int(name)
            try:
                out.append(self.commit(cid))
            except LazarusNotFound:
                continue  # no COMMIT: unfinished, not damage, not reported
            except LazarusFormatError as e:
                if cid not in self.damaged:
                    self.damaged[cid] = str(e)
                    print(
                        "lazarus_reader: checkpoint %d is damaged (its COMMIT does not decode; "
                        "never restored): %s" % (cid, e),
                        file=sys.stderr,
                    )
        return out

    def commit(self, cid):
        """Decodes and checks one COMMIT record. LazarusNotFound when the checkpoint has no
        COMMIT (not committed); LazarusFormatError when it exists but does not decode."""
        path = os.path.join(self._ckpt_dir(cid), "COMMIT")
        try:
            _, body = _envelope(path, b"LZCM")
        except LazarusFormatError as e:
            if e.missing:
                raise LazarusNotFound(path, "checkpoint %d is not committed (no COMMIT)" % cid)
            raise
        if _field(path, body, "checkpoint", "u64") != cid:
            raise LazarusFormatError(path, "records checkpoint %r" % body["checkpoint"])
        ws = _field(path, body, "world_size", "u64")
        if ws == 0:
            # As the Rust decoder: a world of no ranks restores nothing (FORMAT.md).
            raise LazarusFormatError(path, "world_size is 0")
        parts = _field(path, body, "parts", "list")
        if len(parts) != ws:
            raise LazarusFormatError(path, "%d parts for world size %d" % (len(parts), ws))
        for i, p in enumerate(parts):
            if not isinstance(p, dict) or _field(path, p, "rank", "u64") != i:
                raise LazarusFormatError(path, "parts[%d] is not rank %d" % (i, i))
            if not _HEX64.match(_field(path, p, "manifest_digest", "str")):
                raise LazarusFormatError(path, "parts[%d].manifest_digest is not hex" % i)
            if "manifest" in p and not isinstance(p["manifest"], str):
                raise LazarusFormatError(path, "parts[%d].manifest is not a string" % i)
        return CheckpointInfo(
            cid,
            _field(path, body, "step", "u64"),
            ws,
            _field(path, body, "time_unix_ms", "u64"),
            _field(path, body, "app", "dict"),
            parts,
            body.get("writer", {}),
        )

    def manifest(self, info, rank):
        """The objects of `rank`'s manifest in checkpoint `info`, checked against COMMIT."""
        key = (info.id, rank)
        if key in self._manifests:
            return self._manifests[key]
        part = info.parts[rank]
        if "manifest" in part:
            # Format 1.1: the whole manifest file, base64, inline in COMMIT.
            path = os.path.join(self._ckpt_dir(info.id), "COMMIT") + " (rank %d inline manifest)" % rank
            try:
                inline = base64.b64decode(part["manifest"], validate=True)
            except (ValueError, TypeError) as e:
                raise LazarusFormatError(path, "not base64: %s" % e)
            if base64.b64encode(inline).decode("ascii") != part["manifest"]:
                raise LazarusFormatError(path, "not canonical base64")
            raw, body = _envelope(path, b"LZMF", inline)
        else:
            path = os.path.join(self._ckpt_dir(info.id), "rank-%d.manifest" % rank)
            raw, body = _envelope(path, b"LZMF")
        if blake3(raw).hex() != info.parts[rank]["manifest_digest"]:
            raise LazarusFormatError(path, "BLAKE3 differs from COMMIT's manifest_digest")
        if _field(path, body, "checkpoint", "u64") != info.id:
            raise LazarusFormatError(path, "records checkpoint %r" % body["checkpoint"])
        if _field(path, body, "rank", "u64") != rank:
            raise LazarusFormatError(path, "records rank %r" % body["rank"])
        objs = [ObjectInfo(rank, o, path) for o in _field(path, body, "objects", "list")]
        names = [o.name for o in objs]
        if len(set(names)) != len(names):
            raise LazarusFormatError(path, "object names are not unique")
        self._manifests[key] = objs
        return objs

    def object_bytes(self, obj):
        """The concatenated raw bytes of one object, every chunk decoded and verified."""
        out = bytearray()
        for c in obj.chunks:
            dg = c["digest"]
            path = os.path.join(self.path, "chunks", dg[:2], dg)
            raw = decode_chunk(path, _read(path, MAX_CHUNK_FILE), dg, self.verify)
            if len(raw) != c["len"]:
                raise LazarusFormatError(
                    path, "%d raw bytes, manifest of rank %d says %d" % (len(raw), obj.rank, c["len"])
                )
            out += raw
        return bytes(out)

    def _value(self, obj):
        data = self.object_bytes(obj)
        if obj.kind == "serde":
            return data
        # Explicit little-endian dtype, then the host's native order for arithmetic.
        a = np.frombuffer(data, dtype=DTYPES[obj.dtype])
        return a.astype(a.dtype.newbyteorder("="))

    def _find(self, info, rank, name):
        for o in self.manifest(info, rank):
            if o.name == name:
                return o
        return None

    def _names(self, info, ranks):
        names = []
        for r in ranks:
            for o in self.manifest(info, r):
                if o.name not in names:
                    names.append(o.name)
        shown = ", ".join("`%s`" % n for n in names[:20]) or "none"
        return shown + (" and %d more" % (len(names) - 20) if len(names) > 20 else "")

    def _resolve(self, checkpoint):
        """The CheckpointInfo to read: the given id, or candidates newest first."""
        if checkpoint is not None:
            return [self.commit(int(checkpoint))]
        c = self.checkpoints()
        if not c and self.damaged:
            # FORMAT.md: never behave as if the repository were empty.
            raise LazarusFormatError(
                self.path,
                "%d committed checkpoint(s), every one damaged (COMMIT does not decode): %s"
                % (len(self.damaged), ", ".join(str(i) for i in sorted(self.damaged))),
            )
        if not c:
            raise LazarusNotFound(self.path, "no committed checkpoint")
        return list(reversed(c))

    def load(self, checkpoint=None, name="field", rank=None):
        """Loads object `name`.

        * distributed bulk object (a `global` range on every rank; ranges must tile
          0..total exactly): the whole array, reassembled by global range, shaped
          (rows, width) for a `DVec<[T; width]>` and 1-D otherwise;
        * `rank` given: that rank's part (ndarray for bulk, postcard bytes for serde);
        * otherwise: a list with every rank's part, indexed by rank.

        `checkpoint=None` reads the newest committed checkpoint and falls back to older
        ones when it is damaged (FORMAT.md, "Restoring"); an explicit id never falls back.
        A checkpoint that decodes but has no object `name` (or no rank `rank`) is not
        damaged: that raises LazarusNotFound naming the checkpoint, the rank and the object,
        and never falls back to an older checkpoint (which would return stale data).
        """
        errors = []
        for info in self._resolve(checkpoint):
            try:
                return self._load_from(info, name, rank)
            except LazarusNotFound:
                raise
            except LazarusFormatError as e:
                if checkpoint is not None:
                    raise
                errors.append(str(e))
                print("lazarus_reader: checkpoint %d is damaged: %s" % (info.id, e), file=sys.stderr)
        raise LazarusFormatError(self.path, "no intact checkpoint: " + "; ".join(errors))

    def _load_from(self, info, name, rank):
        if rank is not None:
            if not 0 <= rank < info.world_size:
                raise LazarusNotFound(
                    self._ckpt_dir(info.id),
                    "checkpoint %d has no rank %d (world size %d)" % (info.id, rank, info.world_size),
                )
            o = self._find(info, rank, name)
            if o is None:
                raise LazarusNotFound(
                    self._ckpt_dir(info.id),
                    "checkpoint %d has no object `%s` on rank %d; its objects: %s"
                    % (info.id, name, rank, self._names(info, [rank])),
                )
            return self._value(o)
        objs = [self._find(info, r, name) for r in range(info.world_size)]
        missing = [r for r, o in enumerate(objs) if o is None]
        if len(missing) == info.world_size:
            raise LazarusNotFound(
                self._ckpt_dir(info.id),
                "checkpoint %d has no object `%s` on any rank (ranks 0..%d); its "
                "objects: %s" % (info.id, name, info.world_size - 1, self._names(info, range(info.world_size))),
            )
        distributed = not missing and all(
            o.kind == "bulk" and o.global_range is not None for o in objs
        )
        if not distributed:
            return [None if o is None else self._value(o) for o in objs]
        return self._assemble(info, name, objs)

    def _assemble(self, info, name, objs):
        where = "%s (object `%s`)" % (self._ckpt_dir(info.id), name)
        total = objs[0].global_range[2]
        dtypes = {o.dtype for o in objs}
        if len(dtypes) != 1 or any(o.global_range[2] != total for o in objs):
            raise LazarusFormatError(where, "ranks disagree on dtype or total length")
        # Ranges must tile 0..total: sorted by start, each begins where the last ended.
        pos = 0
        for o in sorted(objs, key=lambda o: (o.global_range[0], o.global_range[1])):
            start, glen, _ = o.global_range
            if glen == 0:
                continue
            if start != pos:
                raise LazarusFormatError(
                    where, "rank %d holds %d.. but %d.. was expected (gap or overlap)" % (o.rank, start, pos)
                )
            pos = start + glen
        if pos != total:
            raise LazarusFormatError(where, "parts cover 0..%d of %d elements" % (pos, total))
        dt = np.dtype(DTYPES[objs[0].dtype]).newbyteorder("=")
        out = np.empty(total, dtype=dt)
        for o in objs:
            start, glen, _ = o.global_range
            out[start : start + glen] = self._value(o)
        w = objs[0].row_width()
        if w > 1 and total % w == 0:
            out = out.reshape(total // w, w)
        return out

    def objects(self, checkpoint=None):
        """(rank, ObjectInfo) of every object of a checkpoint (default: newest)."""
        info = self._resolve(checkpoint)[0]
        return [(r, o) for r in range(info.world_size) for o in self.manifest(info, r)]


def open_repo(path, verify=True):
    """Opens a repository for reading; refuses unknown major format versions."""
    return Repo(path, verify=verify)


# ----------------------------------------------------------------------------- CLI


def _le_bytes(a):
    """The array's elements as little-endian bytes (the on-disk order) for digests."""
    a = np.ascontiguousarray(a)
    return a.astype(a.dtype.newbyteorder("<")).tobytes()


def _unsafe_file_name(name):
    """Why object `name` cannot be the stem of a file name inside the output directory of
    --dump-all, or None when it can. Refused (never escaped): the empty name, `.` and `..`,
    and any name containing `/`, `\\` or NUL (and `:` on Windows). What remains is one path
    component that cannot be absolute or climb out of the directory."""
    if name == "":
        return "is empty"
    if name in (".", ".."):
        return "is `%s`" % name
    for ch, what in (("/", "`/`"), ("\\", "`\\`"), ("\0", "NUL")):
        if ch in name:
            return "contains %s" % what
    if os.name == "nt" and ":" in name:
        return "contains `:`"
    return None


_TMP_COUNTER = [0]


def _write_new_file(out_dir, fname, data):
    """Writes `data` to out_dir/fname without following anything planted there: the bytes
    go to a fresh temporary (O_CREAT|O_EXCL|O_NOFOLLOW: never an existing file or symbolic
    link) that is then renamed over out_dir/fname (a rename replaces a symbolic link
    itself, never its target)."""
    final = os.path.join(out_dir, fname)
    if os.path.isabs(fname) or os.path.basename(fname) != fname:
        raise AssertionError("output name %r is not one file name" % fname)  # never reached
    _TMP_COUNTER[0] += 1
    tmp = os.path.join(out_dir, ".tmp-%d-%d.dump" % (os.getpid(), _TMP_COUNTER[0]))
    flags = (
        os.O_WRONLY
        | os.O_CREAT
        | os.O_EXCL
        | getattr(os, "O_NOFOLLOW", 0)
        | getattr(os, "O_CLOEXEC", 0)
        | getattr(os, "O_BINARY", 0)
    )
    fd = os.open(tmp, flags, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _dump_all(repo, checkpoint, out_dir):
    info = repo._resolve(checkpoint)[0]  # one checkpoint for every object
    cid = info.id
    names = []
    for r, o in repo.objects(cid):
        why = _unsafe_file_name(o.name)
        if why is not None:
            # Checked for every object before anything is written.
            raise LazarusFormatError(
                repo._ckpt_dir(cid),
                "checkpoint %d, rank %d: object name %r %s, so it cannot name a file inside "
                "%s; --dump-all refuses it (nothing written)" % (cid, r, o.name, why, out_dir),
            )
        if o.name not in names:
            names.append(o.name)
    os.makedirs(out_dir, exist_ok=True)
    written = set()
    for name in names:
        v = repo.load(cid, name)
        items = [(name + ".rank%d" % r, p) for r, p in enumerate(v)] if isinstance(v, list) else [(name, v)]
        for fname, p in items:
            if p is None:
                continue
            if fname in written:
                raise LazarusFormatError(
                    repo._ckpt_dir(cid),
                    "checkpoint %d: two objects would both be dumped to %s.bin (object %r); "
                    "--dump-all refuses to overwrite one with the other" % (cid, fname, name),
                )
            written.add(fname)
            _write_new_file(out_dir, fname + ".bin", p if isinstance(p, bytes) else _le_bytes(p))
            print("%s: %s" % (fname, "bytes" if isinstance(p, bytes) else "%s %s" % (p.dtype.str, p.shape)))
    return 0


EXIT_OK, EXIT_OUTPUT, EXIT_DAMAGED, EXIT_NOT_FOUND = 0, 1, 2, 3

EPILOG = """\
exit status:
  0  success
  1  an output (--dump-*) could not be written (an OS error outside the repository)
  2  the repository cannot be read as asked: not a repository, unsupported version,
     damaged or unreadable file (named in the message; a symbolic link, FIFO, device or
     oversized file counts as damage of that file), every committed checkpoint damaged,
     or --dump-all refused an object name
  3  usage error, or not found: a checkpoint id that is not committed, a rank outside the
     world size, an object name the checkpoint does not have (never a fallback to an
     older checkpoint), no committed checkpoint at all

A committed checkpoint whose COMMIT does not decode is damaged: it is reported on stderr
(naming the file and the reason), counted in the summary, and never read.

--dump-all DIR writes each object to DIR/NAME.bin (distributed, assembled) or
DIR/NAME.rank<R>.bin (per rank). Object names come from the repository, so a name that
could not be a single file name inside DIR (empty, `.`, `..`, containing `/`, `\\` or NUL)
is refused with an error naming the checkpoint, rank and object, before anything is
written; names are never escaped or rewritten. Each file is written to a fresh temporary
in DIR and renamed into place, so a symbolic link planted in DIR is replaced, not followed.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_NOT_FOUND, "%s: error: %s\n" % (self.prog, message))


def main(argv=None):
    ap = _Parser(
        description="Read a Lazarus checkpoint repository (numpy only).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("repo")
    ap.add_argument("--checkpoint", type=int, default=None, help="checkpoint id (default newest)")
    ap.add_argument("--field", default=None, help="object name to load")
    ap.add_argument("--rank", type=int, default=None, help="load one rank's part")
    ap.add_argument("--dump-npy", default=None, help="save the array with numpy.save")
    ap.add_argument("--dump-raw", default=None, help="write the array's little-endian bytes")
    ap.add_argument("--digest", action="store_true", help="print SHA-256 of the LE bytes")
    ap.add_argument(
        "--dump-all",
        default=None,
        metavar="DIR",
        help="write every object's LE bytes: DIR/NAME.bin (distributed, assembled) or "
        "DIR/NAME.rank<R>.bin (per rank); a NAME that is not a safe file name is refused "
        "(see below)",
    )
    ap.add_argument("--no-verify", action="store_true", help="skip chunk BLAKE3 checks")
    args = ap.parse_args(argv)
    try:
        repo = open_repo(args.repo, verify=not args.no_verify)
        if args.dump_all:
            return _dump_all(repo, args.checkpoint, args.dump_all)
        if args.field is None:
            cps = repo.checkpoints()
            print(
                "repository %s: format %d.%d, %d committed checkpoint(s), %d damaged"
                % (args.repo, repo.major, repo.minor, len(cps) + len(repo.damaged), len(repo.damaged))
            )
            rows = [(c.id, "step %d, world size %d, app %s" % (c.step, c.world_size, json.dumps(c.app, sort_keys=True))) for c in cps]
            rows += [(i, "damaged (COMMIT does not decode; never read)") for i in repo.damaged]
            for i, desc in sorted(rows):
                print("checkpoint %d: %s" % (i, desc))
            if cps:
                for r, o in repo.objects(args.checkpoint):
                    g = "" if o.global_range is None else " global %d+%d/%d" % o.global_range
                    shape = " %s[%d]" % (o.dtype, o.len) if o.kind == "bulk" else (
                        "" if o.layout is None else " %s" % o.layout
                    )
                    sh = "" if o.sharing is None else " [%s]" % o.sharing
                    print("  rank %d: %s (%s) %s%s%s%s, %d bytes" % (r, o.name, o.type_name, o.kind, shape, g, sh, o.bytes))
            return 0
        v = repo.load(args.checkpoint, args.field, args.rank)
        if isinstance(v, list):
            print("%s: not distributed; %d rank part(s)" % (args.field, len(v)))
            for r, p in enumerate(v):
                desc = "missing" if p is None else (
                    "%d postcard bytes" % len(p) if isinstance(p, bytes) else "%s %s" % (p.dtype, p.shape)
                )
                print("  rank %d: %s" % (r, desc))
            return 0
        if isinstance(v, bytes):
            print("%s: %d postcard bytes: %s" % (args.field, len(v), v.hex()))
            if args.digest:
                print("sha256=%s" % hashlib.sha256(v).hexdigest())
            if args.dump_raw:
                with open(args.dump_raw, "wb") as f:
                    f.write(v)
            return 0
        print("%s: dtype %s shape %s" % (args.field, v.dtype.str, v.shape))
        if v.size:
            if v.dtype.kind == "f":
                finite = v[np.isfinite(v)]
                print("min=%r max=%r sum=%r nonfinite=%d" % (
                    float(finite.min()) if finite.size else None,
                    float(finite.max()) if finite.size else None,
                    float(np.sum(finite, dtype=np.float64)),
                    int(v.size - finite.size),
                ))
            else:
                print("min=%d max=%d" % (int(v.min()), int(v.max())))
        if args.digest:
            print("sha256=%s" % hashlib.sha256(_le_bytes(v)).hexdigest())
        if args.dump_npy:
            np.save(args.dump_npy, v)
        if args.dump_raw:
            with open(args.dump_raw, "wb") as f:
                f.write(_le_bytes(v))
        return 0
    except LazarusNotFound as e:
        print("lazarus_reader: error: %s" % e, file=sys.stderr)
        return EXIT_NOT_FOUND
    except LazarusFormatError as e:
        print("lazarus_reader: error: %s" % e, file=sys.stderr)
        return EXIT_DAMAGED
    except OSError as e:
        print("lazarus_reader: error: %s" % e, file=sys.stderr)
        return EXIT_OUTPUT


if __name__ == "__main__":
    sys.exit(main())

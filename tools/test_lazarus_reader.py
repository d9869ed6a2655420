"""Unit tests of tools/lazarus_reader.py against the committed golden repository and the
byte examples of docs/FORMAT.md. Run: `python3 -m unittest discover -s tools` (also run by
`cargo test --test python_reader`)."""

import os
import shutil
import struct
import sys
import tempfile
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import lazarus_reader as L  # noqa: E402

GOLDEN = os.path.join(HERE, "..", "tests", "data", "golden-v1")
# Format 1.1: the same content, every manifest inline in COMMIT (no rank-<r>.manifest).
GOLDEN_1_1 = os.path.join(HERE, "..", "tests", "data", "golden-v1.1")
N = 1000


def field(k, i):
    """Element i of the golden field at checkpoint k (see crates/store/tests/golden.rs)."""
    return -float(i) if k == 2 and 100 <= i < 120 else i * 0.25 + 0.125


def ids(rank):
    x = (0x9E3779B9 ^ rank) & 0xFFFFFFFF
    out = []
    for _ in range(64):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        out.append(x)
    return out


def hexbytes(s):
    return bytes.fromhex(s.replace(" ", "").replace("\n", ""))


class Blake3(unittest.TestCase):
    def test_known_vectors(self):
        # Official test vectors' first 32 bytes (input byte i = i % 251).
        def inp(n):
            return bytes(i % 251 for i in range(n))

        self.assertEqual(
            L.blake3(b"").hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
        )
        self.assertEqual(
            L.blake3(inp(1)).hex(),
            "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213",
        )
        self.assertEqual(
            L.blake3(inp(1024)).hex(),
            "42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7",
        )
        self.assertEqual(
            L.blake3(inp(1025)).hex(),
            "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444",
        )
        self.assertEqual(
            L.blake3(inp(3072)).hex(),
            "b98cb0ff3623be03326b373de6b9095218513e64f1ee2edd2525c7ad1e5cffd2",
        )
        # The tree vectors of docs/FORMAT.md ("BLAKE3 over more than one chunk").
        self.assertEqual(
            L.blake3(inp(2049)).hex(),
            "5f4d72f40d7a5f82b15ca2b2e44b1de3c2ef86c426c95c1af0b6879522563030",
        )
        self.assertEqual(
            L.blake3(inp(3073)).hex(),
            "7124b49501012f81cc7f11ca069ec9226cecb8a2c850cfe644e327d22d3e1cd3",
        )

    def test_format_doc_example(self):
        self.assertEqual(
            L.blake3(struct.pack("<2d", 1.0, -2.5)).hex(),
            "daaf7662a25b3c7f7a73793dd34e923fa3bff88a5825224fcf89a5ac4a0582a8",
        )


class Chunks(unittest.TestCase):
    DIGEST = "daaf7662a25b3c7f7a73793dd34e923fa3bff88a5825224fcf89a5ac4a0582a8"

    def test_none_example(self):
        f = hexbytes(
            "4c 5a 43 4b 00 00 00 01 10 00 00 00 00 00 00 00"
            "00 00 00 00 00 00 f0 3f 00 00 00 00 00 00 04 c0"
        )
        raw = L.decode_chunk("example", f, self.DIGEST)
        self.assertEqual(np.frombuffer(raw, "<f8").tolist(), [1.0, -2.5])

    def test_zstd_shuffle_example(self):
        try:
            import zstandard  # noqa: F401
        except ImportError:
            if os.environ.get("CI"):
                raise
            self.skipTest("zstandard not installed")
        f = hexbytes(
            "4c 5a 43 4b 01 01 08 01 10 00 00 00 00 00 00 00"
            "28 b5 2f fd 20 10 65 00 00 30 00 00 f0 04 3f c0"
            "01 00 1b c0 02"
        )
        raw = L.decode_chunk("example", f, self.DIGEST)
        self.assertEqual(np.frombuffer(raw, "<f8").tolist(), [1.0, -2.5])

    def test_zstd_exactly_one_frame(self):
        try:
            import zstandard
        except ImportError:
            if os.environ.get("CI"):
                raise
            self.skipTest("zstandard not installed")
        raw = bytes(i % 7 for i in range(4000))
        digest = L.blake3(raw).hex()
        head = b"LZCK" + bytes([1, 0, 0, 1]) + struct.pack("<Q", len(raw))
        frame = lambda b: zstandard.ZstdCompressor().compress(b)  # noqa: E731
        self.assertEqual(L.decode_chunk("c", head + frame(raw), digest), raw)
        skippable = b"\x50\x2a\x4d\x18\x03\x00\x00\x00abc"
        for bad in (
            frame(raw[:1000]) + frame(raw[1000:]),
            frame(raw) + b"\x00",
            skippable + frame(raw),
        ):
            with self.assertRaises(L.LazarusFormatError):
                L.decode_chunk("c", head + bad, digest)

    def test_envelope_refuses_duplicate_keys_and_oversized_bodies(self):
        def seal(body):
            head = b"LZCM" + struct.pack("<HHQ", 1, 0, len(body))
            return head + L.blake3(head + body) + body

        self.assertEqual(L._envelope("c", b"LZCM", seal(b'{"a": 1}'))[1], {"a": 1})
        with self.assertRaisesRegex(L.LazarusFormatError, "duplicate key 'a'"):
            L._envelope("c", b"LZCM", seal(b'{"a": 1, "b": {}, "a": 2}'))
        big = b"LZCM" + struct.pack("<HHQ", 1, 0, L.MAX_ENVELOPE_BODY + 1) + bytes(32)
        with self.assertRaisesRegex(L.LazarusFormatError, "envelope limit"):
            L._envelope("c", b"LZCM", big)

    def test_shuffle_tail_and_corruption(self):
        raw = bytes(range(23))  # 23 = 2 * 8 + 7: a 7-byte tail is copied unchanged
        n = len(raw) // 8
        planes = bytes(raw[i * 8 + j] for j in range(8) for i in range(n)) + raw[n * 8 :]
        f = b"LZCK" + bytes([0, 1, 8, 1]) + struct.pack("<Q", len(raw)) + planes
        self.assertEqual(L.decode_chunk("c", f, L.blake3(raw).hex()), raw)
        with self.assertRaisesRegex(L.LazarusFormatError, "does not match"):
            L.decode_chunk("c", f[:-1] + b"\xff", L.blake3(raw).hex())
        with self.assertRaisesRegex(L.LazarusFormatError, "layout version 2"):
            L.decode_chunk("c", f[:7] + b"\x02" + f[8:], None)


class Golden(unittest.TestCase):
    def test_checkpoints(self):
        r = L.open_repo(GOLDEN)
        self.assertEqual((r.major, r.minor), (1, 0))
        cps = r.checkpoints()
        self.assertEqual([c.id for c in cps], [1, 2])
        self.assertEqual([c.step for c in cps], [10, 20])
        self.assertEqual([c.world_size for c in cps], [2, 2])
        self.assertEqual(cps[1].app, {"app": "golden"})

    def test_field_values(self):
        r = L.open_repo(GOLDEN)
        for k in (1, 2):
            a = r.load(checkpoint=k, name="field")
            self.assertEqual(a.shape, (2 * N,))
            self.assertEqual(a.dtype, np.float64)
            want = np.array([field(k, i) for i in range(2 * N)])
            self.assertTrue(np.array_equal(a, want), "checkpoint %d" % k)
        a = r.load(name="field")  # newest = 2
        self.assertEqual(
            (a[0], a[1], a[100], a[119], a[120], a[999]),
            (0.125, 0.375, -100.0, -119.0, 30.125, 249.875),
        )

    def test_per_rank_objects(self):
        r = L.open_repo(GOLDEN)
        parts = r.load(name="ids")
        self.assertEqual(len(parts), 2)
        self.assertEqual(int(parts[0][0]), 0x510C4619)
        for rank in (0, 1):
            self.assertEqual(parts[rank].tolist(), ids(rank))
            p = L.Postcard(r.load(name="params", rank=rank), "params")
            self.assertEqual(p.f64(), 0.5)
            self.assertEqual(p.str(), "rank%d" % rank)
            self.assertEqual(p.varint(), 7 + rank)
            self.assertEqual([p.zigzag() for _ in range(p.varint())], [-1, 2, -300])
            self.assertTrue(p.at_end())


class GoldenInline(unittest.TestCase):
    """golden-v1.1 decodes to exactly what golden-v1 holds."""

    def test_same_values_as_1_0(self):
        r = L.open_repo(GOLDEN_1_1)
        self.assertEqual((r.major, r.minor), (1, 1))
        old = L.open_repo(GOLDEN)
        self.assertEqual([c.id for c in r.checkpoints()], [1, 2])
        for k in (1, 2):
            self.assertEqual(
                os.listdir(os.path.join(GOLDEN_1_1, "checkpoints", "%016d" % k)), ["COMMIT"]
            )
            self.assertTrue(np.array_equal(r.load(checkpoint=k, name="field"),
                                           old.load(checkpoint=k, name="field")))
            for rank in (0, 1):
                self.assertEqual(r.load(checkpoint=k, name="ids")[rank].tolist(), ids(rank))

    def test_damaged_inline_manifest_is_named(self):
        tmp = tempfile.mkdtemp()
        try:
            repo = os.path.join(tmp, "repo")
            shutil.copytree(GOLDEN_1_1, repo)
            path = os.path.join(repo, "checkpoints", "%016d" % 2, "COMMIT")
            raw = open(path, "rb").read()
            body = L.json.loads(raw[48:].decode("utf-8"))
            # Rank 1 gets rank 0's manifest: envelope and base64 are fine, the digest is not.
            body["parts"][1]["manifest"] = body["parts"][0]["manifest"]
            new = L.json.dumps(body, indent=2).encode("utf-8")
            head = raw[:8] + struct.pack("<Q", len(new))
            with open(path, "wb") as f:
                f.write(head + L.blake3(head + new) + new)
            r = L.open_repo(repo)
            with self.assertRaisesRegex(L.LazarusFormatError, "rank 1 inline manifest.*BLAKE3"):
                r.load(checkpoint=2, name="field")
        finally:
            shutil.rmtree(tmp)


class Damage(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.repo = os.path.join(self.tmp, "repo")
        shutil.copytree(GOLDEN, self.repo)

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def flip(self, path, offset):
        with open(path, "r+b") as f:
            f.seek(offset)
            b = f.read(1)
            f.seek(offset)
            f.write(bytes([b[0] ^ 0x01]))

    def test_corrupt_chunk_is_named_and_newest_falls_back(self):
        r = L.open_repo(self.repo)
        obj = [o for o in r.manifest(r.commit(2), 0) if o.name == "field"][0]
        dg = obj.chunks[0]["digest"]
        old = {c["digest"] for o in r.manifest(r.commit(1), 0) for c in o.chunks}
        self.assertNotIn(dg, old, "the chunk must belong to checkpoint 2 only")
        self.flip(os.path.join(self.repo, "chunks", dg[:2], dg), 40)
        r = L.open_repo(self.repo)
        with self.assertRaisesRegex(L.LazarusFormatError, dg):
            r.load(checkpoint=2, name="field")
        a = r.load(name="field")  # falls back to checkpoint 1
        self.assertEqual(a[100], field(1, 100))

    def test_corrupt_manifest_and_commit(self):
        self.flip(os.path.join(self.repo, "checkpoints", "%016d" % 2, "rank-1.manifest"), 60)
        r = L.open_repo(self.repo)
        with self.assertRaisesRegex(L.LazarusFormatError, "rank-1.manifest: checksum"):
            r.load(checkpoint=2, name="field")
        self.flip(os.path.join(self.repo, "checkpoints", "%016d" % 2, "COMMIT"), 70)
        self.assertEqual([c.id for c in L.open_repo(self.repo).checkpoints()], [1])

    def test_unknown_major_refused(self):
        with open(os.path.join(self.repo, "FORMAT"), "r+b") as f:
            f.seek(8)
            f.write(struct.pack("<H", 2))
        with self.assertRaisesRegex(L.LazarusFormatError, "format 2.0 is not supported"):
            L.open_repo(self.repo)


class Layout(unittest.TestCase):
    """Format 1.3: a serde object's `layout` is read and its shape checked."""

    def obj(self, **extra):
        d = {"name": "p", "type_name": "Knobs", "kind": "serde", "bytes": 0, "chunks": []}
        d.update(extra)
        return L.ObjectInfo(0, d, "rank-0.manifest")

    def test_layout_is_read(self):
        self.assertEqual(self.obj(layout="Knobs{dt:f64}").layout, "Knobs{dt:f64}")
        self.assertIsNone(self.obj().layout)

    def test_hostile_layouts_are_refused_naming_the_object(self):
        # "\ud800": a lone surrogate, as json.loads gives for a `\ud800` escape; it was
        # a UnicodeEncodeError instead of a LazarusFormatError.
        for bad in (7, "", "x" * 4097, ["Knobs"], "\ud800", "Knobs{dt:\udfff}"):
            with self.assertRaisesRegex(L.LazarusFormatError, "object `p`.*layout"):
                self.obj(layout=bad)
        with self.assertRaisesRegex(L.LazarusFormatError, "serde objects only"):
            self.obj(kind="bulk", dtype="u8", len=0, layout="u8")


if __name__ == "__main__":
    unittest.main()

//! Serde helpers that move byte vectors nested in level messages as one block each.
//!
//! Serde's `Vec<u8>` goes through its generic sequence code: one call per byte, to encode
//! and to decode. For the chunks of a partner copy or the segments of a parity update
//! that was a measurable share of a level round. Postcard writes a byte sequence and a
//! byte string identically (a varint length, then the bytes), so these helpers, like
//! `serde_bytes` on plain `Vec<u8>` fields, change no byte on the wire or on disk
//! (`wire_bytes_are_unchanged` below).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_bytes::{ByteBuf, Bytes};

/// `Vec<(K, Vec<u8>)>` with each byte vector as one block (`#[serde(with = "bulk::keyed")]`).
pub(crate) mod keyed {
    use super::*;

    pub(crate) fn serialize<K: Serialize, S: Serializer>(
        v: &[(K, Vec<u8>)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|(k, b)| (k, Bytes::new(b))))
    }

    pub(crate) fn deserialize<'de, K: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(K, Vec<u8>)>, D::Error> {
        let v: Vec<(K, ByteBuf)> = Deserialize::deserialize(d)?;
        Ok(v.into_iter().map(|(k, b)| (k, b.into_vec())).collect())
    }
}

/// `Vec<Vec<u8>>` with each byte vector as one block (`#[serde(with = "bulk::list")]`).
pub(crate) mod list {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|b| Bytes::new(b)))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let v: Vec<ByteBuf> = Deserialize::deserialize(d)?;
        Ok(v.into_iter().map(ByteBuf::into_vec).collect())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Plain {
        keyed: Vec<(String, Vec<u8>)>,
        list: Vec<Vec<u8>>,
        one: Vec<u8>,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Bulk {
        #[serde(with = "super::keyed")]
        keyed: Vec<(String, Vec<u8>)>,
        #[serde(with = "super::list")]
        list: Vec<Vec<u8>>,
        #[serde(with = "serde_bytes")]
        one: Vec<u8>,
    }

    /// The level messages' bytes, written out by hand from postcard's rules (variant
    /// index and integers as varints, a byte vector as its length then its bytes): the
    /// encoding this module must keep.
    #[test]
    fn level_messages_keep_their_postcard_bytes() {
        use crate::l3::ParityMsg;
        use crate::partner::CopyMsg;
        use lazarus_format::Rank;
        let data = CopyMsg::Data {
            subject: 1,
            local: 2,
            chunks: vec![([7; 32], vec![1, 2, 3])],
            files: vec![("COMMIT".into(), vec![9])],
        };
        let mut golden = vec![2, 1, 2, 1];
        golden.extend([7; 32]);
        golden.extend([3, 1, 2, 3, 1, 6]);
        golden.extend(b"COMMIT");
        golden.extend([1, 9]);
        assert_eq!(data.encode(), golden);
        assert_eq!(CopyMsg::decode(Rank(0), &golden).ok(), Some(data));
        let update = ParityMsg::Update {
            seq: 300,
            index: 1,
            local: 2,
            full: false,
            header: vec![5, 6],
            segments: vec![(128, vec![0xff])],
        };
        let golden = vec![2, 0xac, 0x02, 1, 2, 0, 2, 5, 6, 1, 0x80, 0x01, 1, 0xff];
        assert_eq!(update.encode(), golden);
        assert_eq!(ParityMsg::decode(Rank(0), &golden).ok(), Some(update));
    }

    proptest! {
        /// Stored parity headers and every level message keep their bytes: the bulk
        /// encoding is the per-byte one, and each decodes the other.
        #[test]
        fn wire_bytes_are_unchanged(
            keyed in proptest::collection::vec((".{0,8}", proptest::collection::vec(any::<u8>(), 0..300)), 0..4),
            list in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..4),
            one in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let plain = Plain { keyed: keyed.clone(), list: list.clone(), one: one.clone() };
            let bulk = Bulk { keyed, list, one };
            let a = postcard::to_allocvec(&plain).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let b = postcard::to_allocvec(&bulk).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&a, &b);
            let back: Bulk = postcard::from_bytes(&a).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, bulk);
        }

        /// Hostile bytes: a length prefix larger than the input is an error, never a
        /// panic or a huge allocation.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = postcard::from_bytes::<Bulk>(&bytes);
        }
    }
}

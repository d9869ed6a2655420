//! Collective operations on [`Comm`], built on point-to-point messages in the reserved
//! collective tag space.
//!
//! Reproducibility: reductions combine along a fixed binomial tree rooted at the root
//! rank; partial results are always combined as `op(lower ranks, higher ranks)` in
//! relative-rank order, so the result is bit-identical from run to run for the same world
//! size and root whatever the timing (custom operators need only be associative).

use crate::comm::Comm;
use crate::error::{ErrorKind, NetError, Result};
use crate::scalar::{self, Scalar};
use crate::wire::Tag;
use lazarus_format::Rank;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A built-in reduction of numeric slices, element-wise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Sum (wrapping for integers).
    Sum,
    /// Minimum (`b < a` picks `b`; NaN never replaces a value).
    Min,
    /// Maximum (`b > a` picks `b`).
    Max,
}

impl ReduceOp {
    fn apply<T: Scalar>(self, acc: &mut [T], other: &[T]) {
        for (a, b) in acc.iter_mut().zip(other) {
            *a = match self {
                ReduceOp::Sum => T::add(*a, *b),
                ReduceOp::Min => {
                    if *b < *a {
                        *b
                    } else {
                        *a
                    }
                }
                ReduceOp::Max => {
                    if *b > *a {
                        *b
                    } else {
                        *a
                    }
                }
            };
        }
    }
}

/// Vectors of at least this many bytes (and one element per rank) are reduced by
/// reduce-scatter + allgather; below it the per-message latency of `n - 1` messages per
/// phase costs more than the bytes saved.
const SCATTER_MIN_BYTES: usize = 64 << 10;
/// Elements per block of the local combine: the `n` contributions' blocks stay in cache.
const COMBINE_BLOCK: usize = 2048;

/// Reduces `parts[0..n]` (rank `q`'s contribution in `parts[q]`, all the same length) into
/// `parts[0]` with the association of the binomial tree rooted at rank 0: at step `mask`,
/// every `vr` that is a multiple of `2 mask` absorbs `vr + mask` as `op(lower, higher)`.
fn combine_in_tree_order<T: Scalar>(parts: &mut [Vec<T>], op: ReduceOp) {
    let n = parts.len();
    let len = parts.first().map_or(0, Vec::len);
    let mut start = 0;
    while start < len {
        let end = (start + COMBINE_BLOCK).min(len);
        let mut mask = 1;
        while mask < n {
            let mut vr = 0;
            while vr + mask < n {
                let (lo, hi) = parts.split_at_mut(vr + mask);
                if let (Some(a), Some(b)) = (lo.get_mut(vr), hi.first()) {
                    if let (Some(a), Some(b)) = (a.get_mut(start..end), b.get(start..end)) {
                        op.apply(a, b);
                    }
                }
                vr += 2 * mask;
            }
            mask <<= 1;
        }
        start = end;
    }
}

/// Folds a child's encoded partial result (from the named rank) into the accumulator.
type Combine<'a, V> = dyn FnMut(&mut V, &[u8], Rank) -> Result<()> + 'a;

fn codec(e: postcard::Error) -> NetError {
    NetError::new(ErrorKind::Codec, format!("postcard: {e}"))
}

impl Comm {
    fn abs(&self, root: Rank, vr: u32) -> Rank {
        Rank((vr + root.0) % self.size())
    }
    fn rel(&self, root: Rank) -> u32 {
        (self.rank().0 + self.size() - root.0) % self.size()
    }
    fn check_root(&self, root: Rank) -> Result<()> {
        if root.0 >= self.size() {
            return Err(NetError::new(
                ErrorKind::InvalidArgument,
                format!("root {root} out of range for world size {}", self.size()),
            ));
        }
        Ok(())
    }

    /// Binomial-tree broadcast of bytes; `data` is meaningful on `root` only.
    fn bcast_bytes(&self, root: Rank, tag: Tag, data: Vec<u8>) -> Result<Vec<u8>> {
        let n = self.size();
        let vr = self.rel(root);
        let mut data = data;
        let mut mask = 1u32;
        while mask < n {
            if vr & mask != 0 {
                data = self.coll_recv(self.abs(root, vr - mask), tag)?;
                break;
            }
            mask <<= 1;
        }
        mask >>= 1;
        while mask > 0 {
            if vr + mask < n {
                self.send_bytes(self.abs(root, vr + mask), tag, data.clone())?;
            }
            mask >>= 1;
        }
        Ok(data)
    }

    /// Binomial-tree reduction; `combine(lower, higher)`; the result is `Some` on root.
    fn reduce_tree<V>(
        &self,
        root: Rank,
        tag: Tag,
        mut acc: V,
        encode: &dyn Fn(&V) -> Result<Vec<u8>>,
        combine: &mut Combine<'_, V>,
    ) -> Result<Option<V>> {
        let n = self.size();
        let vr = self.rel(root);
        let mut mask = 1u32;
        while mask < n {
            if vr & mask == 0 {
                let child = vr | mask;
                if child < n {
                    let from = self.abs(root, child);
                    let bytes = self.coll_recv(from, tag)?;
                    combine(&mut acc, &bytes, from)?;
                }
            } else {
                self.send_bytes(self.abs(root, vr - mask), tag, encode(&acc)?)?;
                return Ok(None);
            }
            mask <<= 1;
        }
        Ok(Some(acc))
    }

    /// Returns once every rank has entered the barrier.
    pub fn barrier(&self) -> Result<()> {
        let t = self.next_collective_tag();
        self.reduce_tree(Rank(0), t, (), &|_| Ok(Vec::new()), &mut |_, _, _| Ok(()))?;
        self.bcast_bytes(Rank(0), t, Vec::new())?;
        Ok(())
    }

    /// Broadcasts `value` from `root`; on other ranks `value` is overwritten.
    pub fn broadcast<T: Serialize + DeserializeOwned>(
        &self,
        root: Rank,
        value: &mut T,
    ) -> Result<()> {
        self.check_root(root)?;
        let t = self.next_collective_tag();
        let bytes = if self.rank() == root {
            postcard::to_allocvec(value).map_err(codec)?
        } else {
            Vec::new()
        };
        let got = self.bcast_bytes(root, t, bytes)?;
        if self.rank() != root {
            *value = postcard::from_bytes(&got).map_err(|e| codec(e).with_peer(root))?;
        }
        Ok(())
    }

    /// Broadcasts a numeric slice from `root` into every rank's `data` (same length).
    pub fn broadcast_slice<T: Scalar>(&self, root: Rank, data: &mut [T]) -> Result<()> {
        self.check_root(root)?;
        let t = self.next_collective_tag();
        let bytes = if self.rank() == root {
            scalar::to_le_bytes(data)
        } else {
            Vec::new()
        };
        let got = self.bcast_bytes(root, t, bytes)?;
        if self.rank() != root {
            scalar::from_le_bytes(&got, data)?;
        }
        Ok(())
    }

    fn reduce_slice<T: Scalar>(
        &self,
        root: Rank,
        data: &[T],
        op: ReduceOp,
        t: Tag,
    ) -> Result<Option<Vec<T>>> {
        let len = data.len();
        let mut tmp: Vec<T> = vec![T::zeroed(); len];
        self.reduce_tree(
            root,
            t,
            data.to_vec(),
            &|v: &Vec<T>| Ok(scalar::to_le_bytes(v)),
            &mut |acc: &mut Vec<T>, bytes: &[u8], from: Rank| {
                scalar::from_le_bytes(bytes, &mut tmp).map_err(|e| e.with_peer(from))?;
                op.apply(acc, &tmp);
                Ok(())
            },
        )
    }

    /// Element-wise reduction of `data` onto `root` (overwritten there; unchanged elsewhere).
    pub fn reduce<T: Scalar>(&self, root: Rank, data: &mut [T], op: ReduceOp) -> Result<()> {
        self.check_root(root)?;
        let t = self.next_collective_tag();
        if let Some(r) = self.reduce_slice(root, data, op, t)? {
            data.copy_from_slice(&r);
        }
        Ok(())
    }

    /// Element-wise reduction of `data` across ranks; every rank gets the same bits.
    ///
    /// Every element is combined in the order of the fixed binomial tree rooted at rank 0
    /// (see the module doc) whichever algorithm moves the bytes: large vectors use
    /// reduce-scatter + allgather, power-of-two worlds use recursive doubling, the rest
    /// the tree itself. The algorithm depends only on the world size and `data.len()`,
    /// which every rank passes identically, so all ranks always pick the same one.
    pub fn allreduce<T: Scalar>(&self, data: &mut [T], op: ReduceOp) -> Result<()> {
        let n = self.size();
        if n < 2 {
            return Ok(());
        }
        if data.len() >= n as usize && std::mem::size_of_val(data) >= SCATTER_MIN_BYTES {
            return self.allreduce_scatter(data, op);
        }
        if n.is_power_of_two() {
            return self.allreduce_doubling(data, op);
        }
        let t = self.next_collective_tag();
        let bytes = match self.reduce_slice(Rank(0), data, op, t)? {
            Some(r) => {
                data.copy_from_slice(&r);
                scalar::to_le_bytes(&r)
            }
            None => Vec::new(),
        };
        let got = self.bcast_bytes(Rank(0), t, bytes)?;
        if self.rank() != Rank(0) {
            scalar::from_le_bytes(&got, data)?;
        }
        Ok(())
    }

    /// Recursive doubling for a power-of-two world: at step `mask` every rank holds the
    /// partial result of its aligned block of `mask` ranks and swaps it with the partner
    /// block; combining as `op(lower block, higher block)` gives exactly the binomial
    /// tree's association, in `log2 n` rounds instead of the tree's `2 log2 n`.
    fn allreduce_doubling<T: Scalar>(&self, data: &mut [T], op: ReduceOp) -> Result<()> {
        let n = self.size();
        let me = self.rank().0;
        let t = self.next_collective_tag();
        let mut theirs = vec![T::zeroed(); data.len()];
        let mut mask = 1u32;
        while mask < n {
            let partner = Rank(me ^ mask);
            self.send_bytes(partner, t, scalar::to_le_bytes(data))?;
            self.recv_into_tag(partner, t, &mut theirs)?;
            if me & mask == 0 {
                op.apply(data, &theirs);
            } else {
                op.apply(&mut theirs, data);
                data.copy_from_slice(&theirs);
            }
            mask <<= 1;
        }
        Ok(())
    }

    /// Reduce-scatter + allgather for large vectors: rank `k` owns the `k`-th of `n`
    /// near-equal segments, receives every rank's contribution to it straight into its
    /// buffers, combines them locally in the binomial tree's order, then sends the result
    /// to everyone. Each rank moves `2 (n-1)/n` of the vector instead of the tree's
    /// `log2 n` whole copies through the root, and every rank works in parallel.
    fn allreduce_scatter<T: Scalar>(&self, data: &mut [T], op: ReduceOp) -> Result<()> {
        let n = self.size();
        let me = self.rank().0;
        let scatter = self.next_collective_tag();
        let gather = self.next_collective_tag();
        let len = data.len();
        let seg = |k: u32| -> std::ops::Range<usize> {
            let at = |k: u32| (len as u128 * u128::from(k) / u128::from(n)) as usize;
            at(k)..at(k + 1)
        };
        let part = |data: &[T], k: u32| -> Result<Vec<u8>> {
            data.get(seg(k))
                .map(scalar::to_le_bytes)
                .ok_or_else(|| NetError::new(ErrorKind::Protocol, "segment out of range"))
        };
        // Nearest-next first, so that no rank is everyone's first destination.
        for i in 1..n {
            let q = (me + i) % n;
            self.send_bytes(Rank(q), scatter, part(data, q)?)?;
        }
        let mine = seg(me);
        let mut parts: Vec<Vec<T>> = Vec::with_capacity(n as usize);
        for q in 0..n {
            if q == me {
                parts.push(data.get(mine.clone()).unwrap_or_default().to_vec());
            } else {
                parts.push(vec![T::zeroed(); mine.len()]);
            }
        }
        // Rank me-1 sent to us first; receiving in sending order lets most receives take
        // the direct (no intermediate buffer) path.
        for i in 1..n {
            let q = (me + n - i) % n;
            if let Some(buf) = parts.get_mut(q as usize) {
                self.recv_into_tag(Rank(q), scatter, buf)?;
            }
        }
        combine_in_tree_order(&mut parts, op);
        let result = parts.swap_remove(0);
        if let Some(d) = data.get_mut(mine) {
            d.copy_from_slice(&result);
        }
        for i in 1..n {
            let q = (me + i) % n;
            self.send_bytes(Rank(q), gather, scalar::to_le_bytes(&result))?;
        }
        for i in 1..n {
            let q = (me + n - i) % n;
            let r = seg(q);
            if let Some(d) = data.get_mut(r) {
                self.recv_into_tag(Rank(q), gather, d)?;
            }
        }
        Ok(())
    }

    /// Reduction of serde values with a custom associative `op(lower, higher)`; every rank
    /// gets the result.
    pub fn allreduce_with<T, F>(&self, value: T, op: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(T, T) -> T,
    {
        let t = self.next_collective_tag();
        let enc = |v: &Option<T>| -> Result<Vec<u8>> { postcard::to_allocvec(v).map_err(codec) };
        let r = self.reduce_tree(
            Rank(0),
            t,
            Some(value),
            &enc,
            &mut |acc: &mut Option<T>, bytes: &[u8], from: Rank| {
                let other: Option<T> =
                    postcard::from_bytes(bytes).map_err(|e| codec(e).with_peer(from))?;
                *acc = match (acc.take(), other) {
                    (Some(a), Some(b)) => Some(op(a, b)),
                    (a, b) => a.or(b),
                };
                Ok(())
            },
        )?;
        let bytes = match &r {
            Some(v) => enc(v)?,
            None => Vec::new(),
        };
        let got = self.bcast_bytes(Rank(0), t, bytes)?;
        let v: Option<T> = postcard::from_bytes(&got).map_err(|e| codec(e).with_peer(Rank(0)))?;
        v.ok_or_else(|| NetError::new(ErrorKind::Protocol, "empty reduction result"))
    }

    /// Collects one value per rank on `root` (`Some(values in rank order)` there).
    pub fn gather<T: Serialize + DeserializeOwned>(
        &self,
        root: Rank,
        value: &T,
    ) -> Result<Option<Vec<T>>> {
        self.check_root(root)?;
        let t = self.next_collective_tag();
        self.gather_tagged(root, value, t)
    }

    fn gather_tagged<T: Serialize + DeserializeOwned>(
        &self,
        root: Rank,
        value: &T,
        t: Tag,
    ) -> Result<Option<Vec<T>>> {
        let mine = postcard::to_allocvec(value).map_err(codec)?;
        if self.rank() != root {
            self.send_bytes(root, t, mine)?;
            return Ok(None);
        }
        let mut out = Vec::with_capacity(self.size() as usize);
        for r in 0..self.size() {
            let r = Rank(r);
            let b = if r == root {
                mine.clone()
            } else {
                self.coll_recv(r, t)?
            };
            out.push(postcard::from_bytes(&b).map_err(|e| codec(e).with_peer(r))?);
        }
        Ok(Some(out))
    }

    /// Every rank gets every rank's value, in rank order.
    pub fn allgather<T: Serialize + DeserializeOwned>(&self, value: &T) -> Result<Vec<T>> {
        let t = self.next_collective_tag();
        let g = self.gather_tagged(Rank(0), value, t)?;
        let bytes = match &g {
            Some(v) => postcard::to_allocvec(v).map_err(codec)?,
            None => Vec::new(),
        };
        let got = self.bcast_bytes(Rank(0), t, bytes)?;
        match g {
            Some(v) => Ok(v),
            None => postcard::from_bytes(&got).map_err(|e| codec(e).with_peer(Rank(0))),
        }
    }

    /// Distributes `values[r]` from `root` to each rank `r`; `values` is read on root only
    /// and must hold exactly one value per rank.
    pub fn scatter<T: Serialize + DeserializeOwned>(
        &self,
        root: Rank,
        values: Option<Vec<T>>,
    ) -> Result<T> {
        self.check_root(root)?;
        let t = self.next_collective_tag();
        if self.rank() != root {
            let b = self.coll_recv(root, t)?;
            return postcard::from_bytes(&b).map_err(|e| codec(e).with_peer(root));
        }
        let values = values.ok_or_else(|| {
            NetError::new(
                ErrorKind::InvalidArgument,
                "scatter root must pass Some(values)",
            )
        })?;
        if values.len() != self.size() as usize {
            return Err(NetError::new(
                ErrorKind::InvalidArgument,
                format!(
                    "scatter got {} for {}",
                    lazarus_format::count(values.len() as u64, "value"),
                    lazarus_format::count(self.size(), "rank")
                ),
            ));
        }
        let mut mine = None;
        for (r, v) in values.into_iter().enumerate() {
            let r = Rank(r as u32);
            if r == root {
                mine = Some(v);
            } else {
                self.send_bytes(r, t, postcard::to_allocvec(&v).map_err(codec)?)?;
            }
        }
        mine.ok_or_else(|| NetError::new(ErrorKind::InvalidArgument, "root value missing"))
    }
}

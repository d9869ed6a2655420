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

/// A serde collective's message: `1` and the value's postcard bytes, or ([`refusal`]) `0`
/// and why the sending rank cannot take part (its argument was refused, its value did not
/// encode), so that the ranks waiting for its message fail with the reason instead of
/// waiting for a message that never comes (found in review: a scatter root given the
/// wrong number of values returned its error and left every other rank waiting).
fn sealed<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    postcard::to_extend(value, vec![1u8]).map_err(codec)
}

/// The `0` message of [`sealed`], carrying `why`.
fn refusal(why: &NetError) -> Vec<u8> {
    let mut b = vec![0u8];
    b.extend_from_slice(why.to_string().as_bytes());
    b
}

/// Reads a message of [`sealed`] / [`refusal`] from `from`.
fn unsealed<T: DeserializeOwned>(bytes: &[u8], from: Rank) -> Result<T> {
    match bytes.split_first() {
        Some((1, value)) => postcard::from_bytes(value).map_err(|e| codec(e).with_peer(from)),
        Some((0, why)) => Err(NetError::new(
            ErrorKind::InvalidArgument,
            format!(
                "{from} could not take part in the collective: {}",
                String::from_utf8_lossy(why)
            ),
        )
        .with_peer(from)),
        _ => Err(
            NetError::new(ErrorKind::Codec, "collective message without its mark").with_peer(from),
        ),
    }
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
        let (bytes, mine) = if self.rank() == root {
            match sealed(value) {
                Ok(b) => (b, Ok(())),
                Err(e) => (refusal(&e), Err(e)),
            }
        } else {
            (Vec::new(), Ok(()))
        };
        let got = self.bcast_bytes(root, t, bytes)?;
        mine?;
        if self.rank() != root {
            *value = unsealed(&got, root)?;
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
        let mine = sealed(value);
        if self.rank() != root {
            return match mine {
                Ok(b) => self.send_bytes(root, t, b).map(|()| None),
                Err(e) => {
                    self.send_bytes(root, t, refusal(&e))?;
                    Err(e)
                }
            };
        }
        // Every rank's message is received, whatever fails, so none is left for a later
        // collective; the first failure is returned.
        let mut first_err = None;
        let mut out = Vec::with_capacity(self.size() as usize);
        for r in 0..self.size() {
            let r = Rank(r);
            let v = if r == root {
                match &mine {
                    Ok(b) => unsealed(b, r),
                    Err(e) => Err(NetError::new(e.kind(), e.to_string())),
                }
            } else {
                unsealed(&self.coll_recv(r, t)?, r)
            };
            match v {
                Ok(v) => out.push(v),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(Some(out)),
        }
    }

    /// Every rank gets every rank's value, in rank order.
    pub fn allgather<T: Serialize + DeserializeOwned>(&self, value: &T) -> Result<Vec<T>> {
        let t = self.next_collective_tag();
        let g = self.gather_tagged(Rank(0), value, t);
        // Rank 0 sends the values or why it has none; every rank takes part in the
        // broadcast (interior ranks of its tree forward it), even one that failed.
        let bytes = match &g {
            Ok(Some(v)) => sealed(v).unwrap_or_else(|e| refusal(&e)),
            Err(e) if self.rank() == Rank(0) => refusal(e),
            _ => Vec::new(),
        };
        let got = self.bcast_bytes(Rank(0), t, bytes)?;
        match g? {
            Some(v) => Ok(v),
            None => unsealed(&got, Rank(0)),
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
            return unsealed(&b, root);
        }
        // Everything is checked and encoded before the first message: a refusal then
        // reaches every rank (none got a value).
        let encoded = (|| -> Result<(Option<T>, Vec<Vec<u8>>)> {
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
            let mut out = Vec::with_capacity(values.len());
            for (r, v) in values.into_iter().enumerate() {
                if r == root.index() {
                    out.push(Vec::new());
                    mine = Some(v);
                } else {
                    out.push(sealed(&v)?);
                }
            }
            Ok((mine, out))
        })();
        match encoded {
            Ok((mine, messages)) => {
                for (r, b) in messages.into_iter().enumerate() {
                    if r != root.index() {
                        self.send_bytes(Rank(r as u32), t, b)?;
                    }
                }
                mine.ok_or_else(|| NetError::new(ErrorKind::InvalidArgument, "root value missing"))
            }
            Err(e) => {
                for r in (0..self.size()).map(Rank).filter(|r| *r != root) {
                    self.send_bytes(r, t, refusal(&e))?;
                }
                Err(e)
            }
        }
    }
}

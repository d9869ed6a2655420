//! Numeric element types of the bulk path: sent as raw little-endian bytes, no per-element
//! serialization.

use crate::error::{ErrorKind, NetError, Result};

mod sealed {
    pub trait Sealed {}
}

/// A fixed-width number that travels as little-endian bytes and can be reduced.
pub trait Scalar: bytemuck::Pod + PartialOrd + Send + Sync + 'static + sealed::Sealed {
    /// `a + b` (wrapping for integers, so a reduction never panics).
    fn add(a: Self, b: Self) -> Self;
    /// Converts between native and little-endian representation (an involution).
    fn swap_le(self) -> Self;
}

macro_rules! int_scalar {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Scalar for $t {
            fn add(a: Self, b: Self) -> Self { a.wrapping_add(b) }
            fn swap_le(self) -> Self { <$t>::to_le(self) }
        }
    )*};
}
int_scalar!(u8, i8, u16, i16, u32, i32, u64, i64);

impl sealed::Sealed for f32 {}
impl Scalar for f32 {
    fn add(a: Self, b: Self) -> Self {
        a + b
    }
    fn swap_le(self) -> Self {
        f32::from_bits(self.to_bits().to_le())
    }
}
impl sealed::Sealed for f64 {}
impl Scalar for f64 {
    fn add(a: Self, b: Self) -> Self {
        a + b
    }
    fn swap_le(self) -> Self {
        f64::from_bits(self.to_bits().to_le())
    }
}

/// A slice's little-endian bytes.
pub(crate) fn to_le_bytes<T: Scalar>(v: &[T]) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        let b: &[u8] = bytemuck::cast_slice(v);
        let mut out = crate::pool::take(b.len());
        out.extend_from_slice(b);
        out
    } else {
        let swapped: Vec<T> = v.iter().map(|x| x.swap_le()).collect();
        bytemuck::cast_slice(&swapped).to_vec()
    }
}

/// Fills `out` from little-endian bytes; the length must match exactly.
pub(crate) fn from_le_bytes<T: Scalar>(bytes: &[u8], out: &mut [T]) -> Result<()> {
    let want = std::mem::size_of_val(out);
    if bytes.len() != want {
        return Err(NetError::new(
            ErrorKind::InvalidArgument,
            format!(
                "message has {} bytes, receive buffer expects {want} ({} elements of {} bytes)",
                bytes.len(),
                out.len(),
                std::mem::size_of::<T>()
            ),
        ));
    }
    bytemuck::cast_slice_mut::<T, u8>(out).copy_from_slice(bytes);
    if cfg!(target_endian = "big") {
        for x in out.iter_mut() {
            *x = x.swap_le();
        }
    }
    Ok(())
}

/// Element count of a little-endian byte payload, or an error if it is not whole elements.
pub(crate) fn elements<T: Scalar>(bytes: &[u8]) -> Result<usize> {
    let sz = std::mem::size_of::<T>();
    if sz == 0 || bytes.len() % sz != 0 {
        return Err(NetError::new(
            ErrorKind::Codec,
            format!(
                "{} bytes is not a whole number of {sz}-byte elements",
                bytes.len()
            ),
        ));
    }
    Ok(bytes.len() / sz)
}

//! Primitive numbers that travel on the bulk path: raw little-endian bytes, no per-element
//! encoding, so saving a `Vec<f64>` on a little-endian host borrows its memory as is.

use bytemuck::Pod;
use lazarus_format::DType;
use std::borrow::Cow;

/// A fixed-width primitive number stored as raw little-endian bytes.
///
/// Implemented for `u8 i8 u16 i16 u32 i32 u64 i64 f32 f64`. Deliberately not for `usize`,
/// `isize` or `bool`: their width or bit patterns are host-dependent, which would make a
/// checkpoint unportable (use `u64` or a serde field).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a fixed-width primitive number, so `Vec<{Self}>` has no bulk path",
    note = "mark the field #[checkpoint(serde)] to save it with postcard instead"
)]
pub trait Element: Pod + Default + Send + Sync + 'static {
    /// The dtype tag recorded in the manifest.
    const DTYPE: DType;
    /// The Rust spelling recorded in the schema (`"f64"`).
    const NAME: &'static str;
}

macro_rules! element {
    ($($t:ty => $d:ident),* $(,)?) => {$(
        impl Element for $t {
            const DTYPE: DType = DType::$d;
            const NAME: &'static str = stringify!($t);
        }
    )*};
}
element!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32,
         u64 => U64, i64 => I64, f32 => F32, f64 => F64);

/// Reverses the byte order of every `width`-byte element of `bytes` in place.
///
/// This is the only difference between the host layout and the on-disk layout on a
/// big-endian host. A trailing partial element (impossible for a well-formed buffer) is left
/// untouched. `width` of 0 or 1 is a no-op.
pub fn swap_element_bytes(bytes: &mut [u8], width: usize) {
    if width < 2 {
        return;
    }
    for elem in bytes.chunks_exact_mut(width) {
        elem.reverse();
    }
}

/// True on hosts whose memory layout differs from the on-disk (little-endian) layout.
const HOST_IS_BIG_ENDIAN: bool = cfg!(target_endian = "big");

/// The on-disk (little-endian) bytes of `data`: borrowed on little-endian hosts, a swapped
/// copy on big-endian hosts.
pub fn to_le_bytes<T: Element>(data: &[T]) -> Cow<'_, [u8]> {
    host_bytes(data, HOST_IS_BIG_ENDIAN)
}

/// `data`'s memory as bytes, byte-swapped per element when `swap`. Both paths are compiled
/// (and tested) on every host; `swap` is a constant, so the other path folds away.
fn host_bytes<T: Element>(data: &[T], swap: bool) -> Cow<'_, [u8]> {
    let raw: &[u8] = bytemuck::cast_slice(data);
    if swap {
        let mut owned = raw.to_vec();
        swap_element_bytes(&mut owned, std::mem::size_of::<T>());
        Cow::Owned(owned)
    } else {
        Cow::Borrowed(raw)
    }
}

/// Fills `dst` (whose length the caller already set to `le.len() / size_of::<T>()`) from
/// little-endian bytes. The caller checked the lengths agree.
pub(crate) fn fill_from_le<T: Element>(dst: &mut [T], le: &[u8]) {
    fill_swapped(dst, le, HOST_IS_BIG_ENDIAN);
}

fn fill_swapped<T: Element>(dst: &mut [T], bytes: &[u8], swap: bool) {
    let out: &mut [u8] = bytemuck::cast_slice_mut(dst);
    let n = out.len().min(bytes.len());
    if let (Some(o), Some(i)) = (out.get_mut(..n), bytes.get(..n)) {
        o.copy_from_slice(i);
    }
    if swap {
        swap_element_bytes(out, std::mem::size_of::<T>());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_reverses_each_element() {
        let mut b = vec![1u8, 2, 3, 4, 5, 6, 7, 8];
        swap_element_bytes(&mut b, 4);
        assert_eq!(b, vec![4, 3, 2, 1, 8, 7, 6, 5]);
        swap_element_bytes(&mut b, 1);
        assert_eq!(b, vec![4, 3, 2, 1, 8, 7, 6, 5]);
        let mut odd = vec![1u8, 2, 3];
        swap_element_bytes(&mut odd, 2);
        assert_eq!(odd, vec![2, 1, 3]);
    }

    #[test]
    fn swap_turns_be_into_le() {
        let vals = [0x0102_0304_0506_0708u64, 42, u64::MAX - 7];
        let mut be: Vec<u8> = vals.iter().flat_map(|v| v.to_be_bytes()).collect();
        swap_element_bytes(&mut be, 8);
        let le: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(be, le);
    }

    #[test]
    fn swapped_path_produces_the_other_byte_order() {
        // On a little-endian host the swapped path yields big-endian bytes, and vice versa:
        // this is the code a big-endian host runs to produce and read little-endian bytes.
        let v = [0x0102_0304u32, 0xdead_beef, 7];
        let swapped = host_bytes(&v, true);
        let other: Vec<u8> = if HOST_IS_BIG_ENDIAN {
            v.iter().flat_map(|x| x.to_le_bytes()).collect()
        } else {
            v.iter().flat_map(|x| x.to_be_bytes()).collect()
        };
        assert_eq!(&*swapped, &other[..]);
        assert!(matches!(swapped, Cow::Owned(_)));
        let mut back = [0u32; 3];
        fill_swapped(&mut back, &swapped, true);
        assert_eq!(back, v);
        let f = [1.5f64, -0.0, f64::NAN];
        let mut fb = [0f64; 3];
        fill_swapped(&mut fb, &host_bytes(&f, true), true);
        assert_eq!(fb.map(f64::to_bits), f.map(f64::to_bits));
    }

    #[test]
    fn le_bytes_are_the_documented_layout() {
        let v = [1.5f64, -2.0];
        let expect: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(&*to_le_bytes(&v), &expect[..]);
        let mut back = [0f64; 2];
        fill_from_le(&mut back, &expect);
        assert_eq!(back, v);
    }
}

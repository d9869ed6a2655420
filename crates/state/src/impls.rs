//! `Checkpoint` for standard types. Numbers, `bool`, `char`, `String` and `Option<T>` are
//! small serde objects; `Vec<T>` and `[T; N]` of primitive numbers are bulk objects.

use crate::element::Element;
use crate::{short_type_name, Checkpoint, StateError, StateReader, StateWriter};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

macro_rules! serde_leaf {
    ($($t:ty),* $(,)?) => {
        $(
            impl Checkpoint for $t {
                fn save<'a>(&'a self, out: &mut StateWriter<'a>) -> Result<(), StateError> {
                    out.serde(stringify!($t), self)
                }
                fn restore(&mut self, inp: &mut StateReader) -> Result<(), StateError> {
                    *self = inp.serde(stringify!($t))?;
                    Ok(())
                }
            }
        )*
        /// The type names of these leaves: for them the name alone determines the serde
        /// layout, so none is recorded (`StateWriter::serde`).
        pub(crate) const PLAIN_LEAVES: &[&str] = &[$(stringify!($t)),*];
    };
}
// postcard encodes usize/isize as varints of their value, so they are portable between
// 32- and 64-bit hosts as long as the value fits.
serde_leaf!(
    u8, i8, u16, i16, u32, i32, u64, i64, u128, i128, usize, isize, f32, f64, bool, char, String
);

impl<T: Element> Checkpoint for Vec<T> {
    fn save<'a>(&'a self, out: &mut StateWriter<'a>) -> Result<(), StateError> {
        out.bulk(&format!("Vec<{}>", T::NAME), self.as_slice(), None)
    }
    fn restore(&mut self, inp: &mut StateReader) -> Result<(), StateError> {
        inp.bulk_into(&format!("Vec<{}>", T::NAME), self)
            .map(|_| ())
    }
}

impl<T: Element, const N: usize> Checkpoint for [T; N] {
    fn save<'a>(&'a self, out: &mut StateWriter<'a>) -> Result<(), StateError> {
        out.bulk(&format!("[{}; {N}]", T::NAME), self.as_slice(), None)
    }
    fn restore(&mut self, inp: &mut StateReader) -> Result<(), StateError> {
        inp.bulk_into_slice(&format!("[{}; {N}]", T::NAME), self.as_mut_slice())
            .map(|_| ())
    }
}

impl<T: Serialize + DeserializeOwned> Checkpoint for Option<T> {
    fn save<'a>(&'a self, out: &mut StateWriter<'a>) -> Result<(), StateError> {
        out.serde(&short_type_name::<Self>(), self)
    }
    fn restore(&mut self, inp: &mut StateReader) -> Result<(), StateError> {
        *self = inp.serde(&short_type_name::<Self>())?;
        Ok(())
    }
}

impl<T: Checkpoint + ?Sized> Checkpoint for Box<T> {
    fn save<'a>(&'a self, out: &mut StateWriter<'a>) -> Result<(), StateError> {
        (**self).save(out)
    }
    fn restore(&mut self, inp: &mut StateReader) -> Result<(), StateError> {
        (**self).restore(inp)
    }
    fn after_restore(&mut self) -> Result<(), StateError> {
        (**self).after_restore()
    }
}

/// Wraps any serde type so it checkpoints as one postcard object; the schema records the
/// type's name without module paths. In a derived struct, `#[checkpoint(serde)]` on the
/// field does the same without the wrapper.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Serde<T>(pub T);

impl<T: Serialize + DeserializeOwned> Checkpoint for Serde<T> {
    fn save<'a>(&'a self, out: &mut StateWriter<'a>) -> Result<(), StateError> {
        out.serde(&short_type_name::<T>(), &self.0)
    }
    fn restore(&mut self, inp: &mut StateReader) -> Result<(), StateError> {
        self.0 = inp.serde(&short_type_name::<T>())?;
        Ok(())
    }
}

impl<T> std::ops::Deref for Serde<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::DerefMut for Serde<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

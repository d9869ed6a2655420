//! Old ranks' parts held in memory, as a `Reshard` plan reads them (tests only).

#![allow(dead_code)] // each test file uses part of this

use lazarus_format::{LoadedObject, ObjectInfo, Rank};

/// An object a plan asked for is not in the old rank's part.
#[derive(Debug, thiserror::Error)]
#[error("no such object")]
pub struct Missing;

/// The object infos of `parts` (one list per old rank), as `Reshard::new` takes them.
pub fn infos(parts: &[Vec<LoadedObject>]) -> Vec<Vec<ObjectInfo>> {
    parts
        .iter()
        .map(|p| p.iter().map(|o| o.info.clone()).collect())
        .collect()
}

/// The fetch of a plan over `parts`: object `name` of old rank `r`.
pub fn fetch_from(
    parts: &[Vec<LoadedObject>],
) -> impl FnMut(Rank, &str) -> Result<LoadedObject, Missing> + '_ {
    move |r, name| {
        parts
            .get(r.index())
            .and_then(|p| p.iter().find(|o| o.info.name == name))
            .cloned()
            .ok_or(Missing)
    }
}

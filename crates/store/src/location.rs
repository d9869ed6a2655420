//! Turning what a user wrote for a repository (`--repo`, `.repo(..)`, `LAZARUS_REPO`) into
//! a backend. Decision: repository locations travel through the whole system as paths
//! (`&Path`, `PathBuf`, environment variables), and a path that starts with a URL scheme
//! names a non-directory backend: `s3://bucket/prefix` (feature `s3`) or `memory://name`.
//! Every other path is a directory. So the supervisor, the launcher, the coordinator and
//! the Job API need no change to carry an S3 repository, and a local directory whose name
//! looks like a URL is still reachable as `./s3:/...`. An unknown scheme is refused rather
//! than silently created as a local directory.

use crate::backend::{DirBackend, MemoryBackend, ReadBackend, WriteBackend};
use crate::error::{StoreError, StoreErrorKind};
use std::path::Path;
use std::sync::Arc;

/// The backend for the repository at `location` (a directory path, `s3://bucket/prefix`
/// or `memory://name`). No I/O for directories and memory; an S3 client is created once
/// per location and process and shared.
pub fn open_backend(location: &Path) -> Result<Arc<dyn WriteBackend>, StoreError> {
    let Some(s) = location.to_str() else {
        return Ok(Arc::new(DirBackend::new(location)));
    };
    let Some((scheme, rest)) = s.split_once("://") else {
        return Ok(Arc::new(DirBackend::new(location)));
    };
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+')
    {
        return Ok(Arc::new(DirBackend::new(location)));
    }
    match scheme {
        "memory" => {
            let name = rest.trim_end_matches('/');
            if name.is_empty() {
                return Err(bad(location, "memory://NAME needs a name"));
            }
            Ok(Arc::new(MemoryBackend::named(name)))
        }
        "s3" => open_s3(location, rest),
        other => Err(bad(
            location,
            &format!(
                "unsupported repository URL scheme {other}:// (use a directory path, \
                 s3://bucket/prefix or memory://name; write ./{s} for a local directory)"
            ),
        )),
    }
}

/// [`open_backend`], read-only.
pub fn open_read_backend(location: &Path) -> Result<Arc<dyn ReadBackend>, StoreError> {
    Ok(open_backend(location)?.as_read())
}

#[cfg(feature = "s3")]
fn open_s3(location: &Path, rest: &str) -> Result<Arc<dyn WriteBackend>, StoreError> {
    let b = crate::backend::s3::S3Backend::shared(location, rest)?;
    Ok(b)
}

#[cfg(not(feature = "s3"))]
fn open_s3(location: &Path, _rest: &str) -> Result<Arc<dyn WriteBackend>, StoreError> {
    Err(bad(
        location,
        "this program was built without S3 support: enable the `s3` feature of the \
         `lazarus` (or `lazarus-store`) crate; the `lazarus` command has it",
    ))
}

fn bad(location: &Path, msg: &str) -> StoreError {
    StoreError::new(StoreErrorKind::InvalidArgument, Some(location), msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        for p in ["r1", "./r1", "../r1/", "/tmp/x", "a:b", "x-y://z"] {
            let b = open_backend(Path::new(p)).unwrap();
            assert_eq!(b.location(), Path::new(p), "{p} is a directory");
        }
        let m = open_backend(Path::new("memory://loc-test")).unwrap();
        assert_eq!(m.location(), Path::new("memory://loc-test"));
        let e = open_backend(Path::new("gs://bucket/x")).unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::InvalidArgument);
        assert!(e.to_string().contains("gs://"), "{e}");
        assert!(open_backend(Path::new("memory://")).is_err());
    }
}

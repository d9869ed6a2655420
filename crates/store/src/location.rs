//! Turning what a user wrote for a repository (`--repo`, `.repo(..)`, `LAZARUS_REPO`) into
//! a backend. Decision: repository locations travel through the whole system as paths
//! (`&Path`, `PathBuf`, environment variables), and a path that starts with a URL scheme
//! names a non-directory backend: `s3://bucket/prefix` (feature `s3`) or `memory://name`.
//! Every other path is a directory. So the supervisor, the launcher, the coordinator and
//! the Job API need no change to carry an S3 repository, and a local directory whose name
//! looks like a URL is still reachable as `./s3:/...`. An unknown scheme is refused rather
//! than silently created as a local directory.
//!
//! It also gives one normalized string per repository location, so that a rank and its supervisor can
//! tell whether they opened the same repository however each one spelled it
//! (`lazarus run --repo A -- prog --repo B`, issue #11 item 9). Here, next to the code
//! that owns repository paths, so every runtime (Job API, `AsyncSession`, supervisor)
//! uses the one normalization.
//!
//! Decision: a location is compared as a string, not as a file identity (device, inode),
//! because repositories may also be object-store URLs (`s3://bucket/prefix`), which have no
//! inode; for local paths the string is canonical (absolute, symlinks resolved), which is
//! what an inode comparison would give for one host.

use crate::backend::{DirBackend, MemoryBackend, ReadBackend, WriteBackend};
use crate::error::{StoreError, StoreErrorKind};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// The backend for the repository at `location` (a directory path, `s3://bucket/prefix`
/// or `memory://name`). No I/O for directories and memory; an S3 client is created once
/// per location and process and shared.
pub fn open_backend(location: &Path) -> Result<Arc<dyn WriteBackend>, StoreError> {
    let Some((scheme, rest)) = url_parts(location) else {
        return Ok(Arc::new(DirBackend::new(location)));
    };
    let s = without_userinfo(&location.to_string_lossy());
    match scheme.to_ascii_lowercase().as_str() {
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
    let shown = PathBuf::from(without_userinfo(&location.to_string_lossy()));
    StoreError::new(StoreErrorKind::InvalidArgument, Some(&shown), msg)
}

/// The authority of `url` (`scheme://AUTHORITY/...`, or the text before the first `/`
/// when there is no scheme) has user information (`user:secret@`).
pub(crate) fn has_userinfo(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or("").contains('@')
}

/// `url` with the user information of its authority (`user:secret@`, credentials) removed:
/// what messages and `Debug` show (found in review: `s3://KEY:SECRET@bucket` and
/// `AWS_ENDPOINT_URL=http://user:secret@host` were echoed in errors).
pub(crate) fn without_userinfo(url: &str) -> String {
    if !has_userinfo(url) {
        return url.to_string();
    }
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), url),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}{host}{path}")
}

/// `(scheme, rest)` when `location` is a URL (`scheme://rest`, the scheme made of ASCII
/// letters, digits and `+`), `None` for a directory path. The one rule that both opening
/// a backend and normalizing a location follow, so they never disagree on what a
/// directory is.
fn url_parts(location: &Path) -> Option<(&str, &str)> {
    let (scheme, rest) = location.to_str()?.split_once("://")?;
    let ok = !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+');
    ok.then_some((scheme, rest))
}

/// The normalized location of the repository at `path`:
/// - `scheme://rest` (an object-store URL): the scheme lower-cased, trailing slashes of
///   the rest removed (`S3://bucket/prefix/` and `s3://bucket/prefix` are the same);
/// - anything else is a local path: made absolute against the current directory, symlinks
///   resolved (`std::fs::canonicalize`) as far as the path exists and `.`/`..` resolved
///   lexically below that (nothing below can be a symlink), with no trailing slash.
///
/// Line breaks are escaped (`\n`, `\r`) so the result fits on one marker line. Two spellings
/// of one existing directory give the same string; so do the rank's and the supervisor's
/// spelling, because both call this function.
pub fn repo_location(path: &Path) -> String {
    if let Some((scheme, rest)) = url_parts(path) {
        let rest = rest.trim_end_matches('/');
        return escape(&format!("{}://{rest}", scheme.to_ascii_lowercase()));
    }
    escape(&local(path).to_string_lossy())
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

/// Canonical form of a local path that may not exist (yet).
fn local(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        match std::env::current_dir() {
            Ok(d) => d.join(path),
            Err(_) => path.to_path_buf(),
        }
    };
    // The longest prefix that exists is canonicalized; the missing rest is appended.
    let mut head = abs;
    let mut missing = Vec::new();
    let base = loop {
        if let Ok(c) = std::fs::canonicalize(&head) {
            break c;
        }
        match head.components().next_back() {
            Some(Component::Normal(_) | Component::CurDir | Component::ParentDir) => {
                if let Some(last) = head.components().next_back() {
                    missing.push(last.as_os_str().to_os_string());
                }
                head.pop();
            }
            _ => break head,
        }
    };
    let mut out = base;
    for part in missing.iter().rev() {
        match Path::new(part).components().next() {
            Some(Component::ParentDir) => {
                out.pop();
            }
            Some(Component::CurDir) | None => {}
            Some(_) => out.push(part),
        }
    }
    out
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

    #[test]
    fn one_directory_spelled_many_ways_is_one_location() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&repo, &link).unwrap();
        let want = repo_location(&repo);
        assert_eq!(
            want,
            std::fs::canonicalize(&repo).unwrap().to_string_lossy()
        );
        for p in [
            format!("{}/", repo.display()),
            format!("{}/.", repo.display()),
            format!("{}/../repo", repo.display()),
            format!("{}/", link.display()),
            link.display().to_string(),
        ] {
            assert_eq!(repo_location(Path::new(&p)), want, "{p}");
        }
        // Not existing yet: the existing prefix is canonical, the rest lexical.
        let later = repo_location(&link.join("sub/./x/../y"));
        assert_eq!(later, format!("{want}/sub/y"));
        assert_ne!(repo_location(&dir.path().join("other")), want);
    }

    #[test]
    fn urls_are_normalized_as_strings() {
        let a = repo_location(Path::new("s3://bucket/prefix/"));
        assert_eq!(a, "s3://bucket/prefix");
        assert_eq!(repo_location(Path::new("S3://bucket/prefix")), a);
        assert_ne!(repo_location(Path::new("s3://bucket/other")), a);
        assert_ne!(repo_location(Path::new("s3://Bucket/prefix")), a);
    }

    #[test]
    fn line_breaks_are_escaped() {
        let l = repo_location(Path::new("/no/such/dir\nwith-newline"));
        assert!(!l.contains('\n'), "{l}");
        assert!(l.ends_with("dir\\nwith-newline"), "{l}");
    }
}

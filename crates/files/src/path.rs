//! Managed paths: relative, `/`-separated, UTF-8 (they become object names in the
//! checkpoint), without `.`, `..` or empty components, so a path can never leave the
//! rank's managed area.

use crate::error::{FilesError, FilesErrorKind};
use std::path::{Component, Path};

/// Longest accepted managed path, in bytes.
pub const MAX_PATH_LEN: usize = 1024;

/// Checks `p` and returns its canonical `/`-separated form.
pub(crate) fn normalize(p: &Path) -> Result<String, FilesError> {
    let bad = |why: &str| {
        FilesError::new(
            FilesErrorKind::InvalidPath,
            Some(p),
            format!("not a managed path: {why} (use a relative path inside the managed directory)"),
        )
    };
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => {
                let s = s.to_str().ok_or_else(|| bad("not UTF-8"))?;
                if s.contains('\\') || s.contains('\0') {
                    return Err(bad("contains a backslash or NUL"));
                }
                parts.push(s);
            }
            Component::CurDir => {}
            Component::ParentDir => return Err(bad("contains `..`")),
            Component::RootDir | Component::Prefix(_) => return Err(bad("absolute")),
        }
    }
    if parts.is_empty() {
        return Err(bad("empty"));
    }
    let s = parts.join("/");
    if s.len() > MAX_PATH_LEN {
        return Err(bad("longer than 1024 bytes"));
    }
    Ok(s)
}

/// The parent of a canonical path (`None` at the top level).
pub(crate) fn parent(p: &str) -> Option<&str> {
    p.rfind('/').map(|i| &p[..i])
}

/// True when `p` is `dir` or lies below it.
pub(crate) fn is_under(p: &str, dir: &str) -> bool {
    p == dir || (p.len() > dir.len() && p.starts_with(dir) && p.as_bytes()[dir.len()] == b'/')
}

/// `p` with its prefix `from` replaced by `to` (`p` must be under `from`).
pub(crate) fn rebase(p: &str, from: &str, to: &str) -> String {
    format!("{to}{}", &p[from.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_relative_and_rejects_escapes() {
        assert_eq!(normalize(Path::new("a/./b/c.txt")).unwrap(), "a/b/c.txt");
        for bad in ["", "/etc/passwd", "../x", "a/../../b", "."] {
            let e = normalize(Path::new(bad)).unwrap_err();
            assert_eq!(e.kind(), FilesErrorKind::InvalidPath, "{bad}");
        }
        assert!(normalize(Path::new("a\\b")).is_err());
    }

    #[test]
    fn under_and_rebase() {
        assert!(is_under("a/b", "a"));
        assert!(is_under("a", "a"));
        assert!(!is_under("ab", "a"));
        assert_eq!(rebase("a/b/c", "a/b", "x"), "x/c");
        assert_eq!(parent("a/b/c"), Some("a/b"));
        assert_eq!(parent("a"), None);
    }
}

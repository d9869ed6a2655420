//! One normalized string per repository location, so that a rank and its supervisor can
//! tell whether they opened the same repository however each one spelled it
//! (`lazarus run --repo A -- prog --repo B`, issue #11 item 9). Here, next to the code
//! that owns repository paths, so every runtime (Job API, `AsyncSession`, supervisor)
//! uses the one normalization.
//!
//! Decision: a location is compared as a string, not as a file identity (device, inode),
//! because repositories may also be object-store URLs (`s3://bucket/prefix`), which have no
//! inode; for local paths the string is canonical (absolute, symlinks resolved), which is
//! what an inode comparison would give for one host.

use std::path::{Component, Path, PathBuf};

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
    let text = path.to_string_lossy();
    if let Some((scheme, rest)) = text.split_once("://") {
        let is_scheme = scheme
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if is_scheme {
            let rest = rest.trim_end_matches('/');
            return escape(&format!("{}://{rest}", scheme.to_ascii_lowercase()));
        }
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

//! Attack review #9: credentials written into a repository URL or an endpoint URL were
//! echoed in error messages and in `Debug` output. They are refused without being shown.

use lazarus_store::{S3Backend, S3Config};
use std::path::Path;

#[test]
fn credentials_in_urls_are_never_echoed() {
    let e = S3Config::from_env("AKIA:secret@bucket/x").unwrap_err();
    assert!(!e.contains("secret") && !e.contains("AKIA"), "{e}");
    assert!(e.contains("credentials"), "{e}");
    // Through the location, as `--repo` gives it.
    let e = lazarus_store::open_backend(Path::new("s3://AKIA:secret@bucket/x")).unwrap_err();
    assert!(!format!("{e} {e:?}").contains("secret"), "{e} {e:?}");
    let e = lazarus_store::open_backend(Path::new("ftp://u:secret@host/x")).unwrap_err();
    assert!(!format!("{e} {e:?}").contains("secret"), "{e} {e:?}");
    // An endpoint with user information: refused, never shown, not even by Debug.
    let mut cfg = S3Config::from_env("bucket/x").unwrap();
    cfg.endpoint = Some("http://user:secret@127.0.0.1:1".into());
    cfg.allow_http = true;
    assert!(!format!("{cfg:?}").contains("secret"), "{cfg:?}");
    let e = S3Backend::open(cfg).unwrap_err();
    assert!(!format!("{e} {e:?}").contains("secret"), "{e} {e:?}");
    assert!(e.to_string().contains("user information"), "{e}");
}

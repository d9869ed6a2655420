//! Ranks started by `ssh` (or any command used like it: `CMD HOST COMMAND-STRING`), one
//! connection per rank. The remote command is only `exec <shim> --stdin-control -- prog…`
//! (shell-quoted): the environment, including the job token, travels on the connection's
//! stdin, never on a command line another user of the host could read in `ps`. The stdin
//! stays open as the rank's lifeline: a stop is `sig N` on it, and its end (the ssh client
//! or the launcher died) stops the rank.

use super::engine::{Engine, RunningJob, StartSpec};
use super::record::Tagging;
use super::remote::{self, RemoteJob};
use super::shim::{hex, ENV_HOST};
use crate::error::{NetError, Result};
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::Command;

/// The `ssh` engine.
#[derive(Clone, Debug)]
pub struct SshEngine {
    /// The remote shell (default `ssh`), called as `PROGRAM [extra] HOST COMMAND`.
    pub program: PathBuf,
    /// Extra arguments before the host (default: `-T -o BatchMode=yes`, no prompts; with
    /// these defaults, `-o ConnectTimeout=<the job's connect timeout>` is added unless a
    /// ConnectTimeout is given).
    pub extra_args: Vec<OsString>,
}

impl Default for SshEngine {
    fn default() -> Self {
        SshEngine {
            program: "ssh".into(),
            extra_args: ["-T", "-o", "BatchMode=yes"].map(OsString::from).to_vec(),
        }
    }
}

/// `word` quoted for a POSIX shell, byte for byte: a path or argument that is not UTF-8
/// reaches the remote program unchanged (a lossy conversion would hand it another name).
/// A word starting with `=` is always quoted: zsh (a remote login shell) expands `=cmd`
/// to the command's path and rejects `==`.
pub(crate) fn shell_quote(word: &OsStr) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    let b = word.as_bytes();
    if !b.is_empty()
        && b[0] != b'='
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(c))
    {
        return word.to_os_string();
    }
    let mut out = Vec::with_capacity(b.len() + 2);
    out.push(b'\'');
    for &c in b {
        if c == b'\'' {
            out.extend_from_slice(br"'\''");
        } else {
            out.push(c);
        }
    }
    out.push(b'\'');
    OsString::from_vec(out)
}

impl SshEngine {
    /// The arguments before the host: `extra_args`, plus `-o ConnectTimeout=<timeout>`
    /// (whole seconds, at least 1) when they are the default options and name no
    /// ConnectTimeout, so a host that never answers fails the start instead of hanging.
    fn ssh_args(&self, timeout: std::time::Duration) -> Vec<OsString> {
        let mut args = self.extra_args.clone();
        let defaults = SshEngine::default().extra_args;
        let named = args.iter().any(|a| {
            a.to_string_lossy()
                .to_ascii_lowercase()
                .contains("connecttimeout")
        });
        if args.starts_with(&defaults) && !named {
            let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
            args.push("-o".into());
            args.push(format!("ConnectTimeout={}", secs.max(1)).into());
        }
        args
    }
}

impl Engine for SshEngine {
    fn name(&self) -> &'static str {
        "ssh"
    }

    fn remote(&self) -> bool {
        true
    }

    fn start(&self, spec: StartSpec<'_>) -> Result<Box<dyn RunningJob>> {
        let cfg = spec.cfg;
        let (shim, shim_args) = remote::shim_argv(cfg, &["--stdin-control"])?;
        let mut remote_cmd = OsString::from("exec");
        for w in std::iter::once(shim).chain(shim_args) {
            remote_cmd.push(" ");
            remote_cmd.push(shell_quote(&w));
        }
        let extra = self.ssh_args(cfg.net.connect_timeout);
        let mut job = RemoteJob::new(cfg.ranks, spec.hosts);
        for r in 0..cfg.ranks {
            let host = spec.hosts.get(r as usize).cloned().unwrap_or_default();
            let mut cmd = Command::new(&self.program);
            cmd.args(&extra).arg(&host).arg(&remote_cmd);
            // Each rank's control message carries its own entries only: with the whole
            // per-rank table it grew past the pipe buffer for big jobs, and writing it
            // blocked until ssh had authenticated (forever with a stalled sshd).
            let started = remote::shim_env(cfg, &spec.env, Some(r)).and_then(|env| {
                remote::spawn(
                    cmd,
                    format!("ssh {host}"),
                    Tagging::Fixed(r),
                    false,
                    &job.book,
                    &spec.sink,
                    true,
                )
                .map(|p| (p, env))
            });
            let started = started.and_then(|(mut p, env)| {
                let mut ctl = Vec::new();
                let rank_vars = [
                    ("LAZARUS_RANK".to_string(), r.to_string()),
                    (ENV_HOST.to_string(), host.clone()),
                ];
                for (k, v) in env
                    .iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                    .chain(
                        rank_vars
                            .iter()
                            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())),
                    )
                {
                    ctl.extend_from_slice(format!("env {} {}\n", hex(&k), hex(&v)).as_bytes());
                }
                ctl.extend_from_slice(b"go\n");
                p.write_control(&ctl).map_err(|e| {
                    NetError::io(format!("sending rank {r}'s environment to {host}"), e)
                })?;
                Ok(p)
            });
            match started {
                Ok(p) => job.procs.push(p),
                Err(e) => {
                    job.kill();
                    job.finish(std::time::Duration::from_secs(2));
                    return Err(e);
                }
            }
        }
        Ok(Box::new(job))
    }
}

impl remote::Proc {
    /// Writes to the shim's control input.
    pub(crate) fn write_control(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self.stdin_mut() {
            Some(w) => w.write_all(bytes).and_then(|()| w.flush()),
            None => Err(std::io::Error::other("no control input")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review #1: the default ssh options had no ConnectTimeout, so a host that never
    /// answered held the start; it is added from the job's connect timeout unless given,
    /// and never to a custom agent's arguments.
    #[test]
    fn default_ssh_options_get_a_connect_timeout() {
        use std::time::Duration;
        let d = SshEngine::default();
        let a = d.ssh_args(Duration::from_millis(2500));
        assert_eq!(
            a[a.len() - 2..],
            ["-o", "ConnectTimeout=3"].map(OsString::from)
        );
        let mut given = SshEngine::default();
        given
            .extra_args
            .extend(["-o", "connecttimeout=9"].map(OsString::from));
        assert_eq!(given.ssh_args(Duration::from_secs(20)), given.extra_args);
        let agent = SshEngine {
            program: "/bin/agent".into(),
            extra_args: Vec::new(),
        };
        assert!(agent.ssh_args(Duration::from_secs(20)).is_empty());
    }

    /// Review #4: zsh (a remote login shell) expands `=cmd` and rejects `==`; a word
    /// starting with '=' went unquoted. An inner '=' needs no quotes.
    #[test]
    fn words_starting_with_equals_are_quoted_for_zsh() {
        assert_eq!(shell_quote(OsStr::new("==")), "'=='");
        assert_eq!(shell_quote(OsStr::new("=x")), "'=x'");
        assert_eq!(shell_quote(OsStr::new("a=b")), "a=b");
    }

    #[test]
    fn remote_words_are_quoted_for_the_shell() {
        assert_eq!(shell_quote(OsStr::new("/usr/bin/x")), "/usr/bin/x");
        assert_eq!(shell_quote(OsStr::new("-")), "-");
        assert_eq!(shell_quote(OsStr::new("a b")), "'a b'");
        assert_eq!(shell_quote(OsStr::new("it's")), r"'it'\''s'");
        assert_eq!(shell_quote(OsStr::new("")), "''");
        assert_eq!(shell_quote(OsStr::new("$(rm -rf /)")), "'$(rm -rf /)'");
    }

    /// Regression (review): the remote command was built from a lossy UTF-8 conversion,
    /// so a program path or argument that is not UTF-8 reached the remote shell as
    /// another name (`\xff` became U+FFFD): the rank ran with arguments it was not given.
    #[test]
    fn a_non_utf8_argument_was_changed_on_its_way_to_the_remote_shell() {
        use std::os::unix::ffi::OsStrExt;
        let q = shell_quote(OsStr::from_bytes(b"in\xffput"));
        assert_eq!(q.as_bytes(), b"'in\xffput'");
        let q = shell_quote(OsStr::from_bytes(b"it's\xfe"));
        assert_eq!(q.as_bytes(), b"'it'\\''s\xfe'");
        // The shell gives the word back byte for byte.
        let out = Command::new("sh")
            .arg("-c")
            .arg({
                let mut c = OsString::from("printf %s ");
                c.push(&q);
                c
            })
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"it's\xfe");
    }
}

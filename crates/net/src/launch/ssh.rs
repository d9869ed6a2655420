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
    /// Extra arguments before the host (default: `-T -o BatchMode=yes`, no prompts).
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

/// `word` quoted for a POSIX shell.
pub(crate) fn shell_quote(word: &OsStr) -> String {
    let s = String::from_utf8_lossy(word.as_bytes());
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return s.into_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
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
        let remote_cmd = std::iter::once(OsString::from("exec"))
            .chain(std::iter::once(shim))
            .chain(shim_args)
            .map(|w| shell_quote(&w))
            .collect::<Vec<_>>()
            .join(" ");
        let env = remote::shim_env(cfg, &spec.env);
        let mut job = RemoteJob::new(cfg.ranks, spec.hosts);
        for r in 0..cfg.ranks {
            let host = spec.hosts.get(r as usize).cloned().unwrap_or_default();
            let mut cmd = Command::new(&self.program);
            cmd.args(&self.extra_args).arg(&host).arg(&remote_cmd);
            let started = remote::spawn(
                cmd,
                format!("ssh {host}"),
                Tagging::Fixed(r),
                false,
                &job.book,
                &spec.sink,
                true,
            )
            .and_then(|mut p| {
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

    #[test]
    fn remote_words_are_quoted_for_the_shell() {
        assert_eq!(shell_quote(OsStr::new("/usr/bin/x")), "/usr/bin/x");
        assert_eq!(shell_quote(OsStr::new("a b")), "'a b'");
        assert_eq!(shell_quote(OsStr::new("it's")), r"'it'\''s'");
        assert_eq!(shell_quote(OsStr::new("")), "''");
        assert_eq!(shell_quote(OsStr::new("$(rm -rf /)")), "'$(rm -rf /)'");
    }
}

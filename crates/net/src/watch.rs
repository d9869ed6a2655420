//! A rank watches its launcher: the rendezvous host sends heartbeats on every rank's
//! control connection, and a rank started by a Lazarus launcher (`lazarus run`, whatever the
//! engine) stops by itself when they stop: connection closed (the launcher died, even by
//! SIGKILL, or ended the incarnation) or silent for longer than the failure timeout (a
//! partition). Why: a rank that outlives its supervisor keeps computing and committing
//! checkpoints without the repository lock, and a rank on a partitioned host must be gone
//! before the job restarts elsewhere (docs/RUNTIME.md, "Ranks that lose their launcher").
//!
//! The rank's whole process group goes with it when the launcher made one for it
//! (`LAZARUS_RANK_SESSION=1`: each rank is the leader of its own session), so a rank wrapped
//! in a shell (`sh -c 'prog …'`) leaves neither the shell nor anything it started behind.

use crate::auth::Opener;
use crate::config::NetConfig;
use crate::wire::{self, Conn, Frame};
use lazarus_format::Rank;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Set by Lazarus launchers on every rank they start in its own session: a rank that loses
/// its launcher kills that whole process group.
pub const ENV_RANK_SESSION: &str = "LAZARUS_RANK_SESSION";

/// Exit status of a rank that stopped because it lost its launcher (EX_TEMPFAIL): the job
/// is restarted elsewhere, or its supervisor is gone.
pub const EXIT_LAUNCHER_LOST: i32 = 75;

/// What a rank does when the rendezvous host goes away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnLoss {
    /// Only drain the heartbeats (the host is rank 0 of an srun/mpirun job: its death is a
    /// peer failure the communicator reports).
    Ignore,
    /// Stop the process (and its launcher-made process group).
    Exit,
}

/// Starts the watcher thread on `control` (a clone of the rank's control connection).
/// Returns the flag that an orderly shutdown sets before closing the connection, so the
/// close is not taken for a lost launcher.
/// `rx` checks the MACs of the host's frames on it.
pub(crate) fn spawn(
    control: &Conn,
    rx: Opener,
    me: Rank,
    config: &NetConfig,
    on_loss: OnLoss,
) -> std::io::Result<Arc<AtomicBool>> {
    start(&control.s, rx, me, config, on_loss, None)
}

/// Like [`spawn`], and the watch thread also sends this rank's heartbeats (a world of one
/// has no transport doing it). The connection is shared with [`SoloControl`], whose
/// goodbye takes it: one sealer, so the frames' sequence numbers stay in order.
pub(crate) fn spawn_beating(
    control: &SharedConn,
    rx: Opener,
    me: Rank,
    config: &NetConfig,
    on_loss: OnLoss,
) -> std::io::Result<Arc<AtomicBool>> {
    let s = {
        let c = control.lock().unwrap_or_else(|e| e.into_inner());
        match c.as_ref() {
            Some(c) => c.s.try_clone()?,
            None => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the control connection is already closed",
                ))
            }
        }
    };
    start(&s, rx, me, config, on_loss, Some(control.clone()))
}

/// A control connection shared by the watch thread's heartbeats and the goodbye.
pub(crate) type SharedConn = Arc<Mutex<Option<Conn>>>;

fn start(
    control: &TcpStream,
    rx: Opener,
    me: Rank,
    config: &NetConfig,
    on_loss: OnLoss,
    beat: Option<SharedConn>,
) -> std::io::Result<Arc<AtomicBool>> {
    let mut s = control.try_clone()?;
    s.set_read_timeout(Some(config.heartbeat_interval))?;
    s.set_write_timeout(Some(config.heartbeat_interval))?;
    let done = Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    let timeout = config.failure_timeout;
    std::thread::Builder::new()
        .name("lazarus-launcher-watch".into())
        .spawn(move || {
            let why = watch(&mut s, rx, beat, &d2, timeout);
            if d2.load(Ordering::Acquire) {
                return;
            }
            match on_loss {
                OnLoss::Ignore => tracing::debug!("{me}: rendezvous host gone: {why}"),
                OnLoss::Exit => launcher_lost(me, &why),
            }
        })?;
    Ok(done)
}

/// Reads frames until the connection ends or stays silent for `timeout`; returns why.
/// With `beat`, also writes a heartbeat on it between reads (once per read timeout).
fn watch(
    s: &mut TcpStream,
    rx: Opener,
    beat: Option<SharedConn>,
    done: &AtomicBool,
    timeout: std::time::Duration,
) -> String {
    let mut rd = wire::FrameReader::new(rx);
    let heard = std::cell::Cell::new(Instant::now());
    let stop = || done.load(Ordering::Acquire) || heard.get().elapsed() > timeout;
    loop {
        if done.load(Ordering::Acquire) {
            return "shut down".into();
        }
        if let Some(c) = beat.as_ref() {
            // A failed write shows up as a lost connection on the next read.
            if let Some(c) = c.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                let _ = c.send(&Frame::Heartbeat(0));
            }
        }
        match rd.next(s, 128, &stop) {
            Ok(wire::Next::Small) => {
                match wire::decode(rd.body()) {
                    Ok(Frame::Heartbeat(_)) => {}
                    // Anything else is a protocol violation on an authenticated stream;
                    // it still proves the launcher is there, and must not kill the rank.
                    other => tracing::debug!("unexpected frame from the launcher: {other:?}"),
                }
                heard.set(Instant::now());
            }
            Ok(wire::Next::Data(..)) => {
                return "the launcher sent a data frame on the control connection".into()
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if heard.get().elapsed() > timeout {
                    let silent = heard.get().elapsed();
                    return format!("no heartbeat from the launcher for {silent:?}");
                }
            }
            Err(e) => return format!("connection to the launcher lost: {e}"),
        }
    }
}

fn launcher_lost(me: Rank, why: &str) -> ! {
    // One write; a failed stderr changes nothing about stopping.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!(
            "lazarus: {me}: stopping: {why} (a rank must not outlive its launcher: the job is \
             restarted elsewhere, or its supervisor is gone)\n"
        )
        .as_bytes(),
    );
    let own_session = std::env::var_os(ENV_RANK_SESSION).is_some_and(|v| v == "1");
    // SAFETY: plain syscalls; killpg targets this process's own group, which the launcher
    // created for this rank alone (it is the leader of its own session), so nothing outside
    // the rank is signalled; _exit never returns.
    unsafe {
        if own_session && libc::getsid(0) == libc::getpgrp() {
            libc::killpg(libc::getpgrp(), libc::SIGKILL);
        }
        libc::_exit(EXIT_LAUNCHER_LOST)
    }
}

/// The transport of a watched rank: an orderly finalize first tells the watcher that the
/// control connection is about to close on purpose.
pub(crate) struct Watched<T> {
    inner: T,
    done: Arc<AtomicBool>,
}

impl<T> Watched<T> {
    pub(crate) fn new(inner: T, done: Arc<AtomicBool>) -> Self {
        Watched { inner, done }
    }
}

impl<T: crate::comm::Transport> crate::comm::Transport for Watched<T> {
    fn send(&self, to: Rank, env: crate::mailbox::Envelope) -> crate::error::Result<()> {
        self.inner.send(to, env)
    }

    fn finalize(&self) {
        self.done.store(true, Ordering::Release);
        self.inner.finalize();
    }

    #[cfg(test)]
    fn inject_reset(&self) {
        self.inner.inject_reset();
    }

    #[cfg(test)]
    fn addrs(&self) -> Vec<std::net::SocketAddr> {
        self.inner.addrs()
    }
}

/// The transport of a watched world of one: no peers; the drop says goodbye to the
/// launcher (so a finished rank is not taken for a lost one).
pub(crate) struct SoloControl {
    control: SharedConn,
    done: Arc<AtomicBool>,
}

impl SoloControl {
    pub(crate) fn new(control: SharedConn, done: Arc<AtomicBool>) -> Self {
        SoloControl { control, done }
    }
}

impl crate::comm::Transport for SoloControl {
    fn send(&self, to: Rank, _env: crate::mailbox::Envelope) -> crate::error::Result<()> {
        Err(crate::error::NetError::new(
            crate::error::ErrorKind::InvalidArgument,
            "a world of one has no peer",
        )
        .with_peer(to))
    }

    fn finalize(&self) {
        self.done.store(true, Ordering::Release);
        let c = self
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut c) = c {
            let _ = c.send(&Frame::Bye);
            let _ = c.s.shutdown(std::net::Shutdown::Both);
        }
    }
}

//! In-process backend: N ranks as threads with the same [`Comm`] API.

use crate::comm::{Comm, Transport};
use crate::config::NetConfig;
use crate::error::{ErrorKind, NetError, Result};
use crate::mailbox::{Envelope, Mailbox, PeerState};
use lazarus_format::Rank;
use std::sync::Arc;

struct LocalTransport {
    me: Rank,
    boxes: Arc<Vec<Arc<Mailbox>>>,
}

impl Transport for LocalTransport {
    fn send(&self, to: Rank, env: Envelope) -> Result<()> {
        match self.boxes.get(to.index()) {
            Some(b) => {
                b.push(env);
                Ok(())
            }
            None => {
                Err(NetError::new(ErrorKind::InvalidArgument, "rank out of range").with_peer(to))
            }
        }
    }

    fn finalize(&self) {
        // Dropped during a panic: peers must see a failure, not an orderly finish.
        let st = if std::thread::panicking() {
            PeerState::Failed(format!("{} panicked", self.me))
        } else {
            PeerState::Finished
        };
        for (i, b) in self.boxes.iter().enumerate() {
            if i != self.me.index() {
                b.set_peer(self.me, st.clone());
            }
        }
    }
}

/// Builds `n` connected communicators of the in-process backend (one per rank).
pub fn local_comms(n: u32) -> Result<Vec<Comm>> {
    local_comms_with(n, NetConfig::default())
}

/// Like [`local_comms`] with an explicit configuration.
pub fn local_comms_with(n: u32, config: NetConfig) -> Result<Vec<Comm>> {
    if n == 0 {
        return Err(NetError::new(
            ErrorKind::InvalidArgument,
            "world size must be >= 1",
        ));
    }
    let config = config.validated()?;
    let boxes: Arc<Vec<Arc<Mailbox>>> = Arc::new(
        (0..n)
            .map(|_| Arc::new(Mailbox::new(n as usize, config.spin)))
            .collect(),
    );
    Ok((0..n)
        .map(|r| {
            let me = Rank(r);
            let t = LocalTransport {
                me,
                boxes: boxes.clone(),
            };
            Comm::from_parts(
                me,
                n,
                0,
                boxes[r as usize].clone(),
                Some(Box::new(t)),
                config.clone(),
            )
        })
        .collect())
}

/// Runs `f` on `n` ranks, each a thread with its own [`Comm`]; returns the results in rank
/// order. If a rank panics, the other ranks' blocking calls fail with `PeerFailed` (so
/// nothing hangs) and this returns a `PeerFailed` error naming the first rank that panicked.
pub fn local<F, R>(n: u32, f: F) -> Result<Vec<R>>
where
    F: Fn(Comm) -> R + Send + Sync,
    R: Send,
{
    let comms = local_comms(n)?;
    let f = &f;
    let results: Vec<std::thread::Result<R>> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|c| {
                std::thread::Builder::new()
                    .name(format!("lazarus-rank-{}", c.rank().0))
                    .spawn_scoped(s, move || f(c))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h.join(),
                Err(e) => Err(Box::new(e.to_string()) as Box<dyn std::any::Any + Send>),
            })
            .collect()
    });
    let mut out = Vec::with_capacity(results.len());
    for (r, res) in results.into_iter().enumerate() {
        match res {
            Ok(v) => out.push(v),
            Err(p) => {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                return Err(NetError::new(
                    ErrorKind::PeerFailed,
                    format!("rank thread panicked: {msg}"),
                )
                .with_peer(Rank(r as u32)));
            }
        }
    }
    Ok(out)
}

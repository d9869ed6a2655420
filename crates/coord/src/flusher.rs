//! The background writer of asynchronous checkpoints (issue #16, docs/ASYNC.md), shared by
//! the Job API's aligned rounds and [`crate::AsyncSession`]'s unaligned ones: one worker
//! thread, at most one task in flight, every outcome kept until its owner takes it.
//!
//! Invariants, each relied on by both users:
//! - At most one task is in flight: the owner takes the previous outcome
//!   ([`Flusher::settle`] or [`Flusher::poll`]) before it submits the next one, so
//!   staging memory is one copy of the state, parts are written in the order they were
//!   captured, and nothing queues up (back-pressure).
//! - What a task owns (staged objects, for the Job its runtime too) belongs to exactly
//!   one thread at a time: it moves to the worker with the task and comes back with the
//!   outcome.
//! - An outcome is never dropped: it stays until the owner takes it; a worker that
//!   panicked is reported as such (`Err` with the task's description).

use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;

/// `LAZARUS_FLUSH_THREADS=n`: the hashing/compression workers of a background flush.
pub const FLUSH_THREADS_ENV: &str = "LAZARUS_FLUSH_THREADS";

/// The workers of a background flush: [`FLUSH_THREADS_ENV`], else one core fewer than
/// the process may use (at least one), so that the program the flush runs beside keeps a
/// core (docs/ASYNC.md, "Flush threads"; `lazarus bench async`: the step rate of one rank
/// on two cores went from 0.83x to 0.91x of the rate without checkpoints). Only the
/// flusher's thread is capped: synchronous writes keep every core.
pub fn flush_threads() -> usize {
    std::env::var(FLUSH_THREADS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .saturating_sub(1)
        })
        .max(1)
}

/// One background worker running `work` on the tasks handed to it, one at a time. `T`:
/// a task, `D`: its outcome, `I`: what the owner remembers of the task in flight.
pub struct Flusher<T, D, I> {
    tx: Option<SyncSender<T>>,
    rx: Receiver<D>,
    handle: Option<JoinHandle<()>>,
    in_flight: Option<I>,
}

impl<T, D, I> std::fmt::Debug for Flusher<T, D, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher")
            .field("busy", &self.in_flight.is_some())
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static, D: Send + 'static, I: Clone> Flusher<T, D, I> {
    /// Starts the worker thread `name`, which runs `work` on each task.
    pub fn start(name: String, work: fn(T) -> D) -> std::io::Result<Self> {
        // Room for one task and one outcome: the owner never submits before taking the
        // previous outcome, so at most one task exists. Not a rendezvous: handing a task
        // over must not wait for the worker thread to be scheduled (on a loaded machine
        // that wait, several ms, was most of an incremental capture's stall).
        let (tx, tasks) = mpsc::sync_channel::<T>(1);
        let (done_tx, rx) = mpsc::sync_channel::<D>(1);
        let threads = flush_threads();
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            lazarus_store::cap_write_threads_on_this_thread(threads);
            for t in tasks {
                if done_tx.send(work(t)).is_err() {
                    break;
                }
            }
        })?;
        Ok(Flusher {
            tx: Some(tx),
            rx,
            handle: Some(handle),
            in_flight: None,
        })
    }

    /// True while a task runs (its outcome not yet taken).
    pub fn busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// What the owner said of the task in flight, if any.
    pub fn in_flight(&self) -> Option<&I> {
        self.in_flight.as_ref()
    }

    /// Hands `task` to the worker, without waiting for it. The owner must have taken the
    /// previous outcome ([`Flusher::busy`] false): both users settle first, which is the
    /// back-pressure. On failure (the worker is gone) the task comes back.
    pub fn submit(&mut self, task: T, info: I) -> Result<(), Box<T>> {
        debug_assert!(self.in_flight.is_none(), "one task in flight at most");
        let Some(tx) = &self.tx else {
            return Err(Box::new(task));
        };
        match tx.send(task) {
            Ok(()) => {
                self.in_flight = Some(info);
                Ok(())
            }
            Err(mpsc::SendError(task)) => Err(Box::new(task)),
        }
    }

    /// Waits for the task in flight, if any. `Err` when the worker died (panicked) and
    /// took the task with it.
    pub fn settle(&mut self) -> Result<Option<(I, D)>, I> {
        let Some(info) = self.in_flight.take() else {
            return Ok(None);
        };
        match self.rx.recv() {
            Ok(done) => Ok(Some((info, done))),
            Err(_) => Err(info),
        }
    }

    /// Like [`Flusher::settle`] but only if the task has already finished.
    pub fn poll(&mut self) -> Result<Option<(I, D)>, I> {
        let Some(info) = self.in_flight.clone() else {
            return Ok(None);
        };
        match self.rx.try_recv() {
            Ok(done) => {
                self.in_flight = None;
                Ok(Some((info, done)))
            }
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => {
                self.in_flight = None;
                Err(info)
            }
        }
    }
}

impl<T, D, I> Drop for Flusher<T, D, I> {
    fn drop(&mut self) {
        // Owners settle before dropping us; closing the channel ends the worker, which
        // finishes the task it holds first.
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

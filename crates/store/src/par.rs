//! A tiny scoped worker pool: run a fallible job per item on a few threads, stop at the
//! first error. Used for chunk reads (BLAKE3 and decompression are CPU-bound, cold reads
//! I/O-bound) and for concurrent fsyncs (which the file system can commit together).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Runs `job` on every item on up to `threads` scoped threads (inline when one is
/// enough). Returns the first error any thread hit; after an error no thread takes a new
/// item, so some items may not have run.
pub(crate) fn try_for_each<T, E, I, F>(items: I, threads: usize, job: F) -> Result<(), E>
where
    I: IntoIterator<Item = T>,
    I::IntoIter: Send,
    T: Send,
    E: Send,
    F: Fn(T) -> Result<(), E> + Sync,
{
    let items = items.into_iter();
    if threads <= 1 {
        return items.into_iter().try_for_each(job);
    }
    let work = Mutex::new(items);
    let failed = AtomicBool::new(false);
    let first_err: Mutex<Option<E>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                // Poisoning cannot tear these: every critical section is a `next` or a set.
                let next = work.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some(item) = next else { return };
                if let Err(e) = job(item) {
                    failed.store(true, Ordering::Relaxed);
                    first_err
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(e);
                    return;
                }
            });
        }
    });
    match first_err.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::try_for_each;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn runs_every_item_or_reports_an_error() {
        for threads in [1, 2, 4] {
            let sum = AtomicUsize::new(0);
            let r: Result<(), String> = try_for_each(1..=100usize, threads, |i| {
                sum.fetch_add(i, Ordering::Relaxed);
                Ok(())
            });
            assert_eq!(r, Ok(()));
            assert_eq!(sum.into_inner(), 5050, "threads = {threads}");
            let r = try_for_each(0..50usize, threads, |i| {
                if i == 17 {
                    Err(format!("item {i}"))
                } else {
                    Ok(())
                }
            });
            assert_eq!(r, Err("item 17".to_string()), "threads = {threads}");
        }
    }
}

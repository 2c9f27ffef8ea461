//! Giving freed heap back to the system after heavy work.
//!
//! glibc's malloc keeps what a request freed in its arenas (one per thread
//! that allocated, up to eight per core) and returns to the system only
//! what sits at the top of one. After a megabyte-sized object went through
//! the API (parsed, patched, stored, decoded by every informer), tens of
//! megabytes stay resident that way, unused, until the next such request.
//! So after heavy work the heap is `malloc_trim`med (about 7 ms for a
//! server with 100 MiB of heap):
//! - [`release_now`] before a large request's answer goes out, from a
//!   blocking thread, so what the request freed is gone when its client
//!   sees the answer;
//! - [`release_soon`] from one background thread after a large response
//!   or a watcher cut off, at most once per [`MIN_INTERVAL`], so a burst
//!   of them costs one trim.
//!
//! Small requests never ask. A trim already running, or one that ended
//! within [`FRESH`], answers an ask. With another C library (musl returns
//! freed memory on its own) this does nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Bytes a request or response must carry to count as heavy work.
pub const HEAVY_BYTES: usize = 256 * 1024;
/// The least time between two trims from [`release_soon`].
const MIN_INTERVAL: Duration = Duration::from_millis(200);
/// A trim this recent answers any ask.
const FRESH: Duration = Duration::from_millis(10);

static RUNNING: AtomicBool = AtomicBool::new(false);
static LAST: Mutex<Option<Instant>> = Mutex::new(None);

fn last() -> Option<Instant> {
    *LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Trim unless a trim is running or has just ended.
fn trim_once() {
    if last().is_some_and(|at| at.elapsed() < FRESH) || RUNNING.swap(true, Ordering::AcqRel) {
        return;
    }
    let started = Instant::now();
    let released = trim();
    *LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    RUNNING.store(false, Ordering::Release);
    tracing::trace!(released, took = ?started.elapsed(), "gave freed heap back");
}

/// Give freed heap back now (on a blocking thread) and wait for it: for a
/// request that just freed a lot, before its answer goes out.
pub async fn release_now() {
    let _ = tokio::task::spawn_blocking(trim_once).await;
}

/// Ask for freed heap to be given back soon. Cheap, never blocks; asks
/// while a trim is already due are folded into it.
pub fn release_soon() {
    static ASK: OnceLock<Option<SyncSender<()>>> = OnceLock::new();
    let ask = ASK.get_or_init(|| {
        let (tx, rx) = sync_channel(1);
        std::thread::Builder::new()
            .name("orch-release".into())
            .spawn(move || release_loop(&rx))
            .ok()
            .map(|_| tx)
    });
    if let Some(tx) = ask {
        // Full: a trim is already due and will cover this ask.
        let _ = tx.try_send(());
    }
}

fn release_loop(asks: &Receiver<()>) {
    while asks.recv().is_ok() {
        if let Some(due) = last().map(|at| at + MIN_INTERVAL) {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        // Asks that came while waiting are answered by this trim.
        while asks.try_recv().is_ok() {}
        trim_once();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: malloc_trim takes a plain integer and only walks and unmaps
    // free chunks under each arena's own lock; it may run on any thread at
    // any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

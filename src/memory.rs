//! Giving freed heap back to the system after heavy work.
//!
//! glibc's malloc keeps what a request freed in its arenas (one per thread
//! that allocated, up to eight per core) and returns to the system only
//! what sits at the top of one. After a megabyte-sized object went through
//! the API (parsed, patched, stored, decoded by every informer), tens of
//! megabytes stay resident that way, unused, until the next such request.
//! [`release_soon`] asks one background thread to `malloc_trim` them back:
//! at most once per [`MIN_INTERVAL`], shortly after heavy work ends, so a
//! burst of large requests costs one trim. Small requests never ask.
//!
//! With another C library (musl returns freed memory on its own) this does
//! nothing.

use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

/// Bytes a request or response must carry to count as heavy work.
pub const HEAVY_BYTES: usize = 256 * 1024;
/// How long after the first ask the trim waits, for the rest of the work
/// (informers decoding the change, a list's buffers being dropped) to end.
const SETTLE: Duration = Duration::from_millis(0);
/// The least time between two trims.
const MIN_INTERVAL: Duration = Duration::from_millis(200);

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
    let mut last: Option<Instant> = None;
    while asks.recv().is_ok() {
        let due = last.map_or(Instant::now(), |at| at + MIN_INTERVAL);
        std::thread::sleep(SETTLE.max(due.saturating_duration_since(Instant::now())));
        // Asks that came while waiting are answered by this trim.
        while asks.try_recv().is_ok() {}
        let started = Instant::now();
        let released = trim();
        last = Some(Instant::now());
        tracing::warn!(released, took = ?started.elapsed(), "gave freed heap back");
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

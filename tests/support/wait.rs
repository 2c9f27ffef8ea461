//! The one way integration tests wait: poll a condition until it holds or
//! a deadline passes, then fail with what was awaited and what was seen
//! last. No test sleeps for a fixed time where a condition can be polled.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// First poll interval; it doubles up to [`MAX_STEP`].
const FIRST_STEP: Duration = Duration::from_millis(20);
const MAX_STEP: Duration = Duration::from_millis(250);

/// Poll `check` until it returns `Ok`, for at most `within`.
///
/// # Panics
/// When `within` passes, naming `what` and the last `Err` seen.
pub fn until_ok<T, E: Display>(
    within: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, E>,
) -> T {
    let mut last = None;
    let got = poll(within, || match check() {
        Ok(v) => Some(v),
        Err(e) => {
            last = Some(e);
            None
        }
    });
    got.unwrap_or_else(|| {
        panic!(
            "not within {:.1} s: {what}; last seen: {}",
            within.as_secs_f64(),
            last.map(|e| e.to_string()).unwrap_or_default()
        )
    })
}

/// Poll `check` until it returns `Some`, for at most `within`; `None`
/// when it never did — for waits with a fallback (clean-up that kills
/// what did not stop, a retry), not for what a test expects.
pub fn poll<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    let mut step = FIRST_STEP;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        // The sleeps never overshoot the deadline, and the check right
        // after one that reached it still counts: the last check is at
        // the deadline, not a step before it.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        std::thread::sleep(step.min(left));
        step = (step * 2).min(MAX_STEP);
    }
}

/// Poll `check` until it returns `Some`, for at most `within`.
///
/// # Panics
/// When `within` passes, naming `what`.
pub fn until<T>(within: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    until_ok(within, what, || check().ok_or("the condition did not hold"))
}

/// Poll `check` until it is true, for at most `within`.
///
/// # Panics
/// When `within` passes, naming `what`.
pub fn until_true(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    until(within, what, || check().then_some(()));
}

/// Hold that `check` stays true for all of `during` (for "nothing
/// happens" assertions, the one place a test waits out a time).
///
/// # Panics
/// As soon as `check` is false, naming `what`.
pub fn holds(during: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + during;
    while Instant::now() < end {
        assert!(check(), "{what} stopped holding");
        std::thread::sleep(MAX_STEP.min(end.saturating_duration_since(Instant::now())));
    }
    assert!(check(), "{what} stopped holding");
}

/// Seconds, for the `within` arguments.
pub const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

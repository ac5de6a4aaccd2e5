//! Repeated failures, logged at a bounded rate. A dead upstream or a broken
//! plugin fails every request, and a line per request would bury the log
//! (and the disk). Each kind of failure — a key, such as the upstream and
//! target — may write a few lines at once and then a few a second; the
//! first line after some were held back says how many.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Lines one key may write per period.
const BURST: u32 = 5;
const PERIOD: Duration = Duration::from_secs(1);
/// Keys remembered at once; past this, keys quiet for a period are forgotten.
const MAX_KEYS: usize = 4096;

struct Window {
    started: Instant,
    lines: u32,
    held_back: u64,
}

static WINDOWS: LazyLock<Mutex<HashMap<u64, Window>>> = LazyLock::new(Default::default);
static HASHER: LazyLock<std::collections::hash_map::RandomState> = LazyLock::new(Default::default);

/// Whether a line for `key` may be written now; if so, how many lines for
/// it were held back since the last one written.
pub fn admit(key: impl Hash) -> Option<u64> {
    let hash = HASHER.hash_one(key);
    let now = Instant::now();
    let mut windows = WINDOWS.lock().unwrap_or_else(|e| e.into_inner());
    if windows.len() >= MAX_KEYS && !windows.contains_key(&hash) {
        windows.retain(|_, w| now.duration_since(w.started) < PERIOD);
        if windows.len() >= MAX_KEYS {
            return None;
        }
    }
    let window = windows.entry(hash).or_insert(Window {
        started: now,
        lines: 0,
        held_back: 0,
    });
    if now.duration_since(window.started) >= PERIOD {
        window.started = now;
        window.lines = 0;
    }
    if window.lines < BURST {
        window.lines += 1;
        Some(std::mem::take(&mut window.held_back))
    } else {
        window.held_back += 1;
        None
    }
}

/// Log like `tracing::<level>!`, at most a few lines a second per `key`
/// (anything hashable naming the kind of failure).
#[macro_export]
macro_rules! log_throttled {
    ($level:ident, $key:expr, $($arg:tt)+) => {
        match $crate::logging::admit(&$key) {
            Some(0) => ::tracing::$level!($($arg)+),
            Some(held_back) => ::tracing::$level!(held_back, $($arg)+),
            None => {}
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_one_failure_writes_a_handful_of_lines() {
        let written = (0..10_000)
            .filter(|_| admit(("flood", 1)).is_some())
            .count();
        assert_eq!(written, BURST as usize);
        assert!(
            admit(("flood", 2)).is_some(),
            "another key has its own budget"
        );
    }
}

//! Tokens already verified, so a client's next request costs a lookup
//! instead of a signature check: keyed by the token's SHA-256, each entry
//! good only within the token's own validity, the whole bounded.

use std::collections::HashMap;

use sluice_sdk::Identity;

use crate::token::Validity;

/// What a verified token decided.
pub struct Verified {
    pub identity: Identity,
    pub validity: Validity,
}

pub struct TokenCache {
    entries: HashMap<[u8; 32], Verified>,
    capacity: usize,
}

impl TokenCache {
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            entries: HashMap::new(),
            capacity,
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// The entry for `key`, if it is valid at `now_secs`: a token is never
    /// accepted past its `exp` (expired entries go when the cache fills).
    pub fn get(&self, key: &[u8; 32], now_secs: u64) -> Option<&Verified> {
        self.entries
            .get(key)
            .filter(|v| v.validity.holds(now_secs).is_ok())
    }

    pub fn put(&mut self, key: [u8; 32], verified: Verified, now_secs: u64) {
        if !self.enabled() {
            return;
        }
        if self.entries.len() >= self.capacity {
            // Expired entries go first; if that is not enough, any quarter
            // of the rest (a full scan is paid once per quarter filled).
            self.entries.retain(|_, v| v.validity.until > now_secs);
            let excess = self.entries.len().saturating_sub(self.capacity * 3 / 4);
            let doomed: Vec<[u8; 32]> = self.entries.keys().take(excess).copied().collect();
            for key in doomed {
                self.entries.remove(&key);
            }
        }
        self.entries.insert(key, verified);
    }

    /// Forget every token, as when a key they may have been verified with is gone.
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

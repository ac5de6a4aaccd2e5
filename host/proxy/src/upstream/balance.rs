//! Picking a target for a request: the algorithms, over one snapshot of an
//! upstream's targets (replaced whole when names resolve differently or a
//! reload changes them).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::target::Target;
use crate::config::Balance;

/// Virtual nodes per unit of weight on the consistent-hash ring.
const RING_POINTS: u32 = 160;

/// The targets of an upstream at one moment, with what the algorithms keep.
pub(super) struct Members {
    pub(super) targets: Vec<(Arc<Target>, u32)>,
    /// Consistent-hash ring: (point, target index), sorted by point.
    ring: Vec<(u64, usize)>,
    /// Smooth weighted round robin's running weights.
    current: Mutex<Vec<i64>>,
}

/// What the request offers the algorithm.
pub(super) struct Key {
    pub(super) client_ip: IpAddr,
    /// The hash of `hash_on`'s value, if the request has one.
    pub(super) hashed: Option<u64>,
    /// The target a sticky cookie names, by [`sticky_id`].
    pub(super) sticky: Option<u64>,
}

/// A short stable name for a target, for the sticky cookie.
pub(super) fn sticky_id(target: &Target) -> u64 {
    hash(&target.addr)
}

pub(super) fn hash(value: &impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

impl Members {
    pub(super) fn new(targets: Vec<(Arc<Target>, u32)>, balance: Balance) -> Members {
        let mut ring = Vec::new();
        if matches!(balance, Balance::Hash | Balance::IpHash) {
            for (i, (target, weight)) in targets.iter().enumerate() {
                for point in 0..weight * RING_POINTS {
                    ring.push((hash(&(target.addr, point)), i));
                }
            }
            ring.sort_unstable();
        }
        Members {
            current: Mutex::new(vec![0; targets.len()]),
            targets,
            ring,
        }
    }

    /// The target for a request by `balance`, among those available and
    /// not `tried` already; `None` when there is none.
    pub(super) fn pick(&self, balance: Balance, key: &Key, tried: &[usize]) -> Option<usize> {
        let open = |i: usize| !tried.contains(&i) && self.targets[i].0.available();
        if self.targets.len() == 1 {
            // Nothing to balance, and no lock to take for it.
            return open(0).then_some(0);
        }
        match balance {
            Balance::RoundRobin => self.weighted_round_robin(open),
            Balance::Sticky => key
                .sticky
                .and_then(|id| {
                    (0..self.targets.len()).find(|&i| sticky_id(&self.targets[i].0) == id)
                })
                .filter(|&i| open(i))
                .or_else(|| self.weighted_round_robin(open)),
            Balance::LeastConnections => self.least(open, |t, w| {
                // In flight per unit of weight, compared without division.
                (u64::from(t.in_flight()) + 1) * 1_000_000 / u64::from(w)
            }),
            Balance::LeastTime => self.two_choices(open),
            Balance::Random => self.random(open),
            Balance::IpHash => self.on_ring(hash(&key.client_ip), open),
            Balance::Hash => match key.hashed {
                Some(point) => self.on_ring(point, open),
                None => self.random(open),
            },
        }
    }

    /// Smooth weighted round robin (nginx's): each pick adds every weight to
    /// its running total and takes the largest, which then pays the sum back.
    fn weighted_round_robin(&self, open: impl Fn(usize) -> bool) -> Option<usize> {
        let mut current = self.current.lock().expect("balance lock");
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, (_, weight)) in self.targets.iter().enumerate() {
            if !open(i) {
                continue;
            }
            current[i] += i64::from(*weight);
            total += i64::from(*weight);
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        current[best] -= total;
        Some(best)
    }

    /// The open target with the lowest `cost`, from a random start so ties spread.
    fn least(
        &self,
        open: impl Fn(usize) -> bool,
        cost: impl Fn(&Target, u32) -> u64,
    ) -> Option<usize> {
        let n = self.targets.len();
        let start = fastrand::usize(..n);
        (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| open(i))
            .min_by_key(|&i| cost(&self.targets[i].0, self.targets[i].1))
    }

    /// Power of two choices on expected latency (Envoy's and Finagle's least
    /// request): two at random by weight, the cheaper one wins; the
    /// latency counts the wait of requests still in flight (peak EWMA).
    fn two_choices(&self, open: impl Fn(usize) -> bool) -> Option<usize> {
        let first = self.random(&open)?;
        let Some(second) = self.random(|i| i != first && open(i)) else {
            return Some(first);
        };
        let now = super::target::now_ms();
        let score =
            |i: usize| self.targets[i].0.load_score(now) * 100 / u64::from(self.targets[i].1);
        Some(match score(second) < score(first) {
            true => second,
            false => first,
        })
    }

    /// At random, by weight.
    fn random(&self, open: impl Fn(usize) -> bool) -> Option<usize> {
        let total: u64 = (0..self.targets.len())
            .filter(|&i| open(i))
            .map(|i| u64::from(self.targets[i].1))
            .sum();
        if total == 0 {
            return None;
        }
        let mut left = fastrand::u64(..total);
        (0..self.targets.len()).filter(|&i| open(i)).find(|&i| {
            let weight = u64::from(self.targets[i].1);
            if left < weight {
                return true;
            }
            left -= weight;
            false
        })
    }

    /// The first open target clockwise from `point` on the ring: a key keeps
    /// its target while that target stays, and only its keys move when it goes.
    fn on_ring(&self, point: u64, open: impl Fn(usize) -> bool) -> Option<usize> {
        let start = self.ring.partition_point(|&(p, _)| p < point);
        let n = self.ring.len();
        (0..n)
            .map(|k| self.ring[(start + k) % n].1)
            .find(|&i| open(i))
    }
}

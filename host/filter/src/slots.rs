//! A plugin's calls in flight, at most `max_concurrency`: a count taken and
//! given back with one atomic operation each (a semaphore's release takes a
//! lock on every call), and a notice for the calls that wait for a slot.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// The slots of one plugin.
pub(crate) struct Slots {
    taken: AtomicUsize,
    max: usize,
    freed: Notify,
}

/// One call's slot, given back when dropped.
pub(crate) struct Slot(Arc<Slots>);

impl Slots {
    pub(crate) fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            taken: AtomicUsize::new(0),
            max,
            freed: Notify::new(),
        })
    }

    /// A slot if one is free now.
    pub(crate) fn try_take(self: &Arc<Self>) -> Option<Slot> {
        self.taken
            .try_update(Ordering::Acquire, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }

    /// A slot, waiting up to `limit` for one to be freed (call
    /// [`Slots::try_take`] first: this future is large).
    pub(crate) async fn take(self: &Arc<Self>, limit: Duration) -> Option<Slot> {
        let waiting = async {
            loop {
                // Listening before looking again: a slot freed in between
                // leaves a notice, so it is not missed.
                let freed = self.freed.notified();
                if let Some(slot) = self.try_take() {
                    return slot;
                }
                freed.await;
            }
        };
        tokio::time::timeout(limit, waiting).await.ok()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::Release);
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_plugin_waits_for_a_freed_slot_or_gives_up() {
        let slots = Slots::new(2);
        let a = slots.try_take().unwrap();
        let _b = slots.try_take().unwrap();
        assert!(slots.try_take().is_none());
        assert!(slots.take(Duration::from_millis(20)).await.is_none());
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take(Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(a);
        let held = waiter.await.unwrap();
        assert!(held.is_some(), "the freed slot went to the waiter");
        assert!(slots.try_take().is_none(), "and is taken again");
        drop(held);
        assert!(slots.try_take().is_some());
    }
}

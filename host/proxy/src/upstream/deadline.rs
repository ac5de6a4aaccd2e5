//! A try's deadline: tokio's `timeout_at`, less the timer's poll at every
//! wake-up of the work. An exchange wakes its task several times (the
//! request written, the response's head, its body), and each poll of a
//! timer registers the task's waker again and spends coop budget; here the
//! timer is polled to register, and again only if the task's waker changed.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::{Poll, Waker};

/// `work`'s output, or `None` if `deadline` came first.
pub(super) async fn within<F: Future>(
    deadline: tokio::time::Instant,
    mut work: Pin<&mut F>,
) -> Option<F::Output> {
    let mut timer = pin!(tokio::time::sleep_until(deadline));
    // The waker the timer holds.
    let mut holds: Option<Waker> = None;
    poll_fn(|cx| {
        if let Poll::Ready(done) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(done));
        }
        if holds.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return match timer.is_elapsed() {
                true => Poll::Ready(None),
                false => Poll::Pending,
            };
        }
        holds = Some(cx.waker().clone());
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_work_or_the_deadline_whichever_comes_first() {
        let soon = || tokio::time::Instant::now() + Duration::from_millis(50);
        // Work that wakes its task many times before it is done.
        let busy = async {
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
            7
        };
        assert_eq!(within(soon(), pin!(busy)).await, Some(7));
        // Work that never ends: the deadline ends it, though the timer was
        // polled only once.
        let never = async {
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let started = tokio::time::Instant::now();
        assert_eq!(within(soon(), pin!(never)).await, None::<()>);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}

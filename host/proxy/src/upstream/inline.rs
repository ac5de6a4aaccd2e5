//! An HTTP/1.1 connection's I/O (hyper's `Connection`), polled by the task
//! of the request using the connection rather than by a task of its own:
//! an exchange then costs no hand-off between tasks and back.
//!
//! hyper's channels between the request and the connection (the request
//! handed over, the response handed back, the body wanted) wake whoever
//! waits on the other side, which here is the same task, most often in the
//! same poll. tokio polls a task woken while it runs once more after, for
//! nothing: two extra polls a request, each of the client's connection and
//! the upstream's. So the connection and the work waiting on it are polled
//! with a waker of their own, which holds back a wake that comes while the
//! task is polling them (the poll goes round again instead) and passes on
//! the others (the socket readable, a timer).

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Rounds of polling one `drive` makes while wakes keep coming (two are
/// the rule: a response's head, then what it woke).
const ROUNDS: usize = 4;

/// hyper's connection future.
type Connection = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send + Sync>>;

/// A connection's I/O and the waker it is polled with.
pub(super) struct Io {
    /// `None` once the connection ended, and for one that may switch
    /// protocols (it runs on a task of its own, as the upgraded stream
    /// outlives the request).
    connection: Option<Connection>,
    quiet: Arc<Quiet>,
    waker: Waker,
}

/// The waker: whether its task is polling, whether a wake came meanwhile,
/// and the task to wake otherwise.
#[derive(Default)]
struct Quiet {
    polling: AtomicBool,
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Quiet {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Noted first, then passed on unless the task is polling: the poll
        // looks at the note after it stops, so one or the other sees it.
        self.woken.store(true, SeqCst);
        if !self.polling.load(SeqCst) {
            self.task.wake();
        }
    }
}

impl Io {
    /// The I/O of a connection its user drives.
    pub(super) fn driven(
        connection: impl Future<Output = hyper::Result<()>> + Send + Sync + 'static,
    ) -> Io {
        Io::new(Some(Box::pin(connection)))
    }

    /// The I/O of a connection that drives itself (on a task of its own).
    pub(super) fn elsewhere() -> Io {
        Io::new(None)
    }

    fn new(connection: Option<Connection>) -> Io {
        let quiet = Arc::new(Quiet::default());
        let waker = Waker::from(quiet.clone());
        Io {
            connection,
            quiet,
            waker,
        }
    }

    /// Whether the connection is still there to drive.
    pub(super) fn is_open(&self) -> bool {
        self.connection.is_some()
    }

    /// Call `f` (which may wake the connection: a request handed over) as
    /// if polling: its wake is held back for the poll that follows.
    pub(super) fn quietly<T>(&self, f: impl FnOnce() -> T) -> T {
        self.quiet.polling.store(true, SeqCst);
        let done = f();
        self.quiet.polling.store(false, SeqCst);
        done
    }

    /// Poll `work`; while it waits, let the connection read and write
    /// (which may be what it waits for), then poll it again, as long as a
    /// wake came while polling, a few rounds at most: a wake that keeps
    /// coming is a yield (hyper's after a long stretch of work, or tokio's
    /// once the task's budget is spent), which only the scheduler answers.
    pub(super) fn drive<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut work: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        if self.connection.is_none() {
            return work(cx);
        }
        self.quiet.task.register(cx.waker());
        let mut inner = Context::from_waker(&self.waker);
        for _ in 0..ROUNDS {
            self.quiet.polling.store(true, SeqCst);
            self.quiet.woken.store(false, SeqCst);
            let mut done = work(&mut inner);
            if done.is_pending() {
                poll_connection(&mut self.connection, &mut inner);
                done = work(&mut inner);
            }
            self.quiet.polling.store(false, SeqCst);
            if done.is_ready() || !self.quiet.woken.load(SeqCst) {
                return done;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Let the connection read and write what it can now, for `cx`'s task.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) {
        if self.connection.is_some() {
            self.quiet.task.register(cx.waker());
            poll_connection(&mut self.connection, &mut Context::from_waker(&self.waker));
        }
    }

    /// Let the connection read and write what it can now, and let nobody
    /// know when it can do more (the next user polls it again).
    pub(super) fn poll_unwatched(&mut self) {
        poll_connection(
            &mut self.connection,
            &mut Context::from_waker(Waker::noop()),
        );
    }

    /// Let an idle connection take in what happened while nobody polled
    /// it: the server may have closed it.
    pub(super) async fn catch_up(&mut self) {
        poll_fn(|cx| {
            self.poll(cx);
            Poll::Ready(())
        })
        .await
    }

    /// Wait for `work`, driving the connection meanwhile. Pinned by the
    /// caller: taken by value, it would have room in this future twice (as
    /// it came and as pinned), and a request's send is hundreds of bytes.
    pub(super) async fn driving<F: Future>(&mut self, mut work: Pin<&mut F>) -> F::Output {
        poll_fn(|cx| self.drive(cx, |cx| work.as_mut().poll(cx))).await
    }
}

/// Poll `connection`, and drop it once it ended.
fn poll_connection(connection: &mut Option<Connection>, cx: &mut Context<'_>) {
    if let Some(polled) = connection
        && let Poll::Ready(ended) = polled.as_mut().poll(cx)
    {
        if let Err(error) = ended {
            tracing::debug!("upstream connection ended: {error}");
        }
        *connection = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A task's waker that counts its wakes.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    #[test]
    fn a_wake_while_polling_goes_round_again_and_one_that_keeps_coming_goes_to_the_task() {
        let task = Arc::new(Count::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        let mut io = Io::driven(std::future::pending());
        // Woken from inside the poll (a channel between the two sides):
        // polled again (a second round) at once, the task not woken.
        let mut polls = 0;
        let done = io.drive(&mut cx, |cx| {
            polls += 1;
            match polls {
                1 => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                2 => Poll::Pending,
                _ => Poll::Ready(polls),
            }
        });
        assert_eq!(done, Poll::Ready(3));
        assert_eq!(task.0.load(SeqCst), 0);
        // Work that wakes itself at every poll (a yield, a spent budget):
        // back to the scheduler after a few rounds, the task woken.
        let done = io.drive(&mut cx, |cx| {
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        });
        assert!(done.is_pending());
        assert_eq!(task.0.load(SeqCst), 1);
        // A wake from outside a poll goes to the task.
        Waker::from(io.quiet.clone()).wake();
        assert_eq!(task.0.load(SeqCst), 2);
    }
}

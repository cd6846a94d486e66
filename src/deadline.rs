//! One lazily re-armed timer per connection, for deadlines that are set
//! again and again and almost never reached.
//!
//! hyper's HTTP/1 server arms a header-read deadline for every request head
//! it waits for (the slowloris defence, which also bounds an idle
//! keep-alive connection) and drops it once the head is in. With tokio's
//! timer, each one is a timer-wheel entry made, registered and removed again
//! per request: ~3.6 % of a proxied HTTP/1.1 request's instructions.
//!
//! Here every deadline of a connection shares one tokio `Sleep`. A new
//! deadline later than the one the `Sleep` is armed for (the usual case:
//! `now + header_read_timeout` only grows) leaves it alone; when the `Sleep`
//! fires early for a deadline that has since moved on, the deadline being
//! waited for re-arms it. So the wheel sees about one entry per timeout
//! period per busy connection, not two per request, and an idle connection
//! is still woken at its deadline exactly (nginx re-arms its timers lazily
//! in the same way: `NGX_TIMER_LAZY_DELAY`).
//!
//! The same timer bounds each HTTP/1 request's exchange with its upstream
//! ([`timeout_at`]), the other deadline every request used to register.
//!
//! A [`ConnTimer`] serves one connection, and at most one of its
//! [`DeadlineSleep`]s waits at a time: hyper reads the next request head
//! only once the handler of the last one has answered, and the handler's
//! deadlines follow one another. So the shared `Sleep` only has to come
//! before the one deadline waiting.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::time::Sleep;

/// A deadline that never comes in practice (what tokio itself uses for one
/// that cannot be represented: about thirty years away).
pub fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// hyper's timer for one connection: see the module docs.
#[derive(Clone, Default)]
pub struct ConnTimer {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Made on the first wait, then kept (and re-armed) for the
    /// connection's life.
    armed: Mutex<Option<Armed>>,
    /// Waits alive, checked in debug builds: the lazy re-arming is right
    /// only for one at a time (see the module docs).
    #[cfg(debug_assertions)]
    live: std::sync::atomic::AtomicUsize,
}

/// The connection's one tokio `Sleep`.
struct Armed {
    sleep: Pin<Box<Sleep>>,
    /// The waker the `Sleep` is registered with, while it waits: a wait
    /// polled again from the same task (hyper polls its deadline on every
    /// wake-up of the connection) needs no poll of the `Sleep`.
    waker: Option<Waker>,
}

impl ConnTimer {
    pub fn new() -> Self {
        Self::default()
    }

    /// A future that resolves at `deadline`. One at a time per timer.
    pub fn sleep_until(&self, deadline: tokio::time::Instant) -> DeadlineSleep {
        #[cfg(debug_assertions)]
        {
            let before = self.shared.live.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            debug_assert_eq!(before, 0, "a second wait on one connection's timer");
        }
        DeadlineSleep { deadline, shared: self.shared.clone() }
    }
}

impl hyper::rt::Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        // An absurd duration waits "for ever" rather than panic.
        let deadline = tokio::time::Instant::now().checked_add(duration).unwrap_or_else(far_future);
        Box::pin(self.sleep_until(deadline))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(ConnTimer::sleep_until(self, deadline.into()))
    }

    // tokio's clock, as hyper-util's timer uses: the same one the shared
    // `Sleep` runs on (and pausable in tests).
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        // In place: a replacement would be a second wait while the first
        // is still alive.
        match sleep.as_mut().downcast_mut_pin::<DeadlineSleep>() {
            Some(mine) => mine.get_mut().deadline = new_deadline.into(),
            None => *sleep = hyper::rt::Timer::sleep_until(self, new_deadline),
        }
    }
}

/// A deadline of a [`ConnTimer`].
pub struct DeadlineSleep {
    deadline: tokio::time::Instant,
    shared: Arc<Shared>,
}

#[cfg(debug_assertions)]
impl Drop for DeadlineSleep {
    fn drop(&mut self) {
        self.shared.live.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Future for DeadlineSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        // Uncontended: a connection's deadlines are polled by its own task.
        let mut shared = match self.shared.armed.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let armed =
            shared.get_or_insert_with(|| Armed { sleep: Box::pin(tokio::time::sleep_until(deadline)), waker: None });
        if armed.sleep.deadline() > deadline {
            // Armed for later than this deadline: bring it forward.
            armed.sleep.as_mut().reset(deadline);
            armed.waker = None;
        }
        if !armed.sleep.is_elapsed() && armed.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            // Armed no later than this deadline, not yet fired, and it
            // will wake this task when it does.
            return Poll::Pending;
        }
        loop {
            match armed.sleep.as_mut().poll(cx) {
                Poll::Pending => {
                    // Without budget, tokio's Sleep returned Pending before
                    // registering anything: do not let the fast path trust it.
                    armed.waker = tokio::task::coop::has_budget_remaining().then(|| cx.waker().clone());
                    return Poll::Pending;
                }
                Poll::Ready(()) if armed.sleep.deadline() >= deadline => return Poll::Ready(()),
                // It fired for an earlier deadline, since gone: re-arm for
                // this one (registers again on the next poll).
                Poll::Ready(()) => {
                    armed.sleep.as_mut().reset(deadline);
                    armed.waker = None;
                }
            }
        }
    }
}

impl hyper::rt::Sleep for DeadlineSleep {}

/// `fut`, bounded by `deadline`: on the connection's timer when there is
/// one (HTTP/1, one request at a time, so one deadline waits at a time, as
/// the module docs require), else on a tokio `Sleep` of its own (HTTP/2's
/// concurrent streams, whose deadlines are unordered).
pub fn timeout_at<F: Future>(timer: Option<&ConnTimer>, deadline: tokio::time::Instant, fut: F) -> Timeout<F> {
    let delay = match timer {
        Some(t) => Delay::Conn { sleep: t.sleep_until(deadline) },
        None => Delay::Own { sleep: Box::pin(tokio::time::sleep_until(deadline)) },
    };
    Timeout { fut, delay }
}

/// The deadline of a [`timeout_at`] passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

pin_project_lite::pin_project! {
    /// See [`timeout_at`].
    pub struct Timeout<F> {
        #[pin]
        fut: F,
        #[pin]
        delay: Delay,
    }
}

pin_project_lite::pin_project! {
    #[project = DelayProj]
    enum Delay {
        Conn { sleep: DeadlineSleep },
        // Boxed (112 bytes inline): the request's future holds this, and
        // its size is paid in copies and memory (see
        // `handler_future_stays_small`); only HTTP/2 streams take this path.
        Own { sleep: Pin<Box<Sleep>> },
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let had_budget = tokio::task::coop::has_budget_remaining();
        // The work first: an answer that is ready counts even at the deadline.
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        // As tokio's Timeout: work that spent the budget must not starve its deadline.
        let spent = had_budget && !tokio::task::coop::has_budget_remaining();
        let mut poll_delay = |cx: &mut Context<'_>| match this.delay.as_mut().project() {
            DelayProj::Conn { sleep } => Pin::new(sleep).poll(cx),
            DelayProj::Own { sleep } => sleep.as_mut().poll(cx),
        };
        let elapsed = if spent {
            let mut f = tokio::task::unconstrained(std::future::poll_fn(&mut poll_delay));
            Pin::new(&mut f).poll(cx)
        } else {
            poll_delay(cx)
        };
        elapsed.map(|()| Err(Elapsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn poll_once(s: &mut Pin<Box<DeadlineSleep>>) -> Poll<()> {
        s.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    }

    /// The deadline the connection's shared `Sleep` is armed for.
    fn armed_for(timer: &ConnTimer) -> Instant {
        timer.shared.armed.lock().unwrap().as_ref().expect("armed").sleep.deadline()
    }

    /// `fut`, which must resolve within a minute of (paused) time: a
    /// deadline that never fires fails the test instead of hanging it.
    async fn bounded<F: Future>(fut: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(60), fut).await.expect("never resolved")
    }

    /// Spends the task's whole cooperative budget, as a task doing many
    /// tokio I/O operations in one poll does.
    fn exhaust_budget(cx: &mut Context<'_>) {
        while let Poll::Ready(r) = tokio::task::coop::poll_proceed(cx) {
            r.made_progress();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_resolves_at_its_time_not_before() {
        let timer = ConnTimer::new();
        let start = Instant::now();
        let sleep = timer.sleep_until(start + Duration::from_millis(200));
        bounded(sleep).await;
        assert_eq!(start.elapsed(), Duration::from_millis(200));
    }

    /// The shared `Sleep` stays armed for the first deadline; a later one
    /// that waits past it is re-armed and resolves at its own time.
    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_outlives_the_earlier_arming() {
        let timer = ConnTimer::new();
        let start = Instant::now();
        let mut first = Box::pin(timer.sleep_until(start + Duration::from_millis(100)));
        assert!(poll_once(&mut first).is_pending());
        drop(first); // the head came in
        tokio::time::advance(Duration::from_millis(60)).await;
        let second = timer.sleep_until(start + Duration::from_millis(160));
        bounded(second).await;
        assert_eq!(start.elapsed(), Duration::from_millis(160));
        assert_eq!(armed_for(&timer), start + Duration::from_millis(160));
    }

    /// Deadlines that keep moving on do not touch the wheel: the shared
    /// `Sleep` keeps its first deadline until it fires.
    #[tokio::test(start_paused = true)]
    async fn later_deadlines_leave_the_armed_sleep_alone() {
        let timer = ConnTimer::new();
        let start = Instant::now();
        for i in 0..10u64 {
            let mut s = Box::pin(timer.sleep_until(start + Duration::from_millis(100 + i)));
            assert!(poll_once(&mut s).is_pending());
        }
        assert_eq!(armed_for(&timer), start + Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_brings_the_sleep_forward() {
        let timer = ConnTimer::new();
        let start = Instant::now();
        let mut late = Box::pin(timer.sleep_until(start + Duration::from_secs(30)));
        assert!(poll_once(&mut late).is_pending());
        drop(late);
        let early = timer.sleep_until(start + Duration::from_millis(50));
        bounded(early).await;
        assert_eq!(start.elapsed(), Duration::from_millis(50));
    }

    /// A deadline already past resolves on its first poll.
    #[tokio::test(start_paused = true)]
    async fn a_past_deadline_is_ready_at_once() {
        let timer = ConnTimer::new();
        let start = Instant::now();
        tokio::time::advance(Duration::from_millis(10)).await;
        let mut s = Box::pin(timer.sleep_until(start));
        assert!(poll_once(&mut s).is_ready());
    }

    /// On the connection's timer and on a sleep of its own alike: the work
    /// wins when it is done first, the deadline when it comes first.
    #[tokio::test(start_paused = true)]
    async fn timeout_at_bounds_the_work_on_either_timer() {
        let timer = ConnTimer::new();
        for conn in [Some(&timer), None] {
            let start = Instant::now();
            let slow = tokio::time::sleep(Duration::from_millis(500));
            let r = bounded(timeout_at(conn, start + Duration::from_millis(100), slow)).await;
            assert_eq!((r, start.elapsed()), (Err(Elapsed), Duration::from_millis(100)));
            let start = Instant::now();
            let quick = async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                7
            };
            let r = bounded(timeout_at(conn, start + Duration::from_millis(100), quick)).await;
            assert_eq!((r, start.elapsed()), (Ok(7), Duration::from_millis(20)));
        }
    }

    /// Through hyper's trait, as hyper's server uses it.
    #[tokio::test(start_paused = true)]
    async fn hyper_timer_sleeps_until_its_deadline() {
        use hyper::rt::Timer as _;
        let timer = ConnTimer::new();
        let start = timer.now();
        bounded(timer.sleep(Duration::from_millis(30))).await;
        bounded(hyper::rt::Timer::sleep_until(&timer, start + Duration::from_millis(70))).await;
        assert_eq!(timer.now() - start, Duration::from_millis(70));
        // hyper's reset moves a wait's deadline in place.
        let mut wait = timer.sleep(Duration::from_secs(30));
        timer.reset(&mut wait, start + Duration::from_millis(100));
        bounded(wait).await;
        assert_eq!(timer.now() - start, Duration::from_millis(100));
        assert!(timer.sleep(Duration::MAX).as_mut().poll(&mut Context::from_waker(Waker::noop())).is_pending());
    }

    /// A first poll with the task's budget spent: tokio's `Sleep` answers
    /// Pending without registering, so the wait must not take itself for
    /// registered, or it would never fire.
    #[tokio::test(start_paused = true)]
    async fn a_deadline_first_polled_without_budget_still_fires() {
        let timer = ConnTimer::new();
        let start = Instant::now();
        let mut s = Box::pin(timer.sleep_until(start + Duration::from_millis(100)));
        std::future::poll_fn(|cx| {
            exhaust_budget(cx);
            assert!(s.as_mut().poll(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        bounded(s).await;
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }

    /// Work that spends the whole budget on every poll (and so is polled
    /// again at once) until `until`.
    struct Busy {
        until: std::time::Instant,
    }

    impl Future for Busy {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if std::time::Instant::now() >= self.until {
                return Poll::Ready(());
            }
            exhaust_budget(cx);
            Poll::Pending
        }
    }

    /// As tokio's own timeout: work that spends the budget does not starve
    /// its deadline, on either timer.
    #[tokio::test]
    async fn timeout_at_fires_while_the_work_spends_the_budget() {
        let timer = ConnTimer::new();
        for conn in [None, Some(&timer)] {
            let start = Instant::now();
            let busy = Busy { until: std::time::Instant::now() + Duration::from_secs(5) };
            let r = timeout_at(conn, start + Duration::from_millis(100), busy).await;
            assert_eq!(r, Err(Elapsed), "conn timer: {}", conn.is_some());
            assert!(start.elapsed() < Duration::from_secs(4), "cut after {:?}", start.elapsed());
        }
    }

    /// The lazy re-arming is right for one wait at a time: debug builds
    /// refuse a second.
    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "a second wait")]
    fn a_second_live_wait_is_refused_in_debug_builds() {
        let timer = ConnTimer::new();
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let _guard = rt.enter();
        let _first = timer.sleep_until(Instant::now() + Duration::from_secs(1));
        let _second = timer.sleep_until(Instant::now() + Duration::from_secs(2));
    }
}

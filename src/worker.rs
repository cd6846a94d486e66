//! Proxy workers, one thread per core, each with its own single-threaded
//! tokio runtime (the shape nginx, HAProxy and Envoy use).
//!
//! Why not one multi-threaded runtime: with work stealing, a client
//! connection's task and the pooled upstream connection it borrows usually
//! live on different threads, so every request wakes another thread twice
//! (measured: ~29% of the CPU went to the kernel scheduler). Here a request
//! is accepted, routed, proxied and answered on one thread, and every
//! service keeps one upstream pool per worker (see [`index`]), so nothing on
//! the request path wakes another thread. Shared state (route snapshot,
//! endpoint sets, breakers, metrics) stays shared: it is read through
//! `ArcSwap` and atomics.
//!
//! All workers accept from the same listening socket (each registers its own
//! duplicate of the descriptor with its runtime), so the port is bound once
//! and a second gateway on the same port still fails to start (SO_REUSEPORT
//! would let it in silently). Whoever accepts, a connection is served by the
//! worker with the fewest open connections ([`Spread`], Envoy's "exact
//! balance"): left alone, the first worker to wake takes a whole burst of
//! connections (measured: all 64 of a wrk run on one thread, the other
//! idle). A handover costs one cross-thread wake per connection, never per
//! request.
//!
//! Everything else (admin listener, registry, health checks, reload, OTLP)
//! runs on the runtime that called [`crate::Gateway::start`].

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::proxy::Proxy;
use crate::server::{self, ListenerOptions, Shutdown};

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// This thread's worker number: 1..=n on proxy workers, 0 elsewhere
/// (admin runtime, health checks, tests). Services index their per-worker
/// upstream pools with it.
pub fn index() -> usize {
    INDEX.with(Cell::get)
}

/// How many workers `worker_threads` asks for (0 = one per core).
pub fn count(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Open connections per worker, and the way to hand a connection to each.
#[derive(Debug)]
pub struct Spread {
    slots: Box<[Slot]>,
}

#[derive(Debug)]
struct Slot {
    open: AtomicUsize,
    handover: mpsc::UnboundedSender<Handover>,
}

impl Spread {
    /// The worker with the fewest open connections, `me` on a tie.
    fn least_loaded(&self, me: usize) -> usize {
        let mut best = me;
        let mut best_open = self.slots[me].open.load(Ordering::Relaxed);
        for (i, slot) in self.slots.iter().enumerate() {
            let open = slot.open.load(Ordering::Relaxed);
            if open < best_open {
                (best, best_open) = (i, open);
            }
        }
        best
    }
}

/// One worker's end of a [`Spread`].
#[derive(Debug)]
pub struct Member {
    spread: Arc<Spread>,
    me: usize,
    handed: mpsc::UnboundedReceiver<Handover>,
}

/// A connection on its way to another worker, already counted against it.
type Handover = (std::net::TcpStream, SocketAddr, Load);

/// Counts a connection against its worker until dropped.
#[derive(Debug)]
pub struct Load {
    spread: Arc<Spread>,
    slot: usize,
}

impl Drop for Load {
    fn drop(&mut self) {
        self.spread.slots[self.slot].open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Member {
    fn load(&self, slot: usize) -> Load {
        self.spread.slots[slot].open.fetch_add(1, Ordering::Relaxed);
        Load { spread: self.spread.clone(), slot }
    }

    /// Keeps a connection this worker accepted (Some), or hands it to a less
    /// loaded worker (None).
    pub fn place(&self, stream: TcpStream, remote: SocketAddr) -> Option<(TcpStream, Load)> {
        let target = self.spread.least_loaded(self.me);
        if target == self.me {
            return Some((stream, self.load(target)));
        }
        match stream.into_std() {
            // A worker that has stopped drops it: the connection closes.
            Ok(std) => drop(self.spread.slots[target].handover.send((std, remote, self.load(target)))),
            Err(e) => tracing::debug!(%remote, error = %e, "cannot hand a connection over"),
        }
        None
    }

    /// The next connection another worker handed to this one.
    pub async fn handed_over(&mut self) -> Option<(TcpStream, SocketAddr, Load)> {
        loop {
            let (std, remote, load) = self.handed.recv().await?;
            match TcpStream::from_std(std) {
                Ok(s) => return Some((s, remote, load)),
                Err(e) => tracing::debug!(%remote, error = %e, "cannot take a handed-over connection"),
            }
        }
    }
}

/// The `n` members of one new [`Spread`], in worker order.
fn members(n: usize) -> Vec<Member> {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::unbounded_channel()).unzip();
    let spread = Arc::new(Spread {
        slots: txs.into_iter().map(|handover| Slot { open: AtomicUsize::new(0), handover }).collect(),
    });
    rxs.into_iter().enumerate().map(|(me, handed)| Member { spread: spread.clone(), me, handed }).collect()
}

/// How often [`timer_anchor`] ticks: below every per-request deadline in
/// common use (the header-read timeout defaults to 10 s).
const ANCHOR_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps a timer pending on a worker's runtime at all times. tokio's timer
/// driver writes to the runtime's eventfd whenever a new timer is due before
/// the earliest one it knew of when it last parked, and with no timer pending
/// that is *every* new timer: hyper's header-read deadline, armed once per
/// request, then cost a `write(2)` and a spurious wake-up for about one
/// request in five (counted with perf under wrk; none with the anchor). With
/// this tick always due within [`ANCHOR_TICK`], a deadline further out never
/// wakes the driver; shorter ones still do, as they must.
async fn timer_anchor() {
    let mut tick = tokio::time::interval(ANCHOR_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// Starts `n` workers serving `listener`. Each worker stops accepting when
/// `shutdown.drain` flips and exits when `shutdown.hard_stop` does; the
/// returned receiver yields `None` once every worker thread has finished.
pub fn spawn(
    n: usize,
    listener: std::net::TcpListener,
    tls: Option<TlsAcceptor>,
    opts: ListenerOptions,
    shutdown: Shutdown,
    proxy: Arc<Proxy>,
) -> std::io::Result<mpsc::Receiver<()>> {
    listener.set_nonblocking(true)?;
    let (done_tx, done_rx) = mpsc::channel(1);
    for (i, member) in (1..=n).zip(members(n)) {
        let listener = listener.try_clone()?;
        let (tls, opts, shutdown, proxy, done) =
            (tls.clone(), opts.clone(), shutdown.clone(), proxy.clone(), done_tx.clone());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name(format!("waygate-worker-{i}")).spawn(move || {
            INDEX.with(|c| c.set(i));
            runtime.block_on(async move {
                tokio::spawn(timer_anchor());
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(worker = i, error = %e, "cannot register the listener; this worker serves nothing");
                        return;
                    }
                };
                let hard = shutdown.hard_stop.clone();
                server::serve(listener, tls, opts, shutdown, Some(member), move |req, conn| {
                    proxy.clone().serve(req, conn)
                })
                .await;
                // Accepting has stopped (drain); connections finish on this
                // runtime until the gateway says stop.
                hard.watch().await;
            });
            // Dropping the runtime cancels what is left (hard stop).
            drop(runtime);
            drop(done);
        })?;
    }
    Ok(done_rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn connection(listener: &tokio::net::TcpListener) -> (TcpStream, SocketAddr, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, remote) = listener.accept().await.unwrap();
        (server, remote, client)
    }

    #[tokio::test]
    async fn connections_accepted_by_one_worker_are_spread_evenly() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut members = members(2);
        let mut kept = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..4 {
            let (server, remote, client) = connection(&listener).await;
            clients.push(client);
            if let Some(k) = members[0].place(server, remote) {
                kept.push(k);
            }
        }
        assert_eq!(kept.len(), 2, "worker 0 keeps half");
        let mut handed = Vec::new();
        for _ in 0..2 {
            handed.push(members[1].handed_over().await.expect("handed to worker 1"));
        }
        let open = |i: usize| members[0].spread.slots[i].open.load(Ordering::Relaxed);
        assert_eq!((open(0), open(1)), (2, 2));
        // Closing connections frees their worker's count; the next one goes there.
        kept.clear();
        assert_eq!((open(0), open(1)), (0, 2));
        let (server, remote, _client) = connection(&listener).await;
        assert!(members[1].place(server, remote).is_none(), "worker 1 hands it to the idle worker 0");
        let (_, _, load) = members[0].handed_over().await.unwrap();
        assert_eq!(load.slot, 0);
    }

    #[test]
    fn ties_stay_with_the_accepting_worker() {
        let members = members(3);
        assert_eq!(members[2].spread.least_loaded(2), 2);
        members[0].spread.slots[2].open.store(1, Ordering::Relaxed);
        assert_eq!(members[2].spread.least_loaded(2), 0);
    }

    #[test]
    fn zero_means_one_worker_per_core() {
        assert_eq!(count(3), 3);
        assert!(count(0) >= 1);
    }
}

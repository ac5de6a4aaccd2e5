//! UDP listeners, layer 4: each client address is a session with a socket
//! of its own toward the upstream, joined to one target picked by the
//! balance (or, `per_packet`, each datagram balanced on its own); answers
//! go back to the client from the listener's address. Sessions quiet for
//! the idle timeout are forgotten; past `max_sessions` a new client's
//! datagrams are dropped, counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::UdpConfig;
use crate::gateway::Gateway;
use crate::metrics::ProxyMetrics;
use crate::upstream::{Upstream, now_ms};

/// The largest datagram.
const MAX_DATAGRAM: usize = 65_535;

/// What a UDP listener does with its datagrams; replaced by reloads.
pub struct UdpSettings {
    upstream: String,
    idle_timeout: Duration,
    max_sessions: usize,
    per_packet: bool,
}

impl UdpSettings {
    /// From the listener's `[listeners.udp]`.
    pub fn new(config: &UdpConfig) -> UdpSettings {
        UdpSettings {
            upstream: config.upstream.clone(),
            idle_timeout: config.idle_timeout,
            max_sessions: config.max_sessions,
            per_packet: config.per_packet,
        }
    }
}

/// One client's session.
struct Session {
    /// Toward the upstream: connected to the target, or unconnected per packet.
    socket: Arc<UdpSocket>,
    /// The target of a session that keeps one.
    target: Option<SocketAddr>,
    upstream: Arc<Upstream>,
    /// When a datagram last went either way ([`now_ms`]).
    last: Arc<AtomicU64>,
    answers: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.answers.abort();
    }
}

/// Serve the datagrams arriving on `socket` (the listener `name`) until
/// the task is aborted or the gateway drains; `settings` yields the
/// listener's current UDP settings.
pub async fn serve(
    socket: UdpSocket,
    name: Arc<str>,
    settings: impl Fn() -> Option<Arc<UdpSettings>> + Send,
    gateway: Arc<ArcSwap<Gateway>>,
    mut drain: watch::Receiver<bool>,
) {
    let listener = Arc::new(socket);
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    let mut buffer = vec![0; MAX_DATAGRAM];
    let mut sweep = tokio::time::interval(Duration::from_millis(100));
    loop {
        let (n, client) = tokio::select! {
            received = listener.recv_from(&mut buffer) => match received {
                Ok(received) => received,
                Err(_) => continue,
            },
            _ = sweep.tick() => {
                let Some(udp) = settings() else { return };
                let idle = udp.idle_timeout.as_millis() as u64;
                let metrics = gateway.load().metrics_arc();
                sessions.retain(|_, session| {
                    let alive = now_ms().saturating_sub(session.last.load(Ordering::Relaxed)) < idle;
                    if !alive {
                        metrics.udp_session_ended(&name, &session.upstream.name, "idle_timeout");
                    }
                    alive
                });
                continue;
            }
            _ = drain.wait_for(|stop| *stop) => return,
        };
        let Some(udp) = settings() else { return };
        let gateway = gateway.load();
        let metrics = gateway.metrics_arc();
        if !sessions.contains_key(&client) {
            if sessions.len() >= udp.max_sessions {
                metrics.udp_dropped(&name, "max_sessions");
                continue;
            }
            let Some(upstream) = gateway.l4_upstream(&udp.upstream) else {
                return;
            };
            let opened = Session::open(
                &listener,
                client,
                upstream,
                udp.per_packet,
                &name,
                metrics.clone(),
            );
            match opened.await {
                Some(session) => {
                    sessions.insert(client, session);
                }
                None => {
                    metrics.udp_dropped(&name, "no_healthy_upstream");
                    continue;
                }
            }
        }
        let session = sessions.get_mut(&client).expect("just made");
        session.last.store(now_ms(), Ordering::Relaxed);
        let target = match session.target {
            Some(target) => Some(target),
            None => session.upstream.pick_for_datagrams(client),
        };
        let sent = match (session.target, target) {
            (Some(_), _) => session.socket.send(&buffer[..n]).await.is_ok(),
            (None, Some(target)) => session.socket.send_to(&buffer[..n], target).await.is_ok(),
            (None, None) => false,
        };
        match sent {
            true => metrics.udp_datagram(&name, "from_client"),
            false => metrics.udp_dropped(&name, "send_failed"),
        }
    }
}

impl Session {
    /// A session for `client`: its socket toward `upstream` (connected to
    /// the target it keeps, unless `per_packet`), and the task sending
    /// answers back through `listener`.
    async fn open(
        listener: &Arc<UdpSocket>,
        client: SocketAddr,
        upstream: Arc<Upstream>,
        per_packet: bool,
        name: &Arc<str>,
        metrics: Arc<ProxyMetrics>,
    ) -> Option<Session> {
        let first = upstream.pick_for_datagrams(client)?;
        let any: SocketAddr = match first.is_ipv4() {
            true => ([0, 0, 0, 0], 0).into(),
            false => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = Arc::new(UdpSocket::bind(any).await.ok()?);
        let target = match per_packet {
            true => None,
            false => {
                socket.connect(first).await.ok()?;
                Some(first)
            }
        };
        let last = Arc::new(AtomicU64::new(now_ms()));
        let answers = tokio::spawn(answer(
            socket.clone(),
            listener.clone(),
            client,
            target,
            upstream.clone(),
            last.clone(),
            name.clone(),
            metrics,
        ));
        Some(Session {
            socket,
            target,
            upstream,
            last,
            answers,
        })
    }
}

/// Send what the targets answer on `socket` back to `client`.
#[allow(clippy::too_many_arguments, reason = "one task's whole state")]
async fn answer(
    socket: Arc<UdpSocket>,
    listener: Arc<UdpSocket>,
    client: SocketAddr,
    target: Option<SocketAddr>,
    upstream: Arc<Upstream>,
    last: Arc<AtomicU64>,
    name: Arc<str>,
    metrics: Arc<ProxyMetrics>,
) {
    let mut buffer = vec![0; MAX_DATAGRAM];
    loop {
        match socket.recv_from(&mut buffer).await {
            Ok((n, _from)) => {
                last.store(now_ms(), Ordering::Relaxed);
                match listener.send_to(&buffer[..n], client).await {
                    Ok(_) => metrics.udp_datagram(&name, "to_client"),
                    Err(_) => metrics.udp_dropped(&name, "send_failed"),
                }
            }
            // The target's port is closed (ICMP port unreachable).
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
                if let Some(target) = target {
                    upstream.datagrams_refused(target);
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

//! An upstream as a TCP listener's connections use it: a target picked by
//! the balance (the client's address is the key), a connection opened,
//! another target tried when one cannot be reached, and a PROXY protocol
//! header sent first when the upstream asks for one.

use std::net::SocketAddr;
use std::sync::Arc;

use super::balance::Key;
use super::connect::ByteStream;
use super::target::{InFlight, Target, now_ms};
use super::{Upstream, UpstreamError};

/// A connection to a target, counted in flight while it is held.
pub struct Joined {
    /// The target's stream.
    pub stream: Box<dyn ByteStream>,
    /// The target connected to.
    pub target: SocketAddr,
    _in_flight: InFlight,
}

impl Upstream {
    /// A connection to one of the targets for a client at `client` (which
    /// reached the gateway at `local`): a target that cannot be reached is
    /// marked (outlier detection) and another tried, up to `retries`.
    pub async fn open_stream(
        &self,
        client: SocketAddr,
        local: SocketAddr,
    ) -> Result<Joined, UpstreamError> {
        let members = self.members.load_full();
        let key = Key {
            client_ip: client.ip(),
            hashed: Some(super::balance::hash(&client.ip())),
            sticky: None,
        };
        let mut tried = Vec::new();
        let mut last = None;
        loop {
            let Some(i) = members.pick(self.balance, &key, &tried) else {
                return Err(last.unwrap_or_else(|| UpstreamError::NoHealthy {
                    upstream: self.name.clone(),
                }));
            };
            tried.push(i);
            let target: &Arc<Target> = &members.targets[i].0;
            let in_flight = target.start(now_ms());
            let host = target.authority.host();
            let who = Some((client, local));
            let opened = self.connector.connect_stream(target.addr, host, who).await;
            match opened {
                Ok(stream) => {
                    target.succeeded();
                    return Ok(Joined {
                        stream,
                        target: target.addr,
                        _in_flight: in_flight,
                    });
                }
                Err(source) => {
                    self.failed(target);
                    last = Some(self.unreachable(target, source));
                    if !self.another_target(&members, &tried) {
                        return Err(last.expect("just set"));
                    }
                    self.count_retry("connect");
                }
            }
        }
    }
}

impl Upstream {
    /// The target for a UDP session of `client` (or one of its datagrams),
    /// picked by the balance among those available.
    pub fn pick_for_datagrams(&self, client: SocketAddr) -> Option<SocketAddr> {
        let members = self.members.load();
        let key = Key {
            client_ip: client.ip(),
            hashed: Some(super::balance::hash(&client)),
            sticky: None,
        };
        let i = members.pick(self.balance, &key, &[])?;
        Some(members.targets[i].0.addr)
    }

    /// A target refused datagrams (ICMP port unreachable): a failure for
    /// outlier detection, as a refused connection is.
    pub fn datagrams_refused(&self, target: SocketAddr) {
        let members = self.members.load();
        if let Some((found, _)) = members.targets.iter().find(|(t, _)| t.addr == target) {
            self.failed(found);
        }
    }
}

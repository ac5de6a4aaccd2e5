//! How many connections a listener holds open, in all and per client
//! address; one past a limit is closed as soon as it is accepted.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

/// The open connections of one listener; kept across reloads with the listener.
#[derive(Default)]
pub(crate) struct ConnectionCounts {
    open: AtomicUsize,
    per_client: DashMap<IpAddr, usize>,
}

/// Which limit a connection met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// The listener's `max_connections`.
    Listener,
    /// The listener's `max_connections_per_client`.
    Client,
}

impl Full {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Full::Listener => "max_connections",
            Full::Client => "max_connections_per_client",
        }
    }
}

/// One counted connection; dropping it gives its place back.
pub(crate) struct Counted {
    counts: Arc<ConnectionCounts>,
    client: IpAddr,
}

impl ConnectionCounts {
    /// Count a connection from `client`, unless a limit is reached.
    pub(crate) fn admit(
        self: &Arc<Self>,
        client: IpAddr,
        max: usize,
        max_per_client: usize,
    ) -> Result<Counted, Full> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Full::Listener);
        }
        let mut from_client = self.per_client.entry(client).or_insert(0);
        if *from_client >= max_per_client {
            drop(from_client);
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Full::Client);
        }
        *from_client += 1;
        Ok(Counted {
            counts: self.clone(),
            client,
        })
    }

    /// Connections open now from `client`.
    pub(crate) fn open_from(&self, client: IpAddr) -> u32 {
        self.per_client.get(&client).map_or(0, |n| *n as u32)
    }

    /// Connections open now.
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let counts = &self.counts;
        if let Some(mut n) = counts.per_client.get_mut(&self.client) {
            *n -= 1;
        }
        counts.per_client.remove_if(&self.client, |_, n| *n == 0);
        counts.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_and_places_come_back() {
        let counts = Arc::new(ConnectionCounts::default());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = counts.admit(a, 3, 2).unwrap();
        let _second = counts.admit(a, 3, 2).unwrap();
        assert_eq!(counts.admit(a, 3, 2).err(), Some(Full::Client));
        let _third = counts.admit(b, 3, 2).unwrap();
        assert_eq!(counts.admit(b, 3, 2).err(), Some(Full::Listener));
        drop(first);
        assert_eq!(counts.open(), 2);
        assert!(counts.admit(a, 3, 2).is_ok());
    }
}

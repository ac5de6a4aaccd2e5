//! What a connection filter sees of a TCP connection when it is accepted,
//! and what it answers, in the host's own terms.

use std::net::SocketAddr;

use crate::bindings::v2::policies::connection as wit;
use crate::exchange::ip_text;

/// A connection as a connection filter sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// Its number, unique while it is open.
    pub id: u64,
    /// The client (as a trusted PROXY protocol header named it, if one did).
    pub client: SocketAddr,
    /// The listener's address, as configured.
    pub listener: String,
    /// The server name its TLS ClientHello asked for, when one was read.
    pub server_name: Option<String>,
    /// The ALPN protocols the ClientHello offered.
    pub alpn: Vec<String>,
    /// Connections open on the listener from the same socket address, this one included.
    pub open_from_client: u32,
    /// The upstream the listener's routes picked.
    pub upstream: String,
}

/// What a connection filter said about a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectVerdict {
    /// Go on to the upstream picked so far.
    Allow,
    /// Close it, for this reason.
    Deny(String),
    /// Go on to this named upstream.
    Route(String),
}

impl From<&Connection> for wit::ConnectionInfo {
    fn from(conn: &Connection) -> wit::ConnectionInfo {
        wit::ConnectionInfo {
            id: conn.id,
            client_ip: ip_text(conn.client.ip()),
            client_port: conn.client.port(),
            listener: conn.listener.clone(),
            server_name: conn.server_name.clone(),
            alpn: conn.alpn.clone(),
            open_from_client: conn.open_from_client,
            upstream: conn.upstream.clone(),
        }
    }
}

impl From<wit::ConnectionVerdict> for ConnectVerdict {
    fn from(verdict: wit::ConnectionVerdict) -> ConnectVerdict {
        match verdict {
            wit::ConnectionVerdict::Allow => ConnectVerdict::Allow,
            wit::ConnectionVerdict::Deny(why) => ConnectVerdict::Deny(why),
            wit::ConnectionVerdict::Route(upstream) => ConnectVerdict::Route(upstream),
        }
    }
}

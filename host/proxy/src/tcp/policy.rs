//! A TCP listener's connection filters: Wasm plugins of the `connection`
//! kind, called in order when a connection is accepted (after its
//! ClientHello is read, before a target is picked). Each may let it
//! through, close it, or send it to another upstream; a filter that fails
//! closes it, unless its plugin fails open.

use sluice_filter::{ConnectVerdict, Connection, Filter};

/// The filters of one TCP listener, in configuration order.
pub struct ConnectionFilters {
    filters: Vec<Filter>,
}

/// Why the filters closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// A filter denied it.
    Denied,
    /// A filter failed (and its plugin does not fail open).
    Failed,
}

impl ConnectionFilters {
    pub(crate) fn new(filters: Vec<Filter>) -> ConnectionFilters {
        ConnectionFilters { filters }
    }

    /// Run `conn` past every filter; `conn.upstream` ends as the last one
    /// routed it. An upstream that is not `known` is the filter's failure
    /// (`invalid_answer`).
    pub(crate) async fn admit(
        &self,
        conn: &mut Connection,
        known: impl Fn(&str) -> bool,
    ) -> Result<(), Refused> {
        for filter in &self.filters {
            let plugin = filter.plugin();
            let failure = match filter.on_connect(conn).await {
                Ok(ConnectVerdict::Allow) => continue,
                Ok(ConnectVerdict::Route(upstream)) => {
                    if known(&upstream) {
                        conn.upstream = upstream;
                        continue;
                    }
                    let why = format!("routed the connection to unknown upstream `{upstream}`");
                    plugin.failed("invalid_answer", why)
                }
                Ok(ConnectVerdict::Deny(why)) => {
                    sluice_filter::log_throttled!(
                        info,
                        ("connection denied", &*plugin.name),
                        plugin = &*plugin.name,
                        client = %conn.client,
                        listener = conn.listener,
                        "connection denied: {why}"
                    );
                    return Err(Refused::Denied);
                }
                Err(failure) => failure,
            };
            sluice_filter::log_throttled!(
                warn,
                ("connection filter failed", &*plugin.name, failure.kind),
                plugin = &*plugin.name,
                reason = failure.kind,
                fail_open = plugin.fail_open,
                "connection filter failed: {}",
                failure.reason
            );
            if !plugin.fail_open {
                return Err(Refused::Failed);
            }
        }
        Ok(())
    }
}

//! Active health checks: every target of an upstream is asked every
//! `interval` (an HTTP `GET` of a path, or a connection, with bytes sent and
//! expected back if configured), on a connection of its own; enough passes or failures in a row flip its state.

use std::sync::{Arc, Weak};

use http::{Request, StatusCode, header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use super::Upstream;
use super::target::Target;
use crate::body;
use crate::config::HealthConfig;

/// Check `upstream`'s targets until it is dropped.
pub(super) async fn run(upstream: Weak<Upstream>, config: HealthConfig) {
    loop {
        let Some(strong) = upstream.upgrade() else {
            return;
        };
        let targets: Vec<Arc<Target>> = strong
            .members
            .load()
            .targets
            .iter()
            .map(|(t, _)| t.clone())
            .collect();
        let mut checks = JoinSet::new();
        for target in targets {
            let upstream = strong.clone();
            let config = config.clone();
            checks.spawn(async move {
                let passed = check(&upstream, &target, &config).await;
                let verdict = target.checked(
                    passed.is_ok(),
                    config.healthy_threshold,
                    config.unhealthy_threshold,
                );
                match (verdict, passed) {
                    (Some(true), _) => {
                        tracing::info!(upstream = %upstream.name, target = %target.addr, "target healthy again");
                    }
                    (Some(false), Err(why)) => {
                        tracing::warn!(upstream = %upstream.name, target = %target.addr, "target unhealthy: {why}");
                    }
                    _ => {}
                }
                upstream.metrics_health(&target);
            });
        }
        drop(strong);
        while checks.join_next().await.is_some() {}
        tokio::time::sleep(config.interval).await;
    }
}

/// One check of `target`: its verdict, or why it failed.
async fn check(upstream: &Upstream, target: &Target, config: &HealthConfig) -> Result<(), String> {
    let probe = async {
        let Some(path) = &config.path else {
            return exchange_bytes(upstream, target, config).await;
        };
        let mut sender = upstream
            .connector
            .connect(target.addr, target.authority.host(), false, None)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let request = Request::get(path.as_str())
            .header(header::HOST, target.authority.as_str())
            .header(header::USER_AGENT, "sluice-health-check")
            .body(body::full(bytes::Bytes::new()))
            .map_err(|e| e.to_string())?;
        let secure = upstream.connector.secure();
        let status = sender
            .send(Box::new(request), secure, target.authority.as_str())
            .await
            .map_err(|e| e.into_error().to_string())?
            .status();
        match healthy_status(status, &config.expect) {
            true => Ok(()),
            false => Err(format!("{path} answered {status}")),
        }
    };
    tokio::time::timeout(config.timeout, probe)
        .await
        .unwrap_or_else(|_| Err(format!("no answer in {:?}", config.timeout)))
}

/// A connection (TCP, and TLS if the upstream speaks it), and if `send`
/// or `receive` are configured, `send` written and `receive` read back.
async fn exchange_bytes(
    upstream: &Upstream,
    target: &Target,
    config: &HealthConfig,
) -> Result<(), String> {
    let mut stream = (upstream.connector)
        .connect_stream(target.addr, target.authority.host(), None)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if let Some(send) = &config.send {
        stream
            .write_all(send.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
    }
    let Some(receive) = &config.receive else {
        return Ok(());
    };
    let mut seen = Vec::new();
    let mut chunk = [0; 1024];
    while seen.len() < RECEIVE_LIMIT {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&chunk[..n]);
        if seen.windows(receive.len()).any(|w| w == receive.as_bytes()) {
            return Ok(());
        }
    }
    Err(format!(
        "answered {:?}, not {receive:?}",
        String::from_utf8_lossy(&seen[..seen.len().min(64)])
    ))
}

/// Most bytes read looking for `receive`.
const RECEIVE_LIMIT: usize = 64 << 10;

/// One of `expect`, or 2xx/3xx if none are listed.
fn healthy_status(status: StatusCode, expect: &[u16]) -> bool {
    match expect.is_empty() {
        true => status.is_success() || status.is_redirection(),
        false => expect.contains(&status.as_u16()),
    }
}

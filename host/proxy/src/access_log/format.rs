//! An access log line from a [`Record`]: a JSON object with the configured
//! fields, or the common log format.

use std::io::Write;

use http::HeaderValue;
use serde::Deserialize;

use super::{Connection, Record};
use crate::phases::Decision;

/// How lines are written.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object a line.
    #[default]
    Json,
    /// `client - identity [time] "METHOD path PROTOCOL" status bytes`,
    /// as web servers have written since NCSA's.
    Common,
}

/// A field of a JSON line.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// When the request arrived (RFC 3339, UTC, milliseconds).
    Time,
    /// Its `x-request-id`.
    RequestId,
    /// The client's address.
    Client,
    /// Its method.
    Method,
    /// Its `Host`.
    Host,
    /// Its path and query as the client sent them (after the edge's normalisation).
    Path,
    /// `HTTP/1.1`, `HTTP/2.0`, ...
    Protocol,
    /// The response's status.
    Status,
    /// Request body bytes read.
    BytesIn,
    /// Response body bytes sent.
    BytesOut,
    /// From the request head to the response's last byte, in milliseconds.
    DurationMs,
    /// The route's name.
    Route,
    /// The upstream's name.
    Upstream,
    /// The upstream target that answered (`ip:port`).
    Target,
    /// The identity an auth filter established.
    Identity,
    /// Each filter's decision, in chain order.
    Filters,
    /// The gateway's error code (`x-sluice-error`) when it answered itself.
    Error,
    /// The client's `User-Agent`.
    UserAgent,
}

impl Field {
    /// Every field, in the order a line has them by default.
    pub const ALL: [Field; 18] = [
        Field::Time,
        Field::RequestId,
        Field::Client,
        Field::Method,
        Field::Host,
        Field::Path,
        Field::Protocol,
        Field::Status,
        Field::BytesIn,
        Field::BytesOut,
        Field::DurationMs,
        Field::Route,
        Field::Upstream,
        Field::Target,
        Field::Identity,
        Field::Filters,
        Field::Error,
        Field::UserAgent,
    ];

    fn name(self) -> &'static str {
        match self {
            Field::Time => "time",
            Field::RequestId => "request_id",
            Field::Client => "client",
            Field::Method => "method",
            Field::Host => "host",
            Field::Path => "path",
            Field::Protocol => "protocol",
            Field::Status => "status",
            Field::BytesIn => "bytes_in",
            Field::BytesOut => "bytes_out",
            Field::DurationMs => "duration_ms",
            Field::Route => "route",
            Field::Upstream => "upstream",
            Field::Target => "target",
            Field::Identity => "identity",
            Field::Filters => "filters",
            Field::Error => "error",
            Field::UserAgent => "user_agent",
        }
    }
}

impl LogFormat {
    /// Append `record`'s line (with its newline) to `out`.
    pub(super) fn line(self, record: &Record, fields: &[Field], out: &mut Vec<u8>) {
        match self {
            LogFormat::Json => json(record, fields, out),
            LogFormat::Common => common(record, out),
        }
        out.push(b'\n');
    }

    /// Append a TCP connection's line to `out`: in JSON, a fixed set of
    /// fields (`"kind":"tcp"` tells it from a request's); in the common
    /// format, `"TCP <listener>"` in the request's place and how it ended in
    /// the status's.
    pub(super) fn connection_line(self, c: &Connection, out: &mut Vec<u8>) {
        match self {
            LogFormat::Json => {
                out.extend_from_slice(b"{\"time\":");
                string(out, &humantime::format_rfc3339_millis(c.time).to_string());
                out.extend_from_slice(b",\"kind\":\"tcp\",\"listener\":");
                string(out, &c.listener);
                out.extend_from_slice(b",\"client\":");
                string(out, &c.client.to_string());
                out.extend_from_slice(b",\"upstream\":");
                string(out, &c.upstream);
                out.extend_from_slice(b",\"target\":");
                optional(out, c.target.map(|t| t.to_string()).as_deref());
                let _ = write!(
                    out,
                    ",\"bytes_in\":{},\"bytes_out\":{},\"duration_ms\":{:.3},\"ended\":",
                    c.bytes_in,
                    c.bytes_out,
                    c.duration.as_secs_f64() * 1e3
                );
                string(out, c.ended);
                out.push(b'}');
            }
            LogFormat::Common => {
                let _ = write!(
                    out,
                    "{} - - [{}] \"TCP {}\" {} {}",
                    c.client.ip(),
                    clf(c.time),
                    c.listener,
                    c.ended,
                    c.bytes_out
                );
            }
        }
        out.push(b'\n');
    }
}

fn json(record: &Record, fields: &[Field], out: &mut Vec<u8>) {
    let served = record.served.as_ref();
    out.push(b'{');
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, field.name());
        out.push(b':');
        match field {
            Field::Time => string(out, &rfc3339(record)),
            Field::RequestId => header(out, Some(&record.request_id)),
            Field::Client => string(out, &record.client.to_string()),
            Field::Method => string(out, record.method.as_str()),
            Field::Host => header(out, record.host.as_ref()),
            Field::Path => string(out, path(record)),
            Field::Protocol => string(out, protocol(record)),
            Field::Status => number(out, record.status.as_u16()),
            Field::BytesIn => {
                let read = served
                    .and_then(|s| s.upload.as_ref())
                    .map_or(0, |u| u.bytes());
                number(out, read);
            }
            Field::BytesOut => number(out, record.bytes_out),
            Field::DurationMs => {
                let ms = record.duration.as_secs_f64() * 1e3;
                let _ = write!(out, "{ms:.3}");
            }
            Field::Route => optional(out, served.map(|s| &*s.route)),
            Field::Upstream => optional(out, served.and_then(|s| s.upstream.as_deref())),
            Field::Target => optional(out, record.target.map(|t| t.to_string()).as_deref()),
            Field::Identity => optional(out, served.and_then(|s| s.identity.as_deref())),
            Field::Filters => filters(out, served.map_or(&[], |s| &s.filters[..])),
            Field::Error => header(out, record.error.as_ref()),
            Field::UserAgent => header(out, record.user_agent.as_ref()),
        }
    }
    out.push(b'}');
}

/// `[{"plugin":"auth","decision":"reply","status":401}, ...]`
fn filters(out: &mut Vec<u8>, decisions: &[(std::sync::Arc<str>, Decision)]) {
    out.push(b'[');
    for (i, (plugin, decision)) in decisions.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"plugin\":");
        string(out, plugin);
        out.extend_from_slice(b",\"decision\":");
        string(out, decision.name());
        match decision {
            Decision::Reply(status) => {
                out.extend_from_slice(b",\"status\":");
                number(out, status.as_u16());
            }
            Decision::FailedOpen(reason) | Decision::Failed(reason) => {
                out.extend_from_slice(b",\"reason\":");
                string(out, reason);
            }
            _ => {}
        }
        out.push(b'}');
    }
    out.push(b']');
}

/// `127.0.0.1 - alice [02/Dec/2026:10:43:13 +0000] "GET /a HTTP/1.1" 200 12`
fn common(record: &Record, out: &mut Vec<u8>) {
    let served = record.served.as_ref();
    let identity = served.and_then(|s| s.identity.as_deref());
    // Spaces and quotes would split the line's fields: CLF has no escapes.
    let clean = |s: &str| s.replace([' ', '"'], "_");
    let _ = write!(
        out,
        "{} - {} [{}] \"{} {} {}\" {} ",
        record.client,
        identity.map_or("-".into(), clean),
        clf_time(record),
        record.method,
        clean(path(record)),
        protocol(record),
        record.status.as_u16(),
    );
    match record.bytes_out {
        0 => out.push(b'-'),
        n => number(out, n),
    }
}

fn path(record: &Record) -> &str {
    record.uri.path_and_query().map_or("/", |p| p.as_str())
}

fn protocol(record: &Record) -> &'static str {
    match record.version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

fn rfc3339(record: &Record) -> String {
    humantime::format_rfc3339_millis(record.time).to_string()
}

fn clf_time(record: &Record) -> String {
    clf(record.time)
}

/// `02/Dec/2026:10:43:13 +0000`, from `2026-12-02T10:43:13.123Z`.
fn clf(time: std::time::SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let t = humantime::format_rfc3339_seconds(time).to_string();
    let month = t[5..7].parse::<usize>().map_or("Jan", |m| MONTHS[m - 1]);
    format!("{}/{month}/{}:{} +0000", &t[8..10], &t[0..4], &t[11..19])
}

fn string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("a string serialises");
}

fn number(out: &mut Vec<u8>, n: impl Into<u64>) {
    let _ = write!(out, "{}", n.into());
}

fn optional(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A header's value as a string; bytes that are not UTF-8 are replaced.
fn header(out: &mut Vec<u8>, value: Option<&HeaderValue>) {
    let text = value.map(|v| String::from_utf8_lossy(v.as_bytes()));
    optional(out, text.as_deref());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant, UNIX_EPOCH};

    fn record() -> Record {
        let request = http::Request::get("/a%20b?q=x")
            .header("host", "example.com")
            .body(())
            .unwrap();
        let (head, ()) = request.into_parts();
        let id = HeaderValue::from_static("id-1");
        let mut record = *Record::begin(&head, Instant::now(), [10, 0, 0, 1].into(), &id);
        record.time = UNIX_EPOCH + Duration::from_millis(1_764_672_193_123);
        record.status = http::StatusCode::UNAUTHORIZED;
        record.bytes_out = 0;
        record.served = Some(super::super::Served {
            route: "api".into(),
            upstream: Some("backend".into()),
            identity: Some("al \"ice\"".into()),
            filters: vec![
                (
                    "jwt".into(),
                    Decision::Reply(http::StatusCode::UNAUTHORIZED),
                ),
                ("limit".into(), Decision::Skipped),
            ],
            upload: None,
        });
        record
    }

    #[test]
    fn a_json_line_has_the_fields_asked_for_in_order() {
        let mut out = Vec::new();
        let fields = [
            Field::Status,
            Field::Path,
            Field::Identity,
            Field::Filters,
            Field::Target,
        ];
        LogFormat::Json.line(&record(), &fields, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            concat!(
                r#"{"status":401,"path":"/a%20b?q=x","identity":"al \"ice\"","filters":[{"plugin":"jwt","decision":"reply","status":401},"#,
                r#"{"plugin":"limit","decision":"skipped"}],"target":null}"#,
                "\n"
            )
        );
    }

    #[test]
    fn a_common_log_line_keeps_its_fields_apart() {
        let mut out = Vec::new();
        LogFormat::Common.line(&record(), &[], &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "10.0.0.1 - al__ice_ [02/Dec/2025:10:43:13 +0000] \"GET /a%20b?q=x HTTP/1.1\" 401 -\n"
        );
    }

    #[test]
    fn a_tcp_connection_line_in_both_formats() {
        let connection = Connection {
            time: UNIX_EPOCH + Duration::from_millis(1_764_672_193_123),
            listener: "127.0.0.1:6379".into(),
            client: "10.0.0.1:5000".parse().unwrap(),
            upstream: "redis".into(),
            target: Some("10.0.0.5:6379".parse().unwrap()),
            bytes_in: 14,
            bytes_out: 5,
            duration: Duration::from_millis(1500),
            ended: "idle_timeout",
        };
        let mut out = Vec::new();
        LogFormat::Json.connection_line(&connection, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"time\":\"2025-12-02T10:43:13.123Z\",\"kind\":\"tcp\",\"listener\":\"127.0.0.1:6379\",\
             \"client\":\"10.0.0.1:5000\",\"upstream\":\"redis\",\"target\":\"10.0.0.5:6379\",\
             \"bytes_in\":14,\"bytes_out\":5,\"duration_ms\":1500.000,\"ended\":\"idle_timeout\"}\n"
        );
        let mut out = Vec::new();
        LogFormat::Common.connection_line(&connection, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "10.0.0.1 - - [02/Dec/2025:10:43:13 +0000] \"TCP 127.0.0.1:6379\" idle_timeout 5\n"
        );
    }
}

//! Fault injection, for testing how the gateway contains a hostile or
//! broken plugin (and for chaos drills): on each configured path it does
//! one bad thing, from a panic to reaching for files or ungranted upstreams.
//! `reject = true` makes it refuse its configuration.

use std::collections::HashMap;

use serde::Deserialize;
use sluice_sdk::outbound::Outbound;
use sluice_sdk::{HttpFilter, Plugin, Reply, Request, Response, Verdict};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// What to do on which path.
    #[serde(default)]
    on: HashMap<String, Fault>,
    /// The upstream `fetch` calls (whether or not it is granted).
    #[serde(default)]
    fetch_upstream: String,
    /// Refuse the configuration.
    #[serde(default)]
    reject: bool,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum Fault {
    /// Panic (a trap).
    Panic,
    /// Loop forever.
    Spin,
    /// Allocate until memory runs out.
    Hog,
    /// Recurse until the stack runs out.
    Overflow,
    /// Add 10 MiB of request headers.
    HeaderFlood,
    /// Reply with a 4 MiB body.
    BodyFlood,
    /// Try to read files, and reply with what it found.
    ReadFiles,
    /// Try to read the environment, and reply with what it found.
    ReadEnv,
    /// Call `fetch_upstream`, and reply with how that went.
    Fetch,
    /// Set the headers the gateway keeps itself on the request and the
    /// response, ignoring the refusals.
    Forbidden,
    /// Reply with those headers, wrong.
    ForbiddenReply,
}

/// The headers a filter may not change; set with wrong values.
const FORBIDDEN: [(&str, &str); 3] = [
    ("content-length", "1"),
    ("host", "evil.example"),
    ("transfer-encoding", "chunked"),
];

struct Faulty {
    config: Config,
}

impl Plugin for Faulty {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.reject {
            return Err("configured to reject its configuration".into());
        }
        Ok(Faulty { config })
    }
}

impl Faulty {
    fn fault(&self, req: &Request) -> Option<Fault> {
        self.config.on.get(&req.path()).copied()
    }
}

impl HttpFilter for Faulty {
    fn on_request(&self, req: &Request) -> Verdict {
        let Some(fault) = self.fault(req) else {
            return Verdict::Forward;
        };
        match fault {
            Fault::Panic => panic!("fault injected at {}", req.path()),
            Fault::Spin => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Fault::Hog => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Fault::Overflow => {
                std::hint::black_box(recurse(std::hint::black_box(1)));
            }
            Fault::HeaderFlood => {
                let value = "x".repeat(64 << 10);
                for i in 0..160 {
                    let _ = req.headers().set(&format!("x-flood-{i}"), &value);
                }
            }
            Fault::BodyFlood => {
                return Verdict::Respond(Reply::new(200).body(vec![b'x'; 4 << 20]));
            }
            Fault::ReadFiles => {
                let found: Vec<String> = ["/etc/passwd", "/proc/self/environ", "sluice.toml", "."]
                    .iter()
                    .map(|path| match std::fs::read(path) {
                        Ok(bytes) => format!("{path}: READ {}", String::from_utf8_lossy(&bytes)),
                        Err(e) => format!("{path}: {:?}", e.kind()),
                    })
                    .collect();
                return Verdict::Respond(Reply::text(200, found.join("\n")));
            }
            Fault::ReadEnv => {
                let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
                let home = std::env::var("HOME").unwrap_or_else(|e| e.to_string());
                return Verdict::Respond(Reply::text(
                    200,
                    format!("{} variables: {vars:?}; HOME: {home}", vars.len()),
                ));
            }
            Fault::Fetch => {
                let said = match Outbound::get(&self.config.fetch_upstream, "/").send() {
                    Ok(answer) => format!("FETCHED {}", String::from_utf8_lossy(&answer.body)),
                    Err(e) => format!("refused: {}", e.kind()),
                };
                return Verdict::Respond(Reply::text(502, said));
            }
            Fault::Forbidden => {
                for (name, value) in FORBIDDEN {
                    let _ = req.headers().set(name, value);
                    let _ = req.headers().append(name, value);
                    req.headers().remove(name);
                }
            }
            Fault::ForbiddenReply => {
                let reply = FORBIDDEN
                    .iter()
                    .fold(Reply::text(200, "hello"), |reply, (name, value)| {
                        reply.header(*name, *value)
                    });
                return Verdict::Respond(reply);
            }
        }
        Verdict::Forward
    }

    fn on_response(&self, req: &Request, resp: &Response) {
        if self.fault(req) == Some(Fault::Forbidden) {
            for (name, value) in FORBIDDEN {
                let _ = resp.headers().set(name, value);
            }
        }
    }
}

/// Recursion far deeper than any stack, each frame kept (not a loop the
/// compiler could make of it).
fn recurse(depth: u64) -> u64 {
    if depth == u64::MAX {
        return 0;
    }
    let frame = std::hint::black_box([depth; 16]);
    recurse(depth + 1).wrapping_add(frame[(depth % 16) as usize])
}

sluice_sdk::export!(http_filter: Faulty);

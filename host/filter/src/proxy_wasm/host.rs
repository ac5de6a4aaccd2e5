//! The proxy-wasm 0.2.1 host functions (and 0.2.0's that 0.2.1 renamed),
//! every one linked. What Sluice does not do answers a status the SDKs
//! take: `NotFound` or `InternalFailure` where they expect a failure, `Ok`
//! (ignored) where they accept nothing else; see the README.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use wasmtime::{Caller, Linker};

use super::abi::{self, buffer, map, status};
use super::vm::{Dispatch, VmState};
use crate::answer::Reply;
use crate::exchange::Exchange;

type C<'a> = Caller<'a, VmState>;

/// Link the whole table, and WASI preview 1 (withheld: no files, no
/// environment), into `linker`.
pub(crate) fn link(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p1::add_to_linker_async(linker, |s| &mut s.wasi)?;
    let env = "env";
    linker.func_wrap(
        env,
        "proxy_log",
        |mut c: C, level: i32, ptr: i32, len: i32| {
            let message = read(&mut c, ptr, len).unwrap_or_default();
            let plugin = &*c.data().module.plugin.name;
            let message = String::from_utf8_lossy(&message);
            match level {
                0 | 1 => tracing::debug!(plugin, "{message}"),
                2 => tracing::info!(plugin, "{message}"),
                3 => tracing::warn!(plugin, "{message}"),
                _ => tracing::error!(plugin, "{message}"),
            }
            status::OK
        },
    )?;
    linker.func_wrap(env, "proxy_get_log_level", |mut c: C, out: i32| {
        write(&mut c, out, &1u32.to_le_bytes())
    })?;
    linker.func_wrap(
        env,
        "proxy_get_current_time_nanoseconds",
        |mut c: C, out: i32| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            write(&mut c, out, &(now.as_nanos() as u64).to_le_bytes())
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_set_tick_period_milliseconds",
        |mut c: C, ms: i32| {
            let state = c.data_mut();
            let root = state
                .contexts
                .get(&state.effective)
                .copied()
                .unwrap_or(state.effective);
            state
                .ticks
                .insert(root, Duration::from_millis(ms as u32 as u64));
            status::OK
        },
    )?;
    linker.func_wrap_async(
        env,
        "proxy_get_buffer_bytes",
        |mut c: C, (kind, start, max, ptr_ptr, size_ptr): (i32, i32, i32, i32, i32)| {
            Box::new(async move {
                let Some(bytes) = buffer_of(c.data(), kind) else {
                    return Ok(status::NOT_FOUND);
                };
                let start = (start as u32 as usize).min(bytes.len());
                let end = start.saturating_add(max as u32 as usize).min(bytes.len());
                give(&mut c, &bytes[start..end], ptr_ptr, size_ptr).await
            })
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_set_buffer_bytes",
        |mut c: C, kind: i32, start: i32, size: i32, ptr: i32, len: i32| {
            let Some(data) = read(&mut c, ptr, len) else {
                return status::BAD_ARGUMENT;
            };
            let Some(lent) = c.data_mut().lent.as_mut() else {
                return status::NOT_FOUND;
            };
            let exchange = &mut lent.exchange;
            let body = match kind {
                buffer::REQUEST_BODY => &mut exchange.request_body,
                buffer::RESPONSE_BODY => &mut exchange.response_body,
                _ => return status::NOT_FOUND,
            };
            let old = body.take().unwrap_or_default();
            let start = (start as u32 as usize).min(old.len());
            let end = start.saturating_add(size as u32 as usize).min(old.len());
            let mut new = Vec::with_capacity(old.len() - (end - start) + data.len());
            new.extend_from_slice(&old[..start]);
            new.extend_from_slice(&data);
            new.extend_from_slice(&old[end..]);
            *body = Some(Bytes::from(new));
            status::OK
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_get_buffer_status",
        |_: C, _: i32, _: i32, _: i32| status::NOT_FOUND,
    )?;
    linker.func_wrap_async(
        env,
        "proxy_get_header_map_pairs",
        |mut c: C, (kind, ptr_ptr, size_ptr): (i32, i32, i32)| {
            Box::new(async move {
                let Some(pairs) = pairs_of(c.data(), kind) else {
                    return Ok(status::NOT_FOUND);
                };
                let encoded = abi::encode_map(pairs.iter().map(|(k, v)| (&k[..], &v[..])));
                give(&mut c, &encoded, ptr_ptr, size_ptr).await
            })
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_get_header_map_size",
        |mut c: C, kind: i32, out: i32| {
            let Some(pairs) = pairs_of(c.data(), kind) else {
                return status::NOT_FOUND;
            };
            let size = abi::encode_map(pairs.iter().map(|(k, v)| (&k[..], &v[..]))).len();
            write(&mut c, out, &(size as u32).to_le_bytes())
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_set_header_map_pairs",
        |mut c: C, kind: i32, ptr: i32, len: i32| {
            let Some(pairs) = read(&mut c, ptr, len).and_then(|b| abi::decode_map(&b)) else {
                return status::BAD_ARGUMENT;
            };
            edit(&mut c, kind, |head| {
                head.clear();
                for (k, v) in &pairs {
                    head.set(k, v, true);
                }
            })
        },
    )?;
    linker.func_wrap_async(
        env,
        "proxy_get_header_map_value",
        |mut c: C, (kind, key_ptr, key_len, ptr_ptr, size_ptr): (i32, i32, i32, i32, i32)| {
            Box::new(async move {
                let Some(key) = read(&mut c, key_ptr, key_len) else {
                    return Ok(status::BAD_ARGUMENT);
                };
                let key = key.to_ascii_lowercase();
                let value = pairs_of(c.data(), kind)
                    .and_then(|pairs| pairs.into_iter().find(|(k, _)| *k == key).map(|(_, v)| v));
                match value {
                    Some(value) => give(&mut c, &value, ptr_ptr, size_ptr).await,
                    None => Ok(status::NOT_FOUND),
                }
            })
        },
    )?;
    for (name, append) in [
        ("proxy_add_header_map_value", true),
        ("proxy_replace_header_map_value", false),
    ] {
        linker.func_wrap(
            env,
            name,
            move |mut c: C, kind: i32, key_ptr: i32, key_len: i32, ptr: i32, len: i32| {
                let (Some(key), Some(value)) =
                    (read(&mut c, key_ptr, key_len), read(&mut c, ptr, len))
                else {
                    return status::BAD_ARGUMENT;
                };
                edit(&mut c, kind, |head| head.set(&key, &value, append))
            },
        )?;
    }
    linker.func_wrap(
        env,
        "proxy_remove_header_map_value",
        |mut c: C, kind: i32, ptr: i32, len: i32| {
            let Some(key) = read(&mut c, ptr, len) else {
                return status::BAD_ARGUMENT;
            };
            edit(&mut c, kind, |head| head.remove(&key))
        },
    )?;
    linker.func_wrap_async(
        env,
        "proxy_get_property",
        |mut c: C, (ptr, len, ptr_ptr, size_ptr): (i32, i32, i32, i32)| {
            Box::new(async move {
                let Some(path) = read(&mut c, ptr, len) else {
                    return Ok(status::BAD_ARGUMENT);
                };
                match property(c.data(), &path) {
                    Some(value) => give(&mut c, &value, ptr_ptr, size_ptr).await,
                    None => Ok(status::NOT_FOUND),
                }
            })
        },
    )?;
    // Properties are read-only here; the SDK takes nothing but Ok.
    linker.func_wrap(
        env,
        "proxy_set_property",
        |_: C, _: i32, _: i32, _: i32, _: i32| status::OK,
    )?;
    linker.func_wrap_async(
        env,
        "proxy_get_shared_data",
        |mut c: C, (ptr, len, ptr_ptr, size_ptr, cas_ptr): (i32, i32, i32, i32, i32)| {
            Box::new(async move {
                let Some(key) = read(&mut c, ptr, len) else {
                    return Ok(status::BAD_ARGUMENT);
                };
                let key = String::from_utf8_lossy(&key).into_owned();
                let module = c.data().module.clone();
                // A wait for Redis is not the guest's time.
                let found = c.data_mut().clock.wait(module.shared_get(&key)).await;
                let Some((value, cas)) = found else {
                    return Ok(status::NOT_FOUND);
                };
                write(&mut c, cas_ptr, &cas.to_le_bytes());
                give(&mut c, &value, ptr_ptr, size_ptr).await
            })
        },
    )?;
    linker.func_wrap_async(
        env,
        "proxy_set_shared_data",
        |mut c: C, (ptr, len, value_ptr, value_len, cas): (i32, i32, i32, i32, i32)| {
            Box::new(async move {
                let (Some(key), Some(value)) =
                    (read(&mut c, ptr, len), read(&mut c, value_ptr, value_len))
                else {
                    return Ok(status::BAD_ARGUMENT);
                };
                let key = String::from_utf8_lossy(&key).into_owned();
                let module = c.data().module.clone();
                let set = module.shared_set(key, Bytes::from(value), cas as u32);
                Ok(match c.data_mut().clock.wait(set).await {
                    true => status::OK,
                    false => status::CAS_MISMATCH,
                })
            })
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_register_shared_queue",
        |mut c: C, ptr: i32, len: i32, out: i32| {
            let Some(name) = read(&mut c, ptr, len) else {
                return status::BAD_ARGUMENT;
            };
            let state = c.data();
            let root = state
                .contexts
                .get(&state.effective)
                .copied()
                .unwrap_or(state.effective);
            let id = state
                .module
                .data
                .register(&String::from_utf8_lossy(&name), root);
            write(&mut c, out, &id.to_le_bytes())
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_resolve_shared_queue",
        |mut c: C, _vm_ptr: i32, _vm_len: i32, ptr: i32, len: i32, out: i32| {
            let Some(name) = read(&mut c, ptr, len) else {
                return status::BAD_ARGUMENT;
            };
            match c
                .data()
                .module
                .data
                .resolve(&String::from_utf8_lossy(&name))
            {
                Some(id) => write(&mut c, out, &id.to_le_bytes()),
                None => status::NOT_FOUND,
            }
        },
    )?;
    linker.func_wrap_async(
        env,
        "proxy_dequeue_shared_queue",
        |mut c: C, (id, ptr_ptr, size_ptr): (i32, i32, i32)| {
            Box::new(async move {
                match c.data().module.data.dequeue(id as u32) {
                    None => Ok(status::NOT_FOUND),
                    Some(None) => Ok(status::EMPTY),
                    Some(Some(item)) => give(&mut c, &item, ptr_ptr, size_ptr).await,
                }
            })
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_enqueue_shared_queue",
        |mut c: C, id: i32, ptr: i32, len: i32| {
            let Some(item) = read(&mut c, ptr, len) else {
                return status::BAD_ARGUMENT;
            };
            match c.data().module.data.enqueue(id as u32, Bytes::from(item)) {
                true => status::OK,
                false => status::NOT_FOUND,
            }
        },
    )?;
    linker.func_wrap(env, "proxy_continue_stream", |mut c: C, _stream: i32| {
        resume(&mut c)
    })?;
    linker.func_wrap(env, "proxy_continue_request", |mut c: C| resume(&mut c))?;
    linker.func_wrap(env, "proxy_continue_response", |mut c: C| resume(&mut c))?;
    linker.func_wrap(env, "proxy_close_stream", |mut c: C, _stream: i32| {
        // Closing answers the request as a reset would: 502 from the gateway.
        if let Some(lent) = c.data_mut().lent.as_mut() {
            lent.reply.get_or_insert(Reply {
                status: 502,
                headers: vec![("x-sluice-error".into(), "filter_closed_stream".into())],
                body: Vec::new(),
            });
        }
        status::OK
    })?;
    linker.func_wrap(env, "proxy_clear_route_cache", |_: C| status::OK)?;
    linker.func_wrap(
        env,
        "proxy_send_local_response",
        |mut c: C,
         code: i32,
         _details: i32,
         _details_len: i32,
         body: i32,
         body_len: i32,
         headers: i32,
         headers_len: i32,
         _grpc: i32| {
            let body = read(&mut c, body, body_len).unwrap_or_default();
            let headers = read(&mut c, headers, headers_len)
                .and_then(|b| abi::decode_map(&b))
                .unwrap_or_default();
            if let Some(lent) = c.data_mut().lent.as_mut() {
                lent.reply = Some(Reply {
                    status: code as u16,
                    headers: headers
                        .into_iter()
                        .map(|(k, v)| (lossy(&k), lossy(&v)))
                        .collect(),
                    body,
                });
            }
            status::OK
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_http_call",
        |mut c: C,
         up: i32,
         up_len: i32,
         h: i32,
         h_len: i32,
         b: i32,
         b_len: i32,
         _t: i32,
         _t_len: i32,
         timeout: i32,
         out: i32| {
            let (Some(upstream), Some(headers), Some(body)) = (
                read(&mut c, up, up_len),
                read(&mut c, h, h_len),
                read(&mut c, b, b_len),
            ) else {
                return status::BAD_ARGUMENT;
            };
            let upstream = lossy(&upstream);
            let Some(headers) = abi::decode_map(&headers) else {
                return status::BAD_ARGUMENT;
            };
            let state = c.data_mut();
            // Only upstreams granted `http:<name>`; a refusal is counted and logged.
            let Ok((_, granted)) = state.module.plugin.caps.outbound.upstream(&upstream) else {
                return status::BAD_ARGUMENT;
            };
            let Some(request) = call_request(&headers, body) else {
                return status::BAD_ARGUMENT;
            };
            let token = state.next_token;
            state.next_token = state.next_token.wrapping_add(1).max(1);
            state.dispatched.push(Dispatch {
                token,
                context: state.effective,
                upstream,
                request,
                timeout: Duration::from_millis(timeout as u32 as u64).min(granted),
            });
            write(&mut c, out, &token.to_le_bytes())
        },
    )?;
    // gRPC is not offered: the SDKs take these as a failed call.
    linker.func_wrap(
        env,
        "proxy_grpc_call",
        |_: C,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32| status::INTERNAL_FAILURE,
    )?;
    linker.func_wrap(
        env,
        "proxy_grpc_stream",
        |_: C, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| {
            status::INTERNAL_FAILURE
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_grpc_send",
        |_: C, _: i32, _: i32, _: i32, _: i32| status::NOT_FOUND,
    )?;
    linker.func_wrap(env, "proxy_grpc_cancel", |_: C, _: i32| status::NOT_FOUND)?;
    linker.func_wrap(env, "proxy_grpc_close", |_: C, _: i32| status::NOT_FOUND)?;
    linker.func_wrap(
        env,
        "proxy_get_status",
        |mut c: C, code: i32, _ptr_ptr: i32, size_ptr: i32| {
            write(&mut c, code, &0u32.to_le_bytes());
            write(&mut c, size_ptr, &0u32.to_le_bytes())
        },
    )?;
    linker.func_wrap(env, "proxy_set_effective_context", |mut c: C, id: i32| {
        let state = c.data_mut();
        match state.contexts.contains_key(&(id as u32)) {
            true => {
                state.effective = id as u32;
                status::OK
            }
            false => status::BAD_ARGUMENT,
        }
    })?;
    linker.func_wrap(env, "proxy_done", |_: C| status::OK)?;
    linker.func_wrap(
        env,
        "proxy_call_foreign_function",
        |_: C, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| status::NOT_FOUND,
    )?;
    linker.func_wrap(
        env,
        "proxy_define_metric",
        |mut c: C, kind: i32, ptr: i32, len: i32, out: i32| {
            let Some(name) = read(&mut c, ptr, len) else {
                return status::BAD_ARGUMENT;
            };
            match c.data().module.metrics.define(kind, &lossy(&name)) {
                Some(id) => write(&mut c, out, &id.to_le_bytes()),
                None => status::BAD_ARGUMENT,
            }
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_increment_metric",
        |c: C, id: i32, offset: i64| {
            let module = &c.data().module;
            module.metrics.increment(&module.plugin, id as u32, offset)
        },
    )?;
    linker.func_wrap(env, "proxy_record_metric", |c: C, id: i32, value: i64| {
        let module = &c.data().module;
        module
            .metrics
            .record(&module.plugin, id as u32, value as u64)
    })?;
    linker.func_wrap(
        env,
        "proxy_get_metric",
        |mut c: C, id: i32, out: i32| match c.data().module.metrics.get(id as u32) {
            Some(value) => write(&mut c, out, &value.to_le_bytes()),
            None => status::NOT_FOUND,
        },
    )?;
    Ok(())
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn memory(c: &mut C) -> Option<wasmtime::Memory> {
    c.data().exported.as_ref().map(|(memory, _)| *memory)
}

/// `len` bytes of the guest's memory at `ptr`.
fn read(c: &mut C, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let memory = memory(c)?;
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    memory
        .data(&*c)
        .get(ptr..ptr.checked_add(len)?)
        .map(<[u8]>::to_vec)
}

/// Write `bytes` at `ptr` in the guest's memory.
fn write(c: &mut C, ptr: i32, bytes: &[u8]) -> i32 {
    match memory(c).map(|m| m.write(&mut *c, ptr as u32 as usize, bytes)) {
        Some(Ok(())) => status::OK,
        _ => status::BAD_ARGUMENT,
    }
}

/// Hand `bytes` to the guest: memory it allocates for them, its address
/// and size written where it asked.
async fn give(c: &mut C<'_>, bytes: &[u8], ptr_ptr: i32, size_ptr: i32) -> wasmtime::Result<i32> {
    let Some((_, allocate)) = c.data().exported.clone() else {
        return Ok(status::INTERNAL_FAILURE);
    };
    let at = allocate.call_async(&mut *c, bytes.len() as i32).await?;
    if at == 0 && !bytes.is_empty() {
        return Ok(status::INTERNAL_FAILURE);
    }
    let wrote = [
        write(c, at, bytes),
        write(c, ptr_ptr, &(at as u32).to_le_bytes()),
        write(c, size_ptr, &(bytes.len() as u32).to_le_bytes()),
    ];
    Ok(wrote
        .into_iter()
        .find(|s| *s != status::OK)
        .unwrap_or(status::OK))
}

fn resume(c: &mut C) -> i32 {
    if let Some(lent) = c.data_mut().lent.as_mut() {
        lent.continued = true;
    }
    status::OK
}

/// A buffer's bytes, if there is such a buffer now.
fn buffer_of(state: &VmState, kind: i32) -> Option<Bytes> {
    let exchange = state.lent.as_ref().map(|l| &l.exchange);
    match kind {
        buffer::REQUEST_BODY => exchange?.request_body.clone(),
        buffer::RESPONSE_BODY => exchange?.response_body.clone(),
        buffer::CALL_RESPONSE_BODY => state.answer.as_ref().map(|a| a.body.clone()),
        buffer::VM_CONFIGURATION => Some(state.module.vm_config.clone()),
        buffer::PLUGIN_CONFIGURATION => {
            let root = state
                .contexts
                .get(&state.effective)
                .copied()
                .unwrap_or(state.effective);
            state.roots.get(&root).cloned()
        }
        _ => None,
    }
}

/// A header map as the ABI shows it: pseudo-headers first, as Envoy has them.
fn pairs_of(state: &VmState, kind: i32) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    fn pairs(headers: &http::HeaderMap, skip_host: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
        headers
            .iter()
            .filter(|(k, _)| !(skip_host && *k == http::header::HOST))
            .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }
    match kind {
        map::REQUEST_HEADERS => {
            let exchange = &state.lent.as_ref()?.exchange;
            let request = &exchange.request;
            let path = request.uri.path_and_query().map_or("/", |p| p.as_str());
            let scheme = if exchange.secure { "https" } else { "http" };
            let mut all = vec![
                (
                    b":authority".to_vec(),
                    exchange.authority().unwrap_or("").as_bytes().to_vec(),
                ),
                (b":path".to_vec(), path.as_bytes().to_vec()),
                (
                    b":method".to_vec(),
                    request.method.as_str().as_bytes().to_vec(),
                ),
                (b":scheme".to_vec(), scheme.as_bytes().to_vec()),
            ];
            all.extend(pairs(&request.headers, true));
            Some(all)
        }
        map::RESPONSE_HEADERS => {
            let response = state.lent.as_ref()?.exchange.response.as_ref()?;
            let mut all = vec![(
                b":status".to_vec(),
                response.status.as_str().as_bytes().to_vec(),
            )];
            all.extend(pairs(&response.headers, false));
            Some(all)
        }
        map::CALL_RESPONSE_HEADERS => Some(state.answer.as_ref()?.headers.clone()),
        map::REQUEST_TRAILERS | map::RESPONSE_TRAILERS => {
            let exchange = &state.lent.as_ref()?.exchange;
            let trailers = match kind {
                map::REQUEST_TRAILERS => &exchange.request_trailers,
                _ => &exchange.response_trailers,
            };
            Some(trailers.as_ref().map_or_else(Vec::new, |t| pairs(t, false)))
        }
        map::CALL_RESPONSE_TRAILERS => Some(Vec::new()),
        _ => None,
    }
}

/// One head being edited, pseudo-headers included.
enum Head<'a> {
    Request(&'a mut Exchange),
    Response(&'a mut http::response::Parts),
    Trailers(&'a mut http::HeaderMap),
}

/// Headers that frame the message: the host keeps them right itself. A
/// filter may drop them (one that rewrites a body drops `content-length`,
/// and the SDK would trap on a refusal); setting them is ignored.
fn framing(name: &HeaderName) -> bool {
    use http::header::*;
    [
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        CONNECTION,
        UPGRADE,
        TE,
        TRAILER,
    ]
    .contains(name)
        || name == "keep-alive"
        || name == "proxy-connection"
}

impl Head<'_> {
    fn headers(&mut self) -> &mut http::HeaderMap {
        match self {
            Head::Request(e) => &mut e.request.headers,
            Head::Response(r) => &mut r.headers,
            Head::Trailers(t) => t,
        }
    }

    fn set(&mut self, key: &[u8], value: &[u8], append: bool) {
        let key = key.to_ascii_lowercase();
        match (self, &key[..]) {
            (Head::Request(e), b":path") => {
                if let Ok(uri) = http::Uri::try_from(value) {
                    e.request.uri = uri;
                }
            }
            (Head::Request(e), b":method") => {
                if let Ok(method) = Method::from_bytes(value) {
                    e.request.method = method;
                }
            }
            (Head::Request(e), b":authority") => {
                if let Ok(value) = HeaderValue::from_bytes(value) {
                    e.request.headers.insert(http::header::HOST, value);
                }
            }
            (Head::Response(r), b":status") => {
                if let Some(status) = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| StatusCode::from_bytes(s.as_bytes()).ok())
                {
                    r.status = status;
                }
            }
            (_, key) if key.starts_with(b":") => {}
            (head, key) => {
                let (Ok(name), Ok(value)) =
                    (HeaderName::from_bytes(key), HeaderValue::from_bytes(value))
                else {
                    return;
                };
                if framing(&name) {
                    return;
                }
                match append {
                    true => {
                        head.headers().append(name, value);
                    }
                    false => {
                        head.headers().insert(name, value);
                    }
                }
            }
        }
    }

    fn remove(&mut self, key: &[u8]) {
        if let Ok(name) = HeaderName::from_bytes(&key.to_ascii_lowercase()) {
            self.headers().remove(name);
        }
    }

    /// Remove every header a filter may set: all but `Host` and the
    /// framing ones, which the gateway keeps right itself.
    fn clear(&mut self) {
        let headers = self.headers();
        let keep: Vec<HeaderName> = headers
            .keys()
            .filter(|k| *k == http::header::HOST || framing(k))
            .cloned()
            .collect();
        let kept: Vec<(HeaderName, HeaderValue)> = keep
            .iter()
            .flat_map(|k| {
                headers
                    .get_all(k)
                    .iter()
                    .map(move |v| (k.clone(), v.clone()))
            })
            .collect();
        headers.clear();
        for (k, v) in kept {
            headers.append(k, v);
        }
    }
}

/// Edit header map `kind` of the lent request.
fn edit(c: &mut C, kind: i32, change: impl FnOnce(&mut Head)) -> i32 {
    let Some(lent) = c.data_mut().lent.as_mut() else {
        return status::NOT_FOUND;
    };
    let mut head = match kind {
        map::REQUEST_HEADERS => Head::Request(&mut lent.exchange),
        map::RESPONSE_HEADERS => match lent.exchange.response.as_mut() {
            Some(response) => Head::Response(response),
            None => return status::NOT_FOUND,
        },
        // Trailers a message had none of are made by the first edit (the
        // SDK traps on a refusal); they go out when its body was buffered.
        map::REQUEST_TRAILERS => {
            Head::Trailers(lent.exchange.request_trailers.get_or_insert_default())
        }
        map::RESPONSE_TRAILERS => {
            Head::Trailers(lent.exchange.response_trailers.get_or_insert_default())
        }
        _ => return status::NOT_FOUND,
    };
    change(&mut head);
    status::OK
}

/// The outbound request a filter's `proxy_http_call` describes.
fn call_request(headers: &[(Vec<u8>, Vec<u8>)], body: Vec<u8>) -> Option<http::Request<Bytes>> {
    let mut request = http::Request::new(Bytes::from(body));
    let mut path = None;
    for (k, v) in headers {
        match &k[..] {
            b":method" => *request.method_mut() = Method::from_bytes(v).ok()?,
            b":path" => path = Some(http::Uri::try_from(&v[..]).ok()?),
            b":authority" => {
                request
                    .headers_mut()
                    .insert(http::header::HOST, HeaderValue::from_bytes(v).ok()?);
            }
            k if k.starts_with(b":") => {}
            k => {
                let name = HeaderName::from_bytes(k).ok()?;
                if !framing(&name) {
                    request
                        .headers_mut()
                        .append(name, HeaderValue::from_bytes(v).ok()?);
                }
            }
        }
    }
    *request.uri_mut() = path?;
    Some(request)
}

/// A property, encoded as Envoy encodes it (strings as bytes, numbers as
/// 8 bytes little-endian, booleans as one byte, maps as header maps).
fn property(state: &VmState, path: &[u8]) -> Option<Vec<u8>> {
    let path: Vec<&[u8]> = path.split(|b| *b == 0).filter(|p| !p.is_empty()).collect();
    let plugin = &state.module.plugin.name;
    let text = |s: &str| Some(s.as_bytes().to_vec());
    match &path[..] {
        [b"plugin_name"] | [b"plugin_vm_id"] => return text(plugin),
        [b"plugin_root_id"] => return text(""),
        _ => {}
    }
    let exchange = &state.lent.as_ref()?.exchange;
    let request = &exchange.request;
    match &path[..] {
        [b"request", b"path"] => text(request.uri.path_and_query().map_or("/", |p| p.as_str())),
        [b"request", b"url_path"] => text(request.uri.path()),
        [b"request", b"host"] => text(exchange.authority().unwrap_or("")),
        [b"request", b"method"] => text(request.method.as_str()),
        [b"request", b"scheme"] => text(if exchange.secure { "https" } else { "http" }),
        [b"request", b"protocol"] => text(match request.version {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        }),
        [b"request", b"id"] => text(request.headers.get("x-request-id")?.to_str().ok()?),
        [b"request", b"headers"] => {
            let pairs: Vec<(&[u8], &[u8])> = request
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes()))
                .collect();
            Some(abi::encode_map(pairs.into_iter()))
        }
        [b"request", b"headers", name] => Some(
            request
                .headers
                .get(HeaderName::from_bytes(name).ok()?)?
                .as_bytes()
                .to_vec(),
        ),
        [b"source", b"address"] => {
            text(&std::net::SocketAddr::new(exchange.client_ip, exchange.client_port).to_string())
        }
        [b"source", b"port"] => Some(u64::from(exchange.client_port).to_le_bytes().to_vec()),
        [b"destination", b"address"] => text(&exchange.local?.to_string()),
        [b"destination", b"port"] => Some(u64::from(exchange.local?.port()).to_le_bytes().to_vec()),
        [b"connection", b"mtls"] => Some(vec![0]),
        [b"route_name"] => text(&exchange.route),
        [b"response", b"code"] => Some(
            u64::from(exchange.response.as_ref()?.status.as_u16())
                .to_le_bytes()
                .to_vec(),
        ),
        _ => None,
    }
}

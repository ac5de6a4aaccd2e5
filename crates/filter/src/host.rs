//! The host side of the WIT imports: handles onto the current exchange, logging, the clock.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use wasmtime::component::Resource;

use super::bindings::{HeadersHandle, RequestHandle, ResponseHandle, clock, log, types};
use super::instance::FilterState;
use crate::exchange::{Exchange, Identity};

const REQUEST_HEADERS: u32 = 0;
const RESPONSE_HEADERS: u32 = 1;

impl FilterState {
    fn exchange(&self) -> wasmtime::Result<&Exchange> {
        self.exchange
            .as_deref()
            .ok_or_else(|| wasmtime::format_err!("a handle was used outside a filter call"))
    }

    fn exchange_mut(&mut self) -> wasmtime::Result<&mut Exchange> {
        self.exchange
            .as_deref_mut()
            .ok_or_else(|| wasmtime::format_err!("a handle was used outside a filter call"))
    }

    fn header_map(&self, handle: &Resource<HeadersHandle>) -> wasmtime::Result<&HeaderMap> {
        let ex = self.exchange()?;
        match handle.rep() {
            REQUEST_HEADERS => Ok(&ex.request.headers),
            _ => ex
                .response
                .as_ref()
                .map(|r| &r.headers)
                .ok_or_else(|| wasmtime::format_err!("no response yet")),
        }
    }

    fn header_map_mut(
        &mut self,
        handle: &Resource<HeadersHandle>,
    ) -> wasmtime::Result<&mut HeaderMap> {
        let rep = handle.rep();
        let ex = self.exchange_mut()?;
        match rep {
            REQUEST_HEADERS => Ok(&mut ex.request.headers),
            _ => ex
                .response
                .as_mut()
                .map(|r| &mut r.headers)
                .ok_or_else(|| wasmtime::format_err!("no response yet")),
        }
    }

    /// The body of the request (`response == false`) or response, if this filter may see it.
    fn body(&self, response: bool) -> wasmtime::Result<Result<Vec<u8>, String>> {
        let ex = self.exchange()?;
        if !ex.body_access {
            return Ok(Err(
                "bodies are opt-in: set `body = true` on this filter".into()
            ));
        }
        let body = if response {
            &ex.response_body
        } else {
            &ex.request_body
        };
        Ok(body
            .as_ref()
            .map(|b| b.to_vec())
            .ok_or_else(|| "the body was not buffered".into()))
    }

    fn set_body(&mut self, response: bool, body: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        let ex = self.exchange_mut()?;
        if !ex.body_access {
            return Ok(Err(
                "bodies are opt-in: set `body = true` on this filter".into()
            ));
        }
        let len = HeaderValue::from(body.len());
        let (slot, headers) = if response {
            let Some(parts) = ex.response.as_mut() else {
                return Ok(Err("no response yet".into()));
            };
            (&mut ex.response_body, &mut parts.headers)
        } else {
            (&mut ex.request_body, &mut ex.request.headers)
        };
        *slot = Some(Bytes::from(body));
        headers.remove(http::header::TRANSFER_ENCODING);
        headers.insert(http::header::CONTENT_LENGTH, len);
        Ok(Ok(()))
    }
}

fn parse_header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let name = HeaderName::try_from(name).map_err(|_| format!("invalid header name `{name}`"))?;
    let value =
        HeaderValue::try_from(value).map_err(|_| format!("invalid value for header `{name}`"))?;
    Ok((name, value))
}

impl types::Host for FilterState {}

impl types::HostHeaders for FilterState {
    fn get(
        &mut self,
        h: Resource<HeadersHandle>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        let map = self.header_map(&h)?;
        Ok(map
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned))
    }

    fn get_all(
        &mut self,
        h: Resource<HeadersHandle>,
        name: String,
    ) -> wasmtime::Result<Vec<String>> {
        let map = self.header_map(&h)?;
        Ok(map
            .get_all(name.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect())
    }

    fn has(&mut self, h: Resource<HeadersHandle>, name: String) -> wasmtime::Result<bool> {
        Ok(self.header_map(&h)?.contains_key(name.as_str()))
    }

    fn set(
        &mut self,
        h: Resource<HeadersHandle>,
        name: String,
        value: String,
    ) -> wasmtime::Result<Result<(), String>> {
        let (name, value) = match parse_header(&name, &value) {
            Ok(pair) => pair,
            Err(e) => return Ok(Err(e)),
        };
        self.header_map_mut(&h)?.insert(name, value);
        Ok(Ok(()))
    }

    fn append(
        &mut self,
        h: Resource<HeadersHandle>,
        name: String,
        value: String,
    ) -> wasmtime::Result<Result<(), String>> {
        let (name, value) = match parse_header(&name, &value) {
            Ok(pair) => pair,
            Err(e) => return Ok(Err(e)),
        };
        self.header_map_mut(&h)?.append(name, value);
        Ok(Ok(()))
    }

    fn remove(&mut self, h: Resource<HeadersHandle>, name: String) -> wasmtime::Result<()> {
        self.header_map_mut(&h)?.remove(name.as_str());
        Ok(())
    }

    fn entries(&mut self, h: Resource<HeadersHandle>) -> wasmtime::Result<Vec<(String, String)>> {
        let map = self.header_map(&h)?;
        Ok(map
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect())
    }

    // Handles name the current exchange's headers; there is nothing to free.
    fn drop(&mut self, _h: Resource<HeadersHandle>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl types::HostRequest for FilterState {
    fn method(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.exchange()?.request.method.as_str().to_owned())
    }

    fn path(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.exchange()?.request.uri.path().to_owned())
    }

    fn query(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<Option<String>> {
        Ok(self.exchange()?.request.uri.query().map(str::to_owned))
    }

    fn authority(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<Option<String>> {
        Ok(self.exchange()?.authority().map(str::to_owned))
    }

    fn client_ip(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.exchange()?.client_ip.to_string())
    }

    fn headers(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<Resource<HeadersHandle>> {
        Ok(Resource::new_own(REQUEST_HEADERS))
    }

    fn identity(
        &mut self,
        _: Resource<RequestHandle>,
    ) -> wasmtime::Result<Option<types::Identity>> {
        Ok(self
            .exchange()?
            .identity
            .clone()
            .map(|Identity { subject, claims }| types::Identity { subject, claims }))
    }

    fn route(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.exchange()?.route.to_string())
    }

    fn body(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<Result<Vec<u8>, String>> {
        FilterState::body(self, false)
    }

    fn set_body(
        &mut self,
        _: Resource<RequestHandle>,
        body: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        FilterState::set_body(self, false, body)
    }

    fn drop(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl types::HostResponse for FilterState {
    fn status(&mut self, _: Resource<ResponseHandle>) -> wasmtime::Result<u16> {
        Ok(self
            .exchange()?
            .response
            .as_ref()
            .map_or(0, |r| r.status.as_u16()))
    }

    fn set_status(
        &mut self,
        _: Resource<ResponseHandle>,
        status: u16,
    ) -> wasmtime::Result<Result<(), String>> {
        let Ok(status) = http::StatusCode::from_u16(status) else {
            return Ok(Err(format!("invalid status {status}")));
        };
        match self.exchange_mut()?.response.as_mut() {
            Some(r) => r.status = status,
            None => return Ok(Err("no response yet".into())),
        }
        Ok(Ok(()))
    }

    fn headers(
        &mut self,
        _: Resource<ResponseHandle>,
    ) -> wasmtime::Result<Resource<HeadersHandle>> {
        Ok(Resource::new_own(RESPONSE_HEADERS))
    }

    fn body(&mut self, _: Resource<ResponseHandle>) -> wasmtime::Result<Result<Vec<u8>, String>> {
        FilterState::body(self, true)
    }

    fn set_body(
        &mut self,
        _: Resource<ResponseHandle>,
        body: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        FilterState::set_body(self, true, body)
    }

    fn drop(&mut self, _: Resource<ResponseHandle>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl log::Host for FilterState {
    fn write(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let plugin = &*self.plugin;
        match level {
            log::Level::Trace => tracing::trace!(plugin, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, "{message}"),
            log::Level::Info => tracing::info!(plugin, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, "{message}"),
            log::Level::Error => tracing::error!(plugin, "{message}"),
        }
        Ok(())
    }
}

impl clock::Host for FilterState {
    fn now_millis(&mut self) -> wasmtime::Result<u64> {
        Ok(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64))
    }

    fn monotonic_nanos(&mut self) -> wasmtime::Result<u64> {
        Ok(self.started.elapsed().as_nanos() as u64)
    }
}

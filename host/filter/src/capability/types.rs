//! The contract's `types`: what a filter reads and edits the traffic
//! through its `request`, `response` and `headers` handles (entries of the
//! instance's resource table, see `handles`), within the limits of what
//! one call may produce.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use crate::answer::Reply;
use crate::bindings::{v1, v2};
use crate::error::{HostError, OverLimit};
use crate::exchange::{Exchange, Identity};
use crate::handles::{HeadersEntry, RequestEntry, ResponseEntry};

/// What one call may produce, from the plugin's configuration.
pub(crate) struct Output {
    header_bytes: usize,
    body_bytes: usize,
}

impl Output {
    pub(crate) fn of(config: &crate::config::PluginConfig) -> Output {
        let bytes = |size: bytesize::ByteSize| usize::try_from(size.as_u64()).unwrap_or(usize::MAX);
        Output {
            header_bytes: bytes(config.max_header_bytes),
            body_bytes: bytes(config.max_body_bytes),
        }
    }

    fn check_body(&self, length: usize) -> Result<(), OverLimit> {
        match length > self.body_bytes {
            true => Err(OverLimit(format!(
                "a body of {length} bytes is over its `max_body_bytes` ({})",
                self.body_bytes
            ))),
            false => Ok(()),
        }
    }

    fn check_headers(&self, length: usize) -> Result<(), OverLimit> {
        match length > self.header_bytes {
            true => Err(OverLimit(format!(
                "{length} bytes of header fields are over its `max_header_bytes` ({})",
                self.header_bytes
            ))),
            false => Ok(()),
        }
    }

    /// Check a filter's reply before it reaches the client: within the
    /// limits, and without the headers the gateway keeps itself (dropped,
    /// refused as edits are).
    pub(crate) fn check_reply(
        &self,
        reply: &mut Reply,
        refusals: &super::Refusals,
    ) -> Result<(), OverLimit> {
        self.check_body(reply.body.len())?;
        self.check_headers(reply.headers.iter().map(|(n, v)| n.len() + v.len()).sum())?;
        reply
            .headers
            .retain(|(name, _)| match HeaderName::try_from(name.as_str()) {
                Ok(name) if FORBIDDEN.contains(&name) => {
                    let _ = refusals.refuse_edit(&name);
                    false
                }
                _ => true,
            });
        Ok(())
    }
}

/// Headers a filter may not set, add or remove: they describe the message
/// on the wire, which the gateway keeps right (`content-length` follows
/// `set-body`), or the connection, or the host the request was routed by.
const FORBIDDEN: [HeaderName; 8] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::HOST,
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
];

/// What the types handles borrow from the instance's store data.
pub(crate) struct TypesView<'a> {
    pub(crate) table: &'a mut ResourceTable,
    /// Where refused edits are reported.
    pub(crate) refusals: &'a super::Refusals,
    /// What a call may produce.
    pub(crate) output: &'a Output,
}

struct TypesData;

impl HasData for TypesData {
    type Data<'a> = TypesView<'a>;
}

/// Store data that can lend the handles their view.
pub(crate) trait TypesHost {
    fn types(&mut self) -> TypesView<'_>;
}

pub(crate) fn link<T: TypesHost + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    v2::types::add_to_linker::<_, TypesData>(linker, T::types)?;
    v1::types::add_to_linker::<_, TypesData>(linker, T::types)
}

fn request_of(rep: u32) -> Resource<RequestEntry> {
    Resource::new_borrow(rep)
}

impl TypesView<'_> {
    fn exchange(&self, request: u32) -> wasmtime::Result<&Exchange> {
        let entry = self.table.get(&request_of(request))?;
        entry
            .exchange
            .as_deref()
            .ok_or_else(|| wasmtime::format_err!("a handle was used outside its call"))
    }

    fn exchange_mut(&mut self, request: u32) -> wasmtime::Result<&mut Exchange> {
        let entry = self.table.get_mut(&request_of(request))?;
        entry
            .exchange
            .as_deref_mut()
            .ok_or_else(|| wasmtime::format_err!("a handle was used outside its call"))
    }

    fn response_of(&self, response: &Resource<ResponseEntry>) -> wasmtime::Result<u32> {
        Ok(self.table.get(response)?.request)
    }

    /// Which header fields a handle reads and edits: its request entry, and
    /// whether it is the response's.
    fn fields_of(&self, h: &Resource<HeadersEntry>) -> wasmtime::Result<(u32, bool)> {
        let &HeadersEntry { request, response } = self.table.get(h)?;
        Ok((request, response))
    }

    fn fields(&self, (request, response): (u32, bool)) -> wasmtime::Result<&HeaderMap> {
        let exchange = self.exchange(request)?;
        match response {
            false => Ok(&exchange.request.headers),
            true => exchange
                .response
                .as_ref()
                .map(|r| &r.headers)
                .ok_or_else(|| wasmtime::format_err!("no response yet")),
        }
    }

    fn fields_mut(&mut self, (request, response): (u32, bool)) -> wasmtime::Result<&mut HeaderMap> {
        let exchange = self.exchange_mut(request)?;
        match response {
            false => Ok(&mut exchange.request.headers),
            true => exchange
                .response
                .as_mut()
                .map(|r| &mut r.headers)
                .ok_or_else(|| wasmtime::format_err!("no response yet")),
        }
    }

    fn headers(&self, h: &Resource<HeadersEntry>) -> wasmtime::Result<&HeaderMap> {
        self.fields(self.fields_of(h)?)
    }

    /// The first value of `name` (if valid UTF-8).
    fn first(&self, fields: (u32, bool), name: &str) -> wasmtime::Result<Option<String>> {
        Ok(self
            .fields(fields)?
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned))
    }

    /// A new headers handle, a child of the request entry.
    fn headers_handle(
        &mut self,
        request: u32,
        response: bool,
    ) -> wasmtime::Result<Resource<HeadersEntry>> {
        Ok(self
            .table
            .push_child(HeadersEntry { request, response }, &request_of(request))?)
    }

    /// Set (or, with `append`, add) `value` to `name`, or remove `name`
    /// without a value, in the request's or the response's header fields.
    fn edit(
        &mut self,
        (request, response): (u32, bool),
        name: &str,
        value: Option<&str>,
        append: bool,
    ) -> wasmtime::Result<Result<(), HostError>> {
        let Ok(name) = HeaderName::try_from(name) else {
            return Ok(Err(HostError::Invalid(format!(
                "invalid header name `{name}`"
            ))));
        };
        if FORBIDDEN.contains(&name) {
            return Ok(Err(self.refusals.refuse_edit(&name)));
        }
        if let Some(value) = value {
            self.charge(request, name.as_str().len() + value.len())?;
        }
        let headers = self.fields_mut((request, response))?;
        let Some(value) = value else {
            headers.remove(&name);
            return Ok(Ok(()));
        };
        let Ok(value) = HeaderValue::try_from(value) else {
            return Ok(Err(HostError::Invalid(format!(
                "invalid value for header `{name}`"
            ))));
        };
        match append {
            true => headers.append(name, value),
            false => headers.insert(name, value).is_some(),
        };
        Ok(Ok(()))
    }

    /// Apply `edits` in order; those refused are skipped, and the first
    /// refusal is the answer.
    fn edit_all(
        &mut self,
        fields: (u32, bool),
        edits: Vec<v2::types::HeaderEdit>,
    ) -> wasmtime::Result<Result<(), HostError>> {
        use v2::types::HeaderEdit;
        let mut answer = Ok(());
        for edit in &edits {
            let done = match edit {
                HeaderEdit::Set((name, value)) => self.edit(fields, name, Some(value), false)?,
                HeaderEdit::Append((name, value)) => self.edit(fields, name, Some(value), true)?,
                HeaderEdit::Remove(name) => self.edit(fields, name, None, false)?,
            };
            answer = answer.and(done);
        }
        Ok(answer)
    }

    /// Count `bytes` of header fields against the call's limit; past it,
    /// the call fails.
    fn charge(&mut self, request: u32, bytes: usize) -> wasmtime::Result<()> {
        let entry = self.table.get_mut(&request_of(request))?;
        entry.added += bytes;
        Ok(self.output.check_headers(entry.added)?)
    }

    /// The body of the request or response, if this filter may see it.
    fn body(&self, request: u32, response: bool) -> wasmtime::Result<Result<Vec<u8>, HostError>> {
        let exchange = self.exchange(request)?;
        if !exchange.body_access {
            return Ok(Err(HostError::Invalid(
                "bodies are opt-in: set `body = true` on this filter".into(),
            )));
        }
        let body = match response {
            true => &exchange.response_body,
            false => &exchange.request_body,
        };
        Ok(body
            .as_ref()
            .map(|b| b.to_vec())
            .ok_or_else(|| HostError::Invalid("the body was not buffered".into())))
    }

    fn set_body(
        &mut self,
        request: u32,
        response: bool,
        body: Vec<u8>,
    ) -> wasmtime::Result<Result<(), HostError>> {
        if !self.exchange(request)?.body_access {
            return Ok(Err(HostError::Invalid(
                "bodies are opt-in: set `body = true` on this filter".into(),
            )));
        }
        self.output.check_body(body.len())?;
        let exchange = self.exchange_mut(request)?;
        let length = HeaderValue::from(body.len());
        let (slot, headers) = match response {
            true => {
                let Some(parts) = exchange.response.as_mut() else {
                    return Ok(Err(HostError::Invalid("no response yet".into())));
                };
                (&mut exchange.response_body, &mut parts.headers)
            }
            false => (&mut exchange.request_body, &mut exchange.request.headers),
        };
        *slot = Some(Bytes::from(body));
        headers.remove(header::TRANSFER_ENCODING);
        headers.insert(header::CONTENT_LENGTH, length);
        Ok(Ok(()))
    }

    fn set_status(
        &mut self,
        response: u32,
        status: u16,
    ) -> wasmtime::Result<Result<(), HostError>> {
        let Ok(status) = http::StatusCode::from_u16(status) else {
            return Ok(Err(HostError::Invalid(format!("invalid status {status}"))));
        };
        match self.exchange_mut(response)?.response.as_mut() {
            Some(head) => head.status = status,
            None => return Ok(Err(HostError::Invalid("no response yet".into()))),
        }
        Ok(Ok(()))
    }
}

/// Both versions' imports: the same functions, errors as the WIT `error`
/// or as its text.
macro_rules! types_host {
    ($v:ident, $error:ty, $convert:expr) => {
        impl $v::types::Host for TypesView<'_> {}

        impl $v::types::HostHeaders for TypesView<'_> {
            fn get(
                &mut self,
                h: Resource<HeadersEntry>,
                name: String,
            ) -> wasmtime::Result<Option<String>> {
                let fields = self.fields_of(&h)?;
                self.first(fields, &name)
            }

            fn get_all(
                &mut self,
                h: Resource<HeadersEntry>,
                name: String,
            ) -> wasmtime::Result<Vec<String>> {
                Ok(self
                    .headers(&h)?
                    .get_all(name.as_str())
                    .iter()
                    .filter_map(|v| v.to_str().ok().map(str::to_owned))
                    .collect())
            }

            fn has(&mut self, h: Resource<HeadersEntry>, name: String) -> wasmtime::Result<bool> {
                Ok(self.headers(&h)?.contains_key(name.as_str()))
            }

            fn set(
                &mut self,
                h: Resource<HeadersEntry>,
                name: String,
                value: String,
            ) -> wasmtime::Result<Result<(), $error>> {
                let fields = self.fields_of(&h)?;
                Ok(self.edit(fields, &name, Some(&value), false)?.map_err($convert))
            }

            fn append(
                &mut self,
                h: Resource<HeadersEntry>,
                name: String,
                value: String,
            ) -> wasmtime::Result<Result<(), $error>> {
                let fields = self.fields_of(&h)?;
                Ok(self.edit(fields, &name, Some(&value), true)?.map_err($convert))
            }

            fn remove(&mut self, h: Resource<HeadersEntry>, name: String) -> wasmtime::Result<()> {
                // Removing what a filter may not change is refused quietly, as
                // `remove` has no error to report.
                let fields = self.fields_of(&h)?;
                let _ = self.edit(fields, &name, None, false)?;
                Ok(())
            }

            fn entries(
                &mut self,
                h: Resource<HeadersEntry>,
            ) -> wasmtime::Result<Vec<(String, String)>> {
                Ok(self
                    .headers(&h)?
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                    .collect())
            }

            fn drop(&mut self, h: Resource<HeadersEntry>) -> wasmtime::Result<()> {
                self.table.delete(h)?;
                Ok(())
            }
        }

        impl $v::types::HostRequest for TypesView<'_> {
            fn method(&mut self, r: Resource<RequestEntry>) -> wasmtime::Result<String> {
                Ok(self.exchange(r.rep())?.request.method.as_str().to_owned())
            }

            fn path(&mut self, r: Resource<RequestEntry>) -> wasmtime::Result<String> {
                Ok(self.exchange(r.rep())?.request.uri.path().to_owned())
            }

            fn query(&mut self, r: Resource<RequestEntry>) -> wasmtime::Result<Option<String>> {
                Ok(self.exchange(r.rep())?.request.uri.query().map(str::to_owned))
            }

            fn authority(&mut self, r: Resource<RequestEntry>) -> wasmtime::Result<Option<String>> {
                Ok(self.exchange(r.rep())?.authority().map(str::to_owned))
            }

            fn client_ip(&mut self, r: Resource<RequestEntry>) -> wasmtime::Result<String> {
                Ok(crate::ip_text(self.exchange(r.rep())?.client_ip))
            }

            fn headers(
                &mut self,
                r: Resource<RequestEntry>,
            ) -> wasmtime::Result<Resource<HeadersEntry>> {
                self.headers_handle(r.rep(), false)
            }

            fn identity(
                &mut self,
                r: Resource<RequestEntry>,
            ) -> wasmtime::Result<Option<$v::types::Identity>> {
                Ok(self
                    .exchange(r.rep())?
                    .identity
                    .clone()
                    .map(|Identity { subject, claims }| $v::types::Identity { subject, claims }))
            }

            fn route(&mut self, r: Resource<RequestEntry>) -> wasmtime::Result<String> {
                Ok(self.exchange(r.rep())?.route.to_string())
            }

            fn body(
                &mut self,
                r: Resource<RequestEntry>,
            ) -> wasmtime::Result<Result<Vec<u8>, $error>> {
                Ok(TypesView::body(self, r.rep(), false)?.map_err($convert))
            }

            fn set_body(
                &mut self,
                r: Resource<RequestEntry>,
                body: Vec<u8>,
            ) -> wasmtime::Result<Result<(), $error>> {
                Ok(TypesView::set_body(self, r.rep(), false, body)?.map_err($convert))
            }

            // Requests are lent as borrows; there is no owned handle to drop.
            fn drop(&mut self, _: Resource<RequestEntry>) -> wasmtime::Result<()> {
                Ok(())
            }

            types_host!(@id $v);
        }

        impl $v::types::HostResponse for TypesView<'_> {
            fn status(&mut self, r: Resource<ResponseEntry>) -> wasmtime::Result<u16> {
                let request = self.response_of(&r)?;
                Ok(self
                    .exchange(request)?
                    .response
                    .as_ref()
                    .map_or(0, |head| head.status.as_u16()))
            }

            fn set_status(
                &mut self,
                r: Resource<ResponseEntry>,
                status: u16,
            ) -> wasmtime::Result<Result<(), $error>> {
                let request = self.response_of(&r)?;
                Ok(TypesView::set_status(self, request, status)?.map_err($convert))
            }

            fn headers(
                &mut self,
                r: Resource<ResponseEntry>,
            ) -> wasmtime::Result<Resource<HeadersEntry>> {
                let request = self.response_of(&r)?;
                self.headers_handle(request, true)
            }

            fn body(
                &mut self,
                r: Resource<ResponseEntry>,
            ) -> wasmtime::Result<Result<Vec<u8>, $error>> {
                let request = self.response_of(&r)?;
                Ok(TypesView::body(self, request, true)?.map_err($convert))
            }

            fn set_body(
                &mut self,
                r: Resource<ResponseEntry>,
                body: Vec<u8>,
            ) -> wasmtime::Result<Result<(), $error>> {
                let request = self.response_of(&r)?;
                Ok(TypesView::set_body(self, request, true, body)?.map_err($convert))
            }

            fn drop(&mut self, _: Resource<ResponseEntry>) -> wasmtime::Result<()> {
                Ok(())
            }

            types_host!(@response $v);
        }
    };
    // `request.id` is new in 0.2.0, `request.keep-instance` in 0.2.2.
    (@id v2) => {
        fn id(&mut self, r: Resource<RequestEntry>) -> wasmtime::Result<u64> {
            Ok(self.exchange(r.rep())?.id)
        }

        fn keep_instance(&mut self, r: Resource<RequestEntry>) -> wasmtime::Result<()> {
            self.table.get_mut(&r)?.keep = true;
            Ok(())
        }

        // New in 0.2.3: headers read and edited without a handle.
        fn header(&mut self, r: Resource<RequestEntry>, name: String) -> wasmtime::Result<Option<String>> {
            self.first((r.rep(), false), &name)
        }

        fn edit_headers(
            &mut self,
            r: Resource<RequestEntry>,
            edits: Vec<v2::types::HeaderEdit>,
        ) -> wasmtime::Result<Result<(), v2::types::Error>> {
            Ok(self.edit_all((r.rep(), false), edits)?.map_err(v2::types::Error::from))
        }

        // New in 0.2.5: the identity's subject without its claims.
        fn subject(&mut self, r: Resource<RequestEntry>) -> wasmtime::Result<Option<String>> {
            Ok(self.exchange(r.rep())?.identity.as_ref().map(|i| i.subject.clone()))
        }
    };
    (@id v1) => {};
    (@response v2) => {
        fn header(&mut self, r: Resource<ResponseEntry>, name: String) -> wasmtime::Result<Option<String>> {
            let request = self.response_of(&r)?;
            self.first((request, true), &name)
        }

        fn edit_headers(
            &mut self,
            r: Resource<ResponseEntry>,
            edits: Vec<v2::types::HeaderEdit>,
        ) -> wasmtime::Result<Result<(), v2::types::Error>> {
            let request = self.response_of(&r)?;
            Ok(self.edit_all((request, true), edits)?.map_err(v2::types::Error::from))
        }
    };
    (@response v1) => {};
}

types_host!(v2, v2::types::Error, v2::types::Error::from);
types_host!(v1, String, |e: HostError| e.to_string());

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handles::{Spare, fill, open, take_back};

    fn lent(
        table: &mut ResourceTable,
        spare: &mut Spare,
        response: bool,
    ) -> (Resource<RequestEntry>, Option<Resource<ResponseEntry>>) {
        let (request, response) = open(table, spare, response).unwrap();
        fill(table, &request, Exchange::placeholder());
        (request, response)
    }

    fn headers(
        table: &mut ResourceTable,
        request: &Resource<RequestEntry>,
    ) -> Resource<HeadersEntry> {
        let entry = HeadersEntry {
            request: request.rep(),
            response: false,
        };
        table.push_child(entry, request).unwrap()
    }

    #[test]
    fn a_call_whose_handles_are_dropped_leaves_its_entries_to_the_next() {
        let mut table = ResourceTable::new();
        let mut spare = Spare::default();
        let (request, response) = lent(&mut table, &mut spare, true);
        let reps = (request.rep(), response.as_ref().map(Resource::rep));
        let back = take_back(&mut table, &mut spare, request, response);
        assert!(back.lingering.is_none());
        // The next call, request or response, gets the same entries, empty.
        let (request, none) = lent(&mut table, &mut spare, false);
        assert_eq!((request.rep(), none.is_none()), (reps.0, true));
        take_back(&mut table, &mut spare, request, None);
        let (request, response) = lent(&mut table, &mut spare, true);
        assert_eq!((request.rep(), response.as_ref().map(Resource::rep)), reps);
        let entry = table.get(&request).unwrap();
        assert!(!entry.keep && entry.added == 0);
        take_back(&mut table, &mut spare, request, response);
    }

    #[test]
    fn a_handle_kept_past_its_call_lingers_until_dropped() {
        let mut table = ResourceTable::new();
        let mut spare = Spare::default();
        // A call on spare entries whose guest keeps a headers handle.
        let (request, response) = lent(&mut table, &mut spare, true);
        take_back(&mut table, &mut spare, request, response);
        let (request, _) = lent(&mut table, &mut spare, false);
        let kept = headers(&mut table, &request);
        let held = request.rep();
        let mut lingering = take_back(&mut table, &mut spare, request, None)
            .lingering
            .expect("the headers handle keeps its request entry");
        // The next request never reaches through it: it gets other entries,
        // and the held entry has no exchange.
        let (next, _) = lent(&mut table, &mut spare, false);
        assert_ne!(next.rep(), held);
        let entry = table
            .get(&Resource::<RequestEntry>::new_borrow(held))
            .unwrap();
        assert!(entry.exchange.is_none());
        assert!(!lingering.clear(&mut table), "still held");
        table.delete(kept).unwrap();
        assert!(lingering.clear(&mut table));
        // The next call's entries are given back as spares; the held one is gone.
        take_back(&mut table, &mut spare, next, None);
        assert!(
            table
                .get(&Resource::<RequestEntry>::new_borrow(held))
                .is_err()
        );
    }
}

//! The request, response and headers a filter sees, and the replies it can give.
//! All of it stays in the gateway: these are handles, and each call fetches
//! only what it asks for.

use std::any::Any;
use std::cell::{OnceCell, RefCell};

use crate::Error;
use crate::bindings::imports::sluice::filter::types as raw;

/// Header fields of a request or response. Names are case-insensitive.
///
/// Reading one field ([`Headers::get`]) and each edit, or batch of edits
/// ([`Headers::edit`]), is one call to the gateway; a handle on the whole
/// set is fetched only for [`Headers::get_all`], [`Headers::has`] and
/// [`Headers::entries`].
pub struct Headers<'a> {
    of: Of<'a>,
    handle: OnceCell<raw::Headers>,
}

/// Whose header fields.
#[derive(Clone, Copy)]
enum Of<'a> {
    Request(&'a raw::Request),
    Response(&'a raw::Response),
}

/// One edit of header fields, for [`Headers::edit`]; it borrows its name
/// and value, so a list of edits is sent without copying them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit<'e> {
    /// Replace the values of a name with a value.
    Set(&'e str, &'e str),
    /// Add a value to a name, keeping those already there.
    Append(&'e str, &'e str),
    /// Remove every value of a name.
    Remove(&'e str),
}

impl<'e> From<Edit<'e>> for raw::HeaderEdit<'e> {
    fn from(edit: Edit<'e>) -> raw::HeaderEdit<'e> {
        match edit {
            Edit::Set(name, value) => raw::HeaderEdit::Set((name, value)),
            Edit::Append(name, value) => raw::HeaderEdit::Append((name, value)),
            Edit::Remove(name) => raw::HeaderEdit::Remove(name),
        }
    }
}

impl<'a> Headers<'a> {
    fn of(of: Of<'a>) -> Headers<'a> {
        Headers {
            of,
            handle: OnceCell::new(),
        }
    }

    fn handle(&self) -> &raw::Headers {
        self.handle.get_or_init(|| match self.of {
            Of::Request(r) => r.headers(),
            Of::Response(r) => r.headers(),
        })
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<String> {
        match self.of {
            Of::Request(r) => r.header(name),
            Of::Response(r) => r.header(name),
        }
    }

    /// Every value of `name`, in order.
    pub fn get_all(&self, name: &str) -> Vec<String> {
        self.handle().get_all(name)
    }

    /// Whether `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.handle().has(name)
    }

    /// Apply `edits` in order, in one call to the gateway. An edit that is
    /// refused is skipped and the others are made; the first refusal is the
    /// error: an invalid name or value, or a header the gateway keeps right
    /// itself (`content-length`, `transfer-encoding`, `host`, `connection`, ...).
    pub fn edit(&self, edits: &[Edit<'_>]) -> Result<(), Error> {
        match edits {
            [] => Ok(()),
            [one] => self.send(&[(*one).into()]),
            many => self.send(&many.iter().map(|&e| e.into()).collect::<Vec<_>>()),
        }
    }

    fn send(&self, edits: &[raw::HeaderEdit<'_>]) -> Result<(), Error> {
        Ok(match self.of {
            Of::Request(r) => r.edit_headers(edits),
            Of::Response(r) => r.edit_headers(edits),
        }?)
    }

    /// Replace the values of `name`. Fails as [`Headers::edit`] does.
    pub fn set(&self, name: &str, value: &str) -> Result<(), Error> {
        self.edit(&[Edit::Set(name, value)])
    }

    /// Add a value to `name`. Fails as [`Headers::edit`] does.
    pub fn append(&self, name: &str, value: &str) -> Result<(), Error> {
        self.edit(&[Edit::Append(name, value)])
    }

    /// Remove every value of `name` (a header the gateway keeps stays).
    pub fn remove(&self, name: &str) {
        let _ = self.edit(&[Edit::Remove(name)]);
    }

    /// All fields as `(name, value)` pairs.
    pub fn entries(&self) -> Vec<(String, String)> {
        self.handle().entries()
    }
}

/// Who the request is from, as established by an auth filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The principal: a user, a service, a key's owner.
    pub subject: String,
    /// Further facts, such as a plan or a tenant.
    pub claims: Vec<(String, String)>,
}

impl Identity {
    /// An identity with no claims.
    pub fn new(subject: impl Into<String>) -> Identity {
        Identity {
            subject: subject.into(),
            claims: Vec::new(),
        }
    }

    /// Add a claim.
    pub fn claim(mut self, name: impl Into<String>, value: impl Into<String>) -> Identity {
        self.claims.push((name.into(), value.into()));
        self
    }

    /// The value of claim `name`, if any.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.claims
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The client's request, as it passes through the chain.
pub struct Request<'a> {
    raw: &'a raw::Request,
    headers: OnceCell<Headers<'a>>,
}

impl<'a> Request<'a> {
    #[doc(hidden)]
    pub fn from_raw(raw: &'a raw::Request) -> Request<'a> {
        Request {
            raw,
            headers: OnceCell::new(),
        }
    }

    /// This request's number: unique while it runs, the same in
    /// `on_request` and `on_response`.
    pub fn id(&self) -> u64 {
        self.raw.id()
    }

    /// Keep `value` for this request's `on_response` (see [`Request::kept`]).
    /// This asks the gateway to run both calls of one request in the same
    /// instance, with no other request in between, so a filter can time or
    /// correlate; a filter that never keeps anything leaves its instance free
    /// for other requests while the upstream answers.
    pub fn keep<T: 'static>(&self, value: T) {
        self.raw.keep_instance();
        KEPT.with(|kept| *kept.borrow_mut() = Some((self.id(), Box::new(value))));
    }

    /// What `on_request` kept for this request, if it kept a `T`.
    pub fn kept<T: 'static>(&self) -> Option<T> {
        let id = self.id();
        let (kept_for, value) = KEPT.with(|kept| kept.borrow_mut().take())?;
        match kept_for == id {
            true => value.downcast().ok().map(|v| *v),
            false => None,
        }
    }

    /// The method, such as `GET`.
    pub fn method(&self) -> String {
        self.raw.method()
    }

    /// The path, without the query string.
    pub fn path(&self) -> String {
        self.raw.path()
    }

    /// The query string, without `?`.
    pub fn query(&self) -> Option<String> {
        self.raw.query()
    }

    /// The value of query parameter `name` (not percent-decoded beyond `+`).
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query()?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| v.replace('+', " "))
        })
    }

    /// The host the client asked for.
    pub fn authority(&self) -> Option<String> {
        self.raw.authority()
    }

    /// The client's IP address.
    pub fn client_ip(&self) -> String {
        self.raw.client_ip()
    }

    /// The name of the route that matched.
    pub fn route(&self) -> String {
        self.raw.route()
    }

    /// The request's headers.
    pub fn headers(&self) -> &Headers<'a> {
        self.headers
            .get_or_init(|| Headers::of(Of::Request(self.raw)))
    }

    /// Shorthand for `headers().get(name)`.
    pub fn header(&self, name: &str) -> Option<String> {
        self.raw.header(name)
    }

    /// The identity an auth filter established, if any.
    pub fn identity(&self) -> Option<Identity> {
        self.raw.identity().map(|i| Identity {
            subject: i.subject,
            claims: i.claims,
        })
    }

    /// The subject of that identity alone: cheaper than
    /// [`Request::identity`] when the claims are not needed (one string
    /// crosses from the gateway instead of the whole identity).
    pub fn subject(&self) -> Option<String> {
        self.raw.subject()
    }

    /// The whole body; only for filters configured with `body = true`.
    pub fn body(&self) -> Result<Vec<u8>, Error> {
        Ok(self.raw.body()?)
    }

    /// Replace the body; the gateway keeps `Content-Length` right.
    pub fn set_body(&self, body: impl Into<Vec<u8>>) -> Result<(), Error> {
        Ok(self.raw.set_body(&body.into())?)
    }
}

thread_local! {
    /// What `Request::keep` kept, and for which request.
    static KEPT: RefCell<Option<(u64, Box<dyn Any>)>> = const { RefCell::new(None) };
}

/// The response on its way back to the client.
pub struct Response<'a> {
    raw: &'a raw::Response,
    headers: OnceCell<Headers<'a>>,
}

impl<'a> Response<'a> {
    #[doc(hidden)]
    pub fn from_raw(raw: &'a raw::Response) -> Response<'a> {
        Response {
            raw,
            headers: OnceCell::new(),
        }
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.raw.status()
    }

    /// Change the status code.
    pub fn set_status(&self, status: u16) -> Result<(), Error> {
        Ok(self.raw.set_status(status)?)
    }

    /// The response's headers.
    pub fn headers(&self) -> &Headers<'a> {
        self.headers
            .get_or_init(|| Headers::of(Of::Response(self.raw)))
    }

    /// Shorthand for `headers().get(name)`.
    pub fn header(&self, name: &str) -> Option<String> {
        self.raw.header(name)
    }

    /// The whole body; only for filters configured with `body = true`.
    pub fn body(&self) -> Result<Vec<u8>, Error> {
        Ok(self.raw.body()?)
    }

    /// Replace the body; the gateway keeps `Content-Length` right.
    pub fn set_body(&self, body: impl Into<Vec<u8>>) -> Result<(), Error> {
        Ok(self.raw.set_body(&body.into())?)
    }
}

/// A response a filter answers with instead of the upstream's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// Header fields, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// An empty reply with `status`.
    pub fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A plain-text reply.
    pub fn text(status: u16, text: impl Into<String>) -> Reply {
        Reply::new(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(text.into())
    }

    /// A JSON reply.
    pub fn json(status: u16, value: &impl serde::Serialize) -> Reply {
        let body = serde_json::to_vec(value).unwrap_or_default();
        Reply::new(status)
            .header("content-type", "application/json")
            .body(body)
    }

    /// Add a header field.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Set the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Reply {
        self.body = body.into();
        self
    }

    #[doc(hidden)]
    pub fn into_raw(self) -> raw::Reply {
        raw::Reply {
            status: self.status,
            headers: self.headers,
            body: self.body,
        }
    }
}

//! The host's side of the contract's handles: what a `request`, `response`
//! or `headers` handle is an entry for in the instance's resource table.
//! The exchange is lent to a call as a request entry, the response and any
//! headers handles are its children, and the exchange is taken back when
//! the call returns.

use wasmtime::component::{Resource, ResourceTable};

use crate::exchange::Exchange;

/// A `request` handle: the exchange, lent for one call.
pub struct RequestEntry {
    pub(crate) exchange: Option<Box<Exchange>>,
    /// The guest asked for its response call in this same instance.
    pub(crate) keep: bool,
    /// Header bytes this call has set or appended, against its limit.
    pub(crate) added: usize,
}

/// A `response` handle: names the request entry it belongs to.
pub struct ResponseEntry {
    pub(crate) request: u32,
}

/// A `headers` handle: the request's or the response's.
pub struct HeadersEntry {
    pub(crate) request: u32,
    pub(crate) response: bool,
}

/// Open the entries a call gets: the request handle and, with
/// `response`, the response handle. The exchange goes in with [`fill`]
/// once they exist, so nothing is moved if the table refuses them.
pub(crate) fn open(
    table: &mut ResourceTable,
    response: bool,
) -> wasmtime::Result<(Resource<RequestEntry>, Option<Resource<ResponseEntry>>)> {
    let request = table.push(RequestEntry {
        exchange: None,
        keep: false,
        added: 0,
    })?;
    if !response {
        return Ok((request, None));
    }
    match table.push_child(
        ResponseEntry {
            request: request.rep(),
        },
        &request,
    ) {
        Ok(response) => Ok((request, Some(response))),
        Err(error) => {
            let _ = table.delete(request);
            Err(error.into())
        }
    }
}

/// Lend `exchange` to the call whose request entry is `request`.
pub(crate) fn fill(
    table: &mut ResourceTable,
    request: &Resource<RequestEntry>,
    exchange: Box<Exchange>,
) {
    table
        .get_mut(request)
        .expect("the entry was just opened")
        .exchange = Some(exchange);
}

/// What a call hands back.
pub(crate) struct Returned {
    pub exchange: Box<Exchange>,
    /// The call's entries, if the guest still holds handles under them.
    pub lingering: Option<Lingering>,
    /// The guest asked to keep its instance for the response call.
    pub keep: bool,
}

/// A call's entries that outlived it because the guest still holds a
/// `headers` handle under them: a garbage-collected guest (JavaScript)
/// drops its handles when it next collects, not when the call returns.
/// Each is deleted once its handles are gone; until then they hold no
/// exchange, so a late use of such a handle fails.
pub(crate) struct Lingering {
    request: u32,
    response: Option<u32>,
}

impl Lingering {
    /// Delete what can be deleted now; whether all of it is gone.
    pub(crate) fn clear(&mut self, table: &mut ResourceTable) -> bool {
        if let Some(rep) = self.response
            && table
                .delete(Resource::<ResponseEntry>::new_own(rep))
                .is_ok()
        {
            self.response = None;
        }
        self.response.is_none()
            && table
                .delete(Resource::<RequestEntry>::new_own(self.request))
                .is_ok()
    }
}

/// Take the exchange back after a call.
pub(crate) fn take_back(
    table: &mut ResourceTable,
    request: Resource<RequestEntry>,
    response: Option<Resource<ResponseEntry>>,
) -> Returned {
    // A response entry the guest still holds handles under stays (its rep kept).
    let response = response.and_then(|r| {
        let rep = r.rep();
        table.delete(r).is_err().then_some(rep)
    });
    let entry = table
        .get_mut(&request)
        .expect("the request entry lives until it is taken back");
    let keep = entry.keep;
    let exchange = entry
        .exchange
        .take()
        .expect("the request entry holds the exchange until it is taken back");
    let rep = request.rep();
    let lingering = (response.is_some() || table.delete(request).is_err()).then_some(Lingering {
        request: rep,
        response,
    });
    Returned {
        exchange,
        lingering,
        keep,
    }
}

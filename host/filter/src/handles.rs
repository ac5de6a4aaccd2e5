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

/// A call's entries kept for the next call on the same instance, when the
/// guest kept no handle under them: making and deleting them cost a table
/// insert and removal (and a set of children) per call. A handle kept past
/// its call keeps its entries out of this, so it never reaches the next
/// request.
#[derive(Default)]
pub(crate) struct Spare {
    request: Option<u32>,
    /// A child of the spare request entry.
    response: Option<u32>,
}

/// Open the entries a call gets: the request handle and, with
/// `response`, the response handle (spare ones first). The exchange goes
/// in with [`fill`] once they exist, so nothing is moved if the table
/// refuses them.
pub(crate) fn open(
    table: &mut ResourceTable,
    spare: &mut Spare,
    response: bool,
) -> wasmtime::Result<(Resource<RequestEntry>, Option<Resource<ResponseEntry>>)> {
    let request = match spare.request.take() {
        Some(rep) => Resource::new_own(rep),
        None => table.push(RequestEntry {
            exchange: None,
            keep: false,
            added: 0,
        })?,
    };
    if !response {
        // A spare response entry stays a child of the request entry, unseen.
        return Ok((request, None));
    }
    if let Some(rep) = spare.response.take() {
        return Ok((request, Some(Resource::new_own(rep))));
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

/// Take the exchange back after a call; its entries become `spare` when
/// the guest kept no handle under them.
pub(crate) fn take_back(
    table: &mut ResourceTable,
    spare: &mut Spare,
    request: Resource<RequestEntry>,
    response: Option<Resource<ResponseEntry>>,
) -> Returned {
    let entry = table
        .get_mut(&request)
        .expect("the request entry lives until it is taken back");
    let keep = std::mem::take(&mut entry.keep);
    entry.added = 0;
    let exchange = entry
        .exchange
        .take()
        .expect("the request entry holds the exchange until it is taken back");
    // The response entry is spare if no handle hangs under it, and the
    // request entry if nothing but the response entry does.
    let response_spare = response.as_ref().is_some_and(|r| children(table, r) == 0);
    let response = response.map(|r| r.rep());
    let allowed = usize::from(response.is_some() || spare.response.is_some());
    let request_spare =
        (response.is_none() || response_spare) && children(table, &request) == allowed;
    let rep = request.rep();
    if request_spare {
        spare.request = Some(rep);
        spare.response = response.or(spare.response);
        return Returned {
            exchange,
            lingering: None,
            keep,
        };
    }
    // Held: the entries linger (a response entry under them that nothing
    // holds goes now).
    let unused = spare
        .response
        .take()
        .or(response.filter(|_| response_spare));
    if let Some(rep) = unused {
        let _ = table.delete(Resource::<ResponseEntry>::new_own(rep));
    }
    let response = response.filter(|_| !response_spare);
    let mut lingering = Lingering {
        request: rep,
        response,
    };
    let gone = lingering.clear(table);
    Returned {
        exchange,
        lingering: (!gone).then_some(lingering),
        keep,
    }
}

/// How many entries hang under `entry` (the handles the guest holds under it).
fn children<T: 'static>(table: &ResourceTable, entry: &Resource<T>) -> usize {
    table
        .iter_children(entry)
        .map_or(usize::MAX, Iterator::count)
}

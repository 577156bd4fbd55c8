//! What the app registers for a socket's events: procedures (invokes), receivers (transmits)
//! and hooks, with the requests they are handed.

use std::sync::Arc;

use sc_protocol::ScError;

use crate::data::Data;
use crate::middleware::BoxFut;
use crate::socket::{ScEvent, ScSocket};

/// An invoke from a client, handed to the procedure registered for its event.
#[derive(Debug, Clone)]
pub struct Request {
    /// The socket that invoked.
    pub socket: ScSocket,
    /// The procedure (event) name.
    pub procedure: Arc<str>,
    /// The invoke's data, `None` when the packet had no `data`.
    pub data: Option<Data>,
}

pub(crate) type ProcedureFn =
    dyn Fn(Request) -> BoxFut<Result<Option<Data>, ScError>> + Send + Sync;
pub(crate) type SyncProcedureFn =
    dyn for<'a> Fn(SyncRequest<'a>) -> Result<Option<Data>, ScError> + Send + Sync;

/// An invoke handed to a [`procedure_sync`](crate::ScServerBuilder::procedure_sync) handler: like
/// [`Request`], with the socket and the procedure name borrowed from the socket's task for the
/// call (no reference counts touched); clone the socket to keep it.
#[derive(Debug)]
pub struct SyncRequest<'a> {
    /// The socket that invoked.
    pub socket: &'a ScSocket,
    /// The procedure (event) name.
    pub procedure: &'a str,
    /// The invoke's data, `None` when the packet had no `data`.
    pub data: Option<Data>,
}

/// A registered procedure: one that answers at once, or one that returns a future.
#[derive(Clone)]
pub(crate) enum Procedure {
    Sync(Arc<SyncProcedureFn>),
    Async(Arc<ProcedureFn>),
}
pub(crate) type ReceiverFn = dyn Fn(ScSocket, Option<Data>) -> BoxFut<()> + Send + Sync;
pub(crate) type ConnectFn = dyn Fn(&ScSocket) + Send + Sync;
pub(crate) type DisconnectFn = dyn Fn(&ScSocket, u16, &str) + Send + Sync;
pub(crate) type EventFn = dyn Fn(&ScSocket, &ScEvent) + Send + Sync;

//! The connection task: connect, handshake, read and write frames, keep the heartbeat, and
//! reconnect with backoff.

use std::sync::Arc;
use std::time::Duration;

use sc_protocol::{Cid, CloseCode, Frame, Packet, RawValue, Reserved, ScError, decode, encode};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::channel::{ChannelEvent, ChannelState};
use crate::client::{ConnectionState, Inner, Pending, Run, State, Waiter};
use crate::error::Error;
use crate::message::{ConnectionEvent, Message, Request, frame};
use crate::transport::{Connection, Incoming};

fn is_current(st: &State, run: &Run) -> bool {
    st.run.as_ref().is_some_and(|r| r.id == run.id)
}

/// Drives one `connect()` until it is stopped or a close code ends it.
pub(crate) async fn run(inner: Arc<Inner>, run: Arc<Run>) {
    let mut attempt: u32 = 0;
    loop {
        let conn = inner.next_conn();
        {
            let mut st = inner.state.lock();
            if !is_current(&st, &run) {
                return;
            }
            st.conn = Some(conn);
            st.set_status(ConnectionState::Connecting);
            st.emit(ConnectionEvent::Connecting { attempt });
        }
        let (code, reason, opened) = connection(&inner, &run, conn).await;
        tracing::debug!(%code, reason, opened, "connection ended");
        let reconnect = {
            let mut st = inner.state.lock();
            st.connection_lost(conn, code, &reason);
            let current = is_current(&st, &run);
            let reconnect = current && inner.config.auto_reconnect && code.reconnects();
            if current && !reconnect {
                st.run = None;
                st.set_status(ConnectionState::Closed);
                st.fail_buffered(code, &reason);
            }
            reconnect
        };
        if !reconnect {
            return;
        }
        if opened {
            attempt = 0;
        }
        let delay = if attempt == 0 && code.reconnects_immediately() {
            Duration::ZERO
        } else {
            inner.config.reconnect.delay(attempt, rand::random::<f64>())
        };
        attempt = attempt.saturating_add(1);
        {
            let mut st = inner.state.lock();
            if !is_current(&st, &run) {
                return;
            }
            st.emit(ConnectionEvent::Reconnecting { attempt, delay });
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = run.cancel.cancelled() => return,
        }
    }
}

/// What a frame means to the connection loop.
enum Control {
    None,
    Ping,
    Handshake(Result<Box<RawValue>, ScError>),
}

/// One connection: returns its close code and reason, and whether the handshake completed.
async fn connection(inner: &Arc<Inner>, run: &Run, conn: u64) -> (CloseCode, String, bool) {
    let cfg = &inner.config;
    let closing = || {
        let (code, reason) = run.close.lock().clone();
        (CloseCode(code), reason)
    };
    let mut transport = tokio::select! {
        r = tokio::time::timeout(cfg.connect_timeout, Connection::open(cfg)) => match r {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "connect failed");
                return (CloseCode::ABNORMAL, e, false);
            }
            Err(_) => {
                return (
                    CloseCode::CONNECT_TIMEOUT,
                    "Client connection establishment timed out".to_owned(),
                    false,
                );
            }
        },
        () = run.cancel.cancelled() => {
            let (code, reason) = closing();
            return (code, reason, false);
        }
    };

    let token = match cfg.token_store.load() {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "cannot load the auth token");
            None
        }
    };
    let hs_cid = inner.next_cid();
    let hs_data = match serde_json::value::to_raw_value(&serde_json::json!({ "authToken": token }))
    {
        Ok(d) => d,
        Err(e) => return (CloseCode::HANDSHAKE_FAILED, e.to_string(), false),
    };
    let mut buf = Vec::new();
    encode::write_invoke(
        &mut buf,
        sc_protocol::events::HANDSHAKE,
        Some(&hs_data),
        hs_cid,
    );
    if let Err(e) = async {
        transport.feed(frame(buf)).await?;
        transport.flush().await
    }
    .await
    {
        return (CloseCode::ABNORMAL, e, false);
    }

    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let mut handshake = Some(token);
    let mut opened = false;
    let mut ping_timeout = cfg.connect_timeout;
    let mut ping_deadline = Instant::now() + ping_timeout;
    let hs_deadline = Instant::now() + cfg.ack_timeout;
    loop {
        let deadline = if handshake.is_some() {
            ping_deadline.min(hs_deadline)
        } else {
            ping_deadline
        };
        // Unbiased: a flood of incoming frames must not starve the writes (pongs included).
        tokio::select! {
            () = run.cancel.cancelled() => {
                let (code, reason) = closing();
                let _ = flush_queue(&mut transport, &mut rx).await;
                transport.close(code.0, &reason).await;
                return (code, reason, opened);
            }
            msg = transport.recv() => {
                let text = match msg {
                    None => return (CloseCode::ABNORMAL, "Socket hung up".to_owned(), opened),
                    Some(Err(e)) => return (CloseCode::ABNORMAL, e, opened),
                    Some(Ok(Incoming::Close { code, reason })) => {
                        return (CloseCode(code), reason, opened);
                    }
                    Some(Ok(Incoming::Violation { code, reason })) => {
                        transport.close(code, &reason).await;
                        return (CloseCode(code), reason, opened);
                    }
                    Some(Ok(Incoming::Text(text))) => text,
                };
                let hs_cid = handshake.is_some().then_some(hs_cid);
                match handle_frame(inner, &text, &tx, hs_cid) {
                    Control::None => {}
                    Control::Ping => ping_deadline = Instant::now() + ping_timeout,
                    Control::Handshake(Ok(status)) => {
                        let token = handshake.take().flatten();
                        match open(inner, run, conn, &status, token, &tx) {
                            Some(pt) => {
                                opened = true;
                                ping_timeout = pt;
                                ping_deadline = Instant::now() + pt;
                            }
                            None => {
                                let (code, reason) = closing();
                                transport.close(code.0, &reason).await;
                                return (code, reason, opened);
                            }
                        }
                    }
                    Control::Handshake(Err(e)) => {
                        let code = e
                            .extra
                            .get("statusCode")
                            .and_then(serde_json::Value::as_u64)
                            .and_then(|c| u16::try_from(c).ok())
                            .unwrap_or(CloseCode::HANDSHAKE_FAILED.0);
                        let reason = e.to_string();
                        transport.close(code, &reason).await;
                        return (CloseCode(code), reason, opened);
                    }
                }
            }
            out = rx.recv() => {
                let Some(out) = out else { continue };
                let result = async {
                    transport.feed(out).await?;
                    flush_queue(&mut transport, &mut rx).await
                }
                .await;
                if let Err(e) = result {
                    return (CloseCode::ABNORMAL, e, opened);
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                let (code, reason) = if handshake.is_some() && Instant::now() >= hs_deadline {
                    (CloseCode::HANDSHAKE_FAILED, "Handshake timed out".to_owned())
                } else {
                    (CloseCode::PING_TIMEOUT, "Server ping timed out".to_owned())
                };
                tracing::debug!(%code, "closing a stale connection");
                transport.close(code.0, &reason).await;
                return (code, reason, opened);
            }
        }
    }
}

/// Writes whatever else is queued, then flushes.
async fn flush_queue(
    transport: &mut Connection,
    rx: &mut mpsc::UnboundedReceiver<String>,
) -> Result<(), String> {
    while let Ok(more) = rx.try_recv() {
        transport.feed(more).await?;
    }
    transport.flush().await
}

/// The handshake succeeded: adopt the status, resubscribe, flush the buffer. Returns the ping
/// timeout, or `None` when this run was stopped meanwhile.
fn open(
    inner: &Inner,
    run: &Run,
    conn: u64,
    status: &RawValue,
    token: Option<String>,
    tx: &mpsc::UnboundedSender<String>,
) -> Option<Duration> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Status {
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        ping_timeout: Option<f64>,
        #[serde(default)]
        is_authenticated: bool,
        #[serde(default)]
        auth_error: Option<serde_json::Value>,
    }
    let status: Status = serde_json::from_str(status.get()).unwrap_or(Status {
        id: None,
        ping_timeout: None,
        is_authenticated: false,
        auth_error: None,
    });
    let ping_timeout = status
        .ping_timeout
        .filter(|ms| ms.is_finite() && *ms > 0.0)
        .map_or(Duration::from_secs(30), |ms| {
            Duration::from_secs_f64(ms.min(1e12) / 1000.0)
        });
    let auth_error = status
        .auth_error
        .filter(|e| !e.is_null())
        .map(|e| ScError::from_json(&e.to_string()));
    let mut st = inner.state.lock();
    if !is_current(&st, run) || st.conn != Some(conn) {
        return None;
    }
    let id = status.id.unwrap_or_default();
    tracing::debug!(id, ?ping_timeout, status.is_authenticated, "handshake done");
    st.socket_id = Some(id.clone());
    st.ping_timeout = Some(ping_timeout);
    st.set_auth(if status.is_authenticated { token } else { None });
    st.writer = Some(tx.clone());
    st.set_status(ConnectionState::Open);
    st.emit(ConnectionEvent::Open {
        id,
        is_authenticated: status.is_authenticated,
        ping_timeout,
        auth_error,
    });
    st.subscribe_all(inner.cids(), false);
    for b in std::mem::take(&mut st.buffer) {
        if tx.send(b.frame).is_err() {
            break;
        }
        if let Some(p) = b.cid.and_then(|cid| st.pending.get_mut(&cid)) {
            p.conn = Some(conn);
        }
    }
    Some(ping_timeout)
}

fn handle_frame(
    inner: &Inner,
    text: &str,
    tx: &mpsc::UnboundedSender<String>,
    hs_cid: Option<Cid>,
) -> Control {
    let packets = match decode(text) {
        Frame::Heartbeat => {
            let _ = tx.send(String::new());
            return Control::Ping;
        }
        Frame::PingV1 => {
            let _ = tx.send("#2".to_owned());
            return Control::Ping;
        }
        Frame::PongV1 => return Control::None,
        Frame::Packet(p) => vec![p],
        Frame::Batch(ps) => ps,
    };
    let mut control = Control::None;
    for packet in packets {
        match packet {
            Packet::Response { rid, data, error } if Some(rid) == hs_cid => {
                control = Control::Handshake(match error {
                    Some(e) => Err(ScError::from_json(e.get())),
                    None => Ok(data.map_or_else(crate::message::null, ToOwned::to_owned)),
                });
            }
            Packet::Response { rid, data, error } => on_response(inner, rid, data, error),
            Packet::Transmit { event, data } => on_event(inner, &event, data, None, tx),
            Packet::Invoke { event, data, cid } => on_event(inner, &event, data, Some(cid), tx),
            Packet::Raw(raw) => {
                tracing::trace!(len = raw.len(), "ignoring a frame that is no packet");
            }
        }
    }
    control
}

fn on_response(inner: &Inner, rid: Cid, data: Option<&RawValue>, error: Option<&RawValue>) {
    let mut st = inner.state.lock();
    let Some(Pending { waiter, .. }) = st.pending.remove(&rid) else {
        tracing::trace!(rid, "response to no pending request");
        return;
    };
    match waiter {
        Waiter::Call(reply) => {
            let _ = reply.send(match error {
                Some(e) => Err(Error::Remote(ScError::from_json(e.get()))),
                None => Ok(data.map(ToOwned::to_owned)),
            });
        }
        Waiter::Subscribe { channel, seq } => {
            let Some(entry) = st.channels.get_mut(&channel).filter(|e| e.seq == seq) else {
                return;
            };
            entry.subscribing = false;
            match error {
                None => {
                    tracing::debug!(channel, "subscribed");
                    entry.set_state(ChannelState::Subscribed);
                }
                Some(e) => {
                    let e = ScError::from_json(e.get());
                    tracing::debug!(channel, error = %e, "subscribe failed");
                    if e.name == "BadConnectionError" {
                        return;
                    }
                    entry.deliver(&ChannelEvent::SubscribeFailed(e.clone()));
                    entry.set_state(ChannelState::Failed(e));
                    st.channels.remove(&channel);
                }
            }
        }
    }
}

fn on_event(
    inner: &Inner,
    event: &str,
    data: Option<&RawValue>,
    cid: Option<Cid>,
    tx: &mpsc::UnboundedSender<String>,
) {
    let ack = |tx: &mpsc::UnboundedSender<String>| {
        if let Some(cid) = cid {
            let mut buf = Vec::new();
            encode::write_response(&mut buf, cid, None);
            let _ = tx.send(frame(buf));
        }
    };
    match Reserved::parse(event, data) {
        Some(Ok(Reserved::Publish { channel, data })) => {
            let mut st = inner.state.lock();
            if let Some(entry) = st.channels.get_mut(&*channel) {
                entry.deliver(&ChannelEvent::Message(Message::from_raw(data)));
            }
        }
        Some(Ok(Reserved::SetAuthToken { token })) => {
            inner.store_token(Some(&token));
            let mut st = inner.state.lock();
            st.set_auth(Some(token.into_owned()));
            st.subscribe_all(inner.cids(), true);
            drop(st);
            ack(tx);
        }
        Some(Ok(Reserved::RemoveAuthToken)) => {
            inner.store_token(None);
            inner.state.lock().set_auth(None);
            ack(tx);
        }
        Some(Ok(Reserved::KickOut { channel, message })) => {
            let mut st = inner.state.lock();
            if let Some(mut entry) = st.channels.remove(&*channel) {
                entry.deliver(&ChannelEvent::KickedOut(Message::from_raw(message)));
                entry.set_state(ChannelState::Unsubscribed);
            }
        }
        Some(Ok(_)) => tracing::trace!(event, "ignoring a client-side reserved event"),
        Some(Err(e)) => tracing::debug!(error = %e, "ignoring a malformed reserved event"),
        None => {
            let message = Message::from_raw(data);
            let mut st = inner.state.lock();
            match cid {
                None => {
                    if let Some(receivers) = st.receivers.get_mut(event) {
                        receivers.retain(|r| r.send(message.clone()).is_ok());
                    } else {
                        tracing::trace!(event, "transmit with no receiver");
                    }
                }
                Some(cid) => {
                    let request = Request {
                        event: event.to_owned(),
                        data: message,
                        cid,
                        writer: tx.clone(),
                    };
                    let delivered = st
                        .procedures
                        .get(event)
                        .is_some_and(|p| p.send(request).is_ok());
                    if !delivered {
                        tracing::debug!(event, cid, "invoke with no procedure: no answer");
                    }
                }
            }
        }
    }
}

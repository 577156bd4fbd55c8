//! The connection task: connect, handshake, read and write frames, keep the heartbeat, and
//! reconnect with backoff.

use std::sync::Arc;
use std::time::Duration;

use sc_protocol::{
    Cid, CloseCode, Frame, Packet, RawValue, Reserved, ScError, decode, encode, events,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::channel::{ChannelEvent, ChannelState, Positioned};
use crate::client::{ConnectionState, Inner, Pending, Run, State, Waiter};
use crate::error::Error;
use crate::message::{ConnectionEvent, Message, Request, frame};
use crate::transport::{Connection, Incoming};

/// The server's notice that messages of a channel may have been lost (not a reserved event of
/// socketcluster v20, so a `#gap` receiver gets it too).
const GAP: &str = "#gap";

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
                    let position = Positioned::parse(data).and_then(|d| d.position());
                    tracing::debug!(channel, ?position, "subscribed");
                    entry.subscribed(position);
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
    if event == events::PUBLISH {
        // Read here rather than by `Reserved::parse`: one pass gives the position too.
        let Some(publish) = Positioned::parse(data) else {
            tracing::debug!("ignoring a malformed #publish");
            return;
        };
        let Some(channel) = &publish.channel else {
            tracing::debug!("ignoring a #publish without a channel name");
            return;
        };
        let position = publish.position();
        let mut st = inner.state.lock();
        if let Some(entry) = st.channels.get_mut(&**channel) {
            if let Some(p) = &position {
                entry.seen(p);
            }
            let message = Message::from_raw(publish.data).with_position(position);
            entry.deliver(&ChannelEvent::Message(message));
        }
        return;
    }
    if event == GAP && cid.is_none() {
        // A gap notice: `{"channel":C}`, or `{"channel":C,"offset":F,"epoch":"E"}` for a channel
        // with a history (what follows continues at offset F+1 in epoch E).
        if let Some(gap) = Positioned::parse(data)
            && let Some(channel) = &gap.channel
        {
            let position = gap.position();
            let mut st = inner.state.lock();
            if let Some(entry) = st.channels.get_mut(&**channel) {
                tracing::debug!(channel = &**channel, ?position, "gap notice");
                entry.gap(position);
            }
        }
        // It stays an event too, for a receiver of `#gap`.
    }
    match Reserved::parse(event, data) {
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

#[cfg(test)]
mod tests {
    //! Position tracking and the resubscribe's `recover`, through the frame handler with a
    //! connection faked in the client's state (the scripted peer of `tests/protocol_peer.rs`
    //! covers the real connection task).

    use futures_util::FutureExt as _;
    use serde_json::{Value, json};

    use super::*;
    use crate::channel::{Channel, Position, SubscribeOptions};
    use crate::client::Client;

    struct Fake {
        client: Client,
        /// What the client wrote on the current connection.
        out: mpsc::UnboundedReceiver<String>,
        tx: mpsc::UnboundedSender<String>,
    }

    impl Fake {
        fn new() -> Fake {
            let client = Client::builder("ws://127.0.0.1:1").build().unwrap();
            let (tx, out) = mpsc::unbounded_channel();
            let mut fake = Fake { client, out, tx };
            fake.open();
            fake
        }

        /// A new connection opens: every channel is subscribed again.
        fn open(&mut self) {
            let (tx, out) = mpsc::unbounded_channel();
            (self.tx, self.out) = (tx, out);
            let inner = &self.client.inner;
            let mut st = inner.state.lock();
            st.conn = Some(inner.next_conn());
            st.writer = Some(self.tx.clone());
            st.set_status(ConnectionState::Open);
            st.subscribe_all(inner.cids(), false);
        }

        fn lose(&self) {
            let mut st = self.client.inner.state.lock();
            let conn = st.conn.unwrap();
            st.connection_lost(conn, CloseCode::ABNORMAL, "cut");
        }

        fn server(&self, frame: &Value) {
            handle_frame(&self.client.inner, &frame.to_string(), &self.tx, None);
        }

        /// The next `#subscribe` written: its cid and data.
        fn subscribe_frame(&mut self) -> (u64, Value) {
            let frame: Value = serde_json::from_str(&self.out.try_recv().unwrap()).unwrap();
            assert_eq!(frame["event"], "#subscribe");
            (frame["cid"].as_u64().unwrap(), frame["data"].clone())
        }

        fn reply(&self, cid: u64, data: Option<Value>) {
            match data {
                Some(data) => self.server(&json!({"rid": cid, "data": data})),
                None => self.server(&json!({"rid": cid})),
            }
        }

        fn publish(&self, channel: &str, n: u64, epoch: &str) {
            self.server(&json!({"event": "#publish", "data":
                {"channel": channel, "data": n, "offset": n, "epoch": epoch}}));
        }
    }

    /// What the stream holds now.
    fn drain(ch: &mut Channel) -> Vec<ChannelEvent> {
        std::iter::from_fn(|| ch.recv().now_or_never().flatten()).collect()
    }

    fn message(n: u64, epoch: &str) -> (String, Option<Position>) {
        (n.to_string(), Some(Position::new(n, epoch)))
    }

    fn messages(events: &[ChannelEvent]) -> Vec<(String, Option<Position>)> {
        events
            .iter()
            .map(|e| match e {
                ChannelEvent::Message(m) => (m.as_str().to_owned(), m.position().cloned()),
                other => panic!("expected a message, got {other:?}"),
            })
            .collect()
    }

    #[test]
    fn positions_are_tracked_and_sent_on_the_resubscribe() {
        let mut fake = Fake::new();
        let mut ch = fake.client.subscribe("c");
        // The first subscribe asks for no recovery.
        let (cid, data) = fake.subscribe_frame();
        assert_eq!(data, json!({"channel": "c"}));
        fake.reply(
            cid,
            Some(json!({"channel": "c", "offset": 4, "epoch": "e"})),
        );
        assert_eq!(ch.state(), ChannelState::Subscribed);
        assert_eq!(ch.position(), Some(Position::new(4, "e")));

        fake.publish("c", 5, "e");
        fake.publish("c", 6, "e");
        // A position behind the current one does not move it back (the message is delivered).
        fake.publish("c", 2, "e");
        assert_eq!(
            messages(&drain(&mut ch)),
            [message(5, "e"), message(6, "e"), message(2, "e")]
        );
        assert_eq!(ch.position(), Some(Position::new(6, "e")));

        // A lost connection is no gap yet: the resubscribe asks for what follows offset 6.
        fake.lose();
        assert_eq!(ch.state(), ChannelState::Pending);
        assert_eq!(drain(&mut ch), []);
        fake.open();
        let (cid, data) = fake.subscribe_frame();
        assert_eq!(
            data,
            json!({"channel": "c", "data": {"recover": {"offset": 6, "epoch": "e"}}})
        );
        fake.reply(
            cid,
            Some(json!({"channel": "c", "offset": 6, "epoch": "e"})),
        );
        fake.publish("c", 7, "e");
        assert_eq!(messages(&drain(&mut ch)), [message(7, "e")]);

        // Another epoch replaces the position, even with a lower offset.
        fake.publish("c", 1, "f");
        assert_eq!(ch.position(), Some(Position::new(1, "f")));
        fake.lose();
        fake.open();
        let (_, data) = fake.subscribe_frame();
        assert_eq!(data["data"]["recover"], json!({"offset": 1, "epoch": "f"}));
    }

    #[test]
    fn the_recover_is_merged_into_the_subscription_data() {
        let mut fake = Fake::new();
        let options = SubscribeOptions {
            wait_for_auth: false,
            data: Some(RawValue::from_string(r#"{"room":7}"#.to_owned()).unwrap()),
        };
        let _ch = fake.client.subscribe_with("c", options);
        let (cid, data) = fake.subscribe_frame();
        assert_eq!(data, json!({"channel": "c", "data": {"room": 7}}));
        fake.reply(
            cid,
            Some(json!({"channel": "c", "offset": 0, "epoch": "e"})),
        );
        fake.lose();
        fake.open();
        let (_, data) = fake.subscribe_frame();
        assert_eq!(
            data,
            json!({"channel": "c", "data": {"room": 7, "recover": {"offset": 0, "epoch": "e"}}})
        );
    }

    #[test]
    fn a_gap_notice_comes_only_when_the_history_cannot_cover() {
        let mut fake = Fake::new();
        let mut ch = fake.client.subscribe("c");
        let (cid, _) = fake.subscribe_frame();
        fake.reply(
            cid,
            Some(json!({"channel": "c", "offset": 10, "epoch": "e"})),
        );
        fake.lose();
        fake.open();
        let (cid, data) = fake.subscribe_frame();
        assert_eq!(data["data"]["recover"]["offset"], 10);
        // The server kept only offsets 991..: a gap notice, then the reply, then those.
        fake.server(&json!({"event": "#gap", "data":
            {"channel": "c", "offset": 990, "epoch": "e"}}));
        assert_eq!(ch.position(), Some(Position::new(990, "e")));
        fake.reply(
            cid,
            Some(json!({"channel": "c", "offset": 990, "epoch": "e"})),
        );
        fake.publish("c", 991, "e");
        let events = drain(&mut ch);
        assert_eq!(events[0], ChannelEvent::Gap);
        assert_eq!(messages(&events[1..]), [message(991, "e")]);

        // A reply elsewhere than asked, without a notice, is a gap too.
        fake.lose();
        fake.open();
        let (cid, data) = fake.subscribe_frame();
        assert_eq!(data["data"]["recover"]["offset"], 991);
        fake.reply(
            cid,
            Some(json!({"channel": "c", "offset": 5, "epoch": "new"})),
        );
        assert_eq!(drain(&mut ch), [ChannelEvent::Gap]);
        assert_eq!(ch.position(), Some(Position::new(5, "new")));

        // A history lost meanwhile: the notice carries the new epoch.
        fake.lose();
        fake.open();
        let (cid, _) = fake.subscribe_frame();
        fake.server(&json!({"event": "#gap", "data":
            {"channel": "c", "offset": 0, "epoch": "newer"}}));
        fake.reply(
            cid,
            Some(json!({"channel": "c", "offset": 0, "epoch": "newer"})),
        );
        assert_eq!(drain(&mut ch), [ChannelEvent::Gap]);
        assert_eq!(ch.position(), Some(Position::new(0, "newer")));

        // A server that no longer keeps a history: a gap, and none to recover from next time.
        fake.lose();
        fake.open();
        let (cid, data) = fake.subscribe_frame();
        assert_eq!(data["data"]["recover"]["epoch"], "newer");
        fake.reply(cid, None);
        assert_eq!(drain(&mut ch), [ChannelEvent::Gap]);
        assert_eq!(ch.position(), None);
        fake.lose();
        assert_eq!(drain(&mut ch), [ChannelEvent::Gap]);
        fake.open();
        let (_, data) = fake.subscribe_frame();
        assert_eq!(data, json!({"channel": "c"}));
    }

    #[test]
    fn channels_without_a_history_keep_the_gap_on_a_lost_connection() {
        let mut fake = Fake::new();
        let mut gaps = fake.client.receiver("#gap");
        let mut ch = fake.client.subscribe("c");
        let (cid, _) = fake.subscribe_frame();
        fake.reply(cid, None);
        fake.server(&json!({"event": "#publish", "data": {"channel": "c", "data": "x"}}));
        let events = drain(&mut ch);
        assert_eq!(messages(&events), [("\"x\"".to_owned(), None)]);
        fake.lose();
        assert_eq!(drain(&mut ch), [ChannelEvent::Gap]);
        fake.open();
        let (cid, data) = fake.subscribe_frame();
        assert_eq!(data, json!({"channel": "c"}));
        fake.reply(cid, None);
        assert_eq!(drain(&mut ch), []);

        // The store-loss notice: a gap on the channel, and still an event for a receiver.
        fake.server(&json!({"event": "#gap", "data": {"channel": "c"}}));
        assert_eq!(drain(&mut ch), [ChannelEvent::Gap]);
        assert_eq!(ch.position(), None);
        let notice = gaps.recv().now_or_never().flatten().unwrap();
        assert_eq!(notice.as_str(), r#"{"channel":"c"}"#);
        // Another channel's notice is not this one's.
        fake.server(&json!({"event": "#gap", "data": {"channel": "d"}}));
        assert_eq!(drain(&mut ch), []);
    }

    #[test]
    fn app_data_that_is_no_object_cannot_recover() {
        let mut fake = Fake::new();
        let options = SubscribeOptions {
            wait_for_auth: false,
            data: Some(RawValue::from_string(r#""token""#.to_owned()).unwrap()),
        };
        let mut ch = fake.client.subscribe_with("c", options);
        let (cid, _) = fake.subscribe_frame();
        fake.reply(
            cid,
            Some(json!({"channel": "c", "offset": 3, "epoch": "e"})),
        );
        fake.lose();
        assert_eq!(drain(&mut ch), [ChannelEvent::Gap]);
        fake.open();
        let (_, data) = fake.subscribe_frame();
        assert_eq!(data, json!({"channel": "c", "data": "token"}));
    }
}

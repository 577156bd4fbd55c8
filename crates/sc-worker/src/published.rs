//! One publish, encoded once: what the exchange fans out and a socket's outbound queue holds.

use std::sync::Arc;

use bytes::Bytes;

use sc_store::Position;

use crate::data::Data;

/// The exchange channels of sessions: `#sc-session/<id>`. Clients may not subscribe or publish
/// to channels with this prefix.
pub(crate) const SESSION_CHANNEL_PREFIX: &str = "#sc-session/";

/// The history limits of `channel`: those of the first rule naming it. A session's channel has
/// none (the server's own, never recorded).
pub(crate) fn history_limits(
    rules: &[crate::config::HistoryRule],
    channel: &str,
) -> Option<sc_store::HistoryLimits> {
    if channel.starts_with(SESSION_CHANNEL_PREFIX) {
        return None;
    }
    rules
        .iter()
        .find(|r| r.matches(channel))
        .map(crate::config::HistoryRule::limits)
}

/// One publish: the channel, the data, and the `#publish` frame encoded once (every local
/// subscriber gets the same bytes).
///
/// An emit to a session travels as a publish too, on the session's channel: its frame is the
/// event itself, and its data, what goes through a store, is `[skip, frame]` (`skip`: the id
/// of the socket a `transmit` skips, or `null`).
#[derive(Debug)]
pub struct Published {
    pub(crate) channel: Arc<str>,
    pub(crate) data: Option<Data>,
    pub(crate) frame: Bytes,
    /// A session emit: the socket it skips, if any.
    pub(crate) session: Option<SessionEmit>,
    /// Its place in the channel's history, when the channel has one (the frame carries it).
    pub(crate) position: Option<Position>,
    /// Not a message but a `#gap` notice at `position` (the frame is the notice): messages of
    /// the channel may have been lost, and what follows continues after `position`.
    pub(crate) gap: bool,
}

/// What a session emit carries besides its frame.
#[derive(Debug, Clone, Default)]
pub(crate) struct SessionEmit {
    /// The socket a `transmit` skips.
    pub(crate) skip: Option<Arc<str>>,
}

impl Published {
    /// A publish of `data` to `channel` (its frame encoded here, once).
    pub fn new(channel: &str, data: Option<Data>) -> Self {
        let frame = publish_frame(channel, data.as_ref());
        Published {
            channel: Arc::from(channel),
            data,
            frame,
            session: None,
            position: None,
            gap: false,
        }
    }

    /// A session emit on the session's `channel`: `frame` goes to every socket of the session
    /// but `skip`.
    pub(crate) fn session(channel: &str, skip: Option<Arc<str>>, frame: Bytes) -> Self {
        let mut envelope = Vec::with_capacity(frame.len() + 32);
        envelope.push(b'[');
        match &skip {
            // Socket ids are base64url: nothing to escape.
            Some(id) => {
                envelope.push(b'"');
                envelope.extend_from_slice(id.as_bytes());
                envelope.push(b'"');
            }
            None => envelope.extend_from_slice(b"null"),
        }
        envelope.push(b',');
        envelope.extend_from_slice(&frame);
        envelope.push(b']');
        Published {
            channel: Arc::from(channel),
            data: Some(Data::from_trusted(Bytes::from(envelope))),
            frame,
            session: Some(SessionEmit { skip }),
            position: None,
            gap: false,
        }
    }

    /// A session emit from its envelope `[skip, frame]` (as [`Self::session`] wrote it); `None`
    /// when it is not one.
    pub(crate) fn session_from_envelope(channel: &Arc<str>, envelope: Bytes) -> Option<Self> {
        let e = &envelope[..];
        if e.len() < 4 || e[0] != b'[' || e[e.len() - 1] != b']' {
            return None;
        }
        let (skip, start) = if e[1..].starts_with(b"null,") {
            (None, 6)
        } else if e[1] == b'"' {
            let end = 2 + e[2..].iter().position(|b| *b == b'"')?;
            if e.get(end + 1) != Some(&b',') {
                return None;
            }
            let id = std::str::from_utf8(&e[2..end]).ok()?;
            (Some(Arc::from(id)), end + 2)
        } else {
            return None;
        };
        let end = e.len() - 1;
        if start >= end || e[start] != b'{' {
            return None;
        }
        let frame = envelope.slice(start..end);
        Some(Published {
            channel: channel.clone(),
            data: Some(Data::from_trusted(envelope)),
            frame,
            session: Some(SessionEmit { skip }),
            position: None,
            gap: false,
        })
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The data (`None` for a publish without data).
    pub fn data(&self) -> Option<&Data> {
        self.data.as_ref()
    }

    /// The `#publish` frame subscribers receive.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// The bytes that represent this publish on a store: the data's JSON text, or nothing.
    pub(crate) fn payload(&self) -> Bytes {
        match &self.data {
            // The frame ends with the data's text and `}}`: share it rather than copy it.
            Some(d) => {
                let end = self.frame.len().saturating_sub(2);
                let start = end.saturating_sub(d.as_bytes().len());
                let slice = self.frame.slice(start..end);
                if slice == d.as_bytes() {
                    slice
                } else {
                    Bytes::copy_from_slice(d.as_bytes())
                }
            }
            None => Bytes::new(),
        }
    }

    /// Its place in the channel's history, when the channel has one.
    pub fn position(&self) -> Option<&Position> {
        self.position.as_ref()
    }

    /// A recorded publish: its frame carries `position` (`"offset"` and `"epoch"` beside the
    /// channel and the data).
    pub(crate) fn recorded(channel: &Arc<str>, data: Option<Data>, position: Position) -> Self {
        let frame = recorded_frame(channel, data.as_ref(), &position);
        Published {
            channel: channel.clone(),
            data,
            frame,
            session: None,
            position: Some(position),
            gap: false,
        }
    }

    /// A `#gap` notice for `channel`: messages may have been lost, and what follows continues
    /// after `position` (`{"event":"#gap","data":{"channel":C,"offset":N,"epoch":E}}`), or,
    /// on a channel without a history, `{"event":"#gap","data":{"channel":C}}`.
    pub(crate) fn gap_notice(channel: &Arc<str>, position: Option<Position>) -> Self {
        let data = match &position {
            Some(p) => position_json(channel, p),
            None => {
                let mut d = b"{\"channel\":".to_vec();
                push_json_str(&mut d, channel);
                d.push(b'}');
                d
            }
        };
        let mut frame = Vec::with_capacity(32 + data.len());
        sc_protocol::encode::put_transmit(&mut frame, GAP_EVENT, Some(&data));
        Published {
            channel: channel.clone(),
            data: None,
            frame: Bytes::from(frame),
            session: None,
            position,
            gap: true,
        }
    }
}

/// A message's data from the store: `Some(None)` for none (empty), `None` (with a warning)
/// when it is not JSON.
#[allow(clippy::option_option)]
pub(crate) fn stored_data(channel: &str, payload: Bytes) -> Option<Option<Data>> {
    if payload.is_empty() {
        return Some(None);
    }
    if serde_json::from_slice::<&serde_json::value::RawValue>(&payload).is_err() {
        tracing::warn!(channel = %channel, len = payload.len(), "message from the store is not JSON: dropped");
        return None;
    }
    Some(Some(Data::from_trusted(payload)))
}

/// The event a socket gets when messages of a channel it is subscribed to may have been lost.
pub(crate) const GAP_EVENT: &str = "#gap";

/// `{"channel":C,"offset":N,"epoch":E}`: a position in a channel's history, as a `#subscribe`
/// reply and a `#gap` notice carry it.
pub(crate) fn position_json(channel: &str, position: &Position) -> Vec<u8> {
    let mut out = Vec::with_capacity(channel.len() + position.epoch.len() + 48);
    out.extend_from_slice(b"{\"channel\":");
    push_json_str(&mut out, channel);
    out.extend_from_slice(b",\"offset\":");
    out.extend_from_slice(position.offset.to_string().as_bytes());
    out.extend_from_slice(b",\"epoch\":");
    push_json_str(&mut out, &position.epoch);
    out.push(b'}');
    out
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Serialising a string cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `{"event":"#publish","data":{"channel":C[,"data":D],"offset":N,"epoch":E}}`, encoded once.
fn recorded_frame(channel: &str, data: Option<&Data>, position: &Position) -> Bytes {
    let data = data.map(Data::as_bytes);
    let mut out =
        Vec::with_capacity(64 + channel.len() + data.map_or(0, <[u8]>::len) + position.epoch.len());
    sc_protocol::encode::put_publish(&mut out, channel, data);
    // The frame ends with the two closing braces of its data and of itself: the position goes
    // before them.
    out.truncate(out.len() - 2);
    out.extend_from_slice(b",\"offset\":");
    out.extend_from_slice(position.offset.to_string().as_bytes());
    out.extend_from_slice(b",\"epoch\":");
    push_json_str(&mut out, &position.epoch);
    out.extend_from_slice(b"}}");
    Bytes::from(out)
}

/// The frame of `channel`'s publish of `data`, with its position when it has one (outbound
/// middleware that changed the data re-encodes with this).
pub(crate) fn frame_for(channel: &str, data: Option<&Data>, position: Option<&Position>) -> Bytes {
    match position {
        Some(p) => recorded_frame(channel, data, p),
        None => publish_frame(channel, data),
    }
}

/// `{"event":"#publish","data":{"channel":C[,"data":D]}}`.
pub(crate) fn publish_frame(channel: &str, data: Option<&Data>) -> Bytes {
    sc_protocol::PublishFrame::from_json(channel, data.map(Data::as_bytes)).into_bytes()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn position() -> Position {
        Position {
            offset: 7,
            epoch: "e\"1".into(),
        }
    }

    #[test]
    fn a_recorded_publish_carries_its_position_beside_channel_and_data() {
        let ch: Arc<str> = Arc::from("a\"b");
        let p = Published::recorded(
            &ch,
            Some(Data::from_trusted(Bytes::from("[1]"))),
            position(),
        );
        let v: serde_json::Value = serde_json::from_slice(p.frame()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"event": "#publish", "data": {"channel": "a\"b", "data": [1], "offset": 7, "epoch": "e\"1"}})
        );
        let none = Published::recorded(&ch, None, position());
        let v: serde_json::Value = serde_json::from_slice(none.frame()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"event": "#publish", "data": {"channel": "a\"b", "offset": 7, "epoch": "e\"1"}})
        );
    }

    #[test]
    fn a_gap_notice_names_the_channel_and_where_what_follows_continues() {
        let g = Published::gap_notice(&Arc::from("c"), Some(position()));
        let v: serde_json::Value = serde_json::from_slice(g.frame()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"event": "#gap", "data": {"channel": "c", "offset": 7, "epoch": "e\"1"}})
        );
        assert!(g.gap);
        let g = Published::gap_notice(&Arc::from("a\"b"), None);
        let v: serde_json::Value = serde_json::from_slice(g.frame()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"event": "#gap", "data": {"channel": "a\"b"}})
        );
    }
}

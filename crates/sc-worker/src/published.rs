//! One publish, encoded once: what the exchange fans out and a socket's outbound queue holds.

use std::sync::Arc;

use bytes::Bytes;

use crate::data::Data;

/// The exchange channels of sessions: `#sc-session/<id>`. Clients may not subscribe or publish
/// to channels with this prefix.
pub(crate) const SESSION_CHANNEL_PREFIX: &str = "#sc-session/";

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
}

/// `{"event":"#publish","data":{"channel":C[,"data":D]}}`.
pub(crate) fn publish_frame(channel: &str, data: Option<&Data>) -> Bytes {
    sc_protocol::PublishFrame::from_json(channel, data.map(Data::as_bytes)).into_bytes()
}

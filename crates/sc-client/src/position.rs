//! A message's place in a channel's history on the server ([`Position`]), read from the frames
//! that carry it, and the `recover` a resubscribe sends.

use std::borrow::Cow;

use sc_protocol::{RawValue, encode};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

/// Where a message stands in a channel's history on the server: its offset (1, 2, 3 … with no
/// gap, per channel and epoch) and the epoch (a new one when the server lost the history, e.g.
/// its store restarted).
///
/// Only channels the server keeps a history of (its `history` rules) have positions: their
/// `#publish` frames carry `"offset"` and `"epoch"`, and so does the reply to `#subscribe`. The
/// client remembers the last position of each channel and sends it as
/// `{"recover":{"offset":N,"epoch":"E"}}` in the `#subscribe` data of every automatic resubscribe,
/// so that the server replays what was missed ([`Message::position`](crate::Message::position),
/// [`Channel::position`](crate::Channel::position)).
///
/// ```
/// use sc_client::Position;
///
/// let p = Position::new(7, "e1");
/// assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"offset":7,"epoch":"e1"}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// The message's offset in its epoch (the first message of an epoch has offset 1; 0 is
    /// the position before any message).
    pub offset: u64,
    /// The history's epoch.
    pub epoch: String,
}

impl Position {
    /// A position.
    pub fn new(offset: u64, epoch: impl Into<String>) -> Self {
        Position {
            offset,
            epoch: epoch.into(),
        }
    }
}

/// The position fields of a server frame's data (`#publish`, the `#subscribe` reply, `#gap`),
/// read leniently: a position is there only when `offset` is an unsigned integer and `epoch` a
/// string.
#[derive(Deserialize)]
pub(crate) struct Positioned<'a> {
    #[serde(borrow, default)]
    pub(crate) channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    offset: Option<&'a RawValue>,
    #[serde(borrow, default)]
    epoch: Option<&'a RawValue>,
}

impl<'a> Positioned<'a> {
    /// Reads a JSON object; `None` for anything else.
    pub(crate) fn parse(raw: Option<&'a RawValue>) -> Option<Self> {
        let raw = raw?;
        if !raw.get().starts_with('{') {
            return None;
        }
        serde_json::from_str(raw.get()).ok()
    }

    pub(crate) fn position(&self) -> Option<Position> {
        let offset = self.offset?.get().parse::<u64>().ok()?;
        let epoch = serde_json::from_str::<Cow<'_, str>>(self.epoch?.get()).ok()?;
        Some(Position::new(offset, epoch))
    }
}

/// Moves `current` to `seen`: forward only within an epoch, replaced by another epoch.
pub(crate) fn advance(current: &mut Option<Position>, seen: &Position) {
    match current {
        Some(c) if c.epoch == seen.epoch => c.offset = c.offset.max(seen.offset),
        _ => *current = Some(seen.clone()),
    }
}

/// The `#subscribe` data of a resubscribe: the app's data (an object, or none) with
/// `"recover":{"offset":N,"epoch":"E"}` set. `None` when the app's data is no object.
pub(crate) fn recover_data(app: Option<&RawValue>, position: &Position) -> Option<Box<RawValue>> {
    let mut out = Vec::with_capacity(64 + app.map_or(0, |a| a.get().len()));
    out.push(b'{');
    if let Some(app) = app {
        if !app.get().trim_start().starts_with('{') {
            return None;
        }
        let fields: Fields<'_> = serde_json::from_str(app.get()).ok()?;
        for (key, value) in fields.0.iter().filter(|(k, _)| k != "recover") {
            encode::write_str(&mut out, key);
            out.push(b':');
            out.extend_from_slice(value.get().as_bytes());
            out.push(b',');
        }
    }
    out.extend_from_slice(b"\"recover\":{\"offset\":");
    out.extend_from_slice(position.offset.to_string().as_bytes());
    out.extend_from_slice(b",\"epoch\":");
    encode::write_str(&mut out, &position.epoch);
    out.extend_from_slice(b"}}");
    let text = String::from_utf8(out).ok()?;
    RawValue::from_string(text).ok()
}

/// The fields of a JSON object in their order, values kept raw.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    fields.push(entry);
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(FieldsVisitor)
    }
}

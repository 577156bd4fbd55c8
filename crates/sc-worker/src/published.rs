//! One publish, encoded once: what the exchange fans out and a socket's outbound queue holds.

use std::sync::Arc;

use bytes::Bytes;

use crate::data::Data;

/// One publish: the channel, the data, and the `#publish` frame encoded once (every local
/// subscriber gets the same bytes).
#[derive(Debug)]
pub struct Published {
    pub(crate) channel: Arc<str>,
    pub(crate) data: Option<Data>,
    pub(crate) frame: Bytes,
}

impl Published {
    /// A publish of `data` to `channel` (its frame encoded here, once).
    pub fn new(channel: &str, data: Option<Data>) -> Self {
        let frame = publish_frame(channel, data.as_ref());
        Published {
            channel: Arc::from(channel),
            data,
            frame,
        }
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

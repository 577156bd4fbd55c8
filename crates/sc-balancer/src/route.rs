//! Where a request goes, read from the request alone: the engine.io `sid` in its query (which
//! carries the tag of its worker), or else the session cookie when affinity is on.
//!
//! A worker hands out engine.io session ids of 16 characters; the balancer appends `.` and the
//! worker's tag to the id in the handshake response (`0{"sid":"…"` of engine.io v4), and strips it
//! again from every request before the worker sees it.

use bytes::{Bytes, BytesMut};

/// Separates a worker's session id from the tag of the worker.
const SEP: char = '.';
/// Length of a tag (hex digits).
pub(crate) const TAG_LEN: usize = 8;

/// The engine.io session a request belongs to: the worker's tag and the query with the
/// worker's own id (without the tag).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SidRoute<'a> {
    pub(crate) tag: &'a str,
    /// The query string to forward (the tag taken out of `sid`).
    pub(crate) query: String,
}

/// The value of `sid` in `query`, if any (engine.io ids need no percent-decoding: the
/// alphabet is `[A-Za-z0-9_-]`, and the tag's `.` is left alone by every client).
pub(crate) fn sid_of(query: &str) -> Option<&str> {
    query.split('&').find_map(|kv| kv.strip_prefix("sid="))
}

/// Reads the tag from the `sid` of `query`. `Ok(None)`: no `sid`; `Err(())`: a `sid` without
/// a tag (not handed out by a balancer).
pub(crate) fn route_sid(query: &str) -> Result<Option<SidRoute<'_>>, ()> {
    let Some(sid) = sid_of(query) else {
        return Ok(None);
    };
    let (own, tag) = sid.rsplit_once(SEP).ok_or(())?;
    if tag.len() != TAG_LEN || !tag.bytes().all(|b| b.is_ascii_hexdigit()) || own.is_empty() {
        return Err(());
    }
    let mut out = String::with_capacity(query.len());
    for (i, kv) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        if kv.starts_with("sid=") {
            out.push_str("sid=");
            out.push_str(own);
        } else {
            out.push_str(kv);
        }
    }
    Ok(Some(SidRoute { tag, query: out }))
}

/// Adds `.tag` to the session id of an engine.io v4 open packet (`0{"sid":"…",…}`) at the start
/// of `body`. `None` when the body is not one (it is passed on unchanged then).
pub(crate) fn tag_open_packet(body: &[u8], tag: &str) -> Option<Bytes> {
    const KEY: &[u8] = b"\"sid\":\"";
    if !body.starts_with(b"0{") {
        return None;
    }
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = body[at..].iter().position(|&b| b == b'"')?;
    let sid = &body[at..at + len];
    if sid.is_empty()
        || !sid
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
    {
        return None;
    }
    let mut out = BytesMut::with_capacity(body.len() + 1 + tag.len());
    out.extend_from_slice(&body[..at + len]);
    out.extend_from_slice(&[SEP as u8]);
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(&body[at + len..]);
    Some(out.freeze())
}

/// The value of the session cookie `n/<app>/ssid` in a `Cookie` header.
pub(crate) fn session_cookie<'a>(cookie_header: &'a str, name: &str) -> Option<&'a str> {
    sc_worker::cookie_pairs(cookie_header)
        .find_map(|(k, v)| (k == name && !v.is_empty()).then_some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_strips_the_tag() {
        let r = route_sid("EIO=4&transport=polling&t=abc&sid=AbCd_efgh-123456.0a1b2c3d")
            .unwrap()
            .unwrap();
        assert_eq!(r.tag, "0a1b2c3d");
        assert_eq!(
            r.query,
            "EIO=4&transport=polling&t=abc&sid=AbCd_efgh-123456"
        );
        assert_eq!(route_sid("EIO=4&transport=polling"), Ok(None));
        assert_eq!(route_sid(""), Ok(None));
        assert!(route_sid("EIO=4&sid=AbCd_efgh-123456").is_err());
        assert!(route_sid("EIO=4&sid=AbCd.zzzzzzzz").is_err());
        assert!(route_sid("EIO=4&sid=.0a1b2c3d").is_err());
    }

    #[test]
    fn tags_the_open_packet() {
        let body = br#"0{"sid":"AbCd_efgh-123456","upgrades":["websocket"],"pingInterval":25000}"#;
        let out = tag_open_packet(body, "0a1b2c3d").unwrap();
        assert_eq!(
            &out[..],
            br#"0{"sid":"AbCd_efgh-123456.0a1b2c3d","upgrades":["websocket"],"pingInterval":25000}"#
        );
        assert!(tag_open_packet(b"4hello", "0a1b2c3d").is_none());
        assert!(tag_open_packet(br#"0{"x":1}"#, "0a1b2c3d").is_none());
        assert!(tag_open_packet(br#"0{"sid":"a\"b"}"#, "0a1b2c3d").is_none());
        // Round trip: the tagged id routes back to the tag and the worker's own id.
        let q = "EIO=4&transport=polling&sid=AbCd_efgh-123456.0a1b2c3d";
        assert_eq!(
            route_sid(q).unwrap().unwrap().query,
            "EIO=4&transport=polling&sid=AbCd_efgh-123456"
        );
    }

    #[test]
    fn finds_the_session_cookie() {
        let h = "a=1; n/socketcluster/ssid=s1.sig; b=2";
        assert_eq!(session_cookie(h, "n/socketcluster/ssid"), Some("s1.sig"));
        assert_eq!(session_cookie(h, "n/other/ssid"), None);
        assert_eq!(
            session_cookie("n/socketcluster/ssid=", "n/socketcluster/ssid"),
            None
        );
    }
}

//! RESP2 request parsing and reply encoding for the store server.
//!
//! The parser never allocates: it records the byte ranges of the arguments of one command in a
//! reused vector, and rejects lengths above the configured limits before buffering anything.

use bytes::{BufMut, BytesMut};

/// Limits the parser enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_bulk_len: usize,
    pub(crate) max_multibulk_len: usize,
    pub(crate) max_inline_len: usize,
    /// The limits of a connection that has not authenticated: errors say `unauthenticated`.
    pub(crate) unauth: bool,
}

impl Limits {
    fn multibulk_error(&self) -> ProtocolError {
        ProtocolError(if self.unauth {
            "unauthenticated multibulk length"
        } else {
            "invalid multibulk length"
        })
    }

    fn bulk_error(&self) -> ProtocolError {
        ProtocolError(if self.unauth {
            "unauthenticated bulk length"
        } else {
            "invalid bulk length"
        })
    }
}

/// The outcome of parsing the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// More bytes are needed; at least this many in total, when known.
    Incomplete(usize),
    /// One command; its arguments are in the ranges vector. `0` ranges means an empty command
    /// (an empty inline line or `*0`), which is skipped.
    Command(usize),
}

/// A protocol error: the text follows `-ERR Protocol error: ` and the connection is closed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ProtocolError(pub(crate) &'static str);

/// Longest header line (`*<n>` or `$<n>`) accepted.
const MAX_HEADER_LINE: usize = 32;

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + 1 < buf.len() {
        if buf[i] == b'\r' && buf[i + 1] == b'\n' {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Parses a decimal length (optionally `-1`) of a header line.
fn parse_len(line: &[u8]) -> Option<i64> {
    let (neg, digits) = match line.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, line),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i64::from(d - b'0');
    }
    Some(if neg { -n } else { n })
}

/// Reads one header line starting at `pos` with the type byte `kind`; returns its value and the
/// position after the line, or `None` when the line is not complete yet.
fn header(
    buf: &[u8],
    pos: usize,
    err: &'static str,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let Some(end) = find_crlf(buf, pos + 1) else {
        if buf.len() - pos > MAX_HEADER_LINE {
            return Err(ProtocolError(err));
        }
        return Ok(None);
    };
    if end - pos > MAX_HEADER_LINE {
        return Err(ProtocolError(err));
    }
    let n = parse_len(&buf[pos + 1..end]).ok_or(ProtocolError(err))?;
    Ok(Some((n, end + 2)))
}

/// Parses one command at the start of `buf` into `args` (cleared first).
pub(crate) fn parse(
    buf: &[u8],
    args: &mut Vec<(usize, usize)>,
    lim: &Limits,
) -> Result<Parsed, ProtocolError> {
    args.clear();
    let Some(&first) = buf.first() else {
        return Ok(Parsed::Incomplete(1));
    };
    if first != b'*' {
        return parse_inline(buf, args, lim);
    }
    let Some((count, mut pos)) = header(buf, 0, "invalid multibulk length")? else {
        return Ok(Parsed::Incomplete(buf.len() + 1));
    };
    if count <= 0 {
        return Ok(Parsed::Command(pos));
    }
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    if count > lim.max_multibulk_len {
        return Err(lim.multibulk_error());
    }
    for _ in 0..count {
        let Some(&kind) = buf.get(pos) else {
            return Ok(Parsed::Incomplete(pos + 1));
        };
        if kind != b'$' {
            return Err(ProtocolError("expected '$'"));
        }
        let Some((len, start)) = header(buf, pos, "invalid bulk length")? else {
            return Ok(Parsed::Incomplete(buf.len() + 1));
        };
        let len = usize::try_from(len).map_err(|_| ProtocolError("invalid bulk length"))?;
        if len > lim.max_bulk_len {
            return Err(lim.bulk_error());
        }
        let end = start + len;
        if buf.len() < end + 2 {
            return Ok(Parsed::Incomplete(end + 2));
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError("bulk string not terminated by CRLF"));
        }
        args.push((start, end));
        pos = end + 2;
    }
    Ok(Parsed::Command(pos))
}

fn parse_inline(
    buf: &[u8],
    args: &mut Vec<(usize, usize)>,
    lim: &Limits,
) -> Result<Parsed, ProtocolError> {
    let Some(nl) = buf
        .iter()
        .take(lim.max_inline_len + 1)
        .position(|&b| b == b'\n')
    else {
        if buf.len() > lim.max_inline_len {
            return Err(ProtocolError("too big inline request"));
        }
        return Ok(Parsed::Incomplete(buf.len() + 1));
    };
    let line_end = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    let mut i = 0;
    while i < line_end {
        while i < line_end && buf[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while i < line_end && !buf[i].is_ascii_whitespace() {
            i += 1;
        }
        if i > start {
            if args.len() >= lim.max_multibulk_len {
                return Err(lim.multibulk_error());
            }
            args.push((start, i));
        }
    }
    Ok(Parsed::Command(nl + 1))
}

/// Appends the decimal form of `n`.
pub(crate) fn put_int(out: &mut BytesMut, n: i64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    let neg = n < 0;
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if neg {
        out.put_u8(b'-');
    }
    out.extend_from_slice(&tmp[i..]);
}

fn put_usize(out: &mut BytesMut, n: usize) {
    put_int(out, i64::try_from(n).unwrap_or(i64::MAX));
}

/// `+OK`.
pub(crate) fn ok(out: &mut BytesMut) {
    out.extend_from_slice(b"+OK\r\n");
}

/// A simple string `+s`.
pub(crate) fn simple(out: &mut BytesMut, s: &[u8]) {
    out.put_u8(b'+');
    out.extend_from_slice(s);
    out.extend_from_slice(b"\r\n");
}

/// An error reply; `msg` starts with its code (`ERR ...`, `WRONGTYPE ...`).
pub(crate) fn error(out: &mut BytesMut, msg: &str) {
    out.put_u8(b'-');
    out.extend_from_slice(msg.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// An integer reply.
pub(crate) fn int(out: &mut BytesMut, n: i64) {
    out.put_u8(b':');
    put_int(out, n);
    out.extend_from_slice(b"\r\n");
}

/// A bulk string reply.
pub(crate) fn bulk(out: &mut BytesMut, b: &[u8]) {
    out.reserve(b.len() + 16);
    out.put_u8(b'$');
    put_usize(out, b.len());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// The null bulk string.
pub(crate) fn null(out: &mut BytesMut) {
    out.extend_from_slice(b"$-1\r\n");
}

/// An array header.
pub(crate) fn array(out: &mut BytesMut, n: usize) {
    out.put_u8(b'*');
    put_usize(out, n);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: Limits = Limits {
        max_bulk_len: 1024,
        max_multibulk_len: 8,
        max_inline_len: 64,
        unauth: false,
    };

    fn words(buf: &[u8]) -> Result<Vec<String>, ProtocolError> {
        let mut args = Vec::new();
        match parse(buf, &mut args, &LIM)? {
            Parsed::Incomplete(_) => Ok(vec!["<incomplete>".to_owned()]),
            Parsed::Command(_) => Ok(args
                .iter()
                .map(|&(s, e)| String::from_utf8_lossy(&buf[s..e]).into_owned())
                .collect()),
        }
    }

    #[test]
    fn multibulk_inline_and_partial() {
        assert_eq!(
            words(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").unwrap(),
            ["GET", "k"]
        );
        assert_eq!(
            words(b"*2\r\n$3\r\nGET\r\n$1\r\nk").unwrap(),
            ["<incomplete>"]
        );
        assert_eq!(words(b"*2\r\n$3\r\nG").unwrap(), ["<incomplete>"]);
        assert_eq!(words(b"PING  a\r\n").unwrap(), ["PING", "a"]);
        assert_eq!(words(b"PING").unwrap(), ["<incomplete>"]);
    }

    #[test]
    fn limits_and_garbage() {
        assert!(words(b"*1\r\n$1099511627776\r\n").is_err());
        assert!(words(b"*1\r\n$2000\r\n").is_err());
        assert!(words(b"*9\r\n").is_err());
        assert!(words(b"*x\r\n").is_err());
        assert!(words(b"*1\r\n:1\r\n").is_err());
        assert!(words(b"*1\r\n$1\r\nab\r\n").is_err());
        assert!(words(&[b'a'; 100]).is_err());
        assert!(words(b"*100000000000000000000000000000000000000").is_err());
    }

    #[test]
    fn unauthenticated_limits_say_so() {
        let lim = Limits {
            unauth: true,
            ..LIM
        };
        let mut args = Vec::new();
        assert_eq!(
            parse(b"*9\r\n", &mut args, &lim),
            Err(ProtocolError("unauthenticated multibulk length"))
        );
        assert_eq!(
            parse(b"*1\r\n$1025\r\n", &mut args, &lim),
            Err(ProtocolError("unauthenticated bulk length"))
        );
        assert_eq!(
            parse(b"a b c d e f g h i\r\n", &mut args, &lim),
            Err(ProtocolError("unauthenticated multibulk length"))
        );
        assert_eq!(
            parse(b"*1\r\n$1024\r\n", &mut args, &lim),
            Ok(Parsed::Incomplete(1037))
        );
    }

    #[test]
    fn ints() {
        let mut b = BytesMut::new();
        put_int(&mut b, -120);
        put_int(&mut b, 0);
        put_int(&mut b, i64::MIN);
        assert_eq!(&b[..], b"-1200-9223372036854775808");
    }
}

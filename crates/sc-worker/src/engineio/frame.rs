//! The client side of the in-memory WebSocket between an engine.io session and its socket: just
//! enough RFC 6455 to write text and close frames and to read the server's messages.
//!
//! Client frames must be masked; the mask key is all zeros, which is a valid key and leaves the
//! payload bytes unchanged, so nothing is copied or XORed. The pipe never leaves the process.

use std::io;

use engineioxide::Str;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;

/// A message from the server side.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Frame {
    /// A text (or binary, read as text) message.
    Text(Str),
    /// A close frame: code (1005 when absent) and reason.
    Close(u16, String),
}

async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    opcode: u8,
    parts: &[&[u8]],
) -> io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut head = [0u8; 14];
    head[0] = 0x80 | opcode;
    let n = if len < 126 {
        head[1] = 0x80 | len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        head[1] = 0x80 | 126;
        head[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        head[1] = 0x80 | 127;
        head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    // The mask key (four zero bytes) follows the length.
    w.write_all(&head[..n + 4]).await?;
    for p in parts {
        w.write_all(p).await?;
    }
    Ok(())
}

/// Queues one text frame (flush separately).
pub(super) async fn write_text<W: AsyncWrite + Unpin>(w: &mut W, text: &[u8]) -> io::Result<()> {
    write_frame(w, OP_TEXT, &[text]).await
}

/// Queues a close frame with `code` and `reason` (the reason cut to fit a control frame).
pub(super) async fn write_close<W: AsyncWrite + Unpin>(
    w: &mut W,
    code: u16,
    reason: &str,
) -> io::Result<()> {
    // 1005 and 1006 must not appear in a close frame.
    let code = if matches!(code, 1005 | 1006) || code < 1000 {
        1000
    } else {
        code
    };
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    write_frame(
        w,
        OP_CLOSE,
        &[&code.to_be_bytes(), &reason.as_bytes()[..end]],
    )
    .await
}

/// Reads server messages, joining fragments.
#[derive(Debug, Default)]
pub(super) struct Reader {
    partial: Vec<u8>,
    in_message: bool,
}

impl Reader {
    /// The next message, or `None` at the end of the stream.
    pub(super) async fn read<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> io::Result<Option<Frame>> {
        loop {
            let mut head = [0u8; 2];
            match r.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e),
            }
            let fin = head[0] & 0x80 != 0;
            let opcode = head[0] & 0x0f;
            let masked = head[1] & 0x80 != 0;
            let len = match head[1] & 0x7f {
                126 => u64::from(r.read_u16().await?),
                127 => r.read_u64().await?,
                n => u64::from(n),
            };
            let len = usize::try_from(len)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "frame too large"))?;
            let mut key = [0u8; 4];
            if masked {
                r.read_exact(&mut key).await?;
            }
            let mut payload = vec![0u8; len];
            r.read_exact(&mut payload).await?;
            if masked {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= key[i % 4];
                }
            }
            match opcode {
                OP_TEXT | OP_BINARY | OP_CONT => {
                    if opcode != OP_CONT {
                        self.partial.clear();
                        self.in_message = true;
                    } else if !self.in_message {
                        continue;
                    }
                    if fin && self.partial.is_empty() {
                        self.in_message = false;
                        return Ok(Some(Frame::Text(text(payload))));
                    }
                    self.partial.extend_from_slice(&payload);
                    if fin {
                        self.in_message = false;
                        return Ok(Some(Frame::Text(text(std::mem::take(&mut self.partial)))));
                    }
                }
                OP_CLOSE => {
                    let (code, reason) = if payload.len() >= 2 {
                        (
                            u16::from_be_bytes([payload[0], payload[1]]),
                            String::from_utf8_lossy(&payload[2..]).into_owned(),
                        )
                    } else {
                        (1005, String::new())
                    };
                    return Ok(Some(Frame::Close(code, reason)));
                }
                // Ping and pong: the socket's heartbeat is the SocketCluster ping in text frames.
                _ => {}
            }
        }
    }
}

fn text(bytes: Vec<u8>) -> Str {
    match String::from_utf8(bytes) {
        Ok(s) => Str::from(s),
        Err(e) => Str::from(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_through_a_pipe() {
        let mut buf = Vec::new();
        write_text(&mut buf, b"hello").await.unwrap();
        let big = "x".repeat(70_000);
        write_text(&mut buf, big.as_bytes()).await.unwrap();
        write_close(&mut buf, 4001, "gone").await.unwrap();
        // Every frame is masked (bit set, zero key).
        assert_eq!(buf[1] & 0x80, 0x80);
        // Unmasked server frames: a fragmented text message and a close without a code.
        buf.extend_from_slice(&[0x01, 2, b'a', b'b', 0x80, 1, b'c', 0x88, 0]);
        let mut r = Reader::default();
        let mut io = &buf[..];
        assert_eq!(
            r.read(&mut io).await.unwrap(),
            Some(Frame::Text(Str::from("hello")))
        );
        assert_eq!(
            r.read(&mut io).await.unwrap(),
            Some(Frame::Text(Str::from(big)))
        );
        assert_eq!(
            r.read(&mut io).await.unwrap(),
            Some(Frame::Close(4001, "gone".to_owned()))
        );
        assert_eq!(
            r.read(&mut io).await.unwrap(),
            Some(Frame::Text(Str::from("abc")))
        );
        assert_eq!(
            r.read(&mut io).await.unwrap(),
            Some(Frame::Close(1005, String::new()))
        );
        assert_eq!(r.read(&mut io).await.unwrap(), None);
    }
}

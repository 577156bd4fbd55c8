//! WebSocket close codes and what they mean to a SocketCluster client.
//!
//! ```
//! use sc_protocol::CloseCode;
//!
//! assert!(CloseCode::PONG_TIMEOUT.reconnects());
//! assert!(!CloseCode::NORMAL.reconnects());
//! assert!(!CloseCode(4500).reconnects());
//! assert_eq!(CloseCode::MESSAGE_TOO_BIG.description(), Some("Message was too big to process"));
//! ```

use std::fmt;

/// A WebSocket close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: closed normally; the client does not reconnect.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the socket was disconnected (going away).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: a WebSocket protocol error.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: the server received invalid data.
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// 1005: closed without a status code.
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// 1006: the socket hung up.
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// 1007: the message format was incorrect.
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: a policy violation.
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    /// 1009: a message over the maximum payload.
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// 1010: a required extension was not negotiated.
    pub const MANDATORY_EXTENSION: CloseCode = CloseCode(1010);
    /// 1011: an unexpected fatal condition on the server.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// 4000: the client's ping timer expired (the server stopped pinging).
    pub const PING_TIMEOUT: CloseCode = CloseCode(4000);
    /// 4001: the server's pong timer expired (the client stopped answering).
    pub const PONG_TIMEOUT: CloseCode = CloseCode(4001);
    /// 4002: the server failed to sign an auth token.
    pub const AUTH_SIGN_FAILED: CloseCode = CloseCode(4002);
    /// 4003: the handshake could not be completed.
    pub const HANDSHAKE_FAILED: CloseCode = CloseCode(4003);
    /// 4004: the client failed to save its auth token (legacy).
    pub const AUTH_SAVE_FAILED: CloseCode = CloseCode(4004);
    /// 4005: no `#handshake` before the handshake timeout.
    pub const HANDSHAKE_TIMEOUT: CloseCode = CloseCode(4005);
    /// 4006: the socket could not be bound to the broker (legacy).
    pub const BROKER_BIND_FAILED: CloseCode = CloseCode(4006);
    /// 4007: the client's connection attempt timed out.
    pub const CONNECT_TIMEOUT: CloseCode = CloseCode(4007);
    /// 4008: the server rejected the handshake (middleware block, or a malformed `#handshake`).
    pub const HANDSHAKE_REJECTED: CloseCode = CloseCode(4008);
    /// 4009: a message arrived before the handshake (strict handshake).
    pub const MESSAGE_BEFORE_HANDSHAKE: CloseCode = CloseCode(4009);
    /// 4500: the first application-defined "permanent" code; from here up clients do not reconnect.
    pub const FIRST_PERMANENT: CloseCode = CloseCode(4500);

    /// The description socketcluster-client (sc-errors) gives this code, if it has one.
    pub fn description(self) -> Option<&'static str> {
        Some(match self.0 {
            1000 => "Socket closed normally",
            1001 => "Socket was disconnected",
            1002 => "A WebSocket protocol error was encountered",
            1003 => "Server terminated socket because it received invalid data",
            1005 => "Socket closed without status code",
            1006 => "Socket hung up",
            1007 => "Message format was incorrect",
            1008 => "Encountered a policy violation",
            1009 => "Message was too big to process",
            1010 => {
                "Client ended the connection because the server did not comply with extension requirements"
            }
            1011 => "Server encountered an unexpected fatal condition",
            4000 => "Server ping timed out",
            4001 => "Client pong timed out",
            4002 => "Server failed to sign auth token",
            4003 => "Failed to complete handshake",
            4004 => "Client failed to save auth token",
            4005 => "Did not receive #handshake from client before timeout",
            4006 => "Failed to bind socket to message broker",
            4007 => "Client connection establishment timed out",
            4008 => "Server rejected handshake from client",
            4009 => "Server received a message before the client handshake",
            _ => return None,
        })
    }

    /// Whether a SocketCluster client auto-reconnects after this code: every code but 1000 and the
    /// permanent ones (4500 and above).
    pub fn reconnects(self) -> bool {
        self != Self::NORMAL && self < Self::FIRST_PERMANENT
    }

    /// Whether the client's first reconnect attempt is immediate (delay 0): 4000, 4001 and 1005.
    pub fn reconnects_immediately(self) -> bool {
        matches!(self.0, 1005 | 4000 | 4001)
    }

    /// Whether the client raises no error for this code (1000 and 1001).
    pub fn is_ignored(self) -> bool {
        matches!(self.0, 1000 | 1001)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.description() {
            Some(d) => write!(f, "{} ({d})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        CloseCode(code)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> Self {
        code.0
    }
}

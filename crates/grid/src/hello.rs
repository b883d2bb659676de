//! The hello a sender or receiver writes on a relay's TCP port, and the relay's one-byte answer.
//!
//! ```text
//! peer → relay:  "TSRH" | version u8 (1) | role u8 (1 sender, 2 receiver) | token_len u16 | token (JWT, ASCII)
//! relay → peer:  answer u8 (0 paired, then raw bytes both ways; anything else: refused and closed)
//! ```
//!
//! The token is the session's admission token for this relay ([`crate::token`]); it names the session, so
//! the relay pairs the sender's connection with a receiver's connection for the same session and then copies
//! bytes both ways without looking at them (they are the end-to-end TLS stream).

use crate::token::MAX_TOKEN_LEN;

/// The first four bytes of a hello.
pub const HELLO_MAGIC: &[u8; 4] = b"TSRH";
/// The hello version this build writes and reads.
pub const HELLO_VERSION: u8 = 1;
const FIXED_LEN: usize = 4 + 1 + 1 + 2;

/// Which end of the session a connection or datagram comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerRole {
    /// The end that reads the file.
    Sender,
    /// The end that writes it.
    Receiver,
}

impl PeerRole {
    /// The role's wire byte.
    pub fn to_byte(self) -> u8 {
        match self {
            PeerRole::Sender => 1,
            PeerRole::Receiver => 2,
        }
    }

    /// The role a wire byte names.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(PeerRole::Sender),
            2 => Some(PeerRole::Receiver),
            _ => None,
        }
    }

    /// The other end.
    pub fn peer(self) -> Self {
        match self {
            PeerRole::Sender => PeerRole::Receiver,
            PeerRole::Receiver => PeerRole::Sender,
        }
    }
}

/// A parsed hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayHello {
    /// Which end wrote it.
    pub role: PeerRole,
    /// The admission token, unverified.
    pub token: String,
}

/// Why bytes are not a hello. The relay closes such a connection and counts it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HelloError {
    /// Not `TSRH`: not a TrackShift peer, or a peer that dialled a relay without `--orchestrator`.
    #[error("not a relay hello (bad magic)")]
    Magic,
    /// A hello version this build does not read.
    #[error("relay hello version {0} is not supported (this build reads {HELLO_VERSION})")]
    Version(u8),
    /// Role byte not 1 or 2.
    #[error("relay hello names unknown role {0}")]
    Role(u8),
    /// Token longer than the limit, or not ASCII.
    #[error("relay hello token is too long or not ASCII")]
    Token,
}

impl RelayHello {
    /// The hello's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let token = self.token.as_bytes();
        let mut out = Vec::with_capacity(FIXED_LEN + token.len());
        out.extend_from_slice(HELLO_MAGIC);
        out.push(HELLO_VERSION);
        out.push(self.role.to_byte());
        out.extend_from_slice(&(token.len().min(u16::MAX as usize) as u16).to_be_bytes());
        out.extend_from_slice(token);
        out
    }

    /// A hello from the start of `buf`: `Ok(None)` while more bytes are needed, else the hello and the number
    /// of bytes it took. Checks what it can as soon as the bytes are there, so junk is refused early.
    pub fn parse(buf: &[u8]) -> Result<Option<(Self, usize)>, HelloError> {
        let magic_seen = buf.len().min(4);
        if buf[..magic_seen] != HELLO_MAGIC[..magic_seen] {
            return Err(HelloError::Magic);
        }
        if buf.len() < FIXED_LEN {
            return Ok(None);
        }
        if buf[4] != HELLO_VERSION {
            return Err(HelloError::Version(buf[4]));
        }
        let role = PeerRole::from_byte(buf[5]).ok_or(HelloError::Role(buf[5]))?;
        let len = u16::from_be_bytes([buf[6], buf[7]]) as usize;
        if len > MAX_TOKEN_LEN {
            return Err(HelloError::Token);
        }
        let Some(token) = buf.get(FIXED_LEN..FIXED_LEN + len) else {
            return Ok(None);
        };
        let token = std::str::from_utf8(token)
            .ok()
            .filter(|t| t.is_ascii())
            .ok_or(HelloError::Token)?;
        Ok(Some((
            Self {
                role,
                token: token.to_owned(),
            },
            FIXED_LEN + len,
        )))
    }
}

/// The relay's answer to a hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloAnswer {
    /// Both ends are here: from the next byte on, the connection is the other end's.
    Paired,
    /// The token did not verify, expired, or is for another relay.
    Refused,
    /// No connection from the other end arrived in time.
    NoPeer,
    /// The relay is at its session or connection limit.
    Busy,
    /// The relay is shutting down: use the standby relay.
    Draining,
}

impl HelloAnswer {
    /// The answer's wire byte.
    pub fn to_byte(self) -> u8 {
        match self {
            HelloAnswer::Paired => 0,
            HelloAnswer::Refused => 1,
            HelloAnswer::NoPeer => 2,
            HelloAnswer::Busy => 3,
            HelloAnswer::Draining => 4,
        }
    }

    /// The answer a wire byte names (unknown bytes read as a refusal).
    pub fn from_byte(byte: u8) -> Self {
        match byte {
            0 => HelloAnswer::Paired,
            2 => HelloAnswer::NoPeer,
            3 => HelloAnswer::Busy,
            4 => HelloAnswer::Draining,
            _ => HelloAnswer::Refused,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly on purpose

    use super::*;

    #[test]
    fn a_hello_parses_back_from_any_split() {
        let hello = RelayHello {
            role: PeerRole::Receiver,
            token: "a.b.c".into(),
        };
        let bytes = hello.encode();
        for cut in 0..bytes.len() {
            assert_eq!(RelayHello::parse(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
        let mut more = bytes.clone();
        more.extend_from_slice(b"\x16\x03\x01"); // the TLS ClientHello that follows
        assert_eq!(RelayHello::parse(&more), Ok(Some((hello, bytes.len()))));
    }

    #[test]
    fn junk_is_refused_early() {
        assert_eq!(RelayHello::parse(b"GET / HTTP/1.1"), Err(HelloError::Magic));
        assert_eq!(RelayHello::parse(b"\x16\x03"), Err(HelloError::Magic));
        assert_eq!(
            RelayHello::parse(b"TSRH\x09\x01\x00\x00"),
            Err(HelloError::Version(9))
        );
        assert_eq!(
            RelayHello::parse(b"TSRH\x01\x07\x00\x00"),
            Err(HelloError::Role(7))
        );
        assert_eq!(
            RelayHello::parse(b"TSRH\x01\x01\xff\xff"),
            Err(HelloError::Token)
        );
        assert_eq!(
            RelayHello::parse(b"TSRH\x01\x01\x00\x01\xff"),
            Err(HelloError::Token)
        );
    }
}

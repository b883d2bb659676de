//! The relay's own datagrams on its UDP port, beside the DCSP datagrams it forwards.
//!
//! ```text
//!  0      1         2      3            4                 12             14
//!  +------+---------+------+------------+-----------------+--------------+-------------+
//!  | 0xDB | version | type | role/code  | conn_id: u64    | token_len u16| token bytes |
//!  +------+---------+------+------------+-----------------+--------------+-------------+
//! ```
//!
//! `conn_id` sits where a DCSP datagram has it (bytes 4..12), so a receiver's kernel steers a relay datagram
//! to the same socket as the connection's DCSP datagrams. The first byte, 0xDB, is never a DCSP datagram's
//! (0xDC), so one socket tells the two apart by it.
//!
//! | type | name | direction | byte 3 | token |
//! |---|---|---|---|---|
//! | 1 | Bind | peer → relay | role (1 sender, 2 receiver) | the session's admission token |
//! | 2 | Bound | relay → peer | 0 | none |
//! | 3 | Refused | relay → peer | [`RefusalCode`] | none |
//! | 4 | Drain | relay → peer | 0 | a drain token signed by the orchestrator, or none |
//!
//! A peer sends `Bind` from each DCSP socket for the connection id that socket carries, and again every few
//! seconds and after a silence (a NAT may have forgotten it); the relay then forwards the connection's DCSP
//! datagrams between the sender's and the receiver's bound addresses. Bound, Refused and Drain are hints a
//! peer may act on only as far as they cannot hurt it: a forged Bound changes nothing, a forged Refused or
//! Drain at most makes a peer try its standby relay early.

use crate::hello::PeerRole;
use crate::token::MAX_TOKEN_LEN;

/// The first byte of every relay datagram.
pub const RELAY_MAGIC: u8 = 0xDB;
/// The relay datagram version this build writes and reads.
pub const RELAY_VERSION: u8 = 1;
/// Bytes before the token.
pub const RELAY_HEADER_LEN: usize = 14;

/// Why a relay refused a bind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalCode {
    /// The admission token did not verify, expired, or is for another relay.
    Token,
    /// The connection id is bound to another session.
    ConnIdTaken,
    /// The relay is at its session limit.
    Busy,
    /// The relay is shutting down.
    Draining,
}

impl RefusalCode {
    fn to_byte(self) -> u8 {
        match self {
            RefusalCode::Token => 1,
            RefusalCode::ConnIdTaken => 2,
            RefusalCode::Busy => 3,
            RefusalCode::Draining => 4,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(RefusalCode::Token),
            2 => Some(RefusalCode::ConnIdTaken),
            3 => Some(RefusalCode::Busy),
            4 => Some(RefusalCode::Draining),
            _ => None,
        }
    }
}

/// A relay datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayDatagram {
    /// Forward connection `conn_id` to and from the address this came from.
    Bind {
        role: PeerRole,
        conn_id: u64,
        token: String,
    },
    /// The relay bound `conn_id` for this address.
    Bound { conn_id: u64 },
    /// The relay refused to bind `conn_id`.
    Refused { conn_id: u64, code: RefusalCode },
    /// The relay is going away: move `conn_id` to the standby relay.
    Drain { conn_id: u64, token: String },
}

/// Why a datagram is not a relay datagram. The relay drops it and counts the reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RelayDatagramError {
    /// Shorter than the header or a token length past the end.
    #[error("relay datagram is truncated")]
    Truncated,
    /// Not 0xDB.
    #[error("not a relay datagram")]
    Magic,
    /// A version this build does not read.
    #[error("relay datagram version {0} is not supported")]
    Version(u8),
    /// Unknown type, role or code.
    #[error("relay datagram has unknown type, role or code")]
    Field,
    /// Token too long or not ASCII.
    #[error("relay datagram token is too long or not ASCII")]
    Token,
}

/// Whether `datagram` is a relay datagram rather than a DCSP one (by its first byte only).
pub fn is_relay_datagram(datagram: &[u8]) -> bool {
    datagram.first() == Some(&RELAY_MAGIC)
}

impl RelayDatagram {
    /// The connection id it is about.
    pub fn conn_id(&self) -> u64 {
        match self {
            RelayDatagram::Bind { conn_id, .. }
            | RelayDatagram::Bound { conn_id }
            | RelayDatagram::Refused { conn_id, .. }
            | RelayDatagram::Drain { conn_id, .. } => *conn_id,
        }
    }

    /// The datagram's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, byte3, token) = match self {
            RelayDatagram::Bind { role, token, .. } => (1, role.to_byte(), token.as_str()),
            RelayDatagram::Bound { .. } => (2, 0, ""),
            RelayDatagram::Refused { code, .. } => (3, code.to_byte(), ""),
            RelayDatagram::Drain { token, .. } => (4, 0, token.as_str()),
        };
        let mut out = Vec::with_capacity(RELAY_HEADER_LEN + token.len());
        out.extend_from_slice(&[RELAY_MAGIC, RELAY_VERSION, kind, byte3]);
        out.extend_from_slice(&self.conn_id().to_be_bytes());
        out.extend_from_slice(&(token.len().min(MAX_TOKEN_LEN) as u16).to_be_bytes());
        out.extend_from_slice(&token.as_bytes()[..token.len().min(MAX_TOKEN_LEN)]);
        out
    }

    /// Parses a whole datagram.
    pub fn decode(datagram: &[u8]) -> Result<Self, RelayDatagramError> {
        let header = datagram
            .get(..RELAY_HEADER_LEN)
            .ok_or(RelayDatagramError::Truncated)?;
        if header[0] != RELAY_MAGIC {
            return Err(RelayDatagramError::Magic);
        }
        if header[1] != RELAY_VERSION {
            return Err(RelayDatagramError::Version(header[1]));
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&header[4..12]);
        let conn_id = u64::from_be_bytes(id);
        let len = u16::from_be_bytes([header[12], header[13]]) as usize;
        if len > MAX_TOKEN_LEN {
            return Err(RelayDatagramError::Token);
        }
        let token = datagram
            .get(RELAY_HEADER_LEN..RELAY_HEADER_LEN + len)
            .ok_or(RelayDatagramError::Truncated)?;
        let token = std::str::from_utf8(token)
            .ok()
            .filter(|t| t.is_ascii())
            .ok_or(RelayDatagramError::Token)?;
        let token = token.to_owned();
        match header[2] {
            1 => {
                let role = PeerRole::from_byte(header[3]).ok_or(RelayDatagramError::Field)?;
                Ok(RelayDatagram::Bind {
                    role,
                    conn_id,
                    token,
                })
            }
            2 => Ok(RelayDatagram::Bound { conn_id }),
            3 => {
                let code = RefusalCode::from_byte(header[3]).ok_or(RelayDatagramError::Field)?;
                Ok(RelayDatagram::Refused { conn_id, code })
            }
            4 => Ok(RelayDatagram::Drain { conn_id, token }),
            _ => Err(RelayDatagramError::Field),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly on purpose

    use super::*;

    #[test]
    fn every_kind_round_trips() {
        let all = [
            RelayDatagram::Bind {
                role: PeerRole::Sender,
                conn_id: 0x0102_0304_0506_0708,
                token: "x.y.z".into(),
            },
            RelayDatagram::Bound { conn_id: 7 },
            RelayDatagram::Refused {
                conn_id: 8,
                code: RefusalCode::ConnIdTaken,
            },
            RelayDatagram::Drain {
                conn_id: 9,
                token: String::new(),
            },
        ];
        for datagram in all {
            let bytes = datagram.encode();
            assert!(is_relay_datagram(&bytes));
            assert_eq!(RelayDatagram::decode(&bytes), Ok(datagram.clone()));
            assert_eq!(
                bytes[4..12],
                datagram.conn_id().to_be_bytes(),
                "conn_id where DCSP has it"
            );
        }
    }

    #[test]
    fn damaged_datagrams_are_refused() {
        let bytes = RelayDatagram::Bind {
            role: PeerRole::Receiver,
            conn_id: 1,
            token: "tok".into(),
        }
        .encode();
        assert_eq!(
            RelayDatagram::decode(&bytes[..bytes.len() - 1]),
            Err(RelayDatagramError::Truncated)
        );
        assert_eq!(
            RelayDatagram::decode(&bytes[..5]),
            Err(RelayDatagramError::Truncated)
        );
        let mut bad = bytes.clone();
        bad[0] = 0xDC;
        assert_eq!(RelayDatagram::decode(&bad), Err(RelayDatagramError::Magic));
        let mut bad = bytes.clone();
        bad[1] = 2;
        assert_eq!(
            RelayDatagram::decode(&bad),
            Err(RelayDatagramError::Version(2))
        );
        let mut bad = bytes.clone();
        bad[2] = 9;
        assert_eq!(RelayDatagram::decode(&bad), Err(RelayDatagramError::Field));
        let mut bad = bytes;
        bad[3] = 0;
        assert_eq!(RelayDatagram::decode(&bad), Err(RelayDatagramError::Field));
    }
}

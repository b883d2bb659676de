//! The identifier both ends use for one transfer of one file.

use std::fmt;
use std::str::FromStr;

/// 16 random bytes chosen by the sender when a transfer starts; shown as 32 lowercase hex digits.
///
/// The same id names the sender's outgoing record, the receiver's incoming record and the receiver's
/// partial file, so `trackshift resume <ID>` and `trackshift status <ID>` work on either side.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    /// A fresh, unpredictable id.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The id as 32 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.to_hex())
    }
}

/// A session id that is not 32 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a session id: expected 32 hex digits as shown by `trackshift list`")]
pub struct BadSessionId(pub String);

impl FromStr for SessionId {
    type Err = BadSessionId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s.trim(), &mut out).map_err(|_| BadSessionId(s.to_owned()))?;
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = SessionId::random();
        assert_eq!(id.to_hex().parse::<SessionId>().unwrap(), id);
        assert!("xyz".parse::<SessionId>().is_err());
        assert!("00".parse::<SessionId>().is_err());
    }
}

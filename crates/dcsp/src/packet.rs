//! The DCSP datagram layout (see `docs/PROTOCOL.md`, "DCSP datagrams").
//!
//! ```text
//!  0      1        2      3      4                12               18
//!  +------+--------+------+------+----------------+----------------+
//!  | 0xDC | version| type | flags| connection id  | packet number  |   routing header (18 bytes)
//!  +------+--------+------+------+----------------+----------------+
//!  DATA / PARITY only:  | block u32 | shard u8 | parity count u8 |      (6 bytes)
//!  then the encrypted payload and the 16-byte AES-256-GCM tag.
//! ```
//!
//! Every byte before the payload is authenticated as associated data; the payload is encrypted. A relay can
//! route on the connection id without any key.

/// First byte of every DCSP datagram.
pub const MAGIC: u8 = 0xDC;
/// The wire version this build speaks. See PROTOCOL.md for the versioning rules.
pub const VERSION: u8 = 1;
/// Byte offsets of the routing header's fields (the diagram above).
const MAGIC_AT: usize = 0;
const VERSION_AT: usize = 1;
const TYPE_AT: usize = 2;
const FLAGS_AT: usize = 3;
const CONN_ID_AT: usize = 4;
const PN_AT: usize = CONN_ID_AT + size_of::<u64>();
/// Bytes of a packet number on the wire: 48 bits, big-endian.
pub(crate) const PN_LEN: usize = 6;
/// Length of the routing header common to every packet.
pub const HEADER_LEN: usize = PN_AT + PN_LEN;
/// Byte offsets in the DATA/PARITY sub-header: `block: u32`, then the shard index and the parity count.
const SHARD_INDEX_AT: usize = size_of::<u32>();
const PARITY_COUNT_AT: usize = SHARD_INDEX_AT + 1;
/// Length of the DATA/PARITY sub-header.
pub const SHARD_HEADER_LEN: usize = PARITY_COUNT_AT + 1;
// The wire layout is PROTOCOL.md's (§6.3): the names above must add up to it.
const _: () = assert!(HEADER_LEN == 18 && SHARD_HEADER_LEN == 6);
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Bytes a DATA or PARITY datagram adds to its shard.
pub const DATA_OVERHEAD: usize = HEADER_LEN + SHARD_HEADER_LEN + TAG_LEN;
/// Packet numbers are 48 bits on the wire.
pub const MAX_PACKET_NUMBER: u64 = (1 << 48) - 1;

/// What a datagram carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    /// One original shard of a block.
    Data = 1,
    /// One Reed-Solomon recovery shard of a block.
    Parity = 2,
    /// Receiver to sender: what arrived, what is complete, what is missing.
    Ack = 3,
    /// Sender to receiver: asks for an immediate ACK (tail loss, outages, path checks).
    Ping = 4,
}

impl PacketType {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Data,
            2 => Self::Parity,
            3 => Self::Ack,
            4 => Self::Ping,
            _ => return None,
        })
    }

    /// Whether the type has the DATA/PARITY sub-header.
    pub fn has_shard_header(self) -> bool {
        matches!(self, Self::Data | Self::Parity)
    }
}

/// A datagram that is not DCSP, or not this version of it.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum WireError {
    #[error("datagram too short ({0} bytes)")]
    Short(usize),
    #[error("not a DCSP datagram (magic {0:#04x})")]
    Magic(u8),
    #[error("DCSP version {0} is not supported (this build speaks {VERSION})")]
    Version(u8),
    #[error("unknown DCSP packet type {0}")]
    Type(u8),
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// The parsed cleartext part of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub packet_type: PacketType,
    pub flags: u8,
    pub conn_id: u64,
    pub packet_number: u64,
    /// DATA and PARITY only.
    pub shard: Option<ShardHeader>,
}

/// Which shard of which block a DATA or PARITY datagram carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    /// Global block number (see [`crate::BlockGeometry`]).
    pub block: u32,
    /// Index among the block's original shards (DATA) or its recovery shards (PARITY).
    pub index: u8,
    /// How many recovery shards the block was encoded with.
    pub parity_count: u8,
}

impl Header {
    /// Bytes this header occupies on the wire.
    pub fn len(&self) -> usize {
        if self.shard.is_some() {
            HEADER_LEN + SHARD_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }

    /// Whether the header is empty (never: kept for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Appends the header to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        debug_assert!(self.packet_number <= MAX_PACKET_NUMBER);
        out.push(MAGIC);
        out.push(VERSION);
        out.push(self.packet_type as u8);
        out.push(self.flags);
        out.extend_from_slice(&self.conn_id.to_be_bytes());
        out.extend_from_slice(&self.packet_number.to_be_bytes()[size_of::<u64>() - PN_LEN..]);
        if let Some(s) = self.shard {
            out.extend_from_slice(&s.block.to_be_bytes());
            out.push(s.index);
            out.push(s.parity_count);
        }
    }

    /// Parses the cleartext header at the start of `datagram`. Never panics, whatever the bytes.
    pub fn decode(datagram: &[u8]) -> Result<Self, WireError> {
        if datagram.len() < HEADER_LEN {
            return Err(WireError::Short(datagram.len()));
        }
        if datagram[MAGIC_AT] != MAGIC {
            return Err(WireError::Magic(datagram[MAGIC_AT]));
        }
        if datagram[VERSION_AT] != VERSION {
            return Err(WireError::Version(datagram[VERSION_AT]));
        }
        let packet_type =
            PacketType::from_u8(datagram[TYPE_AT]).ok_or(WireError::Type(datagram[TYPE_AT]))?;
        let conn_id = u64::from_be_bytes(arr(&datagram[CONN_ID_AT..PN_AT]));
        let mut pn = [0u8; size_of::<u64>()];
        pn[size_of::<u64>() - PN_LEN..].copy_from_slice(&datagram[PN_AT..HEADER_LEN]);
        let shard = if packet_type.has_shard_header() {
            if datagram.len() < HEADER_LEN + SHARD_HEADER_LEN {
                return Err(WireError::Short(datagram.len()));
            }
            let s = &datagram[HEADER_LEN..HEADER_LEN + SHARD_HEADER_LEN];
            Some(ShardHeader {
                block: u32::from_be_bytes(arr(&s[..SHARD_INDEX_AT])),
                index: s[SHARD_INDEX_AT],
                parity_count: s[PARITY_COUNT_AT],
            })
        } else {
            None
        };
        Ok(Self {
            packet_type,
            flags: datagram[FLAGS_AT],
            conn_id,
            packet_number: u64::from_be_bytes(pn),
            shard,
        })
    }
}

/// Byte offset of the low 32 bits of `conn_id` (big-endian) in every datagram. A receiver with several sockets
/// on one port has the kernel steer datagrams by this word, so one thread sees all of a connection's datagrams
/// whatever address they come from (PROTOCOL.md §6.3).
pub const CONN_ID_STEERING_OFFSET: u32 = (CONN_ID_AT + size_of::<u32>()) as u32;

/// The steering word of a connection: what the kernel reads at [`CONN_ID_STEERING_OFFSET`].
pub fn steering_key(conn_id: u64) -> u32 {
    (conn_id & u64::from(u32::MAX)) as u32
}

/// The connection id of a datagram, read without parsing anything else (what a relay routes on).
pub fn peek_conn_id(datagram: &[u8]) -> Option<u64> {
    (datagram.len() >= HEADER_LEN && datagram[MAGIC_AT] == MAGIC)
        .then(|| u64::from_be_bytes(arr(&datagram[CONN_ID_AT..PN_AT])))
}

fn arr<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(s);
    a
}

/// A little cursor for the encrypted bodies (ACK): reads big-endian integers, failing instead of panicking.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Malformed(self.what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.bytes(size_of::<u8>())?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(arr(self.bytes(size_of::<u16>())?)))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(arr(self.bytes(size_of::<u32>())?)))
    }

    pub(crate) fn u48(&mut self) -> Result<u64, WireError> {
        let mut a = [0u8; size_of::<u64>()];
        a[size_of::<u64>() - PN_LEN..].copy_from_slice(self.bytes(PN_LEN)?);
        Ok(u64::from_be_bytes(a))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(arr(self.bytes(size_of::<u64>())?)))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn data_header_round_trip() {
        let h = Header {
            packet_type: PacketType::Parity,
            flags: 0,
            conn_id: 0x0102_0304_0506_0708,
            packet_number: MAX_PACKET_NUMBER,
            shard: Some(ShardHeader {
                block: 77,
                index: 3,
                parity_count: 4,
            }),
        };
        let mut out = Vec::new();
        h.encode(&mut out);
        assert_eq!(out.len(), h.len());
        assert_eq!(Header::decode(&out), Ok(h));
        assert_eq!(peek_conn_id(&out), Some(0x0102_0304_0506_0708));
        let at = CONN_ID_STEERING_OFFSET as usize;
        assert_eq!(
            u32::from_be_bytes(arr(&out[at..at + 4])),
            steering_key(0x0102_0304_0506_0708)
        );
        assert_eq!(steering_key(0x0102_0304_0506_0708), 0x0506_0708);
    }

    #[test]
    fn wrong_version_is_named() {
        let mut out = Vec::new();
        Header {
            packet_type: PacketType::Ack,
            flags: 0,
            conn_id: 1,
            packet_number: 1,
            shard: None,
        }
        .encode(&mut out);
        out[1] = 9;
        assert_eq!(Header::decode(&out), Err(WireError::Version(9)));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Header::decode(&bytes);
            let _ = peek_conn_id(&bytes);
        }

        #[test]
        fn header_round_trips(t in 1u8..=4, conn in any::<u64>(), pn in 0..=MAX_PACKET_NUMBER, block in any::<u32>(), idx in any::<u8>(), m in any::<u8>()) {
            let packet_type = PacketType::from_u8(t).unwrap();
            let h = Header { packet_type, flags: 0, conn_id: conn, packet_number: pn,
                shard: packet_type.has_shard_header().then_some(ShardHeader { block, index: idx, parity_count: m }) };
            let mut out = Vec::new();
            h.encode(&mut out);
            prop_assert_eq!(Header::decode(&out), Ok(h));
        }
    }
}

//! The frames of the control channel (and of the TCP data path), and their byte encoding.
//!
//! Every frame is `len: u32 BE | type: u8 | body`, where `len` counts the type byte and the body. The layout of
//! each body is in `docs/PROTOCOL.md`. Decoding borrows from the received buffer (no copies) and never panics:
//! any byte string decodes to a frame or to a [`WireError`].

use crate::SessionId;

/// First bytes of a `Hello`: lets a receiver tell a TrackShift peer from anything else on the port.
pub const MAGIC: [u8; 4] = *b"TSHF";
/// The newest control-channel protocol version this build speaks. See the versioning rules in PROTOCOL.md.
/// Version 2 adds resuming inside a chunk: `PartialList` and `ChunkResume`; version 3 `ChunkListHash`, which
/// lets the receiver check the whole file without hashing it a second time.
pub const PROTOCOL_VERSION: u16 = 3;
/// The oldest version this build still speaks (without the newer frames).
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// The first version with `PartialList` and `ChunkResume`.
pub const PARTIAL_CHUNKS_VERSION: u16 = 2;
/// The first version whose sender announces `ChunkListHash` before `FileEnd`, and whose receiver checks the
/// whole file by its chunks' hashes instead of hashing its bytes a second time.
pub const CHUNK_LIST_VERSION: u16 = 3;
/// Most file bytes one `Data` frame carries: large enough that per-frame costs vanish, small enough to pool.
pub const DATA_PIECE: usize = 1024 * 1024;
/// Largest frame accepted (type byte + body). A `Data` frame of a piece that zstd could not shrink is the largest
/// frame; anything longer is refused before any allocation.
pub const MAX_FRAME_LEN: usize = DATA_PIECE + 64 * 1024;
/// Where the file bytes start in the body of a `Data` frame (after `raw_len: u32` and `compressed: u8`).
pub const DATA_BODY_OFFSET: usize = 5;
/// Bytes of a frame's `len: u32`, the header's first field.
const LEN_FIELD: usize = size_of::<u32>();
/// Bytes of a frame's type, the header's second field (counted by `len`, like the body).
const TYPE_FIELD: usize = 1;
/// Length of the frame header: `len: u32` and `type: u8`.
pub const HEADER_LEN: usize = LEN_FIELD + TYPE_FIELD;
/// Most entries in one `VerifiedList` frame (each 36 bytes), keeping it under `MAX_FRAME_LEN`.
pub const MAX_VERIFIED_PER_FRAME: usize = 16 * 1024;
/// Most entries in the one `PartialList` frame (each 12 bytes): a receiver has only a few chunks under way at a
/// time (the read-ahead of each stream), and lists the furthest along if it ever has more.
pub const MAX_PARTIAL_ENTRIES: usize = 1024;
/// Longest text field (names, messages) in bytes.
pub const MAX_TEXT_LEN: usize = 4096;

/// Why a peer refused or ended a transfer, carried by [`Frame::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The peer broke the protocol (unexpected or malformed frame).
    Protocol,
    /// No protocol version in common.
    Version,
    /// The shared secret did not match.
    Auth,
    /// The receiver's disk is full.
    NoSpace,
    /// The receiver may not write where it was told to.
    Permission,
    /// The file name was refused as unsafe.
    BadName,
    /// The session is in use by another connection; retry later.
    Busy,
    /// The offer does not match the session it names (different file).
    SessionMismatch,
    /// The whole file did not verify.
    Verify,
    /// Anything else on the peer's side.
    Internal,
}

impl ErrorCode {
    fn to_u8(self) -> u8 {
        match self {
            Self::Protocol => 1,
            Self::Version => 2,
            Self::Auth => 3,
            Self::NoSpace => 4,
            Self::Permission => 5,
            Self::BadName => 6,
            Self::Busy => 7,
            Self::SessionMismatch => 8,
            Self::Verify => 9,
            Self::Internal => 10,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Protocol,
            2 => Self::Version,
            3 => Self::Auth,
            4 => Self::NoSpace,
            5 => Self::Permission,
            6 => Self::BadName,
            7 => Self::Busy,
            8 => Self::SessionMismatch,
            9 => Self::Verify,
            // Codes from newer peers read as the generic case.
            _ => Self::Internal,
        }
    }
}

/// What the sender proposes: one file, its size and how it is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer<'a> {
    pub session_id: SessionId,
    pub file_name: &'a str,
    pub file_size: u64,
    pub chunk_size: u64,
    /// Source modification time, nanoseconds since the Unix epoch (informative).
    pub mtime_ns: i64,
}

/// One frame. Borrowed fields point into the received buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame<'a> {
    /// First frame each way: protocol versions spoken.
    Hello {
        min_version: u16,
        max_version: u16,
        software: &'a str,
    },
    /// One SPAKE2 message.
    Pake { message: &'a [u8] },
    /// Key confirmation: HMAC of the TLS exporter value under the PAKE key.
    Confirm { mac: [u8; 32] },
    /// Sender → receiver: the file to transfer.
    Offer(Offer<'a>),
    /// Receiver → sender: the offer is accepted; `verified_count` chunks follow in `VerifiedList` frames.
    Accept { verified_count: u32 },
    /// Receiver → sender: chunks already verified, with their SHA-256.
    VerifiedList { entries: &'a [u8] },
    /// Receiver → sender (version 2, right after the verified list): chunks not verified of which a prefix is on
    /// the receiver's disk, durable, with its length in bytes.
    PartialList { entries: &'a [u8] },
    /// Sender → receiver: the bytes of chunk `index` follow in `Data` frames.
    ChunkBegin { index: u32 },
    /// Sender → receiver (version 2): like `ChunkBegin`, but the receiver has the chunk's first `from` bytes
    /// already; its bytes from there follow in `Data` frames.
    ChunkResume { index: u32, from: u64 },
    /// A piece of the current chunk: `raw_len` file bytes, zstd-compressed when `compressed`.
    Data {
        raw_len: u32,
        compressed: bool,
        payload: &'a [u8],
    },
    /// End of the current chunk and the SHA-256 of its original bytes.
    ChunkEnd { sha256: [u8; 32] },
    /// Receiver → sender: chunk `index` verified and durable (`ok`), or failed verification and must be re-sent.
    ChunkDone { index: u32, ok: bool },
    /// Sender → receiver: every chunk was sent; the SHA-256 of the whole file.
    FileEnd { sha256: [u8; 32] },
    /// Sender → receiver (version 3), right before `FileEnd`: the SHA-256 over the ordered list of every chunk's
    /// SHA-256 (see [`crate::hashing::ChunkListHasher`]).
    ChunkListHash { sha256: [u8; 32] },
    /// Receiver → sender: the whole file verified and is in place under `final_name` (or not, `ok` false).
    FileDone {
        ok: bool,
        sha256: [u8; 32],
        final_name: &'a str,
    },
    /// Either way: the transfer cannot go on.
    Error { code: ErrorCode, message: &'a str },
    /// Nothing; keeps an idle connection's NAT bindings and liveness checks fresh.
    KeepAlive,
    /// Sender → receiver, after the verified list: file bytes will travel over DCSP (UDP) on `streams`
    /// connections `conn_id`, `conn_id + 1`, … (stream `s` carries the blocks numbered `s` modulo `streams`),
    /// in shards of `shard_size` bytes, `data_shards` original shards per block, speaking DCSP wire version
    /// `dcsp_version`.
    UdpStart {
        conn_id: u64,
        shard_size: u32,
        data_shards: u8,
        dcsp_version: u8,
        streams: u8,
    },
    /// Receiver → sender: DCSP is ready on UDP port `port` of the address the sender connected to.
    UdpReady { port: u16 },
    /// Sender → receiver (DCSP only): the SHA-256 of chunk `index`'s original bytes.
    ChunkHash { index: u32, sha256: [u8; 32] },
}

/// A frame that could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
    #[error("empty frame")]
    Empty,
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    #[error("truncated {0} frame")]
    Truncated(&'static str),
    #[error("{0} frame has {1} trailing bytes")]
    Trailing(&'static str, usize),
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// Frame type bytes (see PROTOCOL.md).
pub mod ty {
    pub const HELLO: u8 = 0x01;
    pub const PAKE: u8 = 0x02;
    pub const CONFIRM: u8 = 0x03;
    pub const OFFER: u8 = 0x10;
    pub const ACCEPT: u8 = 0x11;
    pub const VERIFIED_LIST: u8 = 0x12;
    pub const PARTIAL_LIST: u8 = 0x13;
    pub const CHUNK_BEGIN: u8 = 0x20;
    pub const DATA: u8 = 0x21;
    pub const CHUNK_END: u8 = 0x22;
    pub const CHUNK_DONE: u8 = 0x23;
    pub const FILE_END: u8 = 0x30;
    pub const FILE_DONE: u8 = 0x31;
    pub const CHUNK_LIST_HASH: u8 = 0x32;
    pub const ERROR: u8 = 0x7e;
    pub const KEEPALIVE: u8 = 0x7f;
    pub const UDP_START: u8 = 0x40;
    pub const UDP_READY: u8 = 0x41;
    pub const CHUNK_HASH: u8 = 0x24;
    pub const CHUNK_RESUME: u8 = 0x25;
}

/// Reads the frame header: returns the body length (after the type byte) and the type.
pub fn parse_header(header: [u8; HEADER_LEN]) -> Result<(usize, u8), WireError> {
    let mut len = [0u8; LEN_FIELD];
    len.copy_from_slice(&header[..LEN_FIELD]);
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 {
        return Err(WireError::Empty);
    }
    if len > MAX_FRAME_LEN {
        return Err(WireError::TooLarge(len));
    }
    Ok((len - TYPE_FIELD, header[LEN_FIELD]))
}

/// The header of a `Data` frame whose payload the caller writes separately (avoids copying file bytes).
pub fn data_header(
    raw_len: u32,
    compressed: bool,
    payload_len: usize,
) -> [u8; HEADER_LEN + DATA_BODY_OFFSET] {
    let len = (TYPE_FIELD + DATA_BODY_OFFSET + payload_len) as u32;
    let mut h = [0u8; HEADER_LEN + DATA_BODY_OFFSET];
    h[..LEN_FIELD].copy_from_slice(&len.to_be_bytes());
    h[LEN_FIELD] = ty::DATA;
    // The body starts `raw_len: u32 | compressed: u8`.
    let flag_at = HEADER_LEN + size_of::<u32>();
    h[HEADER_LEN..flag_at].copy_from_slice(&raw_len.to_be_bytes());
    h[flag_at] = u8::from(compressed);
    h
}

impl<'a> Frame<'a> {
    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "Hello",
            Frame::Pake { .. } => "Pake",
            Frame::Confirm { .. } => "Confirm",
            Frame::Offer(_) => "Offer",
            Frame::Accept { .. } => "Accept",
            Frame::VerifiedList { .. } => "VerifiedList",
            Frame::PartialList { .. } => "PartialList",
            Frame::ChunkBegin { .. } => "ChunkBegin",
            Frame::ChunkResume { .. } => "ChunkResume",
            Frame::Data { .. } => "Data",
            Frame::ChunkEnd { .. } => "ChunkEnd",
            Frame::ChunkDone { .. } => "ChunkDone",
            Frame::FileEnd { .. } => "FileEnd",
            Frame::ChunkListHash { .. } => "ChunkListHash",
            Frame::FileDone { .. } => "FileDone",
            Frame::Error { .. } => "Error",
            Frame::KeepAlive => "KeepAlive",
            Frame::UdpStart { .. } => "UdpStart",
            Frame::UdpReady { .. } => "UdpReady",
            Frame::ChunkHash { .. } => "ChunkHash",
        }
    }

    /// Appends the whole frame (header included) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_LEN]);
        let t = match self {
            Frame::Hello {
                min_version,
                max_version,
                software,
            } => {
                out.extend_from_slice(&MAGIC);
                out.extend_from_slice(&min_version.to_be_bytes());
                out.extend_from_slice(&max_version.to_be_bytes());
                put_text(out, software);
                ty::HELLO
            }
            Frame::Pake { message } => {
                put_bytes(out, message);
                ty::PAKE
            }
            Frame::Confirm { mac } => {
                out.extend_from_slice(mac);
                ty::CONFIRM
            }
            Frame::Offer(o) => {
                out.extend_from_slice(&o.session_id.0);
                out.extend_from_slice(&o.file_size.to_be_bytes());
                out.extend_from_slice(&o.chunk_size.to_be_bytes());
                out.extend_from_slice(&o.mtime_ns.to_be_bytes());
                put_text(out, o.file_name);
                ty::OFFER
            }
            Frame::Accept { verified_count } => {
                out.extend_from_slice(&verified_count.to_be_bytes());
                ty::ACCEPT
            }
            Frame::VerifiedList { entries } => {
                out.extend_from_slice(entries);
                ty::VERIFIED_LIST
            }
            Frame::PartialList { entries } => {
                out.extend_from_slice(entries);
                ty::PARTIAL_LIST
            }
            Frame::ChunkBegin { index } => {
                out.extend_from_slice(&index.to_be_bytes());
                ty::CHUNK_BEGIN
            }
            Frame::ChunkResume { index, from } => {
                out.extend_from_slice(&index.to_be_bytes());
                out.extend_from_slice(&from.to_be_bytes());
                ty::CHUNK_RESUME
            }
            Frame::Data {
                raw_len,
                compressed,
                payload,
            } => {
                out.extend_from_slice(&raw_len.to_be_bytes());
                out.push(u8::from(*compressed));
                out.extend_from_slice(payload);
                ty::DATA
            }
            Frame::ChunkEnd { sha256 } => {
                out.extend_from_slice(sha256);
                ty::CHUNK_END
            }
            Frame::ChunkDone { index, ok } => {
                out.extend_from_slice(&index.to_be_bytes());
                out.push(u8::from(*ok));
                ty::CHUNK_DONE
            }
            Frame::FileEnd { sha256 } => {
                out.extend_from_slice(sha256);
                ty::FILE_END
            }
            Frame::ChunkListHash { sha256 } => {
                out.extend_from_slice(sha256);
                ty::CHUNK_LIST_HASH
            }
            Frame::FileDone {
                ok,
                sha256,
                final_name,
            } => {
                out.push(u8::from(*ok));
                out.extend_from_slice(sha256);
                put_text(out, final_name);
                ty::FILE_DONE
            }
            Frame::Error { code, message } => {
                out.push(code.to_u8());
                put_text(out, message);
                ty::ERROR
            }
            Frame::KeepAlive => ty::KEEPALIVE,
            Frame::UdpStart {
                conn_id,
                shard_size,
                data_shards,
                dcsp_version,
                streams,
            } => {
                out.extend_from_slice(&conn_id.to_be_bytes());
                out.extend_from_slice(&shard_size.to_be_bytes());
                out.push(*data_shards);
                out.push(*dcsp_version);
                out.push(*streams);
                ty::UDP_START
            }
            Frame::UdpReady { port } => {
                out.extend_from_slice(&port.to_be_bytes());
                ty::UDP_READY
            }
            Frame::ChunkHash { index, sha256 } => {
                out.extend_from_slice(&index.to_be_bytes());
                out.extend_from_slice(sha256);
                ty::CHUNK_HASH
            }
        };
        let len = (out.len() - start - LEN_FIELD) as u32;
        out[start..start + LEN_FIELD].copy_from_slice(&len.to_be_bytes());
        out[start + LEN_FIELD] = t;
    }

    /// Decodes the body of a frame of type `frame_type`.
    pub fn decode(frame_type: u8, body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader {
            buf: body,
            what: "frame",
        };
        let frame = match frame_type {
            ty::HELLO => {
                r.what = "Hello";
                if r.array()? != MAGIC {
                    return Err(WireError::Malformed("Hello: not a TrackShift peer"));
                }
                Frame::Hello {
                    min_version: r.u16()?,
                    max_version: r.u16()?,
                    software: r.text()?,
                }
            }
            ty::PAKE => {
                r.what = "Pake";
                Frame::Pake {
                    message: r.bytes()?,
                }
            }
            ty::CONFIRM => {
                r.what = "Confirm";
                Frame::Confirm { mac: r.array()? }
            }
            ty::OFFER => {
                r.what = "Offer";
                Frame::Offer(Offer {
                    session_id: SessionId(r.array()?),
                    file_size: r.u64()?,
                    chunk_size: r.u64()?,
                    mtime_ns: r.u64()? as i64,
                    file_name: r.text()?,
                })
            }
            ty::ACCEPT => {
                r.what = "Accept";
                Frame::Accept {
                    verified_count: r.u32()?,
                }
            }
            ty::VERIFIED_LIST => {
                r.what = "VerifiedList";
                let entries = r.rest();
                if !entries.len().is_multiple_of(VERIFIED_ENTRY_LEN)
                    || entries.len() / VERIFIED_ENTRY_LEN > MAX_VERIFIED_PER_FRAME
                {
                    return Err(WireError::Malformed("VerifiedList length"));
                }
                Frame::VerifiedList { entries }
            }
            ty::PARTIAL_LIST => {
                r.what = "PartialList";
                let entries = r.rest();
                if !entries.len().is_multiple_of(PARTIAL_ENTRY_LEN)
                    || entries.len() / PARTIAL_ENTRY_LEN > MAX_PARTIAL_ENTRIES
                {
                    return Err(WireError::Malformed("PartialList length"));
                }
                Frame::PartialList { entries }
            }
            ty::CHUNK_BEGIN => {
                r.what = "ChunkBegin";
                Frame::ChunkBegin { index: r.u32()? }
            }
            ty::CHUNK_RESUME => {
                r.what = "ChunkResume";
                Frame::ChunkResume {
                    index: r.u32()?,
                    from: r.u64()?,
                }
            }
            ty::DATA => {
                r.what = "Data";
                let raw_len = r.u32()?;
                let compressed = r.flag()?;
                let payload = r.rest();
                if raw_len as usize > DATA_PIECE
                    || (!compressed && payload.len() != raw_len as usize)
                {
                    return Err(WireError::Malformed("Data lengths"));
                }
                Frame::Data {
                    raw_len,
                    compressed,
                    payload,
                }
            }
            ty::CHUNK_END => {
                r.what = "ChunkEnd";
                Frame::ChunkEnd { sha256: r.array()? }
            }
            ty::CHUNK_DONE => {
                r.what = "ChunkDone";
                Frame::ChunkDone {
                    index: r.u32()?,
                    ok: r.flag()?,
                }
            }
            ty::FILE_END => {
                r.what = "FileEnd";
                Frame::FileEnd { sha256: r.array()? }
            }
            ty::CHUNK_LIST_HASH => {
                r.what = "ChunkListHash";
                Frame::ChunkListHash { sha256: r.array()? }
            }
            ty::FILE_DONE => {
                r.what = "FileDone";
                Frame::FileDone {
                    ok: r.flag()?,
                    sha256: r.array()?,
                    final_name: r.text()?,
                }
            }
            ty::ERROR => {
                r.what = "Error";
                Frame::Error {
                    code: ErrorCode::from_u8(r.u8()?),
                    message: r.text()?,
                }
            }
            ty::KEEPALIVE => Frame::KeepAlive,
            ty::UDP_START => {
                r.what = "UdpStart";
                Frame::UdpStart {
                    conn_id: r.u64()?,
                    shard_size: r.u32()?,
                    data_shards: r.u8()?,
                    dcsp_version: r.u8()?,
                    streams: r.u8()?,
                }
            }
            ty::UDP_READY => {
                r.what = "UdpReady";
                Frame::UdpReady { port: r.u16()? }
            }
            ty::CHUNK_HASH => {
                r.what = "ChunkHash";
                Frame::ChunkHash {
                    index: r.u32()?,
                    sha256: r.array()?,
                }
            }
            other => return Err(WireError::UnknownType(other)),
        };
        if !r.buf.is_empty() {
            return Err(WireError::Trailing(frame.name(), r.buf.len()));
        }
        Ok(frame)
    }
}

/// Bytes of a `VerifiedList` entry's chunk index (u32), which its SHA-256 follows.
const VERIFIED_INDEX_LEN: usize = size_of::<u32>();
/// Bytes per `VerifiedList` entry: chunk index (u32) and SHA-256.
pub const VERIFIED_ENTRY_LEN: usize = VERIFIED_INDEX_LEN + 32;

/// Encodes `(index, sha256)` pairs as the body of a `VerifiedList` frame.
pub fn encode_verified_entries(entries: &[(u32, [u8; 32])]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * VERIFIED_ENTRY_LEN);
    for (index, sha) in entries {
        out.extend_from_slice(&index.to_be_bytes());
        out.extend_from_slice(sha);
    }
    out
}

/// Reads back the entries of a `VerifiedList` body (validated by `Frame::decode`).
pub fn verified_entries(entries: &[u8]) -> impl Iterator<Item = (u32, [u8; 32])> + '_ {
    entries.chunks_exact(VERIFIED_ENTRY_LEN).map(|e| {
        let (index, hash) = e.split_at(VERIFIED_INDEX_LEN);
        let mut idx = [0u8; VERIFIED_INDEX_LEN];
        idx.copy_from_slice(index);
        let mut sha = [0u8; 32];
        sha.copy_from_slice(hash);
        (u32::from_be_bytes(idx), sha)
    })
}

/// Bytes per `PartialList` entry: chunk index (u32) and the length of its prefix on disk (u64).
pub const PARTIAL_ENTRY_LEN: usize = size_of::<u32>() + size_of::<u64>();

/// Encodes `(index, bytes)` pairs as the body of a `PartialList` frame.
pub fn encode_partial_entries(entries: &[(u32, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * PARTIAL_ENTRY_LEN);
    for (index, bytes) in entries {
        out.extend_from_slice(&index.to_be_bytes());
        out.extend_from_slice(&bytes.to_be_bytes());
    }
    out
}

/// Reads back the entries of a `PartialList` body (validated by `Frame::decode`).
pub fn partial_entries(entries: &[u8]) -> impl Iterator<Item = (u32, u64)> + '_ {
    entries.chunks_exact(PARTIAL_ENTRY_LEN).map(|e| {
        let mut index = [0u8; 4];
        index.copy_from_slice(&e[..4]);
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&e[4..]);
        (u32::from_be_bytes(index), u64::from_be_bytes(bytes))
    })
}

fn put_text(out: &mut Vec<u8>, s: &str) {
    let s = truncate_utf8(s, MAX_TEXT_LEN);
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

/// `s` cut to at most `max` bytes on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated(self.what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    fn flag(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Malformed(self.what)),
        }
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u16()? as usize;
        self.take(n)
    }

    fn text(&mut self) -> Result<&'a str, WireError> {
        let b = self.bytes()?;
        if b.len() > MAX_TEXT_LEN {
            return Err(WireError::Malformed(self.what));
        }
        std::str::from_utf8(b).map_err(|_| WireError::Malformed(self.what))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(frame: &Frame<'_>) {
        let mut buf = Vec::new();
        frame.encode(&mut buf);
        let (len, t) = parse_header(buf[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!(len, buf.len() - HEADER_LEN);
        assert_eq!(&Frame::decode(t, &buf[HEADER_LEN..]).unwrap(), frame);
    }

    #[test]
    fn every_frame_round_trips() {
        let id = SessionId([7; 16]);
        let entries = encode_verified_entries(&[(3, [9; 32]), (5, [1; 32])]);
        for f in [
            Frame::Hello {
                min_version: 1,
                max_version: 2,
                software: "trackshift 0.1",
            },
            Frame::Pake {
                message: &[1, 2, 3],
            },
            Frame::Confirm { mac: [4; 32] },
            Frame::Offer(Offer {
                session_id: id,
                file_name: "a.bin",
                file_size: 99,
                chunk_size: 5 << 20,
                mtime_ns: -5,
            }),
            Frame::Accept { verified_count: 2 },
            Frame::VerifiedList { entries: &entries },
            Frame::PartialList {
                entries: &encode_partial_entries(&[(3, 7 << 20), (9, 1)]),
            },
            Frame::ChunkBegin { index: 4 },
            Frame::ChunkResume {
                index: 4,
                from: 3 << 20,
            },
            Frame::Data {
                raw_len: 3,
                compressed: false,
                payload: b"abc",
            },
            Frame::Data {
                raw_len: 100,
                compressed: true,
                payload: b"zz",
            },
            Frame::ChunkEnd { sha256: [2; 32] },
            Frame::ChunkDone { index: 9, ok: true },
            Frame::FileEnd { sha256: [3; 32] },
            Frame::ChunkListHash { sha256: [4; 32] },
            Frame::FileDone {
                ok: true,
                sha256: [5; 32],
                final_name: "a (1).bin",
            },
            Frame::Error {
                code: ErrorCode::NoSpace,
                message: "disk full",
            },
            Frame::KeepAlive,
            Frame::UdpStart {
                conn_id: 77,
                shard_size: 1432,
                data_shards: 64,
                dcsp_version: 1,
                streams: 2,
            },
            Frame::UdpReady { port: 4433 },
            Frame::ChunkHash {
                index: 3,
                sha256: [6; 32],
            },
        ] {
            round_trip(&f);
        }
        let got: Vec<_> = verified_entries(&entries).collect();
        assert_eq!(got, vec![(3, [9; 32]), (5, [1; 32])]);
    }

    #[test]
    fn data_header_matches_encode() {
        let mut buf = Vec::new();
        Frame::Data {
            raw_len: 3,
            compressed: false,
            payload: b"abc",
        }
        .encode(&mut buf);
        assert_eq!(&buf[..10], &data_header(3, false, 3));
    }

    #[test]
    fn oversized_and_empty_headers_are_refused() {
        assert_eq!(parse_header([0, 0, 0, 0, 1]), Err(WireError::Empty));
        assert!(matches!(
            parse_header([0xff, 0xff, 0xff, 0xff, 1]),
            Err(WireError::TooLarge(_))
        ));
    }

    #[test]
    fn hostile_values_are_refused() {
        // Raw data whose length disagrees with its header.
        assert!(Frame::decode(ty::DATA, &[0, 0, 0, 5, 0, 1, 2]).is_err());
        // A piece larger than DATA_PIECE.
        assert!(Frame::decode(ty::DATA, &[0x10, 0, 0, 0, 1]).is_err());
        // A flag that is neither 0 nor 1.
        assert!(Frame::decode(ty::CHUNK_DONE, &[0, 0, 0, 1, 2]).is_err());
        // Not UTF-8.
        assert!(Frame::decode(ty::ERROR, &[1, 0, 1, 0xff]).is_err());
        assert!(Frame::decode(0x55, &[]).is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_error(t in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Frame::decode(t, &body);
        }

        #[test]
        fn offers_round_trip(name in "[^/]{1,64}", size in any::<u64>(), chunk in any::<u64>(), mtime in any::<i64>()) {
            round_trip(&Frame::Offer(Offer { session_id: SessionId([1; 16]), file_name: &name, file_size: size, chunk_size: chunk, mtime_ns: mtime }));
        }
    }
}

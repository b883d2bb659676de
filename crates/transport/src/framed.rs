//! Frames over an async byte stream (the TLS stream, or one half of it).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use trackshift_proto::frame::{self, data_header, HEADER_LEN};
use trackshift_proto::Frame;

use crate::TransportError;

/// Write buffer: coalesces small frames into one TLS record; large payloads bypass it.
const WRITE_BUFFER: usize = 64 * 1024;
/// Bytes reserved per frame of a flight: control frames (`Offer`, `UdpStart`, `ChunkHash`, `Confirm`…) are
/// rarely larger, so a flight is encoded without growing its buffer.
const FRAME_ESTIMATE: usize = 64;
/// Frames [`FrameReader::pump`] reads ahead of its consumer. Only small control frames go through it, and the
/// consumer falls behind only while it writes, so a few suffice; a full queue stops reading, which leaves the
/// back-pressure to TCP.
const PUMP_QUEUE: usize = 16;
/// A control frame's encoding buffer to start with: larger than any frame but an `Offer` with a long name or a
/// `VerifiedList`, for which it grows once and stays grown.
const SCRATCH_CAPACITY: usize = 256;

/// Reads one frame's type and body into `buf` (resized to the body). Oversized frames are refused before any
/// allocation.
pub async fn read_raw<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<u8, TransportError> {
    let mut header = [0u8; HEADER_LEN];
    r.read_exact(&mut header)
        .await
        .map_err(|e| TransportError::io("reading from peer", e))?;
    let (len, frame_type) = frame::parse_header(header)?;
    buf.clear();
    buf.reserve(len);
    // read_buf fills the spare capacity without zeroing it first (1 MiB per data frame).
    let mut limited = r.take(len as u64);
    while buf.len() < len {
        let n = limited
            .read_buf(buf)
            .await
            .map_err(|e| TransportError::io("reading from peer", e))?;
        if n == 0 {
            return Err(TransportError::Closed);
        }
    }
    Ok(frame_type)
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    f: &Frame<'_>,
) -> Result<(), TransportError> {
    write_frames(w, std::slice::from_ref(f)).await
}

/// Writes a flight of frames with one write (one TLS record, usually one TCP segment: fewer packets to lose)
/// and flushes it.
pub async fn write_frames<W: AsyncWrite + Unpin>(
    w: &mut W,
    frames: &[Frame<'_>],
) -> Result<(), TransportError> {
    let mut buf = Vec::with_capacity(FRAME_ESTIMATE * frames.len());
    for f in frames {
        f.encode(&mut buf);
    }
    write(w, &buf).await?;
    w.flush()
        .await
        .map_err(|e| TransportError::io("writing to peer", e))
}

async fn write<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> Result<(), TransportError> {
    w.write_all(bytes)
        .await
        .map_err(|e| TransportError::io("writing to peer", e))
}

/// Reads frames from one direction of a connection, reusing one buffer.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::new(),
        }
    }

    /// The next frame, borrowed from the internal buffer. A peer's `Error` frame comes back as a frame; the
    /// caller decides what it means.
    pub async fn next(&mut self) -> Result<Frame<'_>, TransportError> {
        let t = read_raw(&mut self.inner, &mut self.buf).await?;
        Ok(Frame::decode(t, &self.buf)?)
    }

    /// The next frame's type and body, read into a caller-owned buffer (to hand to another thread).
    pub async fn next_into(&mut self, buf: &mut Vec<u8>) -> Result<u8, TransportError> {
        read_raw(&mut self.inner, buf).await
    }
}

/// What a frame pump hands over: each frame's type and body, or the error that ended the connection.
pub type PumpedFrame = Result<(u8, Vec<u8>), TransportError>;

impl<R: AsyncRead + Unpin + Send + 'static> FrameReader<R> {
    /// Reads frames on a task of its own and hands them over a channel (reading a frame is not cancel-safe,
    /// so it must not sit in a `select!`). The task ends after the first error, or when the channel's receiver
    /// is dropped.
    pub fn pump(
        mut self,
    ) -> (
        tokio::sync::mpsc::Receiver<PumpedFrame>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel::<PumpedFrame>(PUMP_QUEUE);
        let task = tokio::spawn(async move {
            loop {
                let mut buf = Vec::new();
                let r = self.next_into(&mut buf).await.map(|t| (t, buf));
                let stop = r.is_err();
                if tx.send(r).await.is_err() || stop {
                    break;
                }
            }
        });
        (rx, task)
    }
}

/// Writes frames to one direction of a connection.
#[derive(Debug)]
pub struct FrameWriter<W: AsyncWrite> {
    inner: BufWriter<W>,
    scratch: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner: BufWriter::with_capacity(WRITE_BUFFER, inner),
            scratch: Vec::with_capacity(SCRATCH_CAPACITY),
        }
    }

    /// Queues a frame (call `flush` to push it out).
    pub async fn send(&mut self, f: &Frame<'_>) -> Result<(), TransportError> {
        self.scratch.clear();
        f.encode(&mut self.scratch);
        let Self { inner, scratch } = self;
        write(inner, scratch).await
    }

    /// Queues frames already encoded (`Frame::encode`), as a sans-IO session hands them over.
    pub async fn send_raw(&mut self, encoded: &[u8]) -> Result<(), TransportError> {
        write(&mut self.inner, encoded).await
    }

    /// Queues a `Data` frame without copying `payload` into a frame buffer first.
    pub async fn send_data(
        &mut self,
        raw_len: u32,
        compressed: bool,
        payload: &[u8],
    ) -> Result<(), TransportError> {
        self.start_data(raw_len, compressed, payload.len()).await?;
        self.send_data_part(payload).await
    }

    /// The header of a `Data` frame whose `payload_len` bytes follow in [`FrameWriter::send_data_part`] calls
    /// (exactly that many, before any other frame: the peer reads them as this frame's body).
    pub async fn start_data(
        &mut self,
        raw_len: u32,
        compressed: bool,
        payload_len: usize,
    ) -> Result<(), TransportError> {
        write(
            &mut self.inner,
            &data_header(raw_len, compressed, payload_len),
        )
        .await
    }

    /// Part of the body of the `Data` frame [`FrameWriter::start_data`] began.
    pub async fn send_data_part(&mut self, part: &[u8]) -> Result<(), TransportError> {
        write(&mut self.inner, part).await
    }

    pub async fn flush(&mut self) -> Result<(), TransportError> {
        self.inner
            .flush()
            .await
            .map_err(|e| TransportError::io("writing to peer", e))
    }

    /// Flushes and closes the write direction (TLS close_notify).
    pub async fn shutdown(&mut self) -> Result<(), TransportError> {
        self.inner
            .shutdown()
            .await
            .map_err(|e| TransportError::io("closing connection", e))
    }
}

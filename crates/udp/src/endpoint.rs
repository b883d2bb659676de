//! [`UdpEndpoint`]: one UDP socket set up for the data plane, with batched sends (GSO) and receives (GRO), and
//! [`RecvBatch`], the buffers a receive fills.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};

use crate::sys;

/// Kernel send and receive buffer size we ask for (the kernel reports twice this back): about a quarter of a
/// second of datagrams at 1 Gbit/s, so a plane thread that pauses briefly (scheduling, a full writer queue)
/// loses nothing to a full socket buffer.
const SOCKET_BUFFER: usize = 32 * 1024 * 1024;

/// Receive slots per batch: the most `recvmmsg` messages quinn-udp takes in one call.
const RECV_SLOTS: usize = quinn_udp::BATCH_SIZE;

/// Bytes per receive slot: a GRO-coalesced train is at most one 64 KiB skb.
const RECV_SLOT_LEN: usize = 64 * 1024;

/// Largest UDP payload of one (GSO super-)datagram over IPv4: 65535 - 20 (IP) - 8 (UDP). The kernel
/// refuses a GSO send whose total payload is larger, so a call carries at most this many bytes.
const MAX_UDP_PAYLOAD: usize = 65_507;

/// A UDP socket for the DCSP data plane: big buffers, batched send (GSO) and receive (GRO) through quinn-udp.
#[derive(Debug)]
pub struct UdpEndpoint {
    socket: UdpSocket,
    state: UdpSocketState,
}

impl UdpEndpoint {
    /// Binds (non-blocking). `reuse_port` sets SO_REUSEPORT before bind (for several sockets on one port).
    /// Asks for 32 MiB send and receive buffers (SO_SNDBUFFORCE/SO_RCVBUFFORCE when root, falling back to
    /// SO_SNDBUF/SO_RCVBUF, which the kernel caps at `net.core.wmem_max`/`rmem_max`).
    pub fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<Self> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_nonblocking(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        // Buffer sizes are a wish, not a requirement: a small buffer costs throughput, not correctness.
        if sys::set_send_buffer_force(socket.as_fd(), SOCKET_BUFFER).is_err() {
            let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
        }
        if sys::set_recv_buffer_force(socket.as_fd(), SOCKET_BUFFER).is_err() {
            let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
        }
        socket.bind(&addr.into())?;
        let socket: UdpSocket = socket.into();
        // Turns on GRO, DF (IP_PMTUDISC_PROBE), packet info and timestamps; probes GSO support.
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        Ok(Self { socket, state })
    }

    /// Binds `n` sockets on one address (SO_REUSEPORT) and has the kernel steer each datagram to the socket
    /// numbered `key % n`, where `key` is the 32-bit big-endian word at byte `key_offset` of the UDP payload
    /// (a classic BPF program, SO_ATTACH_REUSEPORT_CBPF). A datagram too short to hold the word goes to socket
    /// 0. The same key always reaches the same socket, whatever address it comes from, so one thread can own
    /// everything keyed by it. [`steered_index`] tells which socket a key reaches. With `n == 1`, or where the
    /// kernel has no such option, this is one plain socket.
    pub fn bind_steered(addr: SocketAddr, n: usize, key_offset: u32) -> io::Result<Vec<Self>> {
        if n <= 1 || !cfg!(any(target_os = "linux", target_os = "android")) {
            return Ok(vec![Self::bind(addr, false)?]);
        }
        let n_u32 = u32::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let first = Self::bind(addr, true)?;
        // Port 0 picks a free port for the first socket; the others join it there.
        let addr = first.local_addr()?;
        sys::attach_reuseport_steering(first.socket.as_fd(), key_offset, n_u32)?;
        let mut group = vec![first];
        for _ in 1..n {
            group.push(Self::bind(addr, true)?);
        }
        Ok(group)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// How many equal-size segments one send may carry (1 without GSO).
    ///
    /// This can drop to 1 during the life of the socket, if the kernel or the device refuses a GSO send.
    pub fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Sends `data`, a run of datagrams of `segment_size` bytes each (the last may be shorter), to `dst`.
    /// Uses one GSO send where the kernel supports it (splitting into at most max_gso_segments per call, and
    /// at most 64 KiB per call), one sendmsg per datagram otherwise. Returns the number of bytes handed to the
    /// kernel; on WouldBlock with nothing sent returns Err(WouldBlock); a partial send returns Ok(bytes sent
    /// so far, a multiple of segment_size). Any other error after some datagrams went out also ends the call
    /// with Ok(bytes sent so far); with nothing sent it is returned.
    ///
    /// Datagrams are sent with DF set, so `segment_size` must fit the path MTU (see [`Self::path_mtu`]);
    /// an oversize segment fails with `EMSGSIZE`, or `EINVAL` in a GSO send, after which the socket stops
    /// using GSO.
    pub fn send_batch(
        &mut self,
        dst: SocketAddr,
        data: &[u8],
        segment_size: usize,
    ) -> io::Result<usize> {
        if segment_size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "segment_size must be at least 1",
            ));
        }
        let mut sent = 0;
        // GSO first; when the kernel refuses it part-way (max_gso_segments drops to 1), the rest goes out
        // one datagram at a time.
        if self.segments_per_send(segment_size) > 1 && data.len() > segment_size {
            match self.send_gso(dst, data, segment_size) {
                Ok(n) => sent = n,
                Err(e) if self.state.max_gso_segments() > 1 || !is_gso_refusal(&e) => {
                    return Err(e)
                }
                Err(_) => {}
            }
            if sent == data.len() || self.state.max_gso_segments() > 1 {
                return Ok(sent);
            }
        }
        match self.send_each(dst, &data[sent..], segment_size) {
            Ok(n) => Ok(sent + n),
            Err(_) if sent > 0 => Ok(sent),
            Err(e) => Err(e),
        }
    }

    /// Segments per GSO send for this segment size: bounded by the kernel's limit and the 64 KiB total.
    fn segments_per_send(&self, segment_size: usize) -> usize {
        self.state
            .max_gso_segments()
            .min(MAX_UDP_PAYLOAD / segment_size)
            .max(1)
    }

    /// GSO sends of up to `segments_per_send` segments each; stops at the first error, returning Ok with the
    /// bytes sent if there were any. Also stops, with Ok, if GSO gets switched off part-way.
    fn send_gso(&self, dst: SocketAddr, data: &[u8], segment_size: usize) -> io::Result<usize> {
        let mut sent = 0;
        while sent < data.len() {
            let per_send = self.segments_per_send(segment_size);
            if per_send <= 1 {
                break;
            }
            let end = data.len().min(sent + per_send * segment_size);
            let transmit = Transmit {
                destination: dst,
                ecn: None,
                contents: &data[sent..end],
                segment_size: Some(segment_size),
                src_ip: None,
            };
            match self
                .state
                .try_send(UdpSockRef::from(&self.socket), &transmit)
            {
                Ok(()) => sent = end,
                Err(e) if sent == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(sent)
    }

    /// One sendmsg per datagram; same return convention as `send_gso`.
    fn send_each(&self, dst: SocketAddr, data: &[u8], segment_size: usize) -> io::Result<usize> {
        let mut sent = 0;
        for datagram in data.chunks(segment_size) {
            let transmit = Transmit {
                destination: dst,
                ecn: None,
                contents: datagram,
                segment_size: None,
                src_ip: None,
            };
            match self
                .state
                .try_send(UdpSockRef::from(&self.socket), &transmit)
            {
                Ok(()) => sent += datagram.len(),
                Err(e) if sent == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(sent)
    }

    /// Receives what is waiting without blocking (Err(WouldBlock) when nothing is). GRO-coalesced datagrams
    /// are split again: after it returns, `batch.iter()` yields each datagram as (source address, bytes).
    /// Returns the number of datagrams (after splitting). At most 32 receive slots of 64 KiB are filled per
    /// call, so call it again until WouldBlock to drain the socket.
    pub fn recv_batch(&mut self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.filled = 0;
        let mut chunks = batch.buf.chunks_exact_mut(RECV_SLOT_LEN);
        let mut slices: [IoSliceMut<'_>; RECV_SLOTS] =
            std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
        let messages =
            self.state
                .recv(UdpSockRef::from(&self.socket), &mut slices, &mut batch.meta)?;
        batch.filled = messages.min(RECV_SLOTS);
        Ok(batch.len())
    }

    /// Waits until the socket is readable or `timeout` passes (None: wait forever). Nanosecond timeouts
    /// (ppoll), because pacing sleeps are often well under a millisecond. Returns true when readable (or
    /// when an error is pending, which the next `recv_batch` reports).
    pub fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let deadline = timeout.map(|t| Instant::now().checked_add(t));
        loop {
            let remaining = match deadline {
                None => None,
                // A timeout too large for an Instant is as good as forever.
                Some(None) => None,
                Some(Some(d)) => Some(d.saturating_duration_since(Instant::now())),
            };
            match sys::poll_readable(self.socket.as_fd(), remaining) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// The path MTU the kernel knows towards `dst` (IP_MTU on a connected probe socket; IPV6_MTU for v6),
    /// e.g. 65535 on loopback (lo's 65536 capped at the largest IP packet), 1500 on a normal Ethernet/veth
    /// path. None if it cannot tell (no route, or not Linux). Subtract the IP and UDP headers (28 bytes for
    /// IPv4, 48 for IPv6) for the largest datagram payload.
    pub fn path_mtu(dst: SocketAddr) -> Option<usize> {
        let dst = match dst {
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(v4.into(), v6.port()),
                None => dst,
            },
            v4 => v4,
        };
        let probe = Socket::new(Domain::for_address(dst), Type::DGRAM, Some(Protocol::UDP)).ok()?;
        // connect() on UDP sends nothing: it only picks the route, which carries the MTU.
        probe.connect(&dst.into()).ok()?;
        sys::path_mtu(probe.as_fd(), dst.is_ipv6())
    }
}

/// Whether a send error is the kernel or device refusing GSO (quinn-udp then turns GSO off).
fn is_gso_refusal(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL))
}

/// Reusable receive buffers and metadata for `recv_batch` (sized for GRO: 32 slots of 64 KiB each, 2 MiB).
pub struct RecvBatch {
    /// `RECV_SLOTS` slots of `RECV_SLOT_LEN` bytes, back to back.
    buf: Box<[u8]>,
    meta: [RecvMeta; RECV_SLOTS],
    /// Slots filled by the last `recv_batch`.
    filled: usize,
}

impl RecvBatch {
    pub fn new() -> Self {
        Self {
            buf: vec![0u8; RECV_SLOTS * RECV_SLOT_LEN].into_boxed_slice(),
            meta: [RecvMeta::default(); RECV_SLOTS],
            filled: 0,
        }
    }

    /// Each datagram of the last `recv_batch`, in arrival order, as (source address, bytes).
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.meta[..self.filled]
            .iter()
            .enumerate()
            .flat_map(move |(slot, meta)| {
                let start = slot * RECV_SLOT_LEN;
                let data = &self.buf[start..start + meta.len.min(RECV_SLOT_LEN)];
                let stride = stride_of(meta);
                let addr = meta.addr;
                (0..datagrams_in(meta)).map(move |k| {
                    let from = (k * stride).min(data.len());
                    let to = ((k + 1) * stride).min(data.len());
                    (addr, &data[from..to])
                })
            })
    }

    /// Like [`Self::iter`], but the bytes are mutable: callers that decrypt in place need no copy.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (SocketAddr, &mut [u8])> {
        let filled = self.filled;
        self.meta[..filled]
            .iter()
            .zip(self.buf.chunks_exact_mut(RECV_SLOT_LEN))
            .flat_map(|(meta, slot)| {
                let mut rest = &mut slot[..meta.len.min(RECV_SLOT_LEN)];
                let stride = stride_of(meta);
                let addr = meta.addr;
                (0..datagrams_in(meta)).map(move |_| {
                    let r = std::mem::take(&mut rest);
                    let cut = stride.min(r.len());
                    let (datagram, tail) = r.split_at_mut(cut);
                    rest = tail;
                    (addr, datagram)
                })
            })
    }

    /// Datagrams held after the last `recv_batch` (GRO trains counted by their segments).
    pub fn len(&self) -> usize {
        self.meta[..self.filled].iter().map(datagrams_in).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvBatch")
            .field("slots", &RECV_SLOTS)
            .field("slot_len", &RECV_SLOT_LEN)
            .field("filled", &self.filled)
            .field("datagrams", &self.len())
            .finish()
    }
}

/// Segment size of one received message: the GRO stride, or the whole message without GRO.
fn stride_of(meta: &RecvMeta) -> usize {
    if meta.stride == 0 {
        meta.len.max(1)
    } else {
        meta.stride
    }
}

/// Datagrams in one received message; an empty datagram still counts as one.
fn datagrams_in(meta: &RecvMeta) -> usize {
    if meta.len == 0 {
        1
    } else {
        meta.len.min(RECV_SLOT_LEN).div_ceil(stride_of(meta))
    }
}

/// Which socket of a [`UdpEndpoint::bind_steered`] group of `n` receives datagrams whose steering word is
/// `key`.
pub fn steered_index(key: u32, n: usize) -> usize {
    match u32::try_from(n) {
        Ok(n) if n > 1 => (key % n) as usize,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::net::{Ipv4Addr, SocketAddrV4};

    const LOCALHOST: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));

    /// Datagram `i` of `size` bytes: its index in the first 4 bytes, then a pattern derived from it.
    fn datagram(i: u32, size: usize) -> Vec<u8> {
        let mut d: Vec<u8> = (0..size)
            .map(|k| (k as u32).wrapping_mul(31).wrapping_add(i.wrapping_mul(7)) as u8)
            .collect();
        d[..4].copy_from_slice(&i.to_be_bytes());
        d
    }

    /// Sends all of `data` (retrying WouldBlock and partial sends), receives until `want` datagrams are
    /// in or a few seconds pass; returns them in arrival order.
    fn send_and_collect(
        tx: &mut UdpEndpoint,
        rx: &mut UdpEndpoint,
        data: &[u8],
        segment_size: usize,
        want: usize,
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        let dst = rx.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut sent = 0;
        let mut got = Vec::new();
        let mut batch = RecvBatch::new();
        while got.len() < want && Instant::now() < deadline {
            if sent < data.len() {
                match tx.send_batch(dst, &data[sent..], segment_size) {
                    Ok(n) => {
                        assert!(n == data.len() - sent || n % segment_size == 0);
                        sent += n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("send_batch: {e}"),
                }
            }
            if !rx.wait_readable(Some(Duration::from_millis(10))).unwrap() {
                continue;
            }
            loop {
                match rx.recv_batch(&mut batch) {
                    Ok(n) => {
                        assert_eq!(n, batch.iter().count());
                        let shared: Vec<_> = batch.iter().map(|(a, d)| (a, d.to_vec())).collect();
                        let mutable: Vec<_> =
                            batch.iter_mut().map(|(a, d)| (a, d.to_vec())).collect();
                        assert_eq!(shared, mutable, "iter and iter_mut disagree");
                        got.extend(shared);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("recv_batch: {e}"),
                }
            }
        }
        assert_eq!(sent, data.len(), "not everything was sent");
        got
    }

    #[test]
    fn udp_batch_of_datagrams_arrives_intact() {
        let mut tx = UdpEndpoint::bind(LOCALHOST, false).unwrap();
        let mut rx = UdpEndpoint::bind(LOCALHOST, false).unwrap();
        eprintln!("max_gso_segments on loopback: {}", tx.max_gso_segments());
        assert!(tx.max_gso_segments() >= 1);
        const N: u32 = 100;
        const SIZE: usize = 1200;
        let data: Vec<u8> = (0..N).flat_map(|i| datagram(i, SIZE)).collect();

        let got = send_and_collect(&mut tx, &mut rx, &data, SIZE, N as usize);

        let src = tx.local_addr().unwrap();
        let mut by_index = BTreeSet::new();
        for (addr, d) in got {
            assert_eq!(addr, src);
            assert_eq!(d.len(), SIZE);
            let i = u32::from_be_bytes(d[..4].try_into().unwrap());
            assert_eq!(d, datagram(i, SIZE), "datagram {i} corrupted");
            assert!(by_index.insert(i), "datagram {i} twice");
        }
        assert_eq!(by_index.len(), N as usize, "datagrams lost");
    }

    #[test]
    fn udp_short_last_segment_keeps_its_length() {
        let mut tx = UdpEndpoint::bind(LOCALHOST, false).unwrap();
        let mut rx = UdpEndpoint::bind(LOCALHOST, false).unwrap();
        let mut data: Vec<u8> = (0..3).flat_map(|i| datagram(i, 1200)).collect();
        data.extend(datagram(3, 500));

        let got = send_and_collect(&mut tx, &mut rx, &data, 1200, 4);

        let lengths: Vec<usize> = got.iter().map(|(_, d)| d.len()).collect();
        assert_eq!(lengths, [1200, 1200, 1200, 500]);
        assert_eq!(got[3].1, datagram(3, 500));
    }

    #[test]
    fn udp_send_without_gso_sends_each_datagram() {
        let tx = UdpEndpoint::bind(LOCALHOST, false).unwrap();
        let mut rx = UdpEndpoint::bind(LOCALHOST, false).unwrap();
        let data: Vec<u8> = (0..5).flat_map(|i| datagram(i, 1000)).collect();
        let n = tx
            .send_each(rx.local_addr().unwrap(), &data[..4700], 1000)
            .unwrap();
        assert_eq!(n, 4700);
        assert!(rx.wait_readable(Some(Duration::from_secs(2))).unwrap());
        let mut batch = RecvBatch::new();
        let mut lengths = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while lengths.len() < 5 && Instant::now() < deadline {
            if let Ok(_n) = rx.recv_batch(&mut batch) {
                lengths.extend(batch.iter().map(|(_, d)| d.len()));
            }
        }
        assert_eq!(lengths, [1000, 1000, 1000, 1000, 700]);
    }

    #[test]
    fn udp_recv_on_idle_socket_would_block() {
        let mut rx = UdpEndpoint::bind(LOCALHOST, false).unwrap();
        let mut batch = RecvBatch::new();
        let err = rx.recv_batch(&mut batch).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(batch.is_empty());
        assert_eq!(batch.iter().count(), 0);
    }

    #[test]
    fn udp_path_mtu_to_loopback() {
        let mtu = UdpEndpoint::path_mtu("127.0.0.1:9".parse().unwrap());
        eprintln!("path_mtu(127.0.0.1) = {mtu:?}");
        assert!(mtu.unwrap() >= 1500);
    }

    #[test]
    fn udp_wait_readable_times_out_quickly() {
        let rx = UdpEndpoint::bind(LOCALHOST, false).unwrap();
        let start = Instant::now();
        assert!(!rx.wait_readable(Some(Duration::from_millis(1))).unwrap());
        assert!(!rx.wait_readable(Some(Duration::from_micros(50))).unwrap());
        assert!(!rx.wait_readable(Some(Duration::ZERO)).unwrap());
        assert!(start.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn udp_wait_readable_sees_a_waiting_datagram() {
        let mut tx = UdpEndpoint::bind(LOCALHOST, false).unwrap();
        let rx = UdpEndpoint::bind(LOCALHOST, false).unwrap();
        tx.send_batch(rx.local_addr().unwrap(), b"ping", 1200)
            .unwrap();
        assert!(rx.wait_readable(Some(Duration::from_secs(2))).unwrap());
    }

    #[test]
    fn udp_reuse_port_shares_a_port() {
        let a = UdpEndpoint::bind(LOCALHOST, true).unwrap();
        let port = a.local_addr().unwrap().port();
        let b = UdpEndpoint::bind(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port), true).unwrap();
        assert_eq!(b.local_addr().unwrap().port(), port);
    }

    /// Every key reaches the socket `steered_index` names, from whichever source address it comes.
    #[test]
    fn udp_steered_group_routes_by_key() {
        const N: usize = 3;
        const OFFSET: u32 = 8;
        let mut group = UdpEndpoint::bind_steered(LOCALHOST, N, OFFSET).unwrap();
        assert_eq!(group.len(), N);
        let port = group[0].local_addr().unwrap().port();
        assert!(group.iter().all(|e| e.local_addr().unwrap().port() == port));
        let to = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
        let mut expected = vec![Vec::new(); N];
        for key in 0u32..24 {
            // A fresh source socket (port) for each datagram: steering must not depend on the source.
            let mut tx = UdpEndpoint::bind(LOCALHOST, false).unwrap();
            let mut datagram = vec![0xee; 16];
            datagram[8..12].copy_from_slice(&key.wrapping_mul(0x9e37_79b9).to_be_bytes());
            tx.send_batch(to, &datagram, datagram.len()).unwrap();
            expected[steered_index(key.wrapping_mul(0x9e37_79b9), N)].push(datagram);
        }
        // Too short to hold the word: socket 0.
        let mut tx = UdpEndpoint::bind(LOCALHOST, false).unwrap();
        tx.send_batch(to, b"tiny", 4).unwrap();
        expected[0].push(b"tiny".to_vec());
        for (i, socket) in group.iter_mut().enumerate() {
            let mut got = Vec::new();
            let mut batch = RecvBatch::new();
            let deadline = Instant::now() + Duration::from_secs(5);
            while got.len() < expected[i].len() && Instant::now() < deadline {
                if socket
                    .wait_readable(Some(Duration::from_millis(50)))
                    .unwrap()
                {
                    while let Ok(n) = socket.recv_batch(&mut batch) {
                        if n == 0 {
                            break;
                        }
                        got.extend(batch.iter().map(|(_, d)| d.to_vec()));
                    }
                }
            }
            got.sort();
            expected[i].sort();
            assert_eq!(got, expected[i], "socket {i}");
        }
        assert!(
            expected.iter().all(|e| !e.is_empty()),
            "24 keys over 3 sockets"
        );
    }

    #[test]
    fn udp_steered_group_of_one_is_a_plain_socket() {
        let group = UdpEndpoint::bind_steered(LOCALHOST, 1, 8).unwrap();
        assert_eq!(group.len(), 1);
        assert_eq!(steered_index(7, 1), 0);
        assert_eq!(steered_index(7, 3), 1);
    }

    #[test]
    fn udp_zero_segment_size_is_refused() {
        let mut tx = UdpEndpoint::bind(LOCALHOST, false).unwrap();
        let err = tx.send_batch(LOCALHOST, b"x", 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}

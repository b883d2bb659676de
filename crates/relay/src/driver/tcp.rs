//! The relay's TCP side: each connection's hello read with a deadline and a size bound, offered to the
//! [`Pairing`](crate::Pairing), then waited, paired, forwarded to the next hop, or refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tokio::time::{sleep_until, timeout};
use trackshift_grid::hello::HelloError;
use trackshift_grid::{HelloAnswer, PeerRole, RelayHello};

use super::{unix_now, Shared, TapEvent};
use crate::pairing::Offer;

/// How long a connection may take to send its whole hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long dialling the next hop may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections still in their hello at once; more are closed at accept (a slow-hello flood costs a permit
/// each, not a task per socket without end).
const MAX_HELLOS: usize = 1024;
/// Bytes read per call, and the most a waiting stream may send before its peer arrives (a sender's TLS
/// ClientHello is well under this); past it the relay stops reading and lets TCP push back.
const CHUNK: usize = 16 * 1024;
/// Buffer per direction of a paired stream.
const COPY_BUFFER: usize = 64 * 1024;
/// After one direction of a pair ends, how long the other may still drain before both are closed.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What a waiting stream is handed when its peer arrives: the peer's stream and the bytes it sent early.
pub(super) type Handoff = oneshot::Sender<Handed>;
/// A stream handed to its waiting peer: the stream, the bytes it sent early, and the session.
pub(super) type Handed = (TcpStream, Vec<u8>, String);

/// Accepts connections until the task is aborted.
pub(super) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let hellos = Arc::new(Semaphore::new(MAX_HELLOS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: wait a little rather than spin.
                tracing::warn!("relay TCP accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = hellos.clone().try_acquire_owned() else {
            shared.lock_pairing().bad_hello();
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let first = timeout(HELLO_TIMEOUT, read_hello(stream)).await;
            drop(permit);
            match first {
                Ok(Ok((stream, hello, early))) => serve(stream, hello, early, shared).await,
                _ => shared.lock_pairing().bad_hello(),
            }
        });
    }
}

/// Reads a hello; returns it with the bytes that followed it in the same reads.
async fn read_hello(mut stream: TcpStream) -> Result<(TcpStream, RelayHello, Vec<u8>), HelloError> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; CHUNK];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| HelloError::Magic)?;
        if n == 0 {
            return Err(HelloError::Magic);
        }
        buf.extend_from_slice(&chunk[..n]);
        // `parse` refuses a token over its limit, so `buf` stays under one hello and one chunk.
        if let Some((hello, used)) = RelayHello::parse(&buf)? {
            let early = buf.split_off(used);
            return Ok((stream, hello, early));
        }
    }
}

async fn serve(mut stream: TcpStream, hello: RelayHello, early: Vec<u8>, shared: Arc<Shared>) {
    let (tx, rx) = oneshot::channel();
    let offer = shared
        .lock_pairing()
        .offer(Instant::now(), unix_now(), &hello, tx);
    match offer {
        Offer::Refuse(answer) => {
            let _ = stream.write_all(&[answer.to_byte()]).await;
        }
        Offer::Paired { peer, session } => {
            if let Err((mut stream, _, _)) = peer.send((stream, early, session)) {
                // The waiting end left in the same instant.
                let _ = stream.write_all(&[HelloAnswer::NoPeer.to_byte()]).await;
            }
        }
        Offer::Wait { ticket, deadline } => {
            wait_for_peer(stream, early, ticket, deadline.into(), rx, shared).await
        }
        Offer::Forward { token, session } => {
            shared.lock_pairing().stream_started(&session);
            let bytes = forward(stream, hello.role, token, early, &shared).await;
            shared.lock_pairing().stream_ended(&session, bytes);
        }
    }
}

/// Holds a stream until its peer is handed over, it closes, or its deadline passes.
async fn wait_for_peer(
    mut stream: TcpStream,
    mut early: Vec<u8>,
    ticket: u64,
    deadline: tokio::time::Instant,
    mut rx: oneshot::Receiver<Handed>,
    shared: Arc<Shared>,
) {
    let mut chunk = vec![0u8; CHUNK];
    let mut watching = true; // still ours to cancel: neither closed nor timed out
    loop {
        tokio::select! {
            handed = &mut rx => {
                match handed {
                    Ok((peer, peer_early, session)) => {
                        pair(stream, early, peer, peer_early, &session, shared).await
                    }
                    Err(_) => {
                        let answer = if shared.lock_pairing().draining() {
                            HelloAnswer::Draining
                        } else {
                            HelloAnswer::NoPeer
                        };
                        let _ = stream.write_all(&[answer.to_byte()]).await;
                    }
                }
                return;
            }
            _ = sleep_until(deadline), if watching => {
                watching = false;
                if shared.lock_pairing().cancel(ticket).is_some() {
                    let _ = stream.write_all(&[HelloAnswer::NoPeer.to_byte()]).await;
                    return;
                }
            }
            read = stream.read(&mut chunk), if watching && early.len() < CHUNK => {
                match read {
                    Ok(n) if n > 0 => early.extend_from_slice(&chunk[..n]),
                    _ => {
                        watching = false;
                        if shared.lock_pairing().cancel(ticket).is_some() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Tells both ends they are paired, hands each the other's early bytes, then copies both ways.
async fn pair(
    mut a: TcpStream,
    a_early: Vec<u8>,
    mut b: TcpStream,
    b_early: Vec<u8>,
    session: &str,
    shared: Arc<Shared>,
) {
    shared.lock_pairing().stream_started(session);
    let mut start = Vec::with_capacity(1 + b_early.len());
    start.push(HelloAnswer::Paired.to_byte());
    start.extend_from_slice(&b_early);
    let ok_a = a.write_all(&start).await.is_ok();
    start.truncate(1);
    start.extend_from_slice(&a_early);
    let ok_b = b.write_all(&start).await.is_ok();
    let mut bytes = (a_early.len() + b_early.len()) as u64;
    if ok_a && ok_b {
        bytes += splice(a, b, &shared).await;
    }
    shared.lock_pairing().stream_ended(session, bytes);
}

/// Passes a stream on to the next hop with the rest of its token chain; returns the bytes copied.
async fn forward(
    mut stream: TcpStream,
    role: PeerRole,
    token: String,
    early: Vec<u8>,
    shared: &Arc<Shared>,
) -> u64 {
    let Some(hop) = shared.forward else {
        return 0;
    };
    let next = match dial(hop, role, token, &early, shared).await {
        Ok(next) => next,
        Err(answer) => {
            let _ = stream.write_all(&[answer.to_byte()]).await;
            return 0;
        }
    };
    if stream
        .write_all(&[HelloAnswer::Paired.to_byte()])
        .await
        .is_err()
    {
        return 0;
    }
    early.len() as u64 + splice(stream, next, shared).await
}

/// Connects to the next hop, writes the hello and early bytes, and waits for its answer.
async fn dial(
    hop: SocketAddr,
    role: PeerRole,
    token: String,
    early: &[u8],
    shared: &Shared,
) -> Result<TcpStream, HelloAnswer> {
    let mut next = match timeout(CONNECT_TIMEOUT, TcpStream::connect(hop)).await {
        Ok(Ok(next)) => next,
        _ => return Err(HelloAnswer::NoPeer),
    };
    let _ = next.set_nodelay(true);
    let mut hello = RelayHello { role, token }.encode();
    hello.extend_from_slice(early);
    if next.write_all(&hello).await.is_err() {
        return Err(HelloAnswer::NoPeer);
    }
    let wait = shared.limits.sender_wait.max(shared.limits.receiver_wait) + CONNECT_TIMEOUT;
    let mut answer = [0u8; 1];
    match timeout(wait, next.read_exact(&mut answer)).await {
        Ok(Ok(_)) => match HelloAnswer::from_byte(answer[0]) {
            HelloAnswer::Paired => Ok(next),
            other => Err(other),
        },
        _ => Err(HelloAnswer::NoPeer),
    }
}

/// Copies both ways until one direction ends, then gives the other [`CLOSE_GRACE`]; returns the bytes copied.
async fn splice(a: TcpStream, b: TcpStream, shared: &Shared) -> u64 {
    let (ar, aw) = a.into_split();
    let (br, bw) = b.into_split();
    let mut one = Box::pin(copy_one(ar, bw, shared));
    let mut two = Box::pin(copy_one(br, aw, shared));
    tokio::select! {
        n = &mut one => n + timeout(CLOSE_GRACE, two).await.unwrap_or(0),
        n = &mut two => n + timeout(CLOSE_GRACE, one).await.unwrap_or(0),
    }
}

/// One direction: read, show the tap, write; at EOF or an error, shut the writer (the far end sees a close).
async fn copy_one<R, W>(mut from: R, mut to: W, shared: &Shared) -> u64
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(n) if n > 0 => n,
            _ => break,
        };
        if let Some(tap) = &shared.tap {
            tap(TapEvent::Stream, &buf[..n]);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        total += n as u64;
        // Over the relay's cap: stop reading for a while, and TCP pushes back on the sender.
        let pause = shared.lock_table().charge_stream(n as u64, Instant::now());
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    let _ = to.shutdown().await;
    total
}

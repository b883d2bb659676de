//! `trackshift receive`: the receiver's driver. An accept loop, one task per connection, and one worker thread
//! per transfer that decompresses, writes, hashes and records; `trackshift_proto::IncomingTransfer` decides
//! which frames are legal.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::split;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use trackshift_proto::compress::PieceDecompressor;
use trackshift_proto::frame::{
    encode_verified_entries, DATA_BODY_OFFSET, DATA_PIECE, MAX_VERIFIED_PER_FRAME,
};
use trackshift_proto::hashing::{Hasher, OrderedFileHasher};
use trackshift_proto::{
    ChunkMap, ChunkPlan, ErrorCode, Frame, Incoming, IncomingTransfer, SessionId,
};
use trackshift_storage::{
    check_output_dir, ensure_space, unix_now, validate_file_name, IncomingSession, PartialFile,
    SessionState, SessionStore, StateDir, StorageError, DIRECT_IO_ALIGN,
};
use trackshift_transport::{
    authenticate_server, dcsp_secret_of, exporter_of, server_config, tune_accepted, FrameReader,
    FrameWriter, Identity, TlsAcceptor, TransportError,
};

use crate::failure::{exit, Failure};
use crate::output::Reporter;
use crate::pool::{BufPool, PooledBuf, SharedBytes};

/// Frames queued between the network task and the worker: bounds receiver memory to a few MiB per transfer.
const WORKER_QUEUE: usize = 8;
/// A TLS handshake plus authentication must finish within this, or the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// After a failure, how long to keep draining the sender's data so our `Error` frame reaches it before the
/// connection closes (closing with unread data would reset it).
const ERROR_DRAIN: Duration = Duration::from_secs(3);
/// A sender silent for this long (no data, no keep-alive) is considered gone; its session stays resumable.
const SENDER_SILENCE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    pub listen: String,
    pub output_dir: PathBuf,
    pub secret: Option<String>,
    pub state_dir: PathBuf,
    pub once: bool,
    /// UDP sockets (and plane threads) on the listening port.
    pub planes: usize,
}

pub(crate) struct Ctx {
    pub(crate) store: Arc<SessionStore>,
    /// DCSP's UDP socket on the listening port (None if it could not be bound).
    pub(crate) udp: Option<crate::dcsp_recv::UdpPlane>,
    output_dir: PathBuf,
    secret: String,
    acceptor: TlsAcceptor,
    pub(crate) reporter: Reporter,
    /// Sessions being received, each with a way to ask its connection to step aside.
    busy: Mutex<HashMap<SessionId, Arc<Notify>>>,
}

/// How one connection ended, for `--once`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnOutcome {
    Completed,
    /// A definite failure with this exit code.
    Failed(i32),
    /// The sender went away or never got going; a resume may follow.
    Dropped,
}

pub fn run(opts: ReceiveOptions, reporter: Reporter) -> Result<(), Failure> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::failed(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(serve(opts, reporter))
}

fn load_or_create_secret(state: &StateDir) -> Result<(String, bool), Failure> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = state.path().join("receiver.secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_owned();
        if !s.is_empty() {
            return Ok((s, false));
        }
    }
    let secret = hex::encode(rand::random::<[u8; 16]>());
    let save = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(secret.as_bytes())?;
        f.sync_all()
    };
    save().map_err(|e| {
        Failure::new(
            exit::STORAGE,
            format!(
                "cannot save the generated secret in {}: {e}",
                path.display()
            ),
        )
    })?;
    Ok((secret, true))
}

async fn serve(opts: ReceiveOptions, reporter: Reporter) -> Result<(), Failure> {
    check_output_dir(&opts.output_dir)?;
    let state = StateDir::open(&opts.state_dir)?;
    let store = SessionStore::open(&state)?;
    let identity = Identity::load_or_create(&state.identity_dir())
        .map_err(|e| Failure::new(exit::STORAGE, e.to_string()))?;
    let (secret, generated) = match opts.secret.clone().filter(|s| !s.is_empty()) {
        Some(s) => (s, false),
        None => load_or_create_secret(&state)?,
    };
    let config = server_config(&identity).map_err(|e| Failure::failed(e.to_string()))?;
    let listener = TcpListener::bind(&opts.listen)
        .await
        .map_err(|e| Failure::failed(format!("cannot listen on {}: {e}", opts.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::failed(e.to_string()))?;
    let udp = match crate::dcsp_recv::UdpPlane::start(local, opts.planes) {
        Ok(p) => Some(p),
        Err(e) => {
            reporter.info(&format!(
                "cannot listen on UDP {local} ({e}): only --protocol tcp senders can be served"
            ));
            None
        }
    };
    let fingerprint = identity.fingerprint();
    reporter.event(json!({
        "event": "listening", "addr": local.to_string(), "fingerprint": fingerprint,
        "output_dir": opts.output_dir.display().to_string(),
        "secret": if generated || opts.secret.is_none() { Some(secret.clone()) } else { None },
        "udp_sockets": udp.as_ref().map(|u| u.planes()),
    }));
    reporter.info(&format!(
        "listening on {local} ({}), certificate {fingerprint}",
        match &udp {
            Some(u) if u.planes() > 1 => format!("TCP and UDP, {} UDP sockets", u.planes()),
            Some(_) => "TCP and UDP".to_string(),
            None => "TCP".to_string(),
        }
    ));
    if opts.secret.is_none() {
        reporter.info(&format!(
            "secret: {secret}  (senders pass it with --secret or TRACKSHIFT_SECRET)"
        ));
    }
    let ctx = Arc::new(Ctx {
        store: Arc::new(store),
        udp,
        output_dir: opts.output_dir.clone(),
        secret,
        acceptor: TlsAcceptor::from(config),
        reporter,
        busy: Mutex::new(HashMap::new()),
    });
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<ConnOutcome>();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Failure::failed(format!("cannot install the SIGTERM handler: {e}")))?;
    let code = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let ctx = ctx.clone();
                    let done_tx = done_tx.clone();
                    tokio::spawn(async move {
                        let outcome = handle_conn(&ctx, tcp, peer).await;
                        let _ = done_tx.send(outcome);
                    });
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = tokio::signal::ctrl_c() => break exit::OK,
            _ = sigterm.recv() => break exit::OK,
            Some(outcome) = done_rx.recv() => {
                if opts.once {
                    match outcome {
                        ConnOutcome::Completed => break exit::OK,
                        ConnOutcome::Failed(code) => break code,
                        ConnOutcome::Dropped => {}
                    }
                }
            }
        }
    };
    ctx.reporter
        .info("stopped; partial transfers are kept and resume when their senders re-run");
    if code == exit::OK {
        Ok(())
    } else {
        Err(Failure::new(code, "the transfer failed (see above)"))
    }
}

/// Releases a session's busy mark when the connection ends (unless a newer connection already took it over).
struct BusyGuard<'a> {
    ctx: &'a Ctx,
    id: SessionId,
    cancel: Arc<Notify>,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut b) = self.ctx.busy.lock() {
            if b.get(&self.id)
                .is_some_and(|n| Arc::ptr_eq(n, &self.cancel))
            {
                b.remove(&self.id);
            }
        }
    }
}

/// How long a new connection for a session waits for the old one to step aside.
const TAKEOVER_WAIT: Duration = Duration::from_secs(15);

/// Claims session `id` for this connection. A sender runs one connection per session, so an older connection
/// still holding it is a dead one the receiver has not noticed yet (a stalled link, a changed address): it is
/// asked to stop, and this waits until its worker has finished before taking over.
async fn claim_session(ctx: &Ctx, id: SessionId) -> Result<BusyGuard<'_>, (ErrorCode, String)> {
    let cancel = Arc::new(Notify::new());
    let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
    loop {
        let old = {
            let mut busy = ctx
                .busy
                .lock()
                .map_err(|_| (ErrorCode::Internal, "lock poisoned".to_owned()))?;
            match busy.get(&id) {
                Some(old) => old.clone(),
                None => {
                    busy.insert(id, cancel.clone());
                    return Ok(BusyGuard { ctx, id, cancel });
                }
            }
        };
        old.notify_one();
        if tokio::time::Instant::now() >= deadline {
            return Err((
                ErrorCode::Busy,
                format!("session {id} is still being received on another connection"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn storage_code(e: &StorageError) -> ErrorCode {
    if e.is_no_space() {
        ErrorCode::NoSpace
    } else if e.is_permission() {
        ErrorCode::Permission
    } else {
        ErrorCode::Internal
    }
}

fn exit_code_for(code: ErrorCode) -> i32 {
    match code {
        ErrorCode::NoSpace | ErrorCode::Permission => exit::STORAGE,
        ErrorCode::Auth => exit::AUTH,
        ErrorCode::BadName => exit::USAGE,
        _ => exit::FAILED,
    }
}

async fn handle_conn(ctx: &Ctx, tcp: TcpStream, peer: SocketAddr) -> ConnOutcome {
    tune_accepted(&tcp);
    let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, ctx.acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!("TLS handshake with {peer} failed: {e}");
            return ConnOutcome::Dropped;
        }
        Err(_) => return ConnOutcome::Dropped,
    };
    let auth = async {
        let ekm = exporter_of(tls.get_ref().1)?;
        authenticate_server(&mut tls, ekm, &ctx.secret).await
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, auth).await {
        Ok(Ok(())) => {}
        Ok(Err(e @ (TransportError::PeerNotAuthentic | TransportError::Version { .. }))) => {
            let code = if matches!(e, TransportError::PeerNotAuthentic) {
                exit::AUTH
            } else {
                exit::FAILED
            };
            ctx.reporter.info(&format!("refused {peer}: {e}"));
            ctx.reporter.event(
                json!({"event": "refused", "peer": peer.to_string(), "reason": e.to_string()}),
            );
            return ConnOutcome::Failed(code);
        }
        Ok(Err(e)) => {
            tracing::debug!("connection from {peer} ended during authentication: {e}");
            return ConnOutcome::Dropped;
        }
        Err(_) => return ConnOutcome::Dropped,
    }
    let Ok(dcsp_secret) = dcsp_secret_of(tls.get_ref().1) else {
        return ConnOutcome::Dropped;
    };
    let (rd, wr) = split(tls);
    let reader = FrameReader::new(rd);
    let mut writer = FrameWriter::new(wr);
    match receive_session(ctx, reader, &mut writer, peer, dcsp_secret).await {
        Ok(outcome) => outcome,
        Err((code, message)) => {
            ctx.reporter
                .info(&format!("transfer from {peer} failed: {message}"));
            let _ = writer
                .send(&Frame::Error {
                    code,
                    message: &message,
                })
                .await;
            let _ = writer.flush().await;
            if code == ErrorCode::Busy {
                ConnOutcome::Dropped
            } else {
                ConnOutcome::Failed(exit_code_for(code))
            }
        }
    }
}

pub(crate) type RecvReader = FrameReader<tokio::io::ReadHalf<trackshift_transport::ServerTls>>;
pub(crate) type RecvWriter = FrameWriter<tokio::io::WriteHalf<trackshift_transport::ServerTls>>;

/// Serves one offer. `Err` carries what to tell the sender.
async fn receive_session(
    ctx: &Ctx,
    mut reader: RecvReader,
    writer: &mut RecvWriter,
    peer: SocketAddr,
    dcsp_secret: [u8; 32],
) -> Result<ConnOutcome, (ErrorCode, String)> {
    let proto = |e: TransportError| (ErrorCode::Protocol, e.to_string());
    let offer = tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.next()).await;
    let offer = offer.map_err(|_| (ErrorCode::Protocol, "no offer within 30 s".to_owned()))?;
    let (id, name, size, chunk_size, mtime_ns) = match offer {
        Ok(Frame::Offer(o)) => (
            o.session_id,
            o.file_name.to_owned(),
            o.file_size,
            o.chunk_size,
            o.mtime_ns,
        ),
        Ok(f) => {
            return Err((
                ErrorCode::Protocol,
                format!("expected Offer, got {}", f.name()),
            ))
        }
        Err(TransportError::Closed) => return Ok(ConnOutcome::Dropped),
        Err(e) => return Err(proto(e)),
    };
    validate_file_name(&name).map_err(|e| (ErrorCode::BadName, e.to_string()))?;
    let plan =
        ChunkPlan::new(size, chunk_size).map_err(|e| (ErrorCode::Protocol, e.to_string()))?;
    let guard = claim_session(ctx, id).await?;
    let store_err = |e: StorageError| (storage_code(&e), e.to_string());

    let existing = ctx.store.incoming(&id).map_err(store_err)?;
    let mut record = match existing {
        Some(rec) if rec.file_name != name || rec.size != size || rec.chunk_size != chunk_size => {
            return Err((
                ErrorCode::SessionMismatch,
                format!("session {id} belongs to another file ({})", rec.file_name),
            ));
        }
        Some(rec) if rec.state == SessionState::Completed => {
            // The sender missed our confirmation (it was interrupted at the very end): confirm again.
            let sha = rec
                .sha256_hex
                .as_deref()
                .and_then(|h| hex::decode(h).ok())
                .and_then(|v| <[u8; 32]>::try_from(v).ok());
            let final_name = rec
                .final_path
                .as_ref()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
                .unwrap_or(&name);
            let frame = Frame::FileDone {
                ok: sha.is_some(),
                sha256: sha.unwrap_or([0; 32]),
                final_name,
            };
            writer.send(&frame).await.map_err(proto)?;
            writer.flush().await.map_err(proto)?;
            // A DCSP sender sent `UdpStart` right behind its offer: read it, so closing does not reset the
            // connection before the sender has read our answer.
            let _ = tokio::time::timeout(Duration::from_millis(500), reader.next()).await;
            return Ok(ConnOutcome::Completed);
        }
        Some(rec) => rec,
        None => {
            check_output_dir(&ctx.output_dir).map_err(store_err)?;
            IncomingSession {
                id,
                file_name: name.clone(),
                size,
                chunk_size,
                chunk_count: plan.chunk_count(),
                source_mtime_ns: i128::from(mtime_ns),
                output_dir: ctx.output_dir.clone(),
                peer: peer.to_string(),
                state: SessionState::Active,
                created_unix: unix_now(),
                updated_unix: unix_now(),
                final_path: None,
                sha256_hex: None,
                error: None,
            }
        }
    };
    let verified: Vec<(u32, [u8; 32])> = ctx
        .store
        .verified_chunks(&id)
        .map_err(store_err)?
        .into_iter()
        .filter(|(i, _)| plan.contains(*i))
        .collect();
    let mut map = ChunkMap::new(plan.chunk_count());
    for (i, _) in &verified {
        map.insert(*i);
    }
    let verified_bytes: u64 = verified.iter().map(|(i, _)| plan.len(*i)).sum();
    let output_dir = record.output_dir.clone();
    if let Err(e) = ensure_space(&output_dir, size - verified_bytes) {
        record.state = SessionState::Interrupted;
        record.error = Some(e.to_string());
        let _ = ctx.store.put_incoming(&record);
        return Err(store_err(e));
    }
    let part = PartialFile::open(&output_dir, &id, size).map_err(store_err)?;
    record.state = SessionState::Active;
    record.peer = peer.to_string();
    record.updated_unix = unix_now();
    record.error = None;
    ctx.store.put_incoming(&record).map_err(store_err)?;

    writer
        .send(&Frame::Accept {
            verified_count: verified.len() as u32,
        })
        .await
        .map_err(proto)?;
    for batch in verified.chunks(MAX_VERIFIED_PER_FRAME) {
        writer
            .send(&Frame::VerifiedList {
                entries: &encode_verified_entries(batch),
            })
            .await
            .map_err(proto)?;
    }
    writer.flush().await.map_err(proto)?;
    ctx.reporter.info(&format!(
        "receiving {name} ({size} bytes) from {peer}, session {id}{}",
        if verified.is_empty() {
            String::new()
        } else {
            format!(", resuming with {} chunks verified", verified.len())
        }
    ));
    ctx.reporter.event(json!({
        "event": "session_start", "session_id": id.to_hex(), "file": name, "bytes": size, "peer": peer.to_string(),
        "chunks_verified": verified.len(),
    }));

    let started = Instant::now();
    let frame_pool = BufPool::new(DATA_PIECE + 64);
    // The first frame says which data path the sender chose: DCSP over UDP, or frames on this connection.
    let mut first = frame_pool.get();
    let first_type =
        match tokio::time::timeout(SENDER_SILENCE, reader.next_into(first.data_mut())).await {
            Ok(Ok(t)) => t,
            Ok(Err(TransportError::Closed)) | Err(_) => {
                return Ok(conclude(
                    ctx,
                    &record,
                    peer,
                    started,
                    Ok((ConnOutcome::Dropped, None)),
                    0,
                    None,
                ))
            }
            Ok(Err(e)) => return Err(proto(e)),
        };
    if first_type == trackshift_proto::frame::ty::UDP_START {
        let Ok(Frame::UdpStart {
            conn_id,
            shard_size,
            data_shards,
            dcsp_version,
            streams,
        }) = Frame::decode(first_type, &first)
        else {
            return Err((ErrorCode::Protocol, "malformed UdpStart".into()));
        };
        drop(first);
        let start = crate::dcsp_recv::UdpStart {
            conn_id,
            shard_size,
            data_shards,
            dcsp_version,
            streams,
            dcsp_secret,
        };
        let job = crate::dcsp_recv::UdpWriterJob {
            id,
            conn_id,
            streams,
            plan,
            part,
            map,
            output_dir: output_dir.clone(),
            name: name.clone(),
            spare: Default::default(),
            plane: match &ctx.udp {
                Some(p) => p.clone(),
                None => {
                    return Err((
                        ErrorCode::Protocol,
                        "this receiver has no UDP socket (see its log); use --protocol tcp".into(),
                    ))
                }
            },
        };
        let (outcome, bytes_now, stats) =
            crate::dcsp_recv::serve_session(ctx, job, start, reader, writer, &guard.cancel).await;
        return Ok(conclude(
            ctx, &record, peer, started, outcome, bytes_now, stats,
        ));
    }
    let (frame_tx, frame_rx) = mpsc::channel::<(u8, PooledBuf)>(WORKER_QUEUE);
    let (event_tx, mut event_rx) = mpsc::unbounded_channel::<WorkerEvent>();
    let _ = frame_tx.try_send((first_type, first));
    let job = WorkerJob {
        id,
        plan,
        part,
        map,
        output_dir: output_dir.clone(),
        name: name.clone(),
    };
    let handle = spawn_worker(job, ctx.store.clone(), frame_rx, event_tx)
        .map_err(|e| (ErrorCode::Internal, e))?;

    // The reader task feeds the worker directly; reading a frame is not cancel-safe, so it gets a task of its
    // own instead of a branch in the `select!` below.
    let mut reader_task = tokio::spawn(async move {
        loop {
            let mut buf = frame_pool.get();
            let t = match tokio::time::timeout(SENDER_SILENCE, reader.next_into(buf.data_mut()))
                .await
            {
                Ok(r) => r?,
                Err(_) => return Err(TransportError::Timeout("waiting for the sender")),
            };
            if frame_tx.send((t, buf)).await.is_err() {
                // The worker stopped (a failure the sender is being told about): keep reading and discarding
                // for a moment so closing does not reset the connection before the sender reads our Error.
                let mut sink = Vec::new();
                let _ = tokio::time::timeout(ERROR_DRAIN, async {
                    while reader.next_into(&mut sink).await.is_ok() {}
                })
                .await;
                return Ok(());
            }
        }
    });
    let mut bytes_now = 0u64;
    let mut reader_result: Option<Result<(), TransportError>> = None;
    let mut reader_joined = false;
    let outcome: Result<SessionEnd, ErrorReply> = loop {
        tokio::select! {
            biased;
            ev = event_rx.recv() => match ev {
                Some(ev) => if let Some(end) = relay_verdict(ev, writer, &name, &mut bytes_now).await {
                    break end;
                },
                // The worker is done: the reader ended and everything queued was processed.
                None => match reader_result.take() {
                    Some(Err(e @ (TransportError::Wire(_) | TransportError::Protocol(_)))) => break Err(proto(e)),
                    _ => break Ok((ConnOutcome::Dropped, None)),
                },
            },
            _ = guard.cancel.notified() => {
                // A newer connection for this session: this one is stale.
                break Ok((ConnOutcome::Dropped, None));
            }
            joined = &mut reader_task, if !reader_joined => {
                reader_joined = true;
                reader_result = Some(joined.unwrap_or(Err(TransportError::Closed)));
            }
        }
    };
    if outcome.is_ok() {
        // Done, dropped or superseded: stop reading so the worker sees the end of its queue and exits.
        // (On an error the worker has already stopped, and the reader keeps draining; see below.)
        reader_task.abort();
    }
    let _ = tokio::task::spawn_blocking(move || handle.join()).await;
    if let Err(e) = &outcome {
        // Tell the sender why, close our side cleanly, and let the reader drain until the sender hangs up.
        tell_sender(writer, e).await;
        if !reader_joined {
            let _ = tokio::time::timeout(ERROR_DRAIN, &mut reader_task).await;
        }
    }
    reader_task.abort();
    Ok(conclude(
        ctx, &record, peer, started, outcome, bytes_now, None,
    ))
}

/// Sends the sender an `Error` frame saying why its session ends here, then closes the control channel (best
/// effort: the connection may already be gone).
pub(crate) async fn tell_sender(writer: &mut RecvWriter, (code, message): &ErrorReply) {
    let _ = writer
        .send(&Frame::Error {
            code: *code,
            message,
        })
        .await;
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}

/// Records how a session ended on this connection and reports it (summary, or an interruption).
pub(crate) fn conclude(
    ctx: &Ctx,
    record: &IncomingSession,
    peer: SocketAddr,
    started: Instant,
    outcome: Result<SessionEnd, ErrorReply>,
    bytes_now: u64,
    udp: Option<trackshift_dcsp::ReceiverStats>,
) -> ConnOutcome {
    let (id, name, size) = (record.id, record.file_name.clone(), record.size);
    let seconds = started.elapsed().as_secs_f64();
    let mut record = ctx
        .store
        .incoming(&id)
        .ok()
        .flatten()
        .unwrap_or_else(|| record.clone());
    let (ok, sha_hex, final_path) = match &outcome {
        Ok((ConnOutcome::Completed, Some((path, sha)))) => {
            (true, Some(hex::encode(sha)), Some(path.clone()))
        }
        _ => (false, None, None),
    };
    if !ok && record.state != SessionState::Completed {
        record.state = match &outcome {
            Ok((ConnOutcome::Failed(_), _)) => SessionState::Failed,
            _ => SessionState::Interrupted,
        };
        record.error = outcome.as_ref().err().map(|(_, m)| m.clone());
        record.updated_unix = unix_now();
        let _ = ctx.store.put_incoming(&record);
    }
    let dropped = matches!(outcome, Ok((ConnOutcome::Dropped, _)));
    if !dropped {
        ctx.reporter.event(json!({
            "event": "summary", "session_id": id.to_hex(), "file": name, "bytes": size, "seconds": seconds,
            "goodput_mbps": if seconds > 0.0 { bytes_now as f64 * 8.0 / seconds / 1e6 } else { 0.0 },
            "protocol": if udp.is_some() { "udp" } else { "tcp" }, "sha256": sha_hex, "ok": ok,
            "final_path": final_path, "peer": peer.to_string(), "bytes_received": bytes_now,
            "error": outcome.as_ref().err().map(|(_, m)| m.clone()),
            "packets_received": udp.as_ref().map(|u| u.packets_received),
            "fec_recovered": udp.as_ref().map(|u| u.fec_recovered),
            "packets_dropped": udp.as_ref().map(|u| u.dropped()),
            "packets_unauthentic": udp.as_ref().map(|u| u.dropped_unauthentic),
            "packets_replayed": udp.as_ref().map(|u| u.dropped_replayed + u.dropped_stale),
            "path_changes": udp.as_ref().map(|u| u.path_changes),
        }));
    } else {
        // Whether this connection's data plane followed the sender to a new address: a resumed session's summary
        // has only the last connection's counters.
        ctx.reporter.event(json!({
            "event": "interrupted", "session_id": id.to_hex(), "file": name, "peer": peer.to_string(),
            "path_changes": udp.as_ref().map(|u| u.path_changes),
        }));
        ctx.reporter.info(&format!(
            "{name} from {peer}: connection lost; session {id} kept for resume"
        ));
    }
    if let Some(path) = &final_path {
        ctx.reporter
            .info(&format!("received {name} → {path} in {seconds:.1}s"));
    }
    match outcome {
        Ok((o, _)) => o,
        Err((code, message)) => {
            ctx.reporter
                .info(&format!("transfer from {peer} failed: {message}"));
            ConnOutcome::Failed(exit_code_for(code))
        }
    }
}

/// Tells the sender what the writer decided (a chunk verified or failed, the file in place or discarded);
/// `Some` when that ends the session. Shared by the TCP and DCSP paths.
pub(crate) async fn relay_verdict(
    ev: WorkerEvent,
    writer: &mut RecvWriter,
    name: &str,
    bytes_now: &mut u64,
) -> Option<Result<SessionEnd, ErrorReply>> {
    let proto = |e: TransportError| (ErrorCode::Protocol, e.to_string());
    match ev {
        WorkerEvent::ChunkDone { index, ok, len } => {
            if ok {
                *bytes_now += len;
            }
            let sent = async {
                writer.send(&Frame::ChunkDone { index, ok }).await?;
                writer.flush().await
            };
            sent.await.err().map(|e| Err(proto(e)))
        }
        WorkerEvent::FileDone { sha, final_path } => {
            let final_name = final_path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(name)
                .to_owned();
            // The sender may be gone already; the file is in place either way.
            let _ = writer
                .send(&Frame::FileDone {
                    ok: true,
                    sha256: sha,
                    final_name: &final_name,
                })
                .await;
            let _ = writer.flush().await;
            Some(Ok((
                ConnOutcome::Completed,
                Some((final_path.display().to_string(), sha)),
            )))
        }
        WorkerEvent::FileMismatch { sha } => {
            let _ = writer
                .send(&Frame::FileDone {
                    ok: false,
                    sha256: sha,
                    final_name: name,
                })
                .await;
            let _ = writer.flush().await;
            Some(Ok((ConnOutcome::Failed(exit::FAILED), None)))
        }
        WorkerEvent::Fatal { code, message } => Some(Err((code, message))),
    }
}

/// How a session ended on this connection, with the final path and SHA-256 when it completed.
pub(crate) type SessionEnd = (ConnOutcome, Option<(String, [u8; 32])>);

/// What the worker thread needs for one transfer.
struct WorkerJob {
    id: SessionId,
    plan: ChunkPlan,
    part: PartialFile,
    map: ChunkMap,
    output_dir: PathBuf,
    name: String,
}

/// What the worker tells the connection task.
pub(crate) enum WorkerEvent {
    ChunkDone { index: u32, ok: bool, len: u64 },
    FileDone { sha: [u8; 32], final_path: PathBuf },
    FileMismatch { sha: [u8; 32] },
    Fatal { code: ErrorCode, message: String },
}

fn spawn_worker(
    job: WorkerJob,
    store: Arc<SessionStore>,
    frames: mpsc::Receiver<(u8, PooledBuf)>,
    events: mpsc::UnboundedSender<WorkerEvent>,
) -> Result<std::thread::JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name("trackshift-write".into())
        .spawn(move || {
            if let Err((code, message)) = worker(job, store, frames, &events) {
                let _ = events.send(WorkerEvent::Fatal { code, message });
            }
        })
        .map_err(|e| format!("cannot start the writer thread: {e}"))
}

/// Reads `[from, to)` of the partial file into the whole-file hasher.
pub(crate) fn hash_from_disk(
    part: &PartialFile,
    hasher: &mut OrderedFileHasher,
    to: u64,
) -> Result<(), StorageError> {
    let mut buf = vec![0u8; DATA_PIECE];
    while hasher.position() < to {
        let n = (to - hasher.position()).min(DATA_PIECE as u64) as usize;
        part.read_at(hasher.position(), &mut buf[..n])?;
        hasher.update_from_disk(&buf[..n]);
    }
    Ok(())
}

/// The receiving worker: checks each frame against the transfer state, writes at its offset, hashes, and makes
/// verified chunks durable before they count.
fn worker(
    job: WorkerJob,
    store: Arc<SessionStore>,
    mut frames: mpsc::Receiver<(u8, PooledBuf)>,
    events: &mpsc::UnboundedSender<WorkerEvent>,
) -> Result<(), (ErrorCode, String)> {
    let WorkerJob {
        id,
        plan,
        part,
        map,
        output_dir,
        name,
    } = job;
    let store_err = |e: StorageError| (storage_code(&e), e.to_string());
    let part = Arc::new(part);
    let mut committer = Committer::start(part.clone(), store.clone(), id, events.clone())?;
    let mut transfer = IncomingTransfer::new(plan, map);
    let mut file_hasher = OrderedFileHasher::new();
    // Hash the prefix verified in earlier runs now, while the sender re-reads its side of it.
    let prefix = transfer.verified().done_prefix();
    let prefix_end = if prefix == plan.chunk_count() {
        plan.file_size()
    } else {
        plan.offset(prefix)
    };
    hash_from_disk(&part, &mut file_hasher, prefix_end).map_err(store_err)?;
    let mut decompressor =
        PieceDecompressor::new().map_err(|e| (ErrorCode::Internal, e.to_string()))?;
    let aligned_pool = BufPool::new(DATA_PIECE + DIRECT_IO_ALIGN);
    let mut unpacked = Vec::with_capacity(DATA_PIECE);
    let file_hasher = FileHashWorker::start(file_hasher)?;
    let mut chunk_hasher: Option<Hasher> = None;
    while let Some((frame_type, buf)) = frames.blocking_recv() {
        let (incoming, compressed) = {
            let frame = Frame::decode(frame_type, &buf)
                .map_err(|e| (ErrorCode::Protocol, e.to_string()))?;
            let incoming = transfer
                .on_frame(&frame)
                .map_err(|e| (ErrorCode::Protocol, e.to_string()))?;
            (
                incoming,
                matches!(
                    frame,
                    Frame::Data {
                        compressed: true,
                        ..
                    }
                ),
            )
        };
        match incoming {
            Incoming::ChunkBegin { offset, .. } => {
                chunk_hasher = Some(Hasher::new());
                file_hasher.send(HashOp::Begin(offset))?;
            }
            Incoming::Data { offset, raw_len } => {
                // One copy into a page-aligned buffer lets the write go around the page cache (direct I/O),
                // which costs far less than the page cache's own copy; see `PartialFile::write_at`.
                let bytes = if compressed {
                    decompressor
                        .decompress(&buf[DATA_BODY_OFFSET..], raw_len as usize, &mut unpacked)
                        .map_err(|e| (ErrorCode::Protocol, e.to_string()))?;
                    aligned_pool.aligned_copy(&unpacked, DIRECT_IO_ALIGN)
                } else {
                    aligned_pool.aligned_copy(&buf[DATA_BODY_OFFSET..], DIRECT_IO_ALIGN)
                };
                drop(buf);
                part.write_at(offset, &bytes).map_err(store_err)?;
                if let Some(h) = chunk_hasher.as_mut() {
                    h.update(&bytes);
                }
                file_hasher.send(HashOp::Bytes(offset, bytes))?;
            }
            Incoming::ChunkEnd { index, expected } => {
                let actual = chunk_hasher.take().map(Hasher::finish).unwrap_or([0; 32]);
                let ok = actual == expected;
                if ok {
                    file_hasher.send(HashOp::Verified)?;
                    committer.commit(index, actual, plan.len(index))?;
                } else {
                    tracing::warn!(
                        "chunk {index} of session {id} failed verification; asking for it again"
                    );
                    file_hasher.send(HashOp::Failed)?;
                    let _ = events.send(WorkerEvent::ChunkDone {
                        index,
                        ok: false,
                        len: plan.len(index),
                    });
                }
                transfer.chunk_result(index, ok);
            }
            Incoming::FileEnd { expected } => {
                if !transfer.is_complete() {
                    return Err((
                        ErrorCode::Protocol,
                        "sender ended the file with chunks still missing".into(),
                    ));
                }
                committer.finish()?;
                let file_hasher = file_hasher.finish()?;
                let part = Arc::try_unwrap(part)
                    .map_err(|_| (ErrorCode::Internal, "partial file still shared".to_owned()))?;
                let mut file_hasher = file_hasher;
                hash_from_disk(&part, &mut file_hasher, plan.file_size()).map_err(store_err)?;
                return finish_file(
                    part,
                    file_hasher.finish(),
                    expected,
                    &store,
                    id,
                    &output_dir,
                    &name,
                    events,
                );
            }
            Incoming::Nothing => {}
        }
    }
    committer.finish()
}

/// Every chunk verified and durable, the whole file hashed: compares, and puts the file in place (or discards the
/// session if the whole does not match).
#[allow(clippy::too_many_arguments)]
pub(crate) fn finish_file(
    part: PartialFile,
    sha: [u8; 32],
    expected: [u8; 32],
    store: &SessionStore,
    id: SessionId,
    output_dir: &std::path::Path,
    name: &str,
    events: &mpsc::UnboundedSender<WorkerEvent>,
) -> Result<(), ErrorReply> {
    let store_err = |e: StorageError| (storage_code(&e), e.to_string());
    if sha != expected {
        // Every chunk verified yet the whole does not: the partial data cannot be trusted.
        let _ = part.remove();
        let _ = store.remove_incoming(&id);
        let _ = events.send(WorkerEvent::FileMismatch { sha });
        return Ok(());
    }
    let final_path = part.finalize(output_dir, name).map_err(store_err)?;
    if let Some(mut rec) = store.incoming(&id).map_err(store_err)? {
        rec.state = SessionState::Completed;
        rec.final_path = Some(final_path.clone());
        rec.sha256_hex = Some(hex::encode(sha));
        rec.updated_unix = unix_now();
        rec.error = None;
        store.put_incoming(&rec).map_err(store_err)?;
    }
    let _ = events.send(WorkerEvent::FileDone { sha, final_path });
    Ok(())
}

/// What the worker asks of the whole-file hashing thread, in file order.
enum HashOp {
    Begin(u64),
    Bytes(u64, SharedBytes),
    Verified,
    Failed,
}

/// Runs the receiver's `OrderedFileHasher` on a thread of its own, so the whole-file hash does not slow the
/// worker that writes and verifies chunks.
struct FileHashWorker {
    tx: std::sync::mpsc::SyncSender<HashOp>,
    handle: std::thread::JoinHandle<OrderedFileHasher>,
}

impl FileHashWorker {
    fn start(mut hasher: OrderedFileHasher) -> Result<Self, ErrorReply> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<HashOp>(2 * WORKER_QUEUE);
        let handle = std::thread::Builder::new()
            .name("trackshift-filehash".into())
            .spawn(move || {
                for op in rx {
                    match op {
                        HashOp::Begin(offset) => hasher.begin_chunk(offset),
                        HashOp::Bytes(offset, bytes) => hasher.update(offset, &bytes),
                        HashOp::Verified => hasher.chunk_verified(),
                        HashOp::Failed => hasher.chunk_failed(),
                    }
                }
                hasher
            })
            .map_err(|e| {
                (
                    ErrorCode::Internal,
                    format!("cannot start the hashing thread: {e}"),
                )
            })?;
        Ok(Self { tx, handle })
    }

    fn send(&self, op: HashOp) -> Result<(), ErrorReply> {
        self.tx
            .send(op)
            .map_err(|_| (ErrorCode::Internal, "the hashing thread stopped".into()))
    }

    /// Everything sent so far hashed: the hasher, to finish from disk.
    fn finish(self) -> Result<OrderedFileHasher, ErrorReply> {
        drop(self.tx);
        self.handle
            .join()
            .map_err(|_| (ErrorCode::Internal, "the hashing thread panicked".into()))
    }
}

pub(crate) type ErrorReply = (ErrorCode, String);

/// Makes verified chunks durable off the worker's path, so writing and hashing the next chunk overlaps the
/// previous chunk's fdatasync: data synced first, then the store's mark, then the sender is told.
pub(crate) struct Committer {
    tx: Option<std::sync::mpsc::Sender<(u32, [u8; 32], u64)>>,
    handle: Option<std::thread::JoinHandle<Result<(), ErrorReply>>>,
}

impl Committer {
    pub(crate) fn start(
        part: Arc<PartialFile>,
        store: Arc<SessionStore>,
        id: SessionId,
        events: mpsc::UnboundedSender<WorkerEvent>,
    ) -> Result<Self, ErrorReply> {
        let (tx, rx) = std::sync::mpsc::channel::<(u32, [u8; 32], u64)>();
        let handle = std::thread::Builder::new()
            .name("trackshift-commit".into())
            .spawn(move || {
                let store_err = |e: StorageError| (storage_code(&e), e.to_string());
                while let Ok(first) = rx.recv() {
                    // One fdatasync covers every chunk that finished meanwhile.
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    part.sync_data().map_err(store_err)?;
                    for (index, sha, len) in batch {
                        store
                            .mark_chunk_verified(&id, index, sha)
                            .map_err(store_err)?;
                        let _ = events.send(WorkerEvent::ChunkDone {
                            index,
                            ok: true,
                            len,
                        });
                    }
                }
                Ok(())
            })
            .map_err(|e| {
                (
                    ErrorCode::Internal,
                    format!("cannot start the commit thread: {e}"),
                )
            })?;
        Ok(Self {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    /// Queues a verified chunk; fails with the commit thread's error if it has stopped.
    pub(crate) fn commit(&mut self, index: u32, sha: [u8; 32], len: u64) -> Result<(), ErrorReply> {
        match &self.tx {
            Some(tx) if tx.send((index, sha, len)).is_ok() => Ok(()),
            _ => self
                .finish()
                .and(Err((ErrorCode::Internal, "commit thread stopped".into()))),
        }
    }

    /// Waits until every queued chunk is durable and recorded.
    pub(crate) fn finish(&mut self) -> Result<(), ErrorReply> {
        self.tx = None;
        match self.handle.take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err((ErrorCode::Internal, "commit thread panicked".into()))),
            None => Ok(()),
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

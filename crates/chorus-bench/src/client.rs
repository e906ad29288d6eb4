//! One benchmark client: a WebSocket session per user with a reader task (frames in:
//! latency, counters, `seq` tracking) and a writer task (send commands out, batched
//! per flush), so a slow socket never holds up the scheduler. On a drop (the reconnect
//! storm, or the server closing the session) the client reconnects, resumes with
//! `sync` from the last `seq` it holds and sends its unconfirmed messages again with
//! the same `client_msg_id`, as the protocol asks of clients.

use crate::codec::{
    BodyKey, InFrame, InMessage, Phase, decode_body, decode_client_msg_id, encode_send,
    encode_sync, now_ns,
};
use crate::setup::Target;
use crate::stats::{Counters, Sharded, Window, add};
use anyhow::{Context, bail};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};
use tokio_util::sync::CancellationToken;

/// A client's WebSocket.
pub(crate) type Ws = WebSocketStream<TcpStream>;
/// The writing half of a session.
pub(crate) type Sink = SplitSink<Ws, Message>;
/// What writing to a session gives.
pub(crate) type WsResult = Result<(), tokio_tungstenite::tungstenite::Error>;

/// How long connecting plus the `ready`/`synced` handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Commands written per flush at most.
pub(crate) const WRITE_BATCH: usize = 256;
/// Reconnect attempts before a client gives up.
const RECONNECT_ATTEMPTS: u32 = 40;

/// What every client shares with the run.
pub(crate) struct Ctx {
    /// Where the server is.
    pub target: Target,
    /// Counters.
    pub counters: Counters,
    /// Send-to-delivery latency of measured messages, µs.
    pub latency: Sharded,
    /// Open loop: time from a send's scheduled instant to its write, µs (the
    /// generator's own delay).
    pub lag: Sharded,
    /// Reconnect storm: time from the drop to `synced` on the new session, µs.
    pub reconnect: Sharded,
    /// The measured window.
    pub window: Window,
    /// This run's id, in every body and `client_msg_id`.
    pub run: u32,
    /// Size of message bodies.
    pub body_bytes: usize,
    /// Closed loop: refill on each own echo.
    pub closed_loop: bool,
    /// Ends every client.
    pub stop: CancellationToken,
    /// Bumped to make every client drop its connection and reconnect.
    pub storm: watch::Sender<u32>,
}

impl Ctx {
    /// Counts a message written by sender `idx` for `receivers`, stamped `ts`: it
    /// leaves the queue, and in the measured window it is expected at each receiver
    /// (and, open loop, its write's delay after its schedule is recorded).
    pub(crate) fn count_write(&self, idx: u32, phase: Phase, receivers: u64, cmd: Cmd, ts: u64) {
        self.counters.queued.fetch_sub(1, Relaxed);
        add(&self.counters.sent_total, 1);
        if phase == Phase::Measured {
            add(&self.counters.sent, 1);
            add(&self.counters.expected, receivers);
            if let Cmd::Send(_) = cmd {
                let lag = now_ns().saturating_sub(ts) / 1000;
                self.lag.record(idx as usize, lag);
            }
        }
    }
}

/// A command for a writer.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Cmd {
    /// Send a message stamped with this scheduled time (open loop).
    Send(u64),
    /// Send a message stamped with the time of writing (closed loop).
    Next,
}

impl Cmd {
    /// The time the message is stamped with.
    pub(crate) fn stamp(self) -> u64 {
        match self {
            Self::Send(ts) => ts,
            Self::Next => now_ns(),
        }
    }
}

/// The conversation a client sends to.
#[derive(Clone, Debug)]
pub(crate) struct Seat {
    /// The conversation's id.
    pub conversation_id: Arc<str>,
    /// Connected members (each gets every message, the sender included); lowered
    /// when a member cannot connect.
    pub members: Arc<AtomicU64>,
}

/// A connected client, before its tasks start.
pub(crate) struct Client {
    reader: Reader,
    writer: Option<Writer>,
    ws: Ws,
    /// Handle for the scheduler (none without a conversation).
    pub tx: Option<mpsc::UnboundedSender<Cmd>>,
}

/// Opens a TCP connection to the server, bound to a source address by `slot` when
/// asked, with `TCP_NODELAY`.
pub(crate) async fn connect_tcp(target: &Target, slot: usize) -> anyhow::Result<TcpStream> {
    let socket = match target.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if !target.sources.is_empty() {
        let ip = target.sources[slot % target.sources.len()];
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding to {ip}"))?;
    }
    socket.set_nodelay(true)?;
    socket
        .connect(target.addr)
        .await
        .with_context(|| format!("connecting to {}", target.addr))
}

/// The WebSocket buffers of a client.
pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(16 * 1024)
}

/// Opens a TCP connection ([`connect_tcp`]) and upgrades it to a WebSocket session
/// with `token`.
pub(crate) async fn connect(target: &Target, token: &str, slot: usize) -> anyhow::Result<Ws> {
    let stream = connect_tcp(target, slot).await?;
    let url = format!("{}{token}", target.ws_prefix);
    let (ws, _) = client_async_with_config(url, stream, Some(ws_config()))
        .await
        .context("WebSocket upgrade")?;
    Ok(ws)
}

impl Client {
    /// Connects user `idx` and completes the handshake: `ready`, then `sync`, then
    /// `synced` (which gives the conversation's last `seq`, the base of the
    /// client's `seq` tracking).
    pub(crate) async fn connect(
        ctx: Arc<Ctx>,
        idx: u32,
        token: String,
        seat: Option<Seat>,
    ) -> anyhow::Result<Self> {
        let outbox = Arc::new(Mutex::new(HashMap::new()));
        let (tx, rx) = mpsc::unbounded_channel();
        let storm = ctx.storm.subscribe();
        let writer = seat.as_ref().map(|s| Writer {
            idx,
            conversation_id: s.conversation_id.clone(),
            members: s.members.clone(),
            next_k: 0,
            rx,
            outbox: outbox.clone(),
            buf: String::with_capacity(ctx.body_bytes + 192),
            ctx: ctx.clone(),
        });
        let mut reader = Reader {
            idx,
            token,
            conversation_id: seat.map(|s| s.conversation_id),
            last_seq: 0,
            outbox,
            tx: tx.clone(),
            storm: Some(storm),
            replaying: false,
            ctx,
        };
        let ws = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let mut ws = connect(&reader.ctx.target, &reader.token, idx as usize).await?;
            reader.handshake(&mut ws, true).await?;
            anyhow::Ok(ws)
        })
        .await
        .context("no `synced` within 30 s")??;
        let tx = writer.as_ref().map(|_| tx);
        Ok(Self {
            reader,
            writer,
            ws,
            tx,
        })
    }

    /// Runs the client until `ctx.stop`: spawns the writer, reads, reconnects.
    pub(crate) async fn run(self) {
        let Self {
            mut reader,
            mut writer,
            ws,
            tx: _,
        } = self;
        let ctx = reader.ctx.clone();
        let mut ws = Some(ws);
        while let Some(stream) = ws.take() {
            let (sink, mut stream) = stream.split();
            let broken = CancellationToken::new();
            let writing = writer
                .take()
                .map(|w| tokio::spawn(w.run(sink, broken.clone())));
            ctx.counters.open.fetch_add(1, Relaxed);
            let outcome = reader.read(&mut stream, &broken).await;
            let dropped_at = now_ns();
            ctx.counters.open.fetch_sub(1, Relaxed);
            broken.cancel();
            if let Some(w) = writing {
                match w.await {
                    Ok(w) => writer = Some(w),
                    Err(_) => return,
                }
            }
            let storm = match outcome {
                Outcome::Stop => return,
                Outcome::Storm => true,
                Outcome::Closed(why) => {
                    ctx.counters.error(&why);
                    false
                }
            };
            drop(stream);
            ws = reader.reconnect().await;
            if ws.is_some() {
                add(&ctx.counters.reconnects, 1);
                if storm {
                    let us = (now_ns() - dropped_at) / 1000;
                    ctx.reconnect.record(reader.idx as usize, us);
                }
            } else if !ctx.stop.is_cancelled() {
                add(&ctx.counters.reconnect_failures, 1);
            }
        }
    }
}

enum Outcome {
    Stop,
    Storm,
    Closed(String),
}

#[derive(PartialEq, Eq)]
enum Seen {
    Ready,
    Synced,
    Other,
}

struct Reader {
    idx: u32,
    token: String,
    conversation_id: Option<Arc<str>>,
    /// The last `seq` received in the conversation (all before it received too).
    last_seq: i64,
    /// Own sends not yet echoed: counter → send time.
    outbox: Arc<Mutex<HashMap<u64, u64>>>,
    tx: mpsc::UnboundedSender<Cmd>,
    storm: Option<watch::Receiver<u32>>,
    /// In a `sync` replay after a reconnect.
    replaying: bool,
    ctx: Arc<Ctx>,
}

#[derive(Deserialize)]
struct Synced {
    last_seq: HashMap<String, i64>,
}

impl Reader {
    /// Reads until the stop, the storm, or the connection's end.
    async fn read(&mut self, stream: &mut SplitStream<Ws>, broken: &CancellationToken) -> Outcome {
        let ctx = self.ctx.clone();
        let mut storm = self.storm.take();
        let outcome = {
            // Pinned once, not per frame: waiting on them registers a waker each time.
            let stop = ctx.stop.cancelled();
            let broken = broken.cancelled();
            let storm_came = async {
                match storm.as_mut() {
                    Some(rx) => {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(stop, broken, storm_came);
            loop {
                let next = tokio::select! {
                    biased;
                    _ = &mut stop => break Outcome::Stop,
                    _ = &mut broken => break Outcome::Closed("write_failed".into()),
                    _ = &mut storm_came => break Outcome::Storm,
                    next = stream.next() => next,
                };
                match next {
                    Some(Ok(Message::Text(text))) => {
                        self.on_text(&text);
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.map_or(1005, |f| u16::from(f.code));
                        break Outcome::Closed(format!("closed_{code}"));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) => break Outcome::Closed("connection_error".into()),
                    None => break Outcome::Closed("connection_lost".into()),
                }
            }
        };
        self.storm = storm;
        outcome
    }

    /// `ready`, `sync`, replayed messages, `synced`. The first time (`initial`) the
    /// sync names nothing and `synced` gives the base `seq`; after a reconnect it
    /// names the conversation with the last `seq` held.
    async fn handshake(&mut self, ws: &mut Ws, initial: bool) -> anyhow::Result<()> {
        while self.next_text(ws).await?.0 != Seen::Ready {}
        let conversation = self.conversation_id.clone();
        let since = if initial { None } else { Some(self.last_seq) };
        let sync = match (&conversation, since) {
            (Some(c), Some(s)) => encode_sync(c, Some(s)),
            _ => encode_sync("", None),
        };
        ws.send(Message::text(sync)).await?;
        self.replaying = !initial;
        let synced = loop {
            let (seen, text) = self.next_text(ws).await?;
            if seen == Seen::Synced {
                break text;
            }
        };
        self.replaying = false;
        if initial && let Some(c) = &conversation {
            let synced: Synced = serde_json::from_str(&synced).context("bad `synced`")?;
            self.last_seq = synced.last_seq.get(&**c).copied().unwrap_or(0);
        }
        Ok(())
    }

    /// The next text frame, handled; its kind and (for `synced`) text.
    async fn next_text(&mut self, ws: &mut Ws) -> anyhow::Result<(Seen, String)> {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let seen = self.on_text(&text);
                    let keep = if seen == Seen::Synced {
                        text.to_string()
                    } else {
                        String::new()
                    };
                    return Ok((seen, keep));
                }
                Some(Ok(Message::Close(frame))) => bail!("closed during the handshake: {frame:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("connection lost during the handshake"),
            }
        }
    }

    /// Connects again with backoff; `None` on stop or after too many attempts.
    async fn reconnect(&mut self) -> Option<Ws> {
        let ctx = self.ctx.clone();
        let mut delay = Duration::from_millis(50);
        for _ in 0..RECONNECT_ATTEMPTS {
            let attempt = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                let mut ws = connect(&ctx.target, &self.token, self.idx as usize).await?;
                self.handshake(&mut ws, false).await?;
                anyhow::Ok(ws)
            });
            tokio::select! {
                _ = ctx.stop.cancelled() => return None,
                r = attempt => if let Ok(Ok(ws)) = r { return Some(ws) },
            }
            tokio::select! {
                _ = ctx.stop.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        None
    }

    fn on_text(&mut self, text: &str) -> Seen {
        let Ok(frame) = InFrame::parse(text) else {
            self.ctx.counters.error("unparsed_frame");
            return Seen::Other;
        };
        match frame.ty {
            "message" => {
                if let Some(m) = frame.message() {
                    self.on_message(&m);
                }
            }
            "accepted" => {
                if let Some((run, Phase::Measured, _, _)) =
                    frame.client_msg_id.and_then(decode_client_msg_id)
                    && run == self.ctx.run
                {
                    add(&self.ctx.counters.accepted, 1);
                }
            }
            "error" => self.on_error(&frame),
            "ready" => return Seen::Ready,
            "synced" => return Seen::Synced,
            _ => {}
        }
        Seen::Other
    }

    fn on_message(&mut self, m: &InMessage<'_>) {
        let ctx = &*self.ctx;
        let Some(conversation) = &self.conversation_id else {
            return;
        };
        if m.conversation_id != &**conversation {
            return;
        }
        if m.seq <= self.last_seq {
            add(&ctx.counters.duplicates, 1);
            return;
        }
        if m.seq > self.last_seq + 1 {
            add(&ctx.counters.seq_gaps, (m.seq - self.last_seq - 1) as u64);
        }
        self.last_seq = m.seq;
        let Some(key) = decode_body(&m.body) else {
            return;
        };
        if key.run != ctx.run {
            return;
        }
        let now = now_ns();
        add(&ctx.counters.delivered_total, 1);
        if self.replaying {
            add(&ctx.counters.replayed, 1);
        }
        if ctx.window.phase(key.ts_ns) == Phase::Measured {
            add(&ctx.counters.delivered, 1);
            ctx.latency
                .record(self.idx as usize, now.saturating_sub(key.ts_ns) / 1000);
        }
        if key.sender == self.idx {
            let confirmed = self.confirm(key.k);
            if confirmed && ctx.closed_loop && now < ctx.window.end() {
                ctx.counters.queued.fetch_add(1, Relaxed);
                let _ = self.tx.send(Cmd::Next);
            }
        }
    }

    fn on_error(&mut self, frame: &InFrame<'_>) {
        let ctx = self.ctx.clone();
        let code = frame.code.unwrap_or("unknown");
        let own = frame
            .client_msg_id
            .and_then(decode_client_msg_id)
            .filter(|&(run, _, sender, _)| run == ctx.run && sender == self.idx);
        let Some((_, phase, _, k)) = own else {
            ctx.counters.error(code);
            return;
        };
        if phase == Phase::Warmup {
            add(&ctx.counters.warmup_errors, 1);
        } else {
            ctx.counters.error(code);
        }
        // A refused send is not retried; closed loop replaces it by a new one.
        if self.confirm(k) && ctx.closed_loop && now_ns() < ctx.window.end() {
            let tx = self.tx.clone();
            let wait = Duration::from_millis(frame.retry_after_ms.unwrap_or(0));
            ctx.counters.queued.fetch_add(1, Relaxed);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let _ = tx.send(Cmd::Next);
            });
        }
    }

    /// Removes an own send from the outbox; whether it was there.
    fn confirm(&self, k: u64) -> bool {
        self.outbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&k)
            .is_some()
    }
}

struct Writer {
    idx: u32,
    conversation_id: Arc<str>,
    members: Arc<AtomicU64>,
    next_k: u64,
    rx: mpsc::UnboundedReceiver<Cmd>,
    outbox: Arc<Mutex<HashMap<u64, u64>>>,
    buf: String,
    ctx: Arc<Ctx>,
}

/// A connection's writer, chorus's or a peer's: where its commands come from and how
/// one is written.
pub(crate) trait WriteCmds {
    /// The queue of commands.
    fn commands(&mut self) -> &mut mpsc::UnboundedReceiver<Cmd>;
    /// Writes one command's message (not flushed).
    fn write_cmd(&mut self, sink: &mut Sink, cmd: Cmd) -> impl Future<Output = WsResult> + Send;
}

/// Writes commands, up to [`WRITE_BATCH`] per flush, until `broken` or the end of the
/// queue; a failed write or flush cancels `broken`.
pub(crate) async fn pump<W: WriteCmds>(
    writer: &mut W,
    sink: &mut SplitSink<Ws, Message>,
    broken: &CancellationToken,
) {
    let gone = broken.cancelled();
    tokio::pin!(gone);
    loop {
        let cmd = tokio::select! {
            biased;
            _ = &mut gone => break,
            cmd = writer.commands().recv() => cmd,
        };
        let Some(cmd) = cmd else { break };
        let mut result = writer.write_cmd(sink, cmd).await;
        let mut n = 1;
        while result.is_ok() && n < WRITE_BATCH {
            match writer.commands().try_recv() {
                Ok(cmd) => result = writer.write_cmd(sink, cmd).await,
                Err(_) => break,
            }
            n += 1;
        }
        let result = match result {
            Ok(()) => tokio::select! {
                biased;
                _ = &mut gone => break,
                r = sink.flush() => r,
            },
            Err(e) => Err(e),
        };
        if result.is_err() {
            broken.cancel();
            break;
        }
    }
}

impl WriteCmds for Writer {
    async fn write_cmd(&mut self, sink: &mut Sink, cmd: Cmd) -> WsResult {
        let ts = cmd.stamp();
        let k = self.next_k;
        self.next_k += 1;
        let phase = self.ctx.window.phase(ts);
        self.encode(k, ts, phase);
        self.outbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(k, ts);
        self.ctx
            .count_write(self.idx, phase, self.members.load(Relaxed), cmd, ts);
        sink.feed(Message::text(self.buf.as_str())).await
    }

    fn commands(&mut self) -> &mut mpsc::UnboundedReceiver<Cmd> {
        &mut self.rx
    }
}

impl Writer {
    /// Sends again what is unconfirmed, then writes commands until `broken`; hands
    /// itself back for the next connection.
    async fn run(mut self, mut sink: SplitSink<Ws, Message>, broken: CancellationToken) -> Self {
        if self.resend(&mut sink).await.is_err() {
            broken.cancel();
            return self;
        }
        pump(&mut self, &mut sink, &broken).await;
        self
    }

    /// Sends every unconfirmed message again, same key and body, oldest first.
    async fn resend(
        &mut self,
        sink: &mut SplitSink<Ws, Message>,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        let mut pending: Vec<(u64, u64)> = self
            .outbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(&k, &ts)| (k, ts))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        pending.sort_unstable();
        add(&self.ctx.counters.resent, pending.len() as u64);
        for (k, ts) in pending {
            let phase = self.ctx.window.phase(ts);
            self.encode(k, ts, phase);
            sink.feed(Message::text(self.buf.as_str())).await?;
        }
        sink.flush().await
    }

    fn encode(&mut self, k: u64, ts: u64, phase: Phase) {
        let key = BodyKey {
            run: self.ctx.run,
            ts_ns: ts,
            sender: self.idx,
            k,
        };
        encode_send(
            &mut self.buf,
            &self.conversation_id,
            &key,
            phase,
            self.ctx.body_bytes,
        );
    }
}

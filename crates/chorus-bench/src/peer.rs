//! Clients for what chorus is compared with, driven by the same scheduler, counters and
//! histograms as chorus clients: ejabberd over XMPP over WebSocket (RFC 7395) and the
//! bare relay ([`crate::relay`]). Their setup is theirs: XMPP users are registered
//! through ejabberd's HTTP API (`POST /api/register`) and groups are MUC rooms created
//! through it (`POST /api/create_room`); relay users and rooms are just names.
//!
//! A peer session does not resume: a dropped connection ends the client and counts as
//! an error. Latency is measured like chorus' from the send time carried in the body.

use crate::args::{BenchArgs, ConversationMode, Protocol};
use crate::client::{Cmd, Ctx, Sink, WriteCmds, Ws, WsResult, connect_tcp, pump, ws_config};
use crate::codec::{BodyKey, Phase, decode_body, encode_body, encode_client_msg_id, now_ns};
use crate::setup::{Conversation, SignIns, Target, User};
use crate::stats::add;
use crate::{relay, xmpp};
use anyhow::{Context, bail};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt, TryStreamExt};
use reqwest::StatusCode;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::client_async_with_config;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::sync::CancellationToken;

/// How long connecting plus the handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// The XMPP domain's MUC service.
fn muc_service(domain: &str) -> String {
    format!("conference.{domain}")
}

/// `POST` JSON to ejabberd's HTTP API, retrying connection errors a few times.
async fn api(
    http: &reqwest::Client,
    target: &Target,
    command: &str,
    body: &serde_json::Value,
) -> anyhow::Result<(StatusCode, String)> {
    let url = target.url(&format!("/api/{command}"));
    let mut attempt = 0;
    loop {
        match http.post(&url).json(body).send().await {
            Ok(r) => {
                let status = r.status();
                return Ok((status, r.text().await.unwrap_or_default()));
            }
            Err(e) if attempt >= 5 => {
                return Err(e).with_context(|| format!("POST {url} (is ejabberd running?)"));
            }
            Err(_) => {}
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
    }
}

/// The users of a peer run: XMPP users registered (or found registered: 409) through
/// the HTTP API; relay users need nothing. A user's `id` is its XMPP local part.
pub(crate) async fn sign_in_all(
    http: &reqwest::Client,
    target: &Target,
    args: &BenchArgs,
    tick: &(dyn Fn() + Sync),
) -> anyhow::Result<(Vec<User>, SignIns)> {
    let user = |i: usize| User {
        id: format!("{}-{i}", args.user_prefix),
        token: String::new(),
    };
    if args.protocol != Protocol::Xmpp {
        return Ok(((0..args.users).map(user).collect(), SignIns::default()));
    }
    let results: Vec<(User, bool)> = futures::stream::iter(0..args.users)
        .map(|i| async move {
            let u = user(i);
            let body = json!({"user": u.id, "host": args.xmpp_domain, "password": args.password});
            let (status, text) = api(http, target, "register", &body).await?;
            let new = match status {
                StatusCode::OK => true,
                StatusCode::CONFLICT => false,
                _ => bail!("registering {}: {status} {text}", u.id),
            };
            tick();
            anyhow::Ok((u, new))
        })
        .buffered(args.connect_concurrency.min(64))
        .try_collect()
        .await?;
    let mut counts = SignIns::default();
    for (_, new) in &results {
        counts.add(*new);
    }
    Ok((results.into_iter().map(|(u, _)| u).collect(), counts))
}

/// The conversations of a peer run. XMPP: direct pairs need nothing (messages go to
/// the other member's bare JID), groups are MUC rooms created for this run. Relay: a
/// room per conversation, joined by its members.
pub(crate) async fn create_conversations(
    http: &reqwest::Client,
    target: &Target,
    plan: Vec<Vec<usize>>,
    args: &BenchArgs,
    run: u32,
    tick: impl Fn() + Sync,
) -> anyhow::Result<Vec<Conversation>> {
    let domain = &args.xmpp_domain;
    futures::stream::iter(plan.into_iter().enumerate())
        .map(|(c, members)| {
            let tick = &tick;
            async move {
                let name = format!("bench-{run:08x}-{c}");
                let id = match (args.protocol, args.conversation) {
                    (Protocol::Xmpp, ConversationMode::Group) => {
                        let service = muc_service(domain);
                        let body = json!({"name": name, "service": service, "host": domain});
                        let (status, text) = api(http, target, "create_room", &body).await?;
                        if !status.is_success() {
                            bail!("creating room {name}: {status} {text}");
                        }
                        format!("{name}@{service}")
                    }
                    (Protocol::Xmpp, ConversationMode::Direct) => String::new(),
                    _ => name,
                };
                tick();
                anyhow::Ok(Conversation {
                    id: id.into(),
                    members,
                })
            }
        })
        .buffered(args.connect_concurrency.min(64))
        .try_collect()
        .await
}

/// Deliveries of one send: every member of a chorus conversation, MUC room or relay
/// room (the sender's echo included); XMPP direct messages reach only the other member.
pub(crate) fn receivers(protocol: Protocol, mode: ConversationMode, members: usize) -> u64 {
    match (protocol, mode) {
        (Protocol::Xmpp, ConversationMode::Direct) => members.saturating_sub(1) as u64,
        _ => members as u64,
    }
}

/// Where a peer client sends, and what it joins.
#[derive(Clone, Debug)]
pub(crate) struct PeerSeat {
    /// Destination of every send: the other member's bare JID, a MUC room's JID or a
    /// relay room.
    pub dest: Arc<str>,
    /// Join `dest` first (rooms), or not (XMPP direct).
    pub join: bool,
    /// Deliveries expected per send; lowered when a member cannot connect.
    pub receivers: Arc<AtomicU64>,
}

impl PeerSeat {
    /// One member fewer expected (a member could not connect).
    pub(crate) fn lose_receiver(&self) {
        let _ = self
            .receivers
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
    }
}

/// How to talk to the peer.
#[derive(Clone, Debug)]
pub(crate) enum Dialect {
    /// XMPP over WebSocket to ejabberd.
    Xmpp {
        /// The virtual host.
        domain: Arc<str>,
        /// Every user's password.
        password: Arc<str>,
    },
    /// The relay's frames.
    Relay,
}

impl Dialect {
    /// The dialect of `args`; `None` for chorus.
    pub(crate) fn of(args: &BenchArgs) -> Option<Self> {
        match args.protocol {
            Protocol::Chorus => None,
            Protocol::Xmpp => Some(Self::Xmpp {
                domain: args.xmpp_domain.as_str().into(),
                password: args.password.as_str().into(),
            }),
            Protocol::Relay => Some(Self::Relay),
        }
    }

    /// The JID of the user with local part `user`.
    pub(crate) fn jid(&self, user: &str) -> String {
        match self {
            Self::Xmpp { domain, .. } => format!("{user}@{domain}"),
            Self::Relay => user.to_owned(),
        }
    }
}

/// A connected peer client, before its tasks start.
pub(crate) struct PeerClient {
    reader: Reader,
    writer: Option<Writer>,
    ws: Ws,
    /// Handle for the scheduler (none without a conversation).
    pub tx: Option<mpsc::UnboundedSender<Cmd>>,
}

impl PeerClient {
    /// Connects user `idx` (local part `user`) and completes the handshake: XMPP
    /// stream, SASL PLAIN, bind, presence (and the room join); relay room join.
    pub(crate) async fn connect(
        ctx: Arc<Ctx>,
        dialect: &Dialect,
        idx: u32,
        user: &str,
        seat: Option<PeerSeat>,
    ) -> anyhow::Result<Self> {
        let ws = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let mut ws = open(&ctx, dialect, idx).await?;
            handshake(&mut ws, dialect, user, seat.as_ref()).await?;
            anyhow::Ok(ws)
        })
        .await
        .context("no handshake within 30 s")??;
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = seat.map(|seat| Writer {
            idx,
            xmpp: matches!(dialect, Dialect::Xmpp { .. }),
            seat,
            next_k: 0,
            rx,
            buf: String::with_capacity(ctx.body_bytes + 256),
            body: String::with_capacity(ctx.body_bytes),
            id: String::with_capacity(32),
            ctx: ctx.clone(),
        });
        let tx = writer.as_ref().map(|_| tx);
        Ok(Self {
            reader: Reader {
                idx,
                xmpp: matches!(dialect, Dialect::Xmpp { .. }),
                tx: tx.clone(),
                ctx,
            },
            writer,
            ws,
            tx,
        })
    }

    /// Runs the client until `ctx.stop` or the connection's end.
    pub(crate) async fn run(self) {
        let Self {
            reader,
            writer,
            ws,
            tx: _,
        } = self;
        let ctx = reader.ctx.clone();
        let (sink, mut stream) = ws.split();
        let broken = CancellationToken::new();
        let writing = writer.map(|w| tokio::spawn(w.run(sink, broken.clone())));
        ctx.counters.open.fetch_add(1, Relaxed);
        let outcome = reader.read(&mut stream, &broken).await;
        ctx.counters.open.fetch_sub(1, Relaxed);
        broken.cancel();
        if let Some(w) = writing {
            let _ = w.await;
        }
        if let Err(why) = outcome {
            ctx.counters.error(&why);
        }
    }
}

/// Opens the WebSocket: `/ws` with the `xmpp` subprotocol, or the relay's `/`.
async fn open(ctx: &Ctx, dialect: &Dialect, idx: u32) -> anyhow::Result<Ws> {
    let stream = connect_tcp(&ctx.target, idx as usize).await?;
    let base = format!("ws{}", &ctx.target.http_base["http".len()..]);
    let request = match dialect {
        Dialect::Xmpp { .. } => {
            let mut r = format!("{base}/ws").into_client_request()?;
            r.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static(xmpp::SUBPROTOCOL),
            );
            r
        }
        Dialect::Relay => format!("{base}/").into_client_request()?,
    };
    let (ws, _) = client_async_with_config(request, stream, Some(ws_config()))
        .await
        .context("WebSocket upgrade")?;
    Ok(ws)
}

/// The next text frame; fails on the connection's end.
async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.to_string()),
            Some(Ok(Message::Close(frame))) => bail!("closed during the handshake: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection lost during the handshake"),
        }
    }
}

/// Waits for the frame `want` accepts (`Ok(true)`); `Err` from it fails the handshake.
async fn expect(
    ws: &mut Ws,
    what: &str,
    want: impl Fn(&xmpp::Frame<'_>) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    loop {
        let text = next_text(ws).await?;
        match xmpp::Frame::parse(&text) {
            Some(xmpp::Frame::Closed(why)) => bail!("stream closed waiting for {what}: {why}"),
            Some(frame) => {
                if want(&frame)? {
                    return Ok(());
                }
            }
            None => bail!("unreadable frame waiting for {what}: {text}"),
        }
    }
}

async fn handshake(
    ws: &mut Ws,
    dialect: &Dialect,
    user: &str,
    seat: Option<&PeerSeat>,
) -> anyhow::Result<()> {
    use xmpp::Frame as F;
    let (domain, password) = match dialect {
        Dialect::Relay => {
            if let Some(seat) = seat.filter(|s| s.join) {
                let join = relay::encode_join(&seat.dest);
                ws.send(Message::text(join.clone())).await?;
                while next_text(ws).await? != join {}
            }
            return Ok(());
        }
        Dialect::Xmpp { domain, password } => (domain, password),
    };
    ws.send(Message::text(xmpp::open(domain))).await?;
    expect(ws, "SASL features", |f| match f {
        F::Features { plain: true, .. } => Ok(true),
        F::Features { plain: false, .. } => bail!("the server does not offer SASL PLAIN"),
        _ => Ok(false),
    })
    .await?;
    ws.send(Message::text(xmpp::auth_plain(user, password)))
        .await?;
    expect(ws, "SASL success", |f| match f {
        F::Success => Ok(true),
        F::Failure(why) => bail!("login of {user} refused: {why}"),
        _ => Ok(false),
    })
    .await?;
    ws.send(Message::text(xmpp::open(domain))).await?;
    expect(ws, "bind feature", |f| {
        Ok(matches!(f, F::Features { bind: true, .. }))
    })
    .await?;
    ws.send(Message::text(xmpp::bind())).await?;
    let jid = loop {
        let text = next_text(ws).await?;
        match F::parse(&text) {
            Some(F::Bound(Ok(j))) => break j.into_owned(),
            Some(F::Bound(Err(why))) => bail!("bind refused: {why}"),
            Some(F::Closed(why)) => bail!("stream closed waiting for bind: {why}"),
            _ => {}
        }
    };
    ws.send(Message::text(xmpp::PRESENCE)).await?;
    // The server broadcasts initial presence to the user's own resources: once it is
    // back, the session is available and messages to the bare JID reach it.
    expect(ws, "own presence", |f| {
        Ok(matches!(f, F::Presence { from, error: None, .. } if *from == jid))
    })
    .await?;
    if let Some(seat) = seat.filter(|s| s.join) {
        ws.send(Message::text(xmpp::join_room(&seat.dest, user)))
            .await?;
        let me = format!("{}/{user}", seat.dest);
        expect(ws, "room join", |f| match f {
            F::Presence {
                from, error: None, ..
            } if *from == me => Ok(true),
            F::Presence {
                from,
                error: Some(why),
                ..
            } if from.starts_with(&*seat.dest) => bail!("joining {} refused: {why}", seat.dest),
            _ => Ok(false),
        })
        .await?;
    }
    Ok(())
}

struct Reader {
    idx: u32,
    xmpp: bool,
    /// Closed loop: refills on own echoes.
    tx: Option<mpsc::UnboundedSender<Cmd>>,
    ctx: Arc<Ctx>,
}

impl Reader {
    /// Reads until the stop (`Ok`) or the connection's end (`Err` with the reason).
    async fn read(
        &self,
        stream: &mut SplitStream<Ws>,
        broken: &CancellationToken,
    ) -> Result<(), String> {
        let stop = self.ctx.stop.cancelled();
        let broken = broken.cancelled();
        tokio::pin!(stop, broken);
        loop {
            let next = tokio::select! {
                biased;
                _ = &mut stop => return Ok(()),
                _ = &mut broken => return Err("write_failed".into()),
                next = stream.next() => next,
            };
            match next {
                Some(Ok(Message::Text(text))) => self.on_text(&text)?,
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map_or(1005, |f| u16::from(f.code));
                    return Err(format!("closed_{code}"));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) => return Err("connection_error".into()),
                None => return Err("connection_lost".into()),
            }
        }
    }

    fn on_text(&self, text: &str) -> Result<(), String> {
        if !self.xmpp {
            if let Some(relay::Frame::Message { body, .. }) = relay::Frame::parse(text) {
                self.on_body(body);
            }
            return Ok(());
        }
        match xmpp::Frame::parse(text) {
            Some(xmpp::Frame::Message {
                error: Some(why), ..
            }) => self.ctx.counters.error(&format!("xmpp_{why}")),
            Some(xmpp::Frame::Message {
                body: Some(body), ..
            }) => self.on_body(&body),
            Some(xmpp::Frame::Presence {
                error: Some(why), ..
            }) => self.ctx.counters.error(&format!("xmpp_presence_{why}")),
            Some(xmpp::Frame::Closed(why)) => return Err(format!("xmpp_{why}")),
            Some(_) => {}
            None => self.ctx.counters.error("unparsed_frame"),
        }
        Ok(())
    }

    fn on_body(&self, body: &str) {
        let ctx = &*self.ctx;
        let Some(key) = decode_body(body) else {
            return;
        };
        if key.run != ctx.run {
            return;
        }
        let now = now_ns();
        add(&ctx.counters.delivered_total, 1);
        if ctx.window.phase(key.ts_ns) == Phase::Measured {
            add(&ctx.counters.delivered, 1);
            ctx.latency
                .record(self.idx as usize, now.saturating_sub(key.ts_ns) / 1000);
        }
        if key.sender == self.idx
            && ctx.closed_loop
            && now < ctx.window.end()
            && let Some(tx) = &self.tx
        {
            ctx.counters.queued.fetch_add(1, Relaxed);
            let _ = tx.send(Cmd::Next);
        }
    }
}

struct Writer {
    idx: u32,
    xmpp: bool,
    seat: PeerSeat,
    next_k: u64,
    rx: mpsc::UnboundedReceiver<Cmd>,
    buf: String,
    body: String,
    id: String,
    ctx: Arc<Ctx>,
}

impl WriteCmds for Writer {
    async fn write_cmd(&mut self, sink: &mut Sink, cmd: Cmd) -> WsResult {
        let ts = cmd.stamp();
        let k = self.next_k;
        self.next_k += 1;
        let ctx = &*self.ctx;
        let phase = ctx.window.phase(ts);
        let key = BodyKey {
            run: ctx.run,
            ts_ns: ts,
            sender: self.idx,
            k,
        };
        self.body.clear();
        encode_body(&mut self.body, &key, ctx.body_bytes);
        if self.xmpp {
            self.id.clear();
            encode_client_msg_id(&mut self.id, ctx.run, phase, self.idx, k);
            xmpp::encode_message(
                &mut self.buf,
                &self.seat.dest,
                self.seat.join,
                &self.id,
                &self.body,
            );
        } else {
            relay::encode_message(&mut self.buf, &self.seat.dest, &self.body);
        }
        ctx.count_write(self.idx, phase, self.seat.receivers.load(Relaxed), cmd, ts);
        sink.feed(Message::text(self.buf.as_str())).await
    }

    fn commands(&mut self) -> &mut mpsc::UnboundedReceiver<Cmd> {
        &mut self.rx
    }
}

impl Writer {
    /// Writes commands until `broken` or the end of the queue.
    async fn run(mut self, mut sink: SplitSink<Ws, Message>, broken: CancellationToken) {
        pump(&mut self, &mut sink, &broken).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receivers_per_send() {
        use ConversationMode::{Direct, Group};
        assert_eq!(receivers(Protocol::Chorus, Direct, 2), 2);
        assert_eq!(receivers(Protocol::Xmpp, Direct, 2), 1);
        assert_eq!(receivers(Protocol::Xmpp, Group, 100), 100);
        assert_eq!(receivers(Protocol::Relay, Direct, 2), 2);
        let seat = PeerSeat {
            dest: "r".into(),
            join: true,
            receivers: Arc::new(AtomicU64::new(1)),
        };
        seat.lose_receiver();
        seat.lose_receiver();
        assert_eq!(seat.receivers.load(Relaxed), 0);
    }

    #[test]
    fn jids() {
        let d = Dialect::Xmpp {
            domain: "localhost".into(),
            password: "p".into(),
        };
        assert_eq!(d.jid("bench-1"), "bench-1@localhost");
        assert_eq!(Dialect::Relay.jid("bench-1"), "bench-1");
        assert_eq!(muc_service("localhost"), "conference.localhost");
    }
}

//! The run: set up users and conversations, open the sessions, drive one scenario
//! (open loop, closed loop, idle, reconnect storm), wait for the tail and report.

use crate::args::{BenchArgs, ConversationMode, Protocol};
use crate::client::{Client, Cmd, Ctx, Seat};
use crate::codec::now_ns;
use crate::peer::{self, Dialect, PeerClient, PeerSeat};
use crate::report::{self, Percentiles, Report, Storm};
use crate::setup::{self, Conversation, SignIns, Target, User};
use crate::stats::{Counters, Sharded, Window, get};
use anyhow::{Context, bail};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longest wait after the window for deliveries still on their way.
const TAIL: Duration = Duration::from_secs(5);
/// Attempts to open each session during setup.
const CONNECT_ATTEMPTS: u32 = 3;

/// A session opened during setup: user index, its task, its writer's queue.
type Opened = anyhow::Result<(usize, JoinHandle<()>, Option<mpsc::UnboundedSender<Cmd>>)>;

/// Runs the benchmark and prints (and writes) the report.
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    args.validate()?;
    now_ns();
    let nofile = setup::raise_nofile();
    let target = Target::resolve(&args.url, args.source_addrs).await?;
    let http = setup::http_client(args.connect_concurrency)?;
    let dialect = Dialect::of(&args);
    if dialect.is_none() {
        setup::check_reachable(&http, &target).await?;
    }
    let progress = Progress::new();
    // The low bits of a v7 UUID are random.
    let run_id = uuid::Uuid::now_v7().as_u128() as u32;
    if let Some(limit) = nofile
        && args.users as u64 + 64 > limit
    {
        progress.note(&format!(
            "warning: the open-files limit is {limit}, too low for {} connections",
            args.users
        ));
    }

    let (users, sign_ins) = sign_in(&http, &target, &args, dialect.is_some(), &progress).await?;
    let conversations = if args.idle {
        Vec::new()
    } else {
        converse(
            &http,
            &target,
            &users,
            &args,
            dialect.is_some(),
            run_id,
            &progress,
        )
        .await?
    };
    let seats = Seats::new(&args, users.len(), &conversations);

    let rss_before = server_rss(&args)?;
    let shards = 4 * std::thread::available_parallelism().map_or(2, |n| n.get());
    let (storm, _) = watch::channel(0u32);
    let ctx = Arc::new(Ctx {
        target,
        counters: Counters::default(),
        latency: Sharded::new(shards),
        lag: Sharded::new(shards),
        reconnect: Sharded::new(shards),
        window: Window::unset(),
        run: run_id,
        body_bytes: args.body_bytes,
        closed_loop: args.closed_loop,
        stop: CancellationToken::new(),
        storm,
    });
    let people = People {
        users: &users,
        conversations: &conversations,
        seats: &seats,
    };
    let sessions = connect(&ctx, &args, &people, dialect.as_ref(), &progress).await?;
    let load = if args.idle {
        progress.start_timed("hold", args.duration);
        let ticker = progress.ticker(ctx.clone(), now_ns());
        tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
        ticker.abort();
        Load::default()
    } else {
        if dialect.is_none()
            && !args.closed_loop
            && args.rate / sessions.senders.len() as f64 > 100.0
        {
            progress.note(&format!(
                "note: {:.0} sends/s per user is over the server's default per-user limit (100/s): expect rate_limited",
                args.rate / sessions.senders.len() as f64
            ));
        }
        drive(&ctx, &args, &sessions.senders, &progress).await?
    };

    let open_at_end = ctx.counters.open.load(Relaxed);
    let rss_after = server_rss(&args)?;
    ctx.stop.cancel();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for h in sessions.handles {
        let _ = tokio::time::timeout_at(deadline, h).await;
    }
    progress.finish();

    let c = &ctx.counters;
    let mut r = Report {
        scenario: args.scenario(),
        protocol: args.protocol.as_str(),
        url: ctx.target.http_base.clone(),
        users: users.len(),
        registered: sign_ins.registered,
        logged_in: sign_ins.logged_in,
        connections: sessions.opened,
        connect_failures: sessions.failures,
        connect_s: sessions.connect_s,
        connect_rate: report::per_second(sessions.opened as u64, sessions.connect_s),
        conversation: args.conversation.as_str(),
        conversations: conversations.len(),
        group_size: (args.conversation == ConversationMode::Group).then_some(args.group_size),
        in_flight: args.closed_loop.then_some(args.in_flight),
        offered_rate: (!args.closed_loop && !args.idle).then_some(args.rate),
        duration_s: args.duration,
        warmup_s: if args.idle { 0.0 } else { args.warmup },
        scheduled: get(&c.scheduled),
        sent: get(&c.sent),
        send_rate: report::per_second(get(&c.sent), args.duration),
        accepted: get(&c.accepted),
        delivered: get(&c.delivered),
        expected: get(&c.expected),
        delivered_percent: report::delivered_percent(get(&c.delivered), get(&c.expected)),
        throughput: report::per_second(get(&c.delivered), args.duration),
        errors: c.errors(),
        warmup_errors: get(&c.warmup_errors),
        duplicates: get(&c.duplicates),
        seq_gaps: get(&c.seq_gaps),
        latency: Percentiles::of(&ctx.latency.merged()),
        tail_s: load.tail_s,
        nofile_limit: nofile,
        open_at_end,
        server_rss_before_kib: rss_before,
        server_rss_after_kib: rss_after,
        server_cpu_s: load.server_cpu_us.map(|us| us as f64 / 1e6),
        server_cpu_us_per_send: load
            .server_cpu_us
            .filter(|_| get(&c.sent) > 0)
            .map(|us| us as f64 / get(&c.sent) as f64),
        ..Report::default()
    };
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        r.rss_per_connection_kib = Some(report::rss_per_connection(b, a, sessions.opened));
    }
    if !args.closed_loop && !args.idle {
        let lag = Percentiles::of(&ctx.lag.merged());
        r.generator_lag_p99_ms = Some(lag.p99_ms);
        r.generator_lag_max_ms = Some(lag.max_ms);
    }
    if args.reconnect_storm {
        let times = Percentiles::of(&ctx.reconnect.merged());
        r.storm = Some(Storm {
            reconnected: get(&c.reconnects),
            reconnect_failures: get(&c.reconnect_failures),
            reconnect_p50_ms: times.p50_ms,
            reconnect_p99_ms: times.p99_ms,
            reconnect_max_ms: times.max_ms,
            missed: r.expected.saturating_sub(r.delivered),
            replayed: get(&c.replayed),
            resent: get(&c.resent),
        });
    }
    print!("{}", r.text());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&r)? + "\n";
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The server's resident memory now, with `--server-pid`.
fn server_rss(args: &BenchArgs) -> anyhow::Result<Option<u64>> {
    args.server_pid
        .map(setup::read_rss_kib)
        .transpose()
        .context("--server-pid")
}

/// Signs every user in: chorus accounts, or a peer's (`peer`).
async fn sign_in(
    http: &reqwest::Client,
    target: &Target,
    args: &BenchArgs,
    peer: bool,
    progress: &Progress,
) -> anyhow::Result<(Vec<User>, SignIns)> {
    let started = Instant::now();
    progress.start("sign in", args.users as u64);
    let tick = || progress.inc();
    let (users, sign_ins) = if peer {
        peer::sign_in_all(http, target, args, &tick).await?
    } else {
        setup::sign_in_all(http, target, args, tick).await?
    };
    progress.note(&format!(
        "{} users signed in ({} registered, {} logged in) in {:.1} s",
        users.len(),
        sign_ins.registered,
        sign_ins.logged_in,
        started.elapsed().as_secs_f64()
    ));
    Ok((users, sign_ins))
}

/// Creates the conversations the users send to: on chorus, or a peer's (`peer`).
async fn converse(
    http: &reqwest::Client,
    target: &Target,
    users: &[User],
    args: &BenchArgs,
    peer: bool,
    run_id: u32,
    progress: &Progress,
) -> anyhow::Result<Vec<Conversation>> {
    let plan = setup::plan_conversations(users.len(), args.conversation, args.group_size);
    progress.start("conversations", plan.len() as u64);
    let tick = || progress.inc();
    let c = if peer {
        peer::create_conversations(http, target, plan, args, run_id, tick).await?
    } else {
        setup::create_conversations(http, target, users, plan, args, run_id, tick).await?
    };
    if c.is_empty() {
        bail!("no conversation to send to: use more --users");
    }
    Ok(c)
}

/// Who sits where: each conversation's count of receivers, each user's conversation,
/// and the users that take part (all of them when idle).
struct Seats {
    receivers: Vec<Arc<AtomicU64>>,
    seat_of: Vec<Option<usize>>,
    participants: Vec<usize>,
}

impl Seats {
    fn new(args: &BenchArgs, users: usize, conversations: &[Conversation]) -> Self {
        let receivers = conversations
            .iter()
            .map(|c| {
                let n = peer::receivers(args.protocol, args.conversation, c.members.len());
                Arc::new(AtomicU64::new(n))
            })
            .collect();
        let mut seat_of: Vec<Option<usize>> = vec![None; users];
        for (c, conversation) in conversations.iter().enumerate() {
            for &m in &conversation.members {
                seat_of[m] = Some(c);
            }
        }
        let participants = (0..users)
            .filter(|&i| args.idle || seat_of[i].is_some())
            .collect();
        Self {
            receivers,
            seat_of,
            participants,
        }
    }
}

/// The users, their conversations and seats: what opening the sessions reads.
struct People<'a> {
    users: &'a [User],
    conversations: &'a [Conversation],
    seats: &'a Seats,
}

impl People<'_> {
    /// User `i`'s seat on chorus.
    fn seat(&self, i: usize) -> Option<Seat> {
        self.seats.seat_of[i].map(|c| Seat {
            conversation_id: self.conversations[c].id.clone(),
            members: self.seats.receivers[c].clone(),
        })
    }

    /// User `i`'s seat on a peer: XMPP direct messages go to the other user's JID,
    /// everything else to the conversation (a MUC room or a relay channel).
    fn peer_seat(&self, args: &BenchArgs, d: &Dialect, i: usize) -> Option<PeerSeat> {
        let c = self.seats.seat_of[i]?;
        let conversation = &self.conversations[c];
        let direct_xmpp =
            args.protocol == Protocol::Xmpp && args.conversation == ConversationMode::Direct;
        Some(PeerSeat {
            dest: if direct_xmpp {
                let other = conversation.members.iter().find(|&&m| m != i);
                d.jid(&self.users[other.copied().unwrap_or(i)].id).into()
            } else {
                conversation.id.clone()
            },
            join: !direct_xmpp,
            receivers: self.seats.receivers[c].clone(),
        })
    }
}

/// The open sessions: their tasks, the senders' queues (in user order), and how
/// opening went.
struct Sessions {
    handles: Vec<JoinHandle<()>>,
    senders: Vec<mpsc::UnboundedSender<Cmd>>,
    opened: usize,
    failures: usize,
    connect_s: f64,
}

/// Opens the participants' sessions, each trying [`CONNECT_ATTEMPTS`] times; each
/// starts reading at once (the server pings silent ones). Fails when none opens.
async fn connect(
    ctx: &Arc<Ctx>,
    args: &BenchArgs,
    people: &People<'_>,
    dialect: Option<&Dialect>,
    progress: &Progress,
) -> anyhow::Result<Sessions> {
    progress.start("connect", people.seats.participants.len() as u64);
    let connect_started = Instant::now();
    let opened: Vec<Opened> = futures::stream::iter(people.seats.participants.iter().copied())
        .map(|i| {
            let ctx = ctx.clone();
            let user = &people.users[i];
            let seat = people.seat(i);
            let peer_seat = dialect.and_then(|d| people.peer_seat(args, d, i));
            async move {
                let mut attempt = 0;
                let client = loop {
                    let result = match dialect {
                        None => {
                            Client::connect(ctx.clone(), i as u32, user.token.clone(), seat.clone())
                                .await
                                .map(|c| (c.tx.clone(), tokio::spawn(c.run())))
                        }
                        Some(d) => PeerClient::connect(
                            ctx.clone(),
                            d,
                            i as u32,
                            &user.id,
                            peer_seat.clone(),
                        )
                        .await
                        .map(|c| (c.tx.clone(), tokio::spawn(c.run()))),
                    };
                    match result {
                        Ok(c) => break Ok(c),
                        Err(e) if attempt + 1 >= CONNECT_ATTEMPTS => break Err(e),
                        Err(_) => {}
                    }
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                };
                progress.inc();
                match client {
                    Ok((tx, handle)) => Ok((i, handle, tx)),
                    Err(e) => {
                        if let Some(s) = peer_seat {
                            s.lose_receiver();
                        } else if let Some(s) = seat {
                            s.members.fetch_sub(1, Relaxed);
                        }
                        Err(e.context(format!("user {i}")))
                    }
                }
            }
        })
        .buffer_unordered(args.connect_concurrency)
        .collect()
        .await;
    let connect_s = connect_started.elapsed().as_secs_f64();
    let mut handles = Vec::new();
    let mut senders = Vec::new();
    let mut failures = Vec::new();
    for r in opened {
        match r {
            Ok((i, handle, tx)) => {
                handles.push(handle);
                if let Some(tx) = tx {
                    senders.push((i, tx));
                }
            }
            Err(e) => failures.push(e),
        }
    }
    senders.sort_by_key(|(i, _)| *i);
    if handles.is_empty() {
        let first = failures.into_iter().next();
        bail!(
            "no session could be opened: {:#}",
            first.unwrap_or_else(|| anyhow::anyhow!("no users"))
        );
    }
    progress.note(&format!(
        "{} sessions open in {connect_s:.2} s ({:.0}/s){}",
        handles.len(),
        report::per_second(handles.len() as u64, connect_s),
        match failures.first() {
            Some(e) => format!(", {} failed; first: {e:#}", failures.len()),
            None => String::new(),
        }
    ));
    Ok(Sessions {
        opened: handles.len(),
        handles,
        senders: senders.into_iter().map(|(_, tx)| tx).collect(),
        failures: failures.len(),
        connect_s,
    })
}

/// What the load phase measured besides the counters.
#[derive(Default)]
struct Load {
    /// Time waited after the window for deliveries still on their way.
    tail_s: f64,
    /// The server's CPU time over the measured window, with `--server-pid`.
    server_cpu_us: Option<u64>,
}

/// The load phase: warm-up, the measured window (open or closed loop, with the
/// reconnect storm at its start if asked), then up to [`TAIL`] for what is in flight.
async fn drive(
    ctx: &Arc<Ctx>,
    args: &BenchArgs,
    senders: &[mpsc::UnboundedSender<Cmd>],
    progress: &Progress,
) -> anyhow::Result<Load> {
    let start = now_ns();
    let measure_start = start + secs_to_ns(args.warmup);
    let measure_end = measure_start + secs_to_ns(args.duration);
    ctx.window.set(measure_start, measure_end);
    // The server's CPU time at the start of the measured window.
    let cpu_at_start = args.server_pid.map(|pid| {
        tokio::spawn(async move {
            sleep_until_ns(measure_start).await;
            setup::read_cpu_us(pid)
        })
    });
    if args.reconnect_storm {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            sleep_until_ns(measure_start).await;
            ctx.storm.send_modify(|n| *n += 1);
        });
    }
    progress.start_timed("load", args.warmup + args.duration);
    let ticker = progress.ticker(ctx.clone(), start);
    if args.closed_loop {
        for tx in senders {
            for _ in 0..args.in_flight {
                ctx.counters.queued.fetch_add(1, Relaxed);
                let _ = tx.send(Cmd::Next);
            }
        }
        sleep_until_ns(measure_end).await;
    } else {
        schedule(ctx, senders, args.rate, start, measure_end).await;
    }
    let mut load = Load::default();
    if let (Some(started), Some(pid)) = (cpu_at_start, args.server_pid) {
        let start_us = started.await.context("reading the server's CPU time")??;
        load.server_cpu_us = Some(setup::read_cpu_us(pid)?.saturating_sub(start_us));
    }
    let tail_started = Instant::now();
    let c = &ctx.counters;
    while tail_started.elapsed() < TAIL
        && (get(&c.delivered) < get(&c.expected) || c.queued.load(Relaxed) > 0)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    load.tail_s = tail_started.elapsed().as_secs_f64();
    ticker.abort();
    Ok(load)
}

/// Open loop: issues sends at `rate` per second from `start` until `end`, round-robin
/// over the senders, each stamped with its scheduled time. Never waits for a socket.
async fn schedule(
    ctx: &Ctx,
    senders: &[mpsc::UnboundedSender<Cmd>],
    rate: f64,
    start: u64,
    end: u64,
) {
    if senders.is_empty() {
        return;
    }
    let period_ns = 1e9 / rate;
    let mut issued: u64 = 0;
    let mut next = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let now = now_ns();
        loop {
            let ts = start + (issued as f64 * period_ns) as u64;
            if ts > now || ts >= end {
                break;
            }
            ctx.counters.queued.fetch_add(1, Relaxed);
            if ts >= ctx.window.start() {
                ctx.counters.scheduled.fetch_add(1, Relaxed);
            }
            let _ = senders[next].send(Cmd::Send(ts));
            next = (next + 1) % senders.len();
            issued += 1;
        }
        if now >= end {
            return;
        }
    }
}

fn secs_to_ns(secs: f64) -> u64 {
    (secs * 1e9) as u64
}

async fn sleep_until_ns(ns: u64) {
    let now = now_ns();
    if ns > now {
        tokio::time::sleep(Duration::from_nanos(ns - now)).await;
    }
}

/// The progress bar on stderr (hidden when stderr is not a terminal), and notes.
struct Progress {
    bar: ProgressBar,
}

impl Progress {
    fn new() -> Self {
        let bar = if std::io::stderr().is_terminal() {
            ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr()).with_style(
                ProgressStyle::with_template("{prefix:>13} {msg}").expect("valid template"),
            )
        } else {
            ProgressBar::hidden()
        };
        Self { bar }
    }

    fn start(&self, phase: &str, len: u64) {
        self.restyle(phase, "{prefix:>13} [{bar:30}] {pos}/{len}", len);
    }

    fn start_timed(&self, phase: &str, secs: f64) {
        let len = (secs * 1000.0) as u64;
        self.restyle(phase, "{prefix:>13} [{bar:30}] {elapsed:>3} {msg}", len);
    }

    /// A new phase: style first, so that nothing is drawn in the old one.
    fn restyle(&self, phase: &str, template: &str, len: u64) {
        self.bar.set_length(len);
        self.bar.set_style(
            ProgressStyle::with_template(template)
                .expect("valid template")
                .progress_chars("=> "),
        );
        self.bar.set_prefix(phase.to_owned());
        self.bar.set_message("");
        self.bar.reset();
    }

    fn inc(&self) {
        self.bar.inc(1);
    }

    /// A line for people, above the bar (or plain on stderr without one).
    fn note(&self, line: &str) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// Updates the bar from the counters until aborted.
    fn ticker(&self, ctx: Arc<Ctx>, start: u64) -> JoinHandle<()> {
        let bar = self.bar.clone();
        tokio::spawn(async move {
            if bar.is_hidden() {
                return;
            }
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let now = now_ns();
                let c = &ctx.counters;
                let phase = match ctx.window.phase(now) {
                    _ if ctx.window.start() == u64::MAX => "hold",
                    crate::codec::Phase::Warmup => "warm-up",
                    crate::codec::Phase::Measured => "measure",
                    crate::codec::Phase::After => "tail",
                };
                bar.set_prefix(phase);
                bar.set_position(now.saturating_sub(start) / 1_000_000);
                bar.set_message(format!(
                    "sent {} recv {} err {} open {}",
                    get(&c.sent_total),
                    get(&c.delivered_total),
                    c.error_count(),
                    c.open.load(Relaxed)
                ));
            }
        })
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

//! A node: the roles one process runs, built from a [`Config`] and run until shutdown.
//!
//! Lifecycle, in three steps:
//! 1. [`Node::build`] opens the backends, creates the topics and binds the listener (so
//!    tests can bind port 0 and read [`Node::addr`] before anything runs).
//! 2. [`Node::run`] spawns the roles' loops, each supervised (restarted with backoff
//!    when it fails), and serves until the shutdown token is cancelled.
//! 3. Then it drains: the gateway stops accepting and closes its sockets with "going
//!    away", the stages finish what the log holds, and only then do the roles stop.

use crate::backends;
use crate::serve::ConnectionLimits;
use anyhow::{Context, bail};
use chorus_config::{Config, Limits};
use chorus_core::NodeId;
use chorus_core::event::{Control, decode};
use chorus_core::ratelimit::RateLimiter;
use chorus_core::topics::{Stage, Topics};
use chorus_gateway::auth::{Hashing, Tokens};
use chorus_gateway::sessions::Sessions;
use chorus_gateway::state::AppState;
use chorus_gateway::throttle::AuthLimits;
use chorus_jobs::JobsContext;
use chorus_jobs::pool::WorkerPool;
use chorus_log::consume::payload;
use chorus_log::{EventLog, HandlerError, LogError, Subscription, consume, each};
use chorus_stages::{StageContext, run_stage};
use chorus_store::{Directory, StoreError};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A role a node can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// HTTP, WebSocket, delivery to sockets.
    Gateway,
    /// A message stage.
    Stage(Stage),
    /// Job workers (a pool of `jobs.workers` tasks, resized by a local observer).
    Worker,
    /// The observer: measures the job streams and decides how many workers to run.
    Observer,
}

impl Role {
    /// Every role: what a node given none runs.
    pub const ALL: [Role; 7] = [
        Role::Gateway,
        Role::Stage(Stage::AutomateOut),
        Role::Stage(Stage::Store),
        Role::Stage(Stage::AutomateIn),
        Role::Stage(Stage::Route),
        Role::Worker,
        Role::Observer,
    ];

    /// The role's name in `--roles` (a stage's is the stage's name).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Stage(stage) => stage.name(),
            Role::Worker => "worker",
            Role::Observer => "observer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no role's.
#[derive(Debug, thiserror::Error)]
#[error("unknown role `{0}` (known: {known})", known = Role::ALL.map(Role::as_str).join(", "))]
pub struct UnknownRole(String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(name: &str) -> Result<Role, UnknownRole> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == name)
            .ok_or_else(|| UnknownRole(name.to_owned()))
    }
}

/// Why a loop of the node's own stopped (its supervisor restarts it).
#[derive(Debug, thiserror::Error)]
enum RoleError {
    /// The event log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A control notice could not be applied: the database is unavailable.
    #[error("applying a control notice: {0}")]
    Control(#[source] StoreError),
}

impl HandlerError for RoleError {
    /// Neither is a notice's fault (one the database refuses for good is skipped).
    fn is_poison(&self) -> bool {
        false
    }
}

/// A built node, ready to run.
pub struct Node {
    config: Config,
    roles: Vec<Role>,
    listener: TcpListener,
    addr: SocketAddr,
    state: Arc<AppState>,
    stage_ctx: StageContext,
    jobs: JobsContext,
}

impl Node {
    /// Opens the backends, creates topics and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Node> {
        config.validate()?;
        let roles = parse_roles(&config.roles)?;
        if !NodeId::is_valid(&config.node_id) {
            bail!(
                "invalid node id {:?}: use 1 to 64 of A-Z a-z 0-9 . _ -",
                config.node_id
            );
        }
        private_dir(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
        let stage_ctx = stage_context(&config).await?;
        let secret = jwt_secret(&config)?;
        let node = NodeId(config.node_id.clone());
        let listener =
            listen(config.listen).with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let jobs = jobs_context(&config, &node, &stage_ctx)?;
        let files = chorus_files::Files::open(&config.files_url(), &config.files.options)
            .context("opening the object store of attachments ([files])")?;
        let state = Arc::new(app_state(&config, node, &secret, &stage_ctx, &jobs, files));
        Ok(Node {
            config,
            roles,
            listener,
            addr,
            state,
            stage_ctx,
            jobs,
        })
    }

    /// Where the node listens: the whole API with the gateway role, otherwise only
    /// `/healthz`, `/readyz` and `/metrics`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs every role until `shutdown` is cancelled, then drains and stops.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let background = self.spawn_roles();
        let gateway = self.roles.contains(&Role::Gateway);
        let app = if gateway {
            chorus_gateway::router(self.state.clone())
        } else {
            chorus_gateway::ops_router(self.state.clone())
        };
        let http = tokio::spawn(crate::serve::serve(
            self.listener,
            app,
            connection_limits(&self.config.limits),
            shutdown.clone(),
        ));
        tracing::info!(addr = %self.addr, node = %self.state.node, roles = ?self.roles, "listening");
        shutdown.cancelled().await;
        tracing::info!("shutting down: draining sessions and stages");
        let drain = Duration::from_secs(self.config.shutdown.drain_secs);
        drain_gateway(&self.state, http, drain).await;
        drain_stages(&self.stage_ctx, drain).await;
        background.stop().await;
        if gateway {
            delete_delivery_topic(&self.stage_ctx, &self.state.node, drain).await;
        }
        tracing::info!("stopped");
        Ok(())
    }

    /// Spawns the loops of this node's roles and of the upkeep every node does.
    fn spawn_roles(&self) -> Background {
        let mut background = Background::default();
        let (ctx, state, jobs) = (&self.stage_ctx, &self.state, &self.jobs);
        let local: Vec<Stage> = self
            .roles
            .iter()
            .filter_map(|role| match role {
                Role::Stage(stage) => Some(*stage),
                _ => None,
            })
            .collect();
        for &stage in &local {
            let local = local.clone();
            background.spawn(stage.name(), ctx.clone(), move |ctx, stop| {
                run_stage(stage, local.clone(), ctx, stop)
            });
        }
        let partitions = self.config.partitions;
        background.spawn("topics", ctx.clone(), move |ctx, stop| {
            keep_topics(ctx, partitions, stop)
        });
        let node = state.node.clone();
        background.spawn("control", ctx.clone(), move |ctx, stop| {
            follow_control(ctx, node.clone(), stop)
        });
        if self.roles.contains(&Role::Worker) {
            let pool = Arc::new(WorkerPool::new(jobs.clone(), background.stop.clone()));
            pool.resize(self.config.jobs.workers);
            background.pool = Some(pool);
        }
        if self.roles.contains(&Role::Observer) {
            let pool = background.pool.clone();
            background.spawn(Role::Observer.as_str(), jobs.clone(), move |ctx, stop| {
                chorus_jobs::observer::run_observer(ctx, pool.clone(), stop)
            });
        }
        if self.roles.contains(&Role::Gateway) {
            // The results recorder runs with the gateway role: every deployment has one.
            background.spawn(
                "jobs-results",
                jobs.clone(),
                chorus_jobs::results::run_recorder,
            );
            background.spawn(
                "observer-view",
                state.clone(),
                chorus_gateway::jobs::follow_observer,
            );
            background.spawn("delivery", state.clone(), chorus_gateway::deliver::run);
            background.spawn(
                "registry",
                state.clone(),
                chorus_gateway::deliver::keep_registry,
            );
            let files = &self.config.files;
            let every = Duration::from_secs(files.sweep_secs);
            let grace = Duration::from_secs(files.grace_secs);
            background.spawn("attachments-sweep", state.clone(), move |state, stop| {
                chorus_gateway::attachments::sweep_forever(state, every, grace, stop)
            });
        }
        background
    }
}

/// The loops of a node's roles and upkeep. Stages, the delivery consumer and the upkeep
/// tasks stop only after the gateway has drained, so that what it accepted gets stored
/// and delivered: they have a stop token of their own, not the node's shutdown token.
#[derive(Default)]
struct Background {
    tasks: JoinSet<()>,
    stop: CancellationToken,
    /// The job workers, with the worker role.
    pool: Option<Arc<WorkerPool>>,
}

impl Background {
    /// Runs `run(ctx, stop)` under [`supervise`] as `name`.
    fn spawn<C, F, Fut, E>(&mut self, name: &'static str, ctx: C, run: F)
    where
        C: Clone + Send + 'static,
        F: Fn(C, CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        self.tasks
            .spawn(supervise(name, self.stop.clone(), move |stop| {
                run(ctx.clone(), stop)
            }));
    }

    /// Stops every loop and waits for them (a worker finishes the job it holds).
    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(pool) = &self.pool {
            pool.shutdown().await;
        }
        while self.tasks.join_next().await.is_some() {}
    }
}

/// The backends, the caches over them and the topics: what every role reads from.
async fn stage_context(config: &Config) -> anyhow::Result<StageContext> {
    let store = backends::store(&config.db_url(), config.sync_to_disk).await?;
    let log = backends::event_log(&config.log, &config.data_dir, config.sync_to_disk).await?;
    let registry = backends::registry(&config.registry, &config.topic_prefix).await?;
    let topics = Topics::new(config.topic_prefix.clone());
    create_topics(log.as_ref(), &topics, config.partitions).await?;
    let directory = Directory::with_ttl(
        store,
        Duration::from_secs(config.limits.membership_cache_secs),
        Arc::new(std::time::Instant::now),
    );
    directory
        .automations()
        .load()
        .await
        .context("loading users' scripts and auto-replies")?;
    Ok(StageContext {
        log,
        engine: engine(config, &directory),
        directory,
        registry,
        topics,
        max_body_bytes: config.limits.max_body_bytes,
        limiter: Arc::new(RateLimiter::new(
            config.limits.rate_per_sec,
            config.limits.rate_burst,
        )),
        presence_through_direct: config.presence.through_direct,
    })
}

/// The engine of users' scripts: message hooks on one sandbox, dry runs and checks on
/// another.
fn engine(config: &Config, directory: &Directory) -> chorus_automation::Engine {
    let a = &config.automation;
    let sandbox = chorus_sandbox::Sandbox::new(chorus_sandbox::SandboxConfig {
        threads: match a.threads {
            0 => chorus_sandbox::SandboxConfig::default().threads,
            n => n,
        },
        max_pooled_bytes: a.pool_max_bytes,
        max_owner_bytes: a.pool_max_owner_bytes,
        max_instance_bytes: a.pool_max_instance_bytes,
        ..Default::default()
    });
    // Dry runs and checks on threads of their own (see `Engine`), each from a fresh
    // instance: nothing is pooled there.
    let lane = chorus_sandbox::Sandbox::new(chorus_sandbox::SandboxConfig {
        threads: a.dry_run_threads,
        max_pooled: 0,
        max_pooled_bytes: 0,
        max_owner_bytes: 0,
        max_instance_bytes: 0,
    });
    chorus_automation::Engine::new(sandbox, lane, a.clone(), directory.clone())
}

/// The gateway's state, over the same backends and caches as the stages.
fn app_state(
    config: &Config,
    node: NodeId,
    secret: &[u8],
    ctx: &StageContext,
    jobs: &JobsContext,
    files: chorus_files::Files,
) -> AppState {
    AppState {
        node,
        topics: ctx.topics.clone(),
        partitions: config.partitions,
        limits: config.limits.clone(),
        presence_through_direct: config.presence.through_direct,
        engine: ctx.engine.clone(),
        directory: ctx.directory.clone(),
        log: ctx.log.clone(),
        registry: ctx.registry.clone(),
        tokens: Tokens::new(secret, Duration::from_secs(config.auth.token_ttl_secs)),
        oidc: oidc(config),
        sessions: Sessions::default(),
        limiter: ctx.limiter.clone(),
        notices: RateLimiter::new(
            config.limits.notice_rate_per_sec,
            config.limits.notice_burst,
        ),
        hashing: Hashing::per_core(config.auth.hash_queue),
        auth_limits: AuthLimits::new(&config.auth),
        registration: config.auth.registration,
        invite_ttl: Duration::from_secs(config.auth.invite_ttl_secs),
        dry_runs: Default::default(),
        metrics: crate::telemetry::metrics(),
        shutdown: CancellationToken::new(),
        tracker: TaskTracker::new(),
        jobs: jobs.config.clone(),
        jobs_key: jobs.key.clone(),
        observer: Default::default(),
        files,
        thumbnails: Arc::new(tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2)),
        )),
    }
}

fn connection_limits(limits: &Limits) -> ConnectionLimits {
    ConnectionLimits {
        total: match limits.max_connections {
            0 => crate::serve::automatic_total(),
            n => n,
        },
        per_address: limits.max_connections_per_address,
        header_timeout: Duration::from_secs(limits.header_timeout_secs),
    }
}

/// Closes the gateway's sessions with "going away" and lets its HTTP requests finish,
/// each for at most `drain`.
async fn drain_gateway(state: &AppState, http: JoinHandle<()>, drain: Duration) {
    state.shutdown.cancel();
    state.tracker.close();
    if tokio::time::timeout(drain, state.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("sessions did not close in time");
    }
    if tokio::time::timeout(drain, http).await.is_err() {
        tracing::warn!("HTTP requests did not finish in time");
    }
}

/// Waits, for at most `drain`, until the stages have committed everything on their
/// topics: what the gateway accepted is on the log, and a volatile log would lose it.
async fn drain_stages(ctx: &StageContext, drain: Duration) {
    let stage_topics: Vec<String> = Stage::ALL.iter().map(|s| ctx.topics.stage(*s)).collect();
    let deadline = tokio::time::Instant::now() + drain;
    while !ctx.log.drained(&stage_topics).await {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("stages did not drain the log in time");
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Deletes this node's delivery topic, for at most `drain`: with the broker
/// unreachable, leaving beats tidying up.
async fn delete_delivery_topic(ctx: &StageContext, node: &NodeId, drain: Duration) {
    let topic = ctx.topics.deliver(node);
    match tokio::time::timeout(drain, ctx.log.delete_topic(&topic)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(%topic, error = %e, "delivery topic not deleted"),
        Err(_) => tracing::warn!(%topic, "delivery topic not deleted in time"),
    }
}

/// Runs a role's loop, restarting it with backoff when it fails, until `stop`.
async fn supervise<F, Fut, E>(name: &'static str, stop: CancellationToken, mut run: F)
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: fmt::Display,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match run(stop.clone()).await {
            Ok(()) => return,
            Err(e) => {
                metrics::counter!("chorus_role_restarts_total", "role" => name).increment(1);
                tracing::error!(role = name, error = %e, ?backoff, "role failed; restarting");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// The topics every node relies on: the stages' (partitioned), the dead letters and
/// control notices (one partition each), and the jobs': requests and results
/// partitioned like the stages, decisions in one partition (one observer writes them,
/// in order).
async fn create_topics(
    log: &dyn EventLog,
    topics: &Topics,
    partitions: u32,
) -> Result<(), LogError> {
    for stage in Stage::ALL {
        log.create_topic(&topics.stage(stage), partitions).await?;
    }
    log.create_topic(&topics.jobs_requests(), partitions)
        .await?;
    log.create_topic(&topics.jobs_results(), partitions).await?;
    for single in [
        topics.dead_letter(),
        topics.control(),
        topics.observer_decisions(),
    ] {
        log.create_topic(&single, 1).await?;
    }
    Ok(())
}

/// Creates the topics every node relies on again and again, should the broker lose
/// them (a broker restarted without its data), so the cluster heals by itself.
async fn keep_topics(
    ctx: StageContext,
    partitions: u32,
    stop: CancellationToken,
) -> Result<(), LogError> {
    loop {
        create_topics(ctx.log.as_ref(), &ctx.topics, partitions).await?;
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// What the workers, the recorder and the observer share: their own sandbox (sized for
/// the most workers the observer may want, so long jobs never hold up message hooks),
/// the credentials key and the git cache in the data directory.
fn jobs_context(config: &Config, node: &NodeId, ctx: &StageContext) -> anyhow::Result<JobsContext> {
    let j = &config.jobs;
    let key = j
        .key
        .as_deref()
        .map(chorus_jobs::crypto::Key::parse)
        .transpose()
        .context("jobs key (CHORUS_JOBS_KEY)")?;
    let sandbox = chorus_sandbox::Sandbox::new(chorus_sandbox::SandboxConfig {
        threads: j.observer.max_workers.clamp(1, 64) as usize,
        max_pooled_bytes: j.pool_max_bytes,
        max_owner_bytes: j.pool_max_owner_bytes,
        max_instance_bytes: j.pool_max_instance_bytes,
        ..Default::default()
    });
    let git = chorus_jobs::git::GitCache::new(config.data_dir.join("jobs").join("git"), j);
    Ok(JobsContext {
        node: node.clone(),
        log: ctx.log.clone(),
        store: ctx.directory.store().clone(),
        registry: ctx.registry.clone(),
        topics: ctx.topics.clone(),
        sandbox,
        config: Arc::new(j.clone()),
        key,
        git: Arc::new(git),
    })
}

/// Applies cluster-wide notices (membership and automation changes) to this node's
/// caches. Every node reads all of them, in a group of its own.
async fn follow_control(
    ctx: StageContext,
    node: NodeId,
    stop: CancellationToken,
) -> Result<(), RoleError> {
    let topic = ctx.topics.control();
    let sub = Subscription {
        name: "control",
        group: format!("{topic}.{node}"),
        topics: vec![topic],
        batch: 256,
        dead_letter: None,
    };
    let directory = Arc::new(ctx.directory);
    let apply = each(move |notice| {
        let directory = directory.clone();
        async move { apply_control(&directory, notice).await.map(|()| Vec::new()) }
    });
    consume(ctx.log, sub, payload(decode), apply, stop.cancelled()).await
}

/// Applies one control notice to the caches of `directory`.
async fn apply_control(directory: &Directory, notice: Control) -> Result<(), RoleError> {
    match notice {
        Control::MembersChanged { conversation_id } => directory.invalidate(conversation_id),
        Control::AutomationChanged { user_id } => {
            if let Err(e) = directory.automations().refresh(user_id).await {
                tracing::warn!(%user_id, error = %e, "automation not reloaded");
                if e.is_unavailable() {
                    // Not committed: the notice is read again after the restart.
                    return Err(RoleError::Control(e));
                }
            }
        }
    }
    Ok(())
}

/// Connections the kernel queues before `accept`: the default 128 dropped connection
/// bursts (a reconnect storm after a gateway restart), making clients wait a second to
/// retry.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with a deep accept queue.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The roles named in the configuration, or every role when it names none.
fn parse_roles(names: &[String]) -> Result<Vec<Role>, UnknownRole> {
    if names.is_empty() {
        return Ok(Role::ALL.to_vec());
    }
    names.iter().map(|n| n.trim().parse()).collect()
}

/// The OIDC verifier, when an issuer is configured (validation made sure the audience
/// is too).
fn oidc(config: &Config) -> Option<Arc<chorus_gateway::oidc::Oidc>> {
    let (issuer, audience) = (
        config.auth.oidc_issuer.clone()?,
        config.auth.oidc_audience.clone()?,
    );
    tracing::info!(%issuer, %audience, "accepting OIDC access tokens");
    Some(Arc::new(chorus_gateway::oidc::Oidc::new(
        chorus_gateway::oidc::OidcSettings { issuer, audience },
    )))
}

/// The token secret: configured, or generated once and kept in the data directory.
fn jwt_secret(config: &Config) -> anyhow::Result<Vec<u8>> {
    if let Some(secret) = &config.auth.jwt_secret {
        if secret.len() < 32 {
            bail!("the JWT secret must be at least 32 bytes");
        }
        return Ok(secret.as_bytes().to_vec());
    }
    let path = config.data_dir.join("jwt.secret");
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= 32 => Ok(s.trim().as_bytes().to_vec()),
        Ok(_) => bail!(
            "{} is too short; delete it to generate a new one",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_secret(&path),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Creates the data directory for this user only (mode 0700): it holds the database,
/// the token secret and jobs' code. An existing directory is left as it is (it may be
/// shared on purpose; the files chorus creates in it are private either way), with a
/// warning if others may enter it.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        if std::fs::metadata(dir)?.permissions().mode() & 0o077 != 0 {
            tracing::warn!(dir = %dir.display(), "the data directory is open to other users; chorus's files in it are private (0600), but consider chmod 700");
        }
        Ok(())
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

fn write_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(hex.as_bytes())?;
    file.sync_all()?;
    Ok(hex.into_bytes())
}

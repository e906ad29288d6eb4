//! A node: the roles one process runs, built from a [`Config`] and run until shutdown.
//!
//! Lifecycle: [`Node::build`] opens the backends, creates the topics and binds the
//! listener (so tests can bind port 0 and read [`Node::addr`] before anything runs);
//! [`Node::run`] serves until the shutdown token is cancelled, then drains: the
//! gateway stops accepting and closes its sockets with "going away", the stages finish
//! what the log holds, and only then stop.

use crate::backends;
use crate::serve::ConnectionLimits;
use anyhow::{Context, bail};
use chorus_config::Config;
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
use chorus_stages::{StageContext, run_stage};
use chorus_store::Directory;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
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
    /// Every role, for a node given none.
    pub fn all() -> Vec<Role> {
        let mut roles = vec![Role::Gateway];
        roles.extend(Stage::ALL.map(Role::Stage));
        roles.extend([Role::Worker, Role::Observer]);
        roles
    }

    /// Parses a role name (`gateway`, `store`, …).
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "gateway" => Some(Role::Gateway),
            "worker" => Some(Role::Worker),
            "observer" => Some(Role::Observer),
            other => Stage::from_name(other).map(Role::Stage),
        }
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
        let store = backends::store(&config.db_url(), config.sync_to_disk).await?;
        let log = backends::event_log(&config.log, &config.data_dir, config.sync_to_disk).await?;
        let registry = backends::registry(&config.registry, &config.topic_prefix).await?;
        let topics = Topics::new(config.topic_prefix.clone());
        for stage in Stage::ALL {
            log.create_topic(&topics.stage(stage), config.partitions)
                .await?;
        }
        log.create_topic(&topics.dead_letter(), 1).await?;
        log.create_topic(&topics.control(), 1).await?;
        create_job_topics(log.as_ref(), &topics, config.partitions).await?;
        let secret = jwt_secret(&config)?;
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
        let engine = chorus_automation::Engine::new(
            sandbox,
            lane,
            config.automation.clone(),
            directory.clone(),
        );
        let node = NodeId(config.node_id.clone());
        let listener =
            listen(config.listen).with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let jobs = jobs_context(&config, &node, &log, &directory, &registry, &topics)?;
        let limiter = Arc::new(RateLimiter::new(
            config.limits.rate_per_sec,
            config.limits.rate_burst,
        ));
        let state = Arc::new(AppState {
            node,
            topics: topics.clone(),
            partitions: config.partitions,
            limits: config.limits.clone(),
            presence_through_direct: config.presence.through_direct,
            engine: engine.clone(),
            directory: directory.clone(),
            log: log.clone(),
            registry: registry.clone(),
            tokens: Tokens::new(&secret, Duration::from_secs(config.auth.token_ttl_secs)),
            oidc: oidc(&config),
            sessions: Sessions::default(),
            limiter: limiter.clone(),
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
        });
        let stage_ctx = StageContext {
            log,
            directory,
            registry,
            topics,
            engine,
            max_body_bytes: config.limits.max_body_bytes,
            limiter,
            presence_through_direct: config.presence.through_direct,
        };
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
        let Node {
            config,
            roles,
            listener,
            addr,
            state,
            stage_ctx,
            jobs,
        } = self;
        let gateway = roles.contains(&Role::Gateway);
        // Stages, the delivery consumer and the upkeep tasks stop only after the
        // gateway has drained, so that what it accepted gets stored and delivered.
        let stop_background = CancellationToken::new();
        let mut background = JoinSet::new();
        for role in &roles {
            if let Role::Stage(stage) = *role {
                let ctx = stage_ctx.clone();
                background.spawn(supervise(
                    stage.name(),
                    stop_background.clone(),
                    move |stop| run_stage(stage, ctx.clone(), stop),
                ));
            }
        }
        let ctx = stage_ctx.clone();
        background.spawn(supervise("topics", stop_background.clone(), move |stop| {
            keep_topics(ctx.clone(), config.partitions, stop)
        }));
        let node_id = state.node.clone();
        let ctx = stage_ctx.clone();
        background.spawn(supervise("control", stop_background.clone(), move |stop| {
            follow_control(ctx.clone(), node_id.clone(), stop)
        }));
        let pool = roles.contains(&Role::Worker).then(|| {
            let pool = Arc::new(WorkerPool::new(jobs.clone(), stop_background.clone()));
            pool.resize(config.jobs.workers);
            pool
        });
        if roles.contains(&Role::Observer) {
            let (ctx, pool) = (jobs.clone(), pool.clone());
            background.spawn(supervise(
                "observer",
                stop_background.clone(),
                move |stop| chorus_jobs::observer::run_observer(ctx.clone(), pool.clone(), stop),
            ));
        }
        if gateway {
            // The results recorder runs with the gateway role: every deployment has one.
            let ctx = jobs.clone();
            background.spawn(supervise(
                "jobs-results",
                stop_background.clone(),
                move |stop| chorus_jobs::results::run_recorder(ctx.clone(), stop),
            ));
            let st = state.clone();
            background.spawn(supervise(
                "observer-view",
                stop_background.clone(),
                move |stop| chorus_gateway::jobs::follow_observer(st.clone(), stop),
            ));
            let st = state.clone();
            background.spawn(supervise(
                "delivery",
                stop_background.clone(),
                move |stop| chorus_gateway::deliver::run(st.clone(), stop),
            ));
            let st = state.clone();
            background.spawn(supervise(
                "registry",
                stop_background.clone(),
                move |stop| chorus_gateway::deliver::keep_registry(st.clone(), stop),
            ));
        }
        let app = if gateway {
            chorus_gateway::router(state.clone())
        } else {
            chorus_gateway::ops_router(state.clone())
        };
        let limits = &config.limits;
        let connections = ConnectionLimits {
            total: match limits.max_connections {
                0 => crate::serve::automatic_total(),
                n => n,
            },
            per_address: limits.max_connections_per_address,
            header_timeout: Duration::from_secs(limits.header_timeout_secs),
        };
        let http = tokio::spawn(crate::serve::serve(
            listener,
            app,
            connections,
            shutdown.clone(),
        ));
        tracing::info!(%addr, node = %state.node, ?roles, "listening");
        shutdown.cancelled().await;
        tracing::info!("shutting down: draining sessions and stages");
        let drain = Duration::from_secs(config.shutdown.drain_secs);
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
        // What the gateway accepted is on the log: let the stages store it before they
        // stop (a volatile log would otherwise lose it).
        let stage_topics: Vec<String> = Stage::ALL
            .iter()
            .map(|s| stage_ctx.topics.stage(*s))
            .collect();
        let deadline = tokio::time::Instant::now() + drain;
        while !stage_ctx.log.drained(&stage_topics).await {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("stages did not drain the log in time");
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop_background.cancel();
        if let Some(pool) = &pool {
            pool.shutdown().await;
        }
        while background.join_next().await.is_some() {}
        if gateway {
            let topic = stage_ctx.topics.deliver(&state.node);
            // Bounded: with the broker unreachable, leaving beats tidying up.
            match tokio::time::timeout(drain, stage_ctx.log.delete_topic(&topic)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(%topic, error = %e, "delivery topic not deleted"),
                Err(_) => tracing::warn!(%topic, "delivery topic not deleted in time"),
            }
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Runs a role's loop, restarting it with backoff when it fails, until `stop`.
async fn supervise<F, Fut, E>(name: &'static str, stop: CancellationToken, mut run: F)
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
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

/// The topics every node relies on: created at start and re-created should the broker
/// lose them (a broker restarted without its data), so the cluster heals by itself.
async fn keep_topics(
    ctx: StageContext,
    partitions: u32,
    stop: CancellationToken,
) -> Result<(), chorus_log::LogError> {
    loop {
        for stage in Stage::ALL {
            ctx.log
                .create_topic(&ctx.topics.stage(stage), partitions)
                .await?;
        }
        ctx.log.create_topic(&ctx.topics.dead_letter(), 1).await?;
        ctx.log.create_topic(&ctx.topics.control(), 1).await?;
        create_job_topics(ctx.log.as_ref(), &ctx.topics, partitions).await?;
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// The jobs topics: requests and results partitioned like the stages, decisions in one
/// partition (one observer writes them, in order).
async fn create_job_topics(
    log: &dyn chorus_log::EventLog,
    topics: &Topics,
    partitions: u32,
) -> Result<(), chorus_log::LogError> {
    log.create_topic(&topics.jobs_requests(), partitions)
        .await?;
    log.create_topic(&topics.jobs_results(), partitions).await?;
    log.create_topic(&topics.observer_decisions(), 1).await
}

/// What the workers, the recorder and the observer share: their own sandbox (sized for
/// the most workers the observer may want, so long jobs never hold up message hooks),
/// the credentials key and the git cache in the data directory.
fn jobs_context(
    config: &Config,
    node: &NodeId,
    log: &Arc<dyn chorus_log::EventLog>,
    directory: &Directory,
    registry: &Arc<dyn chorus_registry::Registry>,
    topics: &Topics,
) -> anyhow::Result<JobsContext> {
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
        log: log.clone(),
        store: directory.store().clone(),
        registry: registry.clone(),
        topics: topics.clone(),
        sandbox,
        config: Arc::new(j.clone()),
        key,
        git: Arc::new(git),
    })
}

/// Applies cluster-wide notices (membership and automation changes) to this node's
/// caches.
async fn follow_control(
    ctx: StageContext,
    node: NodeId,
    stop: CancellationToken,
) -> Result<(), chorus_log::LogError> {
    let topic = ctx.topics.control();
    let group = format!("{topic}.{node}");
    let mut consumer = ctx.log.subscribe(&group, &[topic]).await?;
    loop {
        let batch = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            batch = consumer.next_batch(256) => batch?,
        };
        for record in &batch {
            match decode::<Control>(&record.payload) {
                Ok(Control::MembersChanged { conversation_id }) => {
                    ctx.directory.invalidate(conversation_id);
                }
                Ok(Control::AutomationChanged { user_id }) => {
                    if let Err(e) = ctx.directory.automations().refresh(user_id).await {
                        tracing::warn!(%user_id, error = %e, "automation not reloaded");
                        if e.is_unavailable() {
                            // Not committed: the notice is read again after the restart.
                            return Err(chorus_log::LogError::Backend(format!("database: {e}")));
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "unreadable control notice skipped"),
            }
        }
        consumer.commit(&batch).await?;
    }
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

fn parse_roles(names: &[String]) -> anyhow::Result<Vec<Role>> {
    if names.is_empty() {
        return Ok(Role::all());
    }
    names
        .iter()
        .map(|n| {
            Role::parse(n.trim()).with_context(|| {
                format!(
                    "unknown role `{n}` (known: gateway, automate-out, store, automate-in, route, worker, observer)"
                )
            })
        })
        .collect()
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

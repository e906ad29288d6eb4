//! Configuration of a chorus node.
//!
//! Sources, later ones winning: built-in defaults (the embedded default: one process,
//! SQLite in the data directory, in-process log and registry), a TOML file
//! (`--config FILE`), then `CHORUS_*` environment variables and command-line flags
//! (applied by the binary through [`Config::apply`]). With no file and no variables,
//! [`Config::default`] is a complete, working configuration.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Errors reading configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// Which file.
        path: PathBuf,
        /// What is wrong, with line and column.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A node's whole configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP and WebSocket listen address.
    pub listen: SocketAddr,
    /// Where the embedded database and the generated JWT secret live.
    pub data_dir: PathBuf,
    /// This node's name: names its delivery topic; unique in a cluster.
    pub node_id: String,
    /// Event log URL: `local://[DIR]` (in-process and durable, its journal in DIR,
    /// default `log` in the data directory), `memory://` (in-process, not durable) or
    /// `kafka://HOST:PORT[,HOST:PORT]`.
    pub log: String,
    /// Whether the embedded parts (the `local://` log's journal, the SQLite database)
    /// sync every write to the disk before it counts: what was acknowledged then
    /// survives a power loss, not only the process being killed.
    pub sync_to_disk: bool,
    /// Database URL: `sqlite://PATH` or `postgres://…`; default: `chorus.db` in the data
    /// directory.
    pub db: Option<String>,
    /// Registry URL: `memory://` or `redis://HOST:PORT/DB`.
    pub registry: String,
    /// Roles this node runs (default: all).
    pub roles: Vec<String>,
    /// Prefix of every topic name.
    pub topic_prefix: String,
    /// Partitions of each stage topic.
    pub partitions: u32,
    /// Log output: `text` or `json`.
    pub log_format: String,
    /// Authentication.
    pub auth: AuthConfig,
    /// Limits on clients.
    pub limits: Limits,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Who sees whose presence.
    pub presence: PresenceConfig,
    /// Users' scripts and auto-replies (`[automation]`).
    pub automation: AutomationConfig,
    /// Jobs, workers and the observer (`[jobs]`).
    pub jobs: JobsConfig,
    /// Where attachments' bytes are kept (`[files]`).
    pub files: FilesConfig,
}

/// Where attachments' bytes are kept (`[files]`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FilesConfig {
    /// Object store URL: `file:///DIR`, `s3://BUCKET[/PREFIX]`, `gs://BUCKET` or
    /// `az://CONTAINER`; default: the directory `files` in the data directory.
    pub url: Option<String>,
    /// The object store's settings, by the provider's configuration keys
    /// (`aws_endpoint`, `aws_region`, `aws_access_key_id`, `aws_secret_access_key`,
    /// `aws_allow_http`, `aws_virtual_hosted_style_request`, …), on top of the
    /// provider's usual environment variables.
    pub options: std::collections::BTreeMap<String, String>,
    /// Seconds an upload may wait to be sent in a message before it is removed.
    pub grace_secs: u64,
    /// Seconds between two sweeps for expired uploads.
    pub sweep_secs: u64,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            url: None,
            options: Default::default(),
            grace_secs: 24 * 3600,
            sweep_secs: 600,
        }
    }
}

/// Jobs: limits, git sources, credentials and the observer.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// CPU budget of a job unless it asks for another, milliseconds.
    pub cpu_ms: u64,
    /// Memory limit of a job unless it asks for another, bytes.
    pub memory_bytes: u64,
    /// The most CPU a job may ask for, milliseconds.
    pub max_cpu_ms: u64,
    /// The most memory a job may ask for, bytes.
    pub max_memory_bytes: u64,
    /// Longest inline source, bytes.
    pub max_source_bytes: usize,
    /// Largest JSON `main` may return, bytes.
    pub max_output_bytes: usize,
    /// Jobs one user may have stored (queued, running or finished, until erased).
    pub max_stored_per_user: usize,
    /// Workers a node with the worker role starts with (the observer changes the
    /// number in embedded mode).
    pub workers: u32,
    /// URL schemes git sources may use (`https`, `file`, `ssh`, …).
    pub git_schemes: Vec<String>,
    /// Hosts (names or addresses, as written in URLs) git sources may reach although
    /// they are, or resolve to, loopback, private or link-local addresses; every other
    /// such host is refused.
    pub git_private_hosts: Vec<String>,
    /// Largest repository fetched, bytes (on disk, after the fetch).
    pub git_max_bytes: u64,
    /// Longest everything git does for one job may take (listing refs, fetching,
    /// reading the module), seconds; git is killed at the deadline.
    pub git_timeout_secs: u64,
    /// The 32-byte AES-256-GCM key that decrypts jobs' credentials, base64 or hex;
    /// without it, jobs with credentials fail.
    pub key: Option<String>,
    /// User ids (UUIDs) of the administrators: they may change the observer's
    /// configuration and create invites. Ids, not usernames: a name belongs to whoever
    /// registers it first, an id only to the account it was given to.
    pub admins: Vec<String>,
    /// Bytes of all idle job instances together (top-level state kept between one
    /// owner's jobs of the same code); the least recently used are dropped first.
    pub pool_max_bytes: usize,
    /// Bytes of one owner's idle job instances: one user's never push out another's.
    pub pool_max_owner_bytes: usize,
    /// Bytes a job instance may use after its run and still be kept; a larger one is
    /// dropped, and the next run starts afresh.
    pub pool_max_instance_bytes: usize,
    /// The observer's defaults (an administrator may change them at run time).
    pub observer: ObserverConfig,
}

/// Checks that the pool caps of `section` nest: instance <= owner <= total.
fn check_pool(
    section: &str,
    total: usize,
    owner: usize,
    instance: usize,
) -> Result<(), ConfigError> {
    if instance > owner || owner > total {
        return Err(ConfigError::Invalid(format!(
            "{section}: pool_max_instance_bytes <= pool_max_owner_bytes <= pool_max_bytes must hold"
        )));
    }
    Ok(())
}

/// How the observer scales the workers.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ObserverConfig {
    /// Fewest workers.
    pub min_workers: u32,
    /// Most workers.
    pub max_workers: u32,
    /// Response time (submission to result) the observer sizes the pool for, ms.
    pub target_response_ms: u64,
    /// Window of the stable averages, seconds (Knative: 60).
    pub stable_window_secs: u64,
    /// Window of the panic averages, seconds (Knative: 6).
    pub panic_window_secs: u64,
    /// Panic when the panic window's demand reaches this many times the workers.
    pub panic_threshold: f64,
    /// Share of a worker's time the observer plans to keep busy (0..1].
    pub target_utilization: f64,
    /// How often it measures and decides, milliseconds.
    pub tick_ms: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            cpu_ms: 5000,
            memory_bytes: 16 * 1024 * 1024,
            max_cpu_ms: 60_000,
            max_memory_bytes: 256 * 1024 * 1024,
            max_source_bytes: 128 * 1024,
            max_output_bytes: 1024 * 1024,
            max_stored_per_user: 10_000,
            workers: 1,
            git_schemes: vec!["https".into()],
            git_private_hosts: Vec::new(),
            git_max_bytes: 64 * 1024 * 1024,
            git_timeout_secs: 30,
            key: None,
            admins: Vec::new(),
            // A job may ask for 256 MiB; what jobs keep between runs is bounded lower.
            pool_max_bytes: 256 << 20,
            pool_max_owner_bytes: 64 << 20,
            pool_max_instance_bytes: 32 << 20,
            observer: ObserverConfig::default(),
        }
    }
}

impl JobsConfig {
    /// Whether the user with id `user` is an administrator.
    pub fn is_admin(&self, user: Uuid) -> bool {
        self.admins
            .iter()
            .any(|a| Uuid::parse_str(a.trim()).is_ok_and(|a| a == user))
    }
}

impl Default for ObserverConfig {
    fn default() -> Self {
        Self {
            min_workers: 1,
            max_workers: 8,
            target_response_ms: 1000,
            stable_window_secs: 60,
            panic_window_secs: 6,
            panic_threshold: 2.0,
            target_utilization: 0.7,
            tick_ms: 1000,
        }
    }
}

impl ObserverConfig {
    /// Checks ranges that the types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        if self.max_workers == 0 || self.max_workers > 1024 || self.min_workers > self.max_workers {
            return bad("observer: max_workers must be 1..=1024 and min_workers <= max_workers");
        }
        if self.target_response_ms == 0 || self.tick_ms == 0 {
            return bad("observer: target_response_ms and tick_ms must be positive");
        }
        if self.panic_window_secs == 0 || self.stable_window_secs < self.panic_window_secs {
            return bad("observer: panic_window_secs must be positive and <= stable_window_secs");
        }
        // Written so that NaN fails too.
        let sane = self.panic_threshold > 1.0
            && self.target_utilization > 0.0
            && self.target_utilization <= 1.0;
        if !sane {
            return bad("observer: panic_threshold must be > 1 and target_utilization in (0, 1]");
        }
        Ok(())
    }
}

/// Authentication settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret for access tokens; default: generated on first start and kept in
    /// `<data_dir>/jwt.secret`.
    pub jwt_secret: Option<String>,
    /// Access token lifetime in seconds.
    pub token_ttl_secs: u64,
    /// Also accept OIDC access tokens from this issuer (the tokens' `iss`; its
    /// discovery document is fetched from `{issuer}/.well-known/openid-configuration`).
    pub oidc_issuer: Option<String>,
    /// The `aud` OIDC access tokens must carry; required with `oidc_issuer`.
    pub oidc_audience: Option<String>,
    /// Who may create an account with a password (`POST /auth/register`).
    pub registration: Registration,
    /// How long an invite is valid, seconds.
    pub invite_ttl_secs: u64,
    /// Accounts one client address may create per hour (a burst of this many, then
    /// one every `3600 / n` seconds).
    pub registrations_per_hour: u32,
    /// Failed sign-ins one client address may make per 15 minutes, whichever accounts
    /// they are for; past it, every sign-in from the address waits.
    pub login_failures_per_address: u32,
    /// Failed sign-ins per username per 15 minutes, from all addresses together,
    /// whether or not the account exists; past it, every sign-in as that name waits.
    pub login_failures_per_account: u32,
    /// Password hashes (sign-ups and sign-ins) that may wait for a core; past it, more
    /// are answered `unavailable` at once instead of queueing.
    pub hash_queue: usize,
}

/// Who may create an account with a password. Users of an OIDC provider
/// (`oidc_issuer`) are created on first sight whatever this says: the provider decides
/// who they are.
#[derive(Clone, Copy, Debug, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// Anyone (the embedded default: the first users can sign up).
    #[default]
    Open,
    /// No one: `POST /auth/register` is refused.
    Closed,
    /// Whoever holds an unused invite code, which an administrator creates.
    Invite,
}

impl Registration {
    /// The name used in configuration and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
            Self::Invite => "invite",
        }
    }
}

impl std::str::FromStr for Registration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "open" => Ok(Self::Open),
            "closed" => Ok(Self::Closed),
            "invite" => Ok(Self::Invite),
            other => Err(format!(
                "unknown registration mode {other:?} (expected open, closed or invite)"
            )),
        }
    }
}

impl std::fmt::Display for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Limits that protect the server and other users from one client.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest WebSocket text frame answered normally; larger gets `too_large`.
    pub max_frame_bytes: usize,
    /// Frames above this close the connection (the server will not buffer them).
    pub max_frame_hard_bytes: usize,
    /// Largest message body, in UTF-8 bytes.
    pub max_body_bytes: usize,
    /// Largest HTTP request body.
    pub max_http_body_bytes: usize,
    /// Sustained sends per second per user.
    pub rate_per_sec: u32,
    /// Burst of sends per user above the sustained rate.
    pub rate_burst: u32,
    /// Frames queued for one session before it counts as not reading and is closed.
    pub session_queue: usize,
    /// WebSocket read buffer per connection, bytes: allocated for every connection,
    /// idle or not (the largest part of an idle session's memory). It grows to hold a
    /// larger frame when one arrives.
    pub ws_read_buffer: usize,
    /// Bytes of outgoing frames gathered before a write to the socket; the buffer is
    /// allocated as frames are written, not up front.
    pub ws_write_buffer: usize,
    /// Seconds without any frame from a client before the server pings it; twice this
    /// without an answer closes the session.
    pub idle_ping_secs: u64,
    /// HTTP connections held at once (WebSocket sessions included); 0: as many as the
    /// open-files limit allows, less a reserve for the node's own needs.
    pub max_connections: usize,
    /// HTTP connections held at once from one client address; 0: no limit (behind a
    /// reverse proxy, every client has the proxy's address).
    pub max_connections_per_address: usize,
    /// Seconds a client has to send the head of a request, idle keep-alive
    /// connections included.
    pub header_timeout_secs: u64,
    /// WebSocket sessions one user may hold at once.
    pub max_sessions_per_user: usize,
    /// Sustained `typing` and `read` frames per second per user.
    pub notice_rate_per_sec: u32,
    /// Burst of `typing` and `read` frames per user above the sustained rate.
    pub notice_burst: u32,
    /// Members of a group.
    pub max_group_members: usize,
    /// Groups one user may own.
    pub max_groups_per_user: usize,
    /// Seconds a node trusts its cached copy of a conversation's members: the longest
    /// a removed member keeps access on a node that missed the change's notice.
    pub membership_cache_secs: u64,
    /// Largest attachment, bytes.
    pub max_attachment_bytes: u64,
    /// Bytes of attachments one user may keep stored.
    pub attachment_quota_bytes: u64,
}

/// Limits of users' scripts and auto-replies.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AutomationConfig {
    /// Memory limit of a script instance unless the script asks for another, bytes.
    pub memory_bytes: u64,
    /// CPU budget of one call unless the script asks for another, milliseconds.
    pub cpu_ms: u64,
    /// The most memory a script may ask for, bytes.
    pub max_memory_bytes: u64,
    /// The most CPU per call a script may ask for, milliseconds.
    pub max_cpu_ms: u64,
    /// Longest script source, bytes.
    pub max_source_bytes: usize,
    /// Scripts per user.
    pub max_scripts_per_user: usize,
    /// Automation steps in a chain (a reply to a reply to …) before it stops.
    pub max_hops: u32,
    /// Messages automation may send because of one message a person sent, over the
    /// whole chain (replies, forwards and auto-replies of every member, and what
    /// those cause in turn).
    pub fanout_budget: u32,
    /// At most one auto-reply per sender and conversation in this window, seconds.
    pub auto_reply_window_secs: u64,
    /// Failed runs in a row after which a script is disabled.
    pub disable_after_failures: u32,
    /// Keys of a script's `ctx.kv`.
    pub kv_max_keys: usize,
    /// Size of one `ctx.kv` value as JSON, bytes.
    pub kv_max_value_bytes: usize,
    /// Time one run's `ctx.kv` calls may take on top of its CPU budget, milliseconds:
    /// whatever the store does, a run ends by `cpu_ms + kv_time_ms` of wall-clock time.
    pub kv_time_ms: u64,
    /// `ctx.kv` calls in one run; the one after them throws and fails the run
    /// (`kv_calls`).
    pub kv_max_calls: u32,
    /// Threads running scripts on messages (0: one per core).
    pub threads: usize,
    /// Threads running dry runs (`POST /scripts/{id}/test`) and the checks of uploaded
    /// sources: their own, so that work users ask for over the API never occupies the
    /// threads that run scripts on messages (at least one).
    pub dry_run_threads: usize,
    /// Bytes of all idle script instances together (module state kept between runs);
    /// the least recently used are dropped first.
    pub pool_max_bytes: usize,
    /// Bytes of one owner's idle script instances: one user's never push out another's.
    pub pool_max_owner_bytes: usize,
    /// Bytes a script instance may use after a run and still be kept; a larger one is
    /// dropped, and the next run starts from a fresh instance.
    pub pool_max_instance_bytes: usize,
}

/// Who sees whose presence (`[presence]`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// Whether a direct conversation makes its two members contacts (each sees when
    /// the other is online). Anyone may open a direct conversation with anyone, so
    /// with open registration this shows every user's presence to strangers; without
    /// it, presence is shared through groups only.
    pub through_direct: bool,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            through_direct: true,
        }
    }
}

/// Graceful shutdown settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long to wait for sessions and stages to drain before exiting anyway.
    pub drain_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./chorus-data"),
            node_id: "local".into(),
            log: "local://".into(),
            sync_to_disk: false,
            db: None,
            registry: "memory://".into(),
            roles: Vec::new(),
            topic_prefix: "chorus".into(),
            partitions: 8,
            log_format: "text".into(),
            auth: AuthConfig::default(),
            limits: Limits::default(),
            shutdown: ShutdownConfig::default(),
            presence: PresenceConfig::default(),
            automation: AutomationConfig::default(),
            jobs: JobsConfig::default(),
            files: FilesConfig::default(),
        }
    }
}

impl Default for AutomationConfig {
    fn default() -> Self {
        Self {
            memory_bytes: 4 * 1024 * 1024,
            cpu_ms: 10,
            max_memory_bytes: 64 * 1024 * 1024,
            max_cpu_ms: 1000,
            max_source_bytes: 64 * 1024,
            max_scripts_per_user: 20,
            max_hops: 3,
            fanout_budget: 20,
            auto_reply_window_secs: 3600,
            disable_after_failures: 10,
            kv_max_keys: 256,
            kv_max_value_bytes: 4096,
            // About a hundred round trips to a database across a network; SQLite answers
            // in tens of microseconds.
            kv_time_ms: 100,
            // What Cloudflare Workers allow per invocation; a hook's state is at most
            // `kv_max_keys` (256) keys.
            kv_max_calls: 1000,
            threads: 0,
            dry_run_threads: 1,
            // A hook keeping a counter uses ~110 KB: 256 MiB is ~2,400 of them.
            pool_max_bytes: 256 << 20,
            pool_max_owner_bytes: 32 << 20,
            pool_max_instance_bytes: 16 << 20,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            token_ttl_secs: 7 * 24 * 3600,
            oidc_issuer: None,
            oidc_audience: None,
            registration: Registration::Open,
            invite_ttl_secs: 7 * 24 * 3600,
            registrations_per_hour: 20,
            login_failures_per_address: 30,
            login_failures_per_account: 10,
            hash_queue: 32,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            max_frame_hard_bytes: 4 * 1024 * 1024,
            max_body_bytes: 16 * 1024,
            max_http_body_bytes: 256 * 1024,
            rate_per_sec: 100,
            rate_burst: 500,
            session_queue: 1024,
            ws_read_buffer: 1024,
            ws_write_buffer: 4 * 1024,
            idle_ping_secs: 30,
            max_connections: 0,
            max_connections_per_address: 1000,
            header_timeout_secs: 10,
            max_sessions_per_user: 32,
            notice_rate_per_sec: 10,
            notice_burst: 50,
            max_group_members: 1000,
            max_groups_per_user: 1000,
            membership_cache_secs: 30,
            max_attachment_bytes: 25 * 1024 * 1024,
            attachment_quota_bytes: 1024 * 1024 * 1024,
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { drain_secs: 10 }
    }
}

impl Config {
    /// Defaults, overlaid with the TOML file at `path` if given.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// Defaults overlaid with a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::new(),
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The object store URL, defaulting to the directory `files` in the data directory.
    pub fn files_url(&self) -> String {
        self.files
            .url
            .clone()
            .unwrap_or_else(|| format!("file://{}", self.data_dir.join("files").display()))
    }

    /// The database URL, defaulting to `chorus.db` in the data directory.
    pub fn db_url(&self) -> String {
        self.db
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("chorus.db").display()))
    }

    /// Checks ranges that the types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        if self.partitions == 0 || self.partitions > 1024 {
            return bad("partitions must be 1..=1024");
        }
        if l.max_frame_bytes == 0 || l.max_frame_hard_bytes < l.max_frame_bytes {
            return bad("limits.max_frame_hard_bytes must be at least limits.max_frame_bytes");
        }
        if l.max_body_bytes == 0 || l.max_body_bytes > l.max_frame_bytes {
            return bad("limits.max_body_bytes must be 1..=limits.max_frame_bytes");
        }
        if l.rate_per_sec == 0 || l.rate_burst == 0 {
            return bad("limits.rate_per_sec and limits.rate_burst must be positive");
        }
        if l.session_queue == 0 || l.ws_read_buffer < 256 || l.ws_write_buffer < 256 {
            return bad("limits.session_queue must be positive, WebSocket buffers >= 256 bytes");
        }
        let positive = [
            l.header_timeout_secs,
            l.max_sessions_per_user as u64,
            u64::from(l.notice_rate_per_sec),
            u64::from(l.notice_burst),
            l.max_group_members as u64,
            l.max_groups_per_user as u64,
            l.membership_cache_secs,
        ];
        if positive.contains(&0) {
            return bad(
                "limits.header_timeout_secs, max_sessions_per_user, notice_rate_per_sec, notice_burst, max_group_members, max_groups_per_user and membership_cache_secs must be positive",
            );
        }
        if l.max_attachment_bytes == 0 || l.attachment_quota_bytes < l.max_attachment_bytes {
            return bad(
                "limits.max_attachment_bytes must be positive and at most limits.attachment_quota_bytes",
            );
        }
        if self.files.grace_secs == 0 || self.files.sweep_secs == 0 {
            return bad("files.grace_secs and files.sweep_secs must be positive");
        }
        let a = &self.automation;
        if a.memory_bytes < 256 * 1024 || a.max_memory_bytes < a.memory_bytes {
            return bad(
                "automation.memory_bytes must be >= 256 KiB and <= automation.max_memory_bytes",
            );
        }
        if a.cpu_ms == 0 || a.max_cpu_ms < a.cpu_ms {
            return bad("automation.cpu_ms must be positive and <= automation.max_cpu_ms");
        }
        if a.kv_time_ms > 60_000 || a.kv_max_calls == 0 {
            return bad("automation.kv_time_ms must be at most 60000 and kv_max_calls positive");
        }
        if a.dry_run_threads == 0 || a.dry_run_threads > 64 {
            return bad("automation.dry_run_threads must be 1..=64");
        }
        check_pool(
            "automation",
            a.pool_max_bytes,
            a.pool_max_owner_bytes,
            a.pool_max_instance_bytes,
        )?;
        if a.max_source_bytes == 0 || a.max_scripts_per_user == 0 || a.disable_after_failures == 0 {
            return bad(
                "automation.max_source_bytes, max_scripts_per_user and disable_after_failures must be positive",
            );
        }
        let j = &self.jobs;
        if j.memory_bytes < 256 * 1024 || j.max_memory_bytes < j.memory_bytes {
            return bad("jobs.memory_bytes must be >= 256 KiB and <= jobs.max_memory_bytes");
        }
        if j.cpu_ms == 0 || j.max_cpu_ms < j.cpu_ms {
            return bad("jobs.cpu_ms must be positive and <= jobs.max_cpu_ms");
        }
        if j.git_timeout_secs == 0
            || j.git_max_bytes == 0
            || j.max_output_bytes == 0
            || j.max_stored_per_user == 0
        {
            return bad(
                "jobs.git_timeout_secs, git_max_bytes, max_output_bytes and max_stored_per_user must be positive",
            );
        }
        check_pool(
            "jobs",
            j.pool_max_bytes,
            j.pool_max_owner_bytes,
            j.pool_max_instance_bytes,
        )?;
        j.observer.validate()?;
        if let Some(name) = j.admins.iter().find(|a| Uuid::parse_str(a.trim()).is_err()) {
            return Err(ConfigError::Invalid(format!(
                "jobs.admins takes user ids, not usernames: {name:?} is not a user id \
                 (`chorus users show NAME` prints the id of the user NAME)"
            )));
        }
        match (&self.auth.oidc_issuer, &self.auth.oidc_audience) {
            (None, None) => {}
            (Some(issuer), Some(audience)) => {
                let http = issuer.starts_with("https://") || issuer.starts_with("http://");
                if !http || audience.is_empty() {
                    return bad(
                        "auth.oidc_issuer must be an http(s) URL and auth.oidc_audience not empty",
                    );
                }
            }
            // An issuer without an audience would accept the provider's tokens for
            // any of its clients.
            _ => return bad("auth.oidc_issuer and auth.oidc_audience go together: set both"),
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return bad("log_format must be `text` or `json`");
        }
        let auth = &self.auth;
        if auth.invite_ttl_secs == 0
            || auth.registrations_per_hour == 0
            || auth.login_failures_per_address == 0
            || auth.login_failures_per_account == 0
        {
            return bad(
                "auth.invite_ttl_secs, registrations_per_hour, login_failures_per_address and \
                 login_failures_per_account must be positive",
            );
        }
        if let Some(secret) = &self.auth.jwt_secret
            && EXAMPLE_JWT_SECRETS.contains(&secret.trim())
        {
            // Anyone who read the example can sign tokens for any user of a server
            // that kept it.
            return Err(ConfigError::Invalid(format!(
                "auth.jwt_secret (CHORUS_JWT_SECRET) is the published example value {secret:?}: \
                 anyone can sign tokens with it. Generate a real one, e.g. \
                 `head -c 48 /dev/urandom | base64`, or leave it unset on a single node \
                 (one is then generated into the data directory)"
            )));
        }
        Ok(())
    }
}

/// Token secrets published as examples in this repository (`deploy/`), which a
/// deployment copied as it stands would otherwise run with. Never accepted.
pub const EXAMPLE_JWT_SECRETS: &[&str] = &[
    // deploy/docker-compose.yml's former default.
    "dev-only-secret-change-me-0123456789abcdef",
    // deploy/k8s/secret.example.yaml.
    "example-only-replace-me-with-48-random-bytes-0000",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_embedded_setup() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.log, "local://");
        assert_eq!(c.db_url(), "sqlite://./chorus-data/chorus.db");
        c.validate().unwrap();
    }

    #[test]
    fn toml_overlays_defaults() {
        let c = Config::from_toml(
            "listen = \"0.0.0.0:9000\"\n[limits]\nrate_per_sec = 5\n[auth]\ntoken_ttl_secs = 60\n",
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.limits.rate_per_sec, 5);
        assert_eq!(c.limits.rate_burst, 500);
        assert_eq!(c.auth.token_ttl_secs, 60);
    }

    #[test]
    fn unknown_keys_and_bad_ranges_are_errors() {
        assert!(matches!(
            Config::from_toml("lisen = \"x\""),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            Config::from_toml("[limits]\nrate_per_sec = 0"),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn oidc_needs_an_issuer_url_and_an_audience() {
        let ok = Config::from_toml(
            "[auth]\noidc_issuer = \"https://sso.example.com/realms/chorus\"\noidc_audience = \"chorus\"\n",
        )
        .unwrap();
        assert_eq!(ok.auth.oidc_audience.as_deref(), Some("chorus"));
        for bad in [
            "[auth]\noidc_issuer = \"https://sso.example.com\"\n",
            "[auth]\noidc_audience = \"chorus\"\n",
            "[auth]\noidc_issuer = \"sso.example.com\"\noidc_audience = \"chorus\"\n",
        ] {
            assert!(
                matches!(Config::from_toml(bad), Err(ConfigError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn registration_is_open_closed_or_invite() {
        assert_eq!(Config::default().auth.registration, Registration::Open);
        let c = Config::from_toml("[auth]\nregistration = \"invite\"\n").unwrap();
        assert_eq!(c.auth.registration, Registration::Invite);
        assert!(matches!(
            Config::from_toml("[auth]\nregistration = \"anyone\"\n"),
            Err(ConfigError::Parse { .. })
        ));
        for mode in [
            Registration::Open,
            Registration::Closed,
            Registration::Invite,
        ] {
            assert_eq!(mode.as_str().parse::<Registration>(), Ok(mode));
        }
        assert!("Open".parse::<Registration>().is_err());
        assert!(matches!(
            Config::from_toml("[auth]\nlogin_failures_per_account = 0\n"),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn administrators_named_by_username_are_refused() {
        let e = Config::from_toml("[jobs]\nadmins = [\"root\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("jobs.admins takes user ids, not usernames: \"root\""),
            "{e}"
        );
        let id = "0191f0a2-6b3c-7d41-9e2a-3c5d7e9f1a2b";
        let c = Config::from_toml(&format!("[jobs]\nadmins = [\"{id}\"]\n")).unwrap();
        assert!(c.jobs.is_admin(id.parse().unwrap()));
        assert!(!c.jobs.is_admin(Uuid::now_v7()));
    }

    #[test]
    fn the_published_example_token_secrets_are_refused() {
        for example in EXAMPLE_JWT_SECRETS {
            let mut c = Config::default();
            c.auth.jwt_secret = Some(format!("{example}\n"));
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("auth.jwt_secret (CHORUS_JWT_SECRET)"), "{e}");
            assert!(e.contains("head -c 48 /dev/urandom | base64"), "{e}");
        }
        let mut c = Config::default();
        c.auth.jwt_secret = Some("a-real-secret-of-at-least-32-bytes-kept-private".into());
        c.validate().unwrap();
    }

    #[test]
    fn pool_caps_are_read_per_section_and_must_nest() {
        let c = Config::from_toml(
            "[automation]\npool_max_bytes = 1000\npool_max_owner_bytes = 100\npool_max_instance_bytes = 10\n[jobs]\npool_max_instance_bytes = 0\n",
        )
        .unwrap();
        let a = &c.automation;
        assert_eq!(
            (
                a.pool_max_bytes,
                a.pool_max_owner_bytes,
                a.pool_max_instance_bytes
            ),
            (1000, 100, 10)
        );
        assert_eq!(c.jobs.pool_max_instance_bytes, 0);
        assert_eq!(c.jobs.pool_max_bytes, 256 << 20);
        for bad in [
            "[automation]\npool_max_owner_bytes = 1000000000000\n",
            "[jobs]\npool_max_instance_bytes = 1000000000000\n",
            "[automation]\nkv_max_calls = 0\n",
            "[automation]\ndry_run_threads = 0\n",
        ] {
            assert!(
                matches!(Config::from_toml(bad), Err(ConfigError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            Config::from_toml("[jobs]\npool_max_byte = 1\n"),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chorus.toml");
        std::fs::write(&path, "node_id = \"gw-7\"").unwrap();
        assert_eq!(Config::load(Some(&path)).unwrap().node_id, "gw-7");
        assert!(matches!(
            Config::load(Some(&dir.path().join("missing.toml"))),
            Err(ConfigError::Read { .. })
        ));
    }
}

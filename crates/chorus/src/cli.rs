//! The command line. Every flag can also be set by the environment variable named in
//! its help; flags win over variables, variables over the config file.

use chorus_config::{Config, Registration};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// chorus: a chat platform on an event log.
#[derive(Debug, Parser)]
#[command(name = "chorus", version, about, long_about = None, after_help = after_help())]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Which backends this build has, and what `chorus serve` does with no flags.
fn after_help() -> String {
    let log = if cfg!(feature = "kafka") {
        "local://, memory://, kafka://"
    } else {
        "local://, memory:// (kafka:// needs a build with --features kafka)"
    };
    format!(
        "Backends compiled into this build: event log {log}; database sqlite://, \
         postgres://; registry memory://, redis://.\n\
         Run `chorus serve` with no flags for the embedded default: one process, SQLite \
         and the event log's journal in ./chorus-data, in-process registry, listening on \
         127.0.0.1:8080."
    )
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node: by default every role, embedded, on 127.0.0.1:8080.
    Serve(Box<ServeArgs>),
    /// Load-test a chorus server (or a peer) and report latency percentiles and throughput.
    #[cfg(feature = "bench")]
    Bench(chorus_bench::BenchArgs),
    /// Load-test a chorus server: not in this build (it needs `--features bench`).
    #[cfg(not(feature = "bench"))]
    #[command(hide = true, disable_help_flag = true)]
    Bench {
        /// Whatever was given: refused with a clear error.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Jobs tools: seal credentials for a user's `POST /jobs`.
    Jobs(JobsArgs),
    /// Accounts in the database: the id of a user (for `jobs.admins`), the list, invites.
    Users(crate::users::UsersArgs),
}

/// `chorus jobs …`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: JobsCommand,
}

/// The jobs tools.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Seal standard input for one user with the server's jobs key and print the value
    /// that user sends as `credentials`: `v1.` then base64(nonce(12) || ciphertext ||
    /// tag(16)), AES-256-GCM bound to the user. The operator's tool (it needs the
    /// key); users call `POST /api/v1/jobs/credentials` instead.
    Encrypt {
        /// The user the credentials are for, by id (`GET /api/v1/me`): the value opens
        /// in their jobs only.
        #[arg(long, value_name = "USER_ID")]
        owner: chorus_core::UserId,
        /// The server's 32-byte key, as base64 or 64 hex digits.
        #[arg(long, env = "CHORUS_JOBS_KEY", value_name = "KEY", hide_env_values = true)]
        key: String,
    },
}

impl JobsArgs {
    /// Runs the command, reading from `input` and writing to `output`.
    pub fn run(
        &self,
        input: &mut dyn std::io::Read,
        output: &mut dyn std::io::Write,
    ) -> anyhow::Result<()> {
        match &self.command {
            JobsCommand::Encrypt { owner, key } => {
                use chorus_jobs::crypto::{JOB_CREDENTIALS, Key};
                let key = Key::parse(key)?;
                let mut plaintext = Vec::new();
                input.read_to_end(&mut plaintext)?;
                writeln!(output, "{}", key.seal(JOB_CREDENTIALS, *owner, &plaintext)?)?;
                Ok(())
            }
        }
    }
}

/// Flags of `chorus serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file (flags and environment variables override it).
    #[arg(long, env = "CHORUS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address for HTTP and WebSocket [default: 127.0.0.1:8080].
    #[arg(long, env = "CHORUS_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Directory for the embedded database and the generated token secret
    /// [default: ./chorus-data].
    #[arg(long, env = "CHORUS_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// This node's name, unique in a cluster; names its delivery topic [default: local].
    #[arg(long, env = "CHORUS_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    /// Event log URL: local://[DIR] (in-process, durable: its journal in DIR, default
    /// <data-dir>/log), memory:// (in-process, lost when the process ends) or
    /// kafka://HOST:PORT[,HOST:PORT] [default: local://].
    #[arg(long, env = "CHORUS_LOG_URL", value_name = "URL")]
    pub log: Option<String>,
    /// Sync the embedded log's journal and the SQLite database to the disk at every
    /// write: what was acknowledged survives a power loss, not only a killed process
    /// [default: false].
    #[arg(long, env = "CHORUS_SYNC_TO_DISK", value_name = "BOOL")]
    pub sync_to_disk: Option<bool>,
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB
    /// [default: sqlite://<data-dir>/chorus.db].
    #[arg(long, env = "CHORUS_DB", value_name = "URL")]
    pub db: Option<String>,
    /// Object store of attachments: file:///DIR, s3://BUCKET[/PREFIX], gs://BUCKET or
    /// az://CONTAINER; settings in [files.options] or the provider's environment
    /// variables (AWS_ENDPOINT, AWS_ACCESS_KEY_ID, …) [default: file://<data-dir>/files].
    #[arg(long, env = "CHORUS_FILES", value_name = "URL")]
    pub files: Option<String>,
    /// Registry URL: memory:// or redis://HOST:PORT/DB [default: memory://].
    #[arg(long, env = "CHORUS_REGISTRY", value_name = "URL")]
    pub registry: Option<String>,
    /// Roles to run, comma-separated: gateway, automate-out, store, automate-in, route,
    /// worker, observer [default: all].
    #[arg(long, env = "CHORUS_ROLES", value_name = "ROLES", value_delimiter = ',')]
    pub roles: Option<Vec<String>>,
    /// Prefix of every topic name [default: chorus].
    #[arg(long, env = "CHORUS_TOPIC_PREFIX", value_name = "PREFIX")]
    pub topic_prefix: Option<String>,
    /// Partitions per stage topic [default: 8].
    #[arg(long, env = "CHORUS_PARTITIONS", value_name = "N")]
    pub partitions: Option<u32>,
    /// HS256 secret for access tokens, at least 32 bytes [default: generated into
    /// <data-dir>/jwt.secret].
    #[arg(long, env = "CHORUS_JWT_SECRET", value_name = "SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "CHORUS_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Sustained sends per second per user [default: 100].
    #[arg(long, env = "CHORUS_RATE_PER_SEC", value_name = "N")]
    pub rate_per_sec: Option<u32>,
    /// Burst of sends per user [default: 500].
    #[arg(long, env = "CHORUS_RATE_BURST", value_name = "N")]
    pub rate_burst: Option<u32>,
    /// Largest WebSocket frame in bytes [default: 65536].
    #[arg(long, env = "CHORUS_MAX_FRAME_BYTES", value_name = "BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Largest attachment, bytes [default: 26214400].
    #[arg(long, env = "CHORUS_MAX_ATTACHMENT_BYTES", value_name = "BYTES")]
    pub max_attachment_bytes: Option<u64>,
    /// Bytes of attachments one user may keep stored [default: 1073741824].
    #[arg(long, env = "CHORUS_ATTACHMENT_QUOTA_BYTES", value_name = "BYTES")]
    pub attachment_quota_bytes: Option<u64>,
    /// HTTP connections held at once; 0: as many as the open-files limit allows
    /// [default: 0].
    #[arg(long, env = "CHORUS_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// HTTP connections held at once from one client address; 0: no limit (behind a
    /// reverse proxy) [default: 1000].
    #[arg(long, env = "CHORUS_MAX_CONNECTIONS_PER_ADDRESS", value_name = "N")]
    pub max_connections_per_address: Option<usize>,
    /// Key that decrypts jobs' credentials: 32 bytes as base64 or 64 hex digits
    /// [default: none; jobs with credentials fail].
    #[arg(long, env = "CHORUS_JOBS_KEY", value_name = "KEY", hide_env_values = true)]
    pub jobs_key: Option<String>,
    /// URL schemes allowed for jobs' git sources, comma-separated [default: https].
    #[arg(long, env = "CHORUS_JOBS_GIT_SCHEMES", value_name = "SCHEMES", value_delimiter = ',')]
    pub jobs_git_schemes: Option<Vec<String>>,
    /// Hosts jobs' git sources may reach although they are, or resolve to, loopback,
    /// private or link-local addresses, comma-separated [default: none].
    #[arg(
        long,
        env = "CHORUS_JOBS_GIT_PRIVATE_HOSTS",
        value_name = "HOSTS",
        value_delimiter = ','
    )]
    pub jobs_git_private_hosts: Option<Vec<String>>,
    /// User ids of the administrators (may change the observer's configuration),
    /// comma-separated; `chorus users show NAME` prints a user's id [default: none].
    #[arg(long, env = "CHORUS_ADMINS", value_name = "USER_IDS", value_delimiter = ',')]
    pub admins: Option<Vec<String>>,
    /// Who may sign up with a password: open, closed, or invite (an administrator's
    /// single-use code) [default: open].
    #[arg(long, env = "CHORUS_REGISTRATION", value_name = "MODE")]
    pub registration: Option<Registration>,
    /// Accounts one client address may create per hour [default: 20].
    #[arg(long, env = "CHORUS_REGISTRATIONS_PER_HOUR", value_name = "N")]
    pub registrations_per_hour: Option<u32>,
    /// Failed sign-ins one client address may make per 15 minutes [default: 30].
    #[arg(long, env = "CHORUS_LOGIN_FAILURES_PER_ADDRESS", value_name = "N")]
    pub login_failures_per_address: Option<u32>,
    /// Failed sign-ins per username per 15 minutes, from anywhere [default: 10].
    #[arg(long, env = "CHORUS_LOGIN_FAILURES_PER_ACCOUNT", value_name = "N")]
    pub login_failures_per_account: Option<u32>,
    /// Password hashes that may wait for a core before more are refused [default: 32].
    #[arg(long, env = "CHORUS_HASH_QUEUE", value_name = "N")]
    pub hash_queue: Option<usize>,
    /// Also accept OIDC access tokens from this issuer, e.g.
    /// https://sso.example.com/realms/chorus (needs --oidc-audience) [default: none].
    #[arg(long, env = "CHORUS_OIDC_ISSUER", value_name = "URL")]
    pub oidc_issuer: Option<String>,
    /// The `aud` OIDC access tokens must carry [default: none].
    #[arg(long, env = "CHORUS_OIDC_AUDIENCE", value_name = "AUDIENCE")]
    pub oidc_audience: Option<String>,
}

impl ServeArgs {
    /// The configuration: file (if any), then these flags and variables on top.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut c = Config::load(self.config.as_deref())?;
        macro_rules! set {
            ($($field:ident => $target:expr),* $(,)?) => {
                $(if let Some(v) = &self.$field { $target = v.clone(); })*
            };
        }
        set! {
            listen => c.listen,
            data_dir => c.data_dir,
            node_id => c.node_id,
            log => c.log,
            sync_to_disk => c.sync_to_disk,
            registry => c.registry,
            roles => c.roles,
            topic_prefix => c.topic_prefix,
            partitions => c.partitions,
            log_format => c.log_format,
            rate_per_sec => c.limits.rate_per_sec,
            rate_burst => c.limits.rate_burst,
            max_frame_bytes => c.limits.max_frame_bytes,
            max_attachment_bytes => c.limits.max_attachment_bytes,
            attachment_quota_bytes => c.limits.attachment_quota_bytes,
            max_connections => c.limits.max_connections,
            max_connections_per_address => c.limits.max_connections_per_address,
            jobs_git_schemes => c.jobs.git_schemes,
            jobs_git_private_hosts => c.jobs.git_private_hosts,
            admins => c.jobs.admins,
            registration => c.auth.registration,
            registrations_per_hour => c.auth.registrations_per_hour,
            login_failures_per_address => c.auth.login_failures_per_address,
            login_failures_per_account => c.auth.login_failures_per_account,
            hash_queue => c.auth.hash_queue,
        }
        if let Some(key) = &self.jobs_key {
            c.jobs.key = Some(key.clone());
        }
        if let Some(db) = &self.db {
            c.db = Some(db.clone());
        }
        if let Some(files) = &self.files {
            c.files.url = Some(files.clone());
        }
        if let Some(issuer) = &self.oidc_issuer {
            c.auth.oidc_issuer = Some(issuer.clone());
        }
        if let Some(audience) = &self.oidc_audience {
            c.auth.oidc_audience = Some(audience.clone());
        }
        if let Some(secret) = &self.jwt_secret {
            c.auth.jwt_secret = Some(secret.clone());
        }
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_override_defaults() {
        let cli = Cli::parse_from([
            "chorus",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--roles",
            "gateway,store",
            "--rate-per-sec",
            "7",
        ]);
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        let c = args.config().unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.roles, vec!["gateway", "store"]);
        assert_eq!(c.limits.rate_per_sec, 7);
        assert_eq!(c.log, "local://");
    }

    #[test]
    fn sign_up_and_sign_in_limits_are_flags() {
        let cli = Cli::parse_from([
            "chorus",
            "serve",
            "--registration",
            "invite",
            "--registrations-per-hour",
            "5",
            "--login-failures-per-address",
            "6",
            "--login-failures-per-account",
            "7",
            "--hash-queue",
            "8",
        ]);
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        let a = args.config().unwrap().auth;
        assert_eq!(a.registration, Registration::Invite);
        assert_eq!(
            (
                a.registrations_per_hour,
                a.login_failures_per_address,
                a.login_failures_per_account,
                a.hash_queue
            ),
            (5, 6, 7, 8)
        );
        assert!(Cli::try_parse_from(["chorus", "serve", "--registration", "anyone"]).is_err());
    }

    #[test]
    fn administrators_given_by_username_are_refused() {
        let cli = Cli::parse_from(["chorus", "serve", "--admins", "root"]);
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        let e = args.config().unwrap_err().to_string();
        assert!(
            e.contains("jobs.admins takes user ids, not usernames"),
            "{e}"
        );
    }
}

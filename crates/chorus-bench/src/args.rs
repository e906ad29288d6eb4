//! The flags of `chorus bench`. Each is also an environment variable
//! (`CHORUS_BENCH_…`); flags win over variables.

use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// How the benchmark's users are put into conversations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConversationMode {
    /// Users paired 0-1, 2-3, …: one direct conversation per pair.
    Direct,
    /// Users in groups of `--group-size`.
    Group,
}

impl ConversationMode {
    /// The mode's name on the command line and in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Group => "group",
        }
    }
}

/// What the generator talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// A chorus server: HTTP API and the chorus WebSocket protocol.
    Chorus,
    /// An XMPP server over WebSocket (RFC 7395) with ejabberd's HTTP API for users and
    /// rooms (see bench/ejabberd/setup.sh): `--url` is its HTTP listener.
    Xmpp,
    /// The bare relay (`chorus-relay`), the floor for comparisons.
    Relay,
}

impl Protocol {
    /// The protocol's name on the command line and in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chorus => "chorus",
            Self::Xmpp => "xmpp",
            Self::Relay => "relay",
        }
    }
}

/// Flags of `chorus bench`.
///
/// By default it measures message latency: every user sends, at `--rate` messages per
/// second in total (open loop, on a schedule that does not wait for replies), and every
/// member session records the time from send to delivery. `--closed-loop`, `--idle` and
/// `--reconnect-storm` select the other scenarios.
#[derive(Clone, Debug, Args)]
pub struct BenchArgs {
    /// Base HTTP URL of the server (WebSockets go to the same host and port).
    #[arg(
        long,
        env = "CHORUS_BENCH_URL",
        value_name = "URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// What the server speaks: chorus, xmpp (ejabberd over WebSocket) or relay (the
    /// bare relay). The same scenarios, counters and histograms for all three.
    #[arg(
        long,
        env = "CHORUS_BENCH_PROTOCOL",
        value_enum,
        value_name = "PROTOCOL",
        default_value = "chorus"
    )]
    pub protocol: Protocol,
    /// XMPP domain (virtual host) of the users with `--protocol xmpp`.
    #[arg(
        long,
        env = "CHORUS_BENCH_XMPP_DOMAIN",
        value_name = "DOMAIN",
        default_value = "localhost"
    )]
    pub xmpp_domain: String,
    /// Number of users, each with one WebSocket session.
    #[arg(long, env = "CHORUS_BENCH_USERS", value_name = "N", default_value_t = 100)]
    pub users: usize,
    /// Offered sends per second in total, spread over all users (open loop).
    #[arg(long, env = "CHORUS_BENCH_RATE", value_name = "MSGS_PER_S", default_value_t = 1000.0)]
    pub rate: f64,
    /// Measured time in seconds (after the warm-up).
    #[arg(long, env = "CHORUS_BENCH_DURATION", value_name = "SECONDS", default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up in seconds: load at the same rate, not measured.
    #[arg(long, env = "CHORUS_BENCH_WARMUP", value_name = "SECONDS", default_value_t = 2.0)]
    pub warmup: f64,
    /// Also write the report as JSON to this file.
    #[arg(long, env = "CHORUS_BENCH_JSON", value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Conversation layout: direct (pairs 0-1, 2-3, …) or group (`--group-size` each).
    #[arg(
        long,
        env = "CHORUS_BENCH_CONVERSATION",
        value_enum,
        value_name = "KIND",
        default_value = "direct"
    )]
    pub conversation: ConversationMode,
    /// Members per group with `--conversation group`.
    #[arg(long, env = "CHORUS_BENCH_GROUP_SIZE", value_name = "N", default_value_t = 10)]
    pub group_size: usize,
    /// Closed loop: each sender keeps `--in-flight` messages outstanding and sends the
    /// next one when its own echo arrives (`--rate` is then ignored).
    #[arg(long, env = "CHORUS_BENCH_CLOSED_LOOP", conflicts_with = "idle")]
    pub closed_loop: bool,
    /// Outstanding messages per sender with `--closed-loop`.
    #[arg(long, env = "CHORUS_BENCH_IN_FLIGHT", value_name = "K", default_value_t = 1)]
    pub in_flight: usize,
    /// Only open the connections and hold them for `--duration`: report the connect
    /// rate and, with `--server-pid`, the server's memory per connection (meaningful on
    /// a freshly started server: memory freed by earlier sessions is reused).
    #[arg(long, env = "CHORUS_BENCH_IDLE")]
    pub idle: bool,
    /// Process id of a server on this machine: its RSS (VmRSS in /proc/PID/status) is
    /// read before the connections open and at the end, and its CPU time (utime and
    /// stime in /proc/PID/stat) over the measured window: the report gives the server's
    /// CPU per send.
    #[arg(long, env = "CHORUS_BENCH_SERVER_PID", value_name = "PID")]
    pub server_pid: Option<u32>,
    /// After the warm-up every client drops its connection and reconnects at once,
    /// resuming with `sync`: reports reconnect times and checks no message is missed.
    #[arg(long, env = "CHORUS_BENCH_RECONNECT_STORM", conflicts_with = "idle")]
    pub reconnect_storm: bool,
    /// Usernames are PREFIX-0, PREFIX-1, …; reruns with the same prefix log in again.
    #[arg(long, env = "CHORUS_BENCH_USER_PREFIX", value_name = "STR", default_value = "bench")]
    pub user_prefix: String,
    /// Keep the users' ids and access tokens in this file (one `USERNAME ID TOKEN` line
    /// each) and reuse them on the next run instead of signing in again: a sign-in
    /// costs the server a password hash, which dominates the setup of runs with
    /// thousands of users. Delete the file when the tokens expire.
    #[arg(long, env = "CHORUS_BENCH_TOKEN_CACHE", value_name = "FILE")]
    pub token_cache: Option<PathBuf>,
    /// Password of every benchmark user.
    #[arg(
        long,
        env = "CHORUS_BENCH_PASSWORD",
        value_name = "PASSWORD",
        default_value = "bench-password",
        hide_env_values = true
    )]
    pub password: String,
    /// Bind client sockets round-robin to 127.0.0.1 … 127.0.0.N (loopback servers
    /// only), for more source ports than one address has.
    #[arg(long, env = "CHORUS_BENCH_SOURCE_ADDRS", value_name = "N", default_value_t = 1)]
    pub source_addrs: u8,
    /// Connections (and conversation creations) in progress at once while setting up.
    /// Sign-ins use at most 8 at once: each costs the server an argon2 hash.
    #[arg(long, env = "CHORUS_BENCH_CONNECT_CONCURRENCY", value_name = "N", default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Size of each message body in bytes (at least what the timestamp and key need).
    #[arg(long, env = "CHORUS_BENCH_BODY_BYTES", value_name = "BYTES", default_value_t = 100)]
    pub body_bytes: usize,
}

impl BenchArgs {
    /// Checks what clap cannot: ranges and the username rules of the server.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        if self.users == 0 {
            bail!("--users must be at least 1");
        }
        if !self.idle && self.users < 2 {
            bail!("--users must be at least 2 to exchange messages");
        }
        let open_loop = !self.closed_loop && !self.idle;
        if open_loop && !(self.rate.is_finite() && self.rate > 0.0) {
            bail!("--rate must be a positive number");
        }
        if !(self.duration.is_finite() && self.duration > 0.0) {
            bail!("--duration must be a positive number of seconds");
        }
        if !(self.warmup.is_finite() && self.warmup >= 0.0) {
            bail!("--warmup must be zero or a positive number of seconds");
        }
        if self.conversation == ConversationMode::Group && !(2..=1000).contains(&self.group_size) {
            bail!("--group-size must be 2..=1000");
        }
        if self.in_flight == 0 {
            bail!("--in-flight must be at least 1");
        }
        if self.source_addrs == 0 {
            bail!("--source-addrs must be at least 1");
        }
        if self.connect_concurrency == 0 {
            bail!("--connect-concurrency must be at least 1");
        }
        if self.body_bytes == 0 || self.body_bytes > 16384 {
            bail!("--body-bytes must be 1..=16384 (the server's default body limit)");
        }
        let longest = format!("{}-{}", self.user_prefix, self.users - 1);
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
        if self.user_prefix.is_empty() || !self.user_prefix.chars().all(valid) {
            bail!("--user-prefix may only hold A-Z a-z 0-9 _ . -");
        }
        if longest.len() > 32 {
            bail!("--user-prefix is too long: usernames like `{longest}` exceed 32 characters");
        }
        if !(8..=1024).contains(&self.password.len()) {
            bail!("--password must be 8..=1024 bytes");
        }
        if self.protocol != Protocol::Chorus && self.reconnect_storm {
            bail!("--reconnect-storm needs the chorus protocol's resume (sync)");
        }
        if self.protocol == Protocol::Xmpp
            && self.closed_loop
            && self.conversation == ConversationMode::Direct
        {
            bail!(
                "--closed-loop refills on the sender's own echo, which XMPP direct messages do not have: use --conversation group"
            );
        }
        Ok(())
    }

    /// The scenario's name in the report.
    pub fn scenario(&self) -> &'static str {
        if self.idle {
            "idle"
        } else if self.reconnect_storm {
            "reconnect-storm"
        } else if self.closed_loop {
            "closed-loop"
        } else {
            "open-loop"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(extra: &[&str]) -> BenchArgs {
        let mut argv = vec!["bench"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn the_flags_are_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_are_as_documented() {
        let a = parse(&[]);
        assert_eq!(a.url, "http://127.0.0.1:8080");
        assert_eq!(a.users, 100);
        assert_eq!(a.rate, 1000.0);
        assert_eq!(a.duration, 10.0);
        assert_eq!(a.warmup, 2.0);
        assert_eq!(a.conversation, ConversationMode::Direct);
        assert_eq!(a.group_size, 10);
        assert_eq!(a.in_flight, 1);
        assert_eq!(a.user_prefix, "bench");
        assert_eq!(a.password, "bench-password");
        assert_eq!(a.source_addrs, 1);
        assert_eq!(a.connect_concurrency, 200);
        assert_eq!(a.body_bytes, 100);
        assert_eq!(a.protocol, Protocol::Chorus);
        assert_eq!(a.xmpp_domain, "localhost");
        assert_eq!(a.scenario(), "open-loop");
        a.validate().unwrap();
    }

    #[test]
    fn scenarios_and_conflicts() {
        assert_eq!(parse(&["--idle"]).scenario(), "idle");
        assert_eq!(parse(&["--reconnect-storm"]).scenario(), "reconnect-storm");
        assert_eq!(
            parse(&["--closed-loop", "--in-flight", "4"]).scenario(),
            "closed-loop"
        );
        let mut argv = vec!["bench", "--idle", "--closed-loop"];
        assert!(Cli::try_parse_from(&argv).is_err());
        argv[2] = "--reconnect-storm";
        assert!(Cli::try_parse_from(&argv).is_err());
    }

    #[test]
    fn validation_catches_bad_values() {
        assert!(parse(&["--users", "1"]).validate().is_err());
        assert!(parse(&["--users", "1", "--idle"]).validate().is_ok());
        assert!(parse(&["--rate", "0"]).validate().is_err());
        assert!(parse(&["--duration", "0"]).validate().is_err());
        assert!(parse(&["--body-bytes", "0"]).validate().is_err());
        assert!(parse(&["--user-prefix", "no spaces"]).validate().is_err());
        assert!(
            parse(&["--user-prefix", "a-very-long-prefix-for-users-x"])
                .validate()
                .is_err()
        );
        assert!(
            parse(&["--conversation", "group", "--group-size", "1"])
                .validate()
                .is_err()
        );
        assert!(parse(&["--password", "short"]).validate().is_err());
        assert!(
            parse(&["--protocol", "xmpp", "--reconnect-storm"])
                .validate()
                .is_err()
        );
        assert!(
            parse(&["--protocol", "xmpp", "--closed-loop"])
                .validate()
                .is_err()
        );
        let group = [
            "--protocol",
            "xmpp",
            "--closed-loop",
            "--conversation",
            "group",
        ];
        assert!(parse(&group).validate().is_ok());
        assert!(
            parse(&["--protocol", "relay", "--closed-loop"])
                .validate()
                .is_ok()
        );
    }
}

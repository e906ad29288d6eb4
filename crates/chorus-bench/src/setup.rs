//! Everything before the load: the file limit, the server's address, users (registered,
//! or logged in when they exist from an earlier run) and their conversations.

use crate::args::{BenchArgs, ConversationMode};
use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Raises this process's soft `RLIMIT_NOFILE` to the hard limit; returns the new soft
/// limit (or `None` when it cannot be read or changed).
pub(crate) fn raise_nofile() -> Option<u64> {
    rlimit::increase_nofile_limit(u64::MAX).ok()
}

/// Where the server is.
pub(crate) struct Target {
    /// The resolved address for sockets.
    pub addr: SocketAddr,
    /// `http://host:port` with no trailing slash.
    pub http_base: String,
    /// `ws://host:port/api/v1/ws?token=`: append a token.
    pub ws_prefix: String,
    /// Source addresses to bind client sockets to, round-robin; empty: let the kernel
    /// choose.
    pub sources: Vec<IpAddr>,
}

impl Target {
    /// Parses `--url` and resolves its host.
    pub(crate) async fn resolve(url: &str, source_addrs: u8) -> anyhow::Result<Self> {
        let parsed = reqwest::Url::parse(url).with_context(|| format!("--url {url:?}"))?;
        if parsed.scheme() != "http" {
            bail!("--url must be http:// (this build has no TLS client)");
        }
        let host = parsed
            .host_str()
            .with_context(|| format!("--url {url:?} has no host"))?
            .to_owned();
        let port = parsed.port_or_known_default().unwrap_or(80);
        let addr = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        let path = parsed.path().trim_end_matches('/');
        let authority = match parsed.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let sources = source_ips(source_addrs, addr)?;
        Ok(Self {
            addr,
            http_base: format!("http://{authority}{path}"),
            ws_prefix: format!("ws://{authority}{path}/api/v1/ws?token="),
            sources,
        })
    }

    /// `http_base` + `path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http_base)
    }
}

/// 127.0.0.1 ..= 127.0.0.N, or nothing for N = 1.
fn source_ips(n: u8, server: SocketAddr) -> anyhow::Result<Vec<IpAddr>> {
    if n <= 1 {
        return Ok(Vec::new());
    }
    if !matches!(server.ip(), IpAddr::V4(ip) if ip.is_loopback()) {
        bail!("--source-addrs needs a server on an IPv4 loopback address, not {server}");
    }
    Ok((1..=n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect())
}

/// An HTTP client with a keep-alive pool sized for `concurrency`.
pub(crate) fn http_client(concurrency: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .build()?)
}

/// Fails with a clear message when nothing answers `GET /healthz`.
pub(crate) async fn check_reachable(http: &reqwest::Client, target: &Target) -> anyhow::Result<()> {
    let url = target.url("/healthz");
    let r = http
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .with_context(|| format!("cannot reach the server at {}", target.http_base))?;
    if !r.status().is_success() {
        bail!("{url} answered {}", r.status());
    }
    Ok(())
}

/// A signed-in benchmark user.
#[derive(Clone, Debug)]
pub(crate) struct User {
    /// The user's id.
    pub id: String,
    /// An access token.
    pub token: String,
}

#[derive(Deserialize)]
struct AuthBody {
    token: String,
    user: AuthUser,
}

#[derive(Deserialize)]
struct AuthUser {
    id: String,
}

/// Sign-ins in progress at once at most. Each costs the server an argon2id hash
/// (19 MiB of memory and tens of milliseconds of a core): more at once is no faster and
/// inflates the server's memory, which `--idle --server-pid` measures.
const SIGN_IN_CONCURRENCY: usize = 8;

/// How many were registered and how many logged in.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SignIns {
    /// New accounts.
    pub registered: usize,
    /// Existing accounts (an earlier run's).
    pub logged_in: usize,
}

impl SignIns {
    /// Counts one user: a new account, or an existing one.
    pub(crate) fn add(&mut self, new: bool) {
        if new {
            self.registered += 1;
        } else {
            self.logged_in += 1;
        }
    }
}

/// Registers `PREFIX-0 … PREFIX-(n-1)`, logging in those that exist (409), with at
/// most [`SIGN_IN_CONCURRENCY`] requests at once. `tick` is called after each user.
/// With `--token-cache`, users found in the file are not signed in again, and the file
/// is rewritten at the end with this run's users and the others it held (a run with
/// fewer users must not make the next, larger one sign in again).
pub(crate) async fn sign_in_all(
    http: &reqwest::Client,
    target: &Target,
    args: &BenchArgs,
    tick: impl Fn() + Sync,
) -> anyhow::Result<(Vec<User>, SignIns)> {
    let mut cached = match &args.token_cache {
        Some(path) if path.exists() => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            parse_token_cache(&text)
        }
        _ => HashMap::new(),
    };
    let results: Vec<(usize, User, bool)> = futures::stream::iter(0..args.users)
        .map(|i| {
            let username = format!("{}-{i}", args.user_prefix);
            let known = cached.remove(&username);
            let tick = &tick;
            async move {
                let (user, new) = match known {
                    Some(user) => (user, false),
                    None => sign_in(http, target, &username, &args.password).await?,
                };
                tick();
                anyhow::Ok((i, user, new))
            }
        })
        .buffer_unordered(args.connect_concurrency.min(SIGN_IN_CONCURRENCY))
        .try_collect()
        .await?;
    let mut users = vec![None; args.users];
    let mut counts = SignIns::default();
    for (i, user, new) in results {
        counts.add(new);
        users[i] = Some(user);
    }
    let users: Vec<User> = users.into_iter().map(Option::unwrap).collect();
    if let Some(path) = &args.token_cache {
        let text = token_cache_text(&args.user_prefix, &users, cached);
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok((users, counts))
}

/// A token cache file: this run's users, then the others the file held, by name.
fn token_cache_text(prefix: &str, users: &[User], others: HashMap<String, User>) -> String {
    let mut text = String::new();
    for (i, u) in users.iter().enumerate() {
        let _ = writeln!(text, "{prefix}-{i} {} {}", u.id, u.token);
    }
    let mut others: Vec<(String, User)> = others.into_iter().collect();
    others.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, u) in others {
        let _ = writeln!(text, "{name} {} {}", u.id, u.token);
    }
    text
}

/// The users of a token cache file, by username (malformed lines are skipped).
fn parse_token_cache(text: &str) -> HashMap<String, User> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let (name, id, token) = (parts.next()?, parts.next()?, parts.next()?);
            let user = User {
                id: id.to_owned(),
                token: token.to_owned(),
            };
            Some((name.to_owned(), user))
        })
        .collect()
}

async fn sign_in(
    http: &reqwest::Client,
    target: &Target,
    username: &str,
    password: &str,
) -> anyhow::Result<(User, bool)> {
    let body = json!({ "username": username, "password": password });
    let r = post(http, &target.url("/api/v1/auth/register"), None, &body).await?;
    let (r, new) = match r.status() {
        StatusCode::CREATED | StatusCode::OK => (r, true),
        StatusCode::CONFLICT => {
            let r = post(http, &target.url("/api/v1/auth/login"), None, &body).await?;
            if r.status() == StatusCode::UNAUTHORIZED {
                bail!(
                    "user {username} exists with another password: use --password or another --user-prefix"
                );
            }
            (r, false)
        }
        _ => (r, true),
    };
    let status = r.status();
    if !status.is_success() {
        let text = r.text().await.unwrap_or_default();
        bail!("signing in {username}: {status} {text}");
    }
    let auth: AuthBody = r
        .json()
        .await
        .with_context(|| format!("signing in {username}"))?;
    Ok((
        User {
            id: auth.user.id,
            token: auth.token,
        },
        new,
    ))
}

/// POST with a JSON body, retrying a few times on connection errors and 503.
async fn post(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: &serde_json::Value,
) -> anyhow::Result<reqwest::Response> {
    let mut attempt = 0;
    loop {
        let mut req = http.post(url).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Ok(r) if r.status() != StatusCode::SERVICE_UNAVAILABLE || attempt >= 5 => {
                return Ok(r);
            }
            Ok(_) => {}
            Err(e) if attempt >= 5 => return Err(e).with_context(|| format!("POST {url}")),
            Err(_) => {}
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
    }
}

/// Which users share a conversation: direct pairs `[0,1], [2,3], …` (an odd last user
/// gets none), or groups of `group_size` (a last group of one joins the one before).
pub(crate) fn plan_conversations(
    users: usize,
    mode: ConversationMode,
    group_size: usize,
) -> Vec<Vec<usize>> {
    match mode {
        ConversationMode::Direct => (0..users / 2).map(|p| vec![2 * p, 2 * p + 1]).collect(),
        ConversationMode::Group => {
            let size = group_size.max(2);
            let mut groups: Vec<Vec<usize>> = (0..users)
                .collect::<Vec<_>>()
                .chunks(size)
                .map(<[usize]>::to_vec)
                .collect();
            if groups.len() > 1 && groups.last().is_some_and(|g| g.len() == 1) {
                let last = groups.pop().unwrap();
                groups.last_mut().unwrap().extend(last);
            }
            if groups.last().is_some_and(|g| g.len() < 2) {
                groups.pop();
            }
            groups
        }
    }
}

/// A conversation of the benchmark.
#[derive(Debug)]
pub(crate) struct Conversation {
    /// Its id.
    pub id: Arc<str>,
    /// Indexes of its members.
    pub members: Vec<usize>,
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

/// Creates the planned conversations (direct ones are found again on reruns; groups
/// are new each time, titled with the run id).
pub(crate) async fn create_conversations(
    http: &reqwest::Client,
    target: &Target,
    users: &[User],
    plan: Vec<Vec<usize>>,
    args: &BenchArgs,
    run: u32,
    tick: impl Fn() + Sync,
) -> anyhow::Result<Vec<Conversation>> {
    let mode = args.conversation;
    let url = target.url("/api/v1/conversations");
    futures::stream::iter(plan)
        .map(|members| {
            let url = &url;
            let tick = &tick;
            async move {
                let owner = &users[members[0]];
                let others: Vec<&str> =
                    members[1..].iter().map(|&m| users[m].id.as_str()).collect();
                let body = match mode {
                    ConversationMode::Direct => json!({ "kind": "direct", "members": others }),
                    ConversationMode::Group => json!({
                        "kind": "group",
                        "title": format!("bench {run:08x}"),
                        "members": others,
                    }),
                };
                let r = post(http, url, Some(&owner.token), &body).await?;
                let status = r.status();
                if !status.is_success() {
                    let text = r.text().await.unwrap_or_default();
                    bail!("creating a conversation: {status} {text}");
                }
                let created: Created = r.json().await.context("creating a conversation")?;
                tick();
                anyhow::Ok(Conversation {
                    id: created.id.into(),
                    members,
                })
            }
        })
        .buffered(args.connect_concurrency.min(256))
        .try_collect()
        .await
}

/// The resident set size of process `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub(crate) fn read_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// CPU time process `pid` has used, all its threads (live or ended), in microseconds
/// (`utime` + `stime` of `/proc/PID/stat`, in clock ticks of 10 ms).
pub(crate) fn read_cpu_us(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_us(&stat).with_context(|| format!("no CPU times in /proc/{pid}/stat"))
}

/// Linux reports process times in USER_HZ ticks, 100 a second on every architecture.
const TICK_US: u64 = 10_000;

fn parse_cpu_us(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces: count fields after its `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the line: the 12th and 13th after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * TICK_US)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => Some(n),
        Some("mB") => Some(n * 1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_times_are_read_after_the_command_name() {
        let stat =
            "4242 (chorus serve) S 1 4242 4242 0 -1 4194560 1200 0 0 0 250 75 0 0 20 0 9 0 1 2 3";
        assert_eq!(parse_cpu_us(stat), Some(325 * 10_000));
        assert!(read_cpu_us(std::process::id()).is_ok());
    }

    #[test]
    fn direct_pairs_neighbours() {
        assert_eq!(
            plan_conversations(6, ConversationMode::Direct, 10),
            vec![vec![0, 1], vec![2, 3], vec![4, 5]]
        );
        assert_eq!(
            plan_conversations(5, ConversationMode::Direct, 10),
            vec![vec![0, 1], vec![2, 3]]
        );
        assert!(plan_conversations(1, ConversationMode::Direct, 10).is_empty());
    }

    #[test]
    fn groups_have_the_requested_size_and_no_lonely_member() {
        let g = plan_conversations(25, ConversationMode::Group, 10);
        assert_eq!(g.iter().map(Vec::len).collect::<Vec<_>>(), vec![10, 10, 5]);
        let g = plan_conversations(21, ConversationMode::Group, 10);
        assert_eq!(g.iter().map(Vec::len).collect::<Vec<_>>(), vec![10, 11]);
        let g = plan_conversations(4, ConversationMode::Group, 2);
        assert_eq!(g, vec![vec![0, 1], vec![2, 3]]);
        assert!(plan_conversations(1, ConversationMode::Group, 10).is_empty());
        let all: Vec<usize> = plan_conversations(21, ConversationMode::Group, 10).concat();
        assert_eq!(all, (0..21).collect::<Vec<_>>());
    }

    #[test]
    fn token_cache_lines() {
        let users = parse_token_cache("b-0 id0 tok0\nbroken line\n\nb-1 id1 tok1\n");
        assert_eq!(users.len(), 2);
        assert_eq!(users["b-1"].id, "id1");
        assert_eq!(users["b-0"].token, "tok0");
    }

    #[test]
    fn a_smaller_run_keeps_the_other_cached_users() {
        let mut cached = parse_token_cache("b-0 id0 tok0\nb-1 id1 tok1\nb-2 id2 tok2\n");
        let used = cached.remove("b-0").unwrap();
        let text = token_cache_text("b", &[used], cached);
        assert_eq!(text, "b-0 id0 tok0\nb-1 id1 tok1\nb-2 id2 tok2\n");
        let again = parse_token_cache(&text);
        assert_eq!(again.len(), 3);
    }

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tchorus\nVmPeak:\t  900 kB\nVmRSS:\t   51234 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(51234));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        let own = read_rss_kib(std::process::id()).unwrap();
        assert!(own > 0);
    }

    #[test]
    fn source_addresses_are_loopback_only() {
        let local: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert!(source_ips(1, local).unwrap().is_empty());
        let ips = source_ips(3, local).unwrap();
        assert_eq!(ips.len(), 3);
        assert_eq!(ips[2], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
        assert!(source_ips(2, "10.0.0.1:9".parse().unwrap()).is_err());
    }

    #[tokio::test]
    async fn targets_are_derived_from_the_url() {
        let t = Target::resolve("http://127.0.0.1:9999/", 1).await.unwrap();
        assert_eq!(t.addr, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(t.http_base, "http://127.0.0.1:9999");
        assert_eq!(t.ws_prefix, "ws://127.0.0.1:9999/api/v1/ws?token=");
        assert_eq!(t.url("/healthz"), "http://127.0.0.1:9999/healthz");
        assert!(Target::resolve("https://127.0.0.1:1", 1).await.is_err());
        assert!(Target::resolve("not a url", 1).await.is_err());
    }
}

//! Job code from git repositories, with the `git` command-line tool.
//!
//! A ref is resolved to a commit id with `git ls-remote` (a commit id is used as is);
//! a commit not yet cached for the URL is fetched (`--depth 1`) into a bare repository
//! of its own under `<data dir>/jobs/git/repos/<SHA-256 of the URL>/<commit id>`, and
//! the module is read from it with `git show <commit>:<path>`. Only the configured URL
//! schemes are allowed, to git itself as well (`protocol.allow`), and a repository
//! larger than the configured size is refused and removed.
//!
//! A cached checkout is someone's code: knowing its commit id must not be enough to
//! run it. So checkouts (on disk and in memory) are cached per URL and commit, and the
//! job's URL is contacted every time, even when its commit is cached: a cached
//! checkout is used for a job only once the job's URL has vouched for the commit. The
//! URL vouches for a commit when its listing names it as a branch or tag, or when it
//! serves the commit to a fetch: a commit id given as the ref is fetched again from the
//! URL into a scratch repository (the commit object alone, where the server can filter
//! with `--filter=tree:0`). A repository that has since been deleted, moved or closed,
//! or a URL that never had the commit, gets an error, not the cached code.
//!
//! Everything git does for one job shares one deadline (`jobs.git_timeout_secs`): a
//! remote that accepts a connection and never answers holds a worker, and every job
//! queued behind it, for that long at most. Git has no connect timeout of its own, so
//! the deadline is what bounds a connection that never completes (for every transport);
//! over HTTP, curl's low-speed limit also ends a transfer that stalls. A git that
//! overruns is killed with its whole process group (the remote helpers and `ssh` it
//! started), so nothing it left behind keeps the connection open.
//!
//! Git works for the job's owner, not for the worker: it runs with an empty
//! environment but for `PATH`, an empty home of its own under the cache, no system or
//! global configuration, no credential helper, no askpass and no prompts, so nothing of
//! the worker's (tokens, `url.insteadOf` rewrites, proxies, an ssh agent) reaches a
//! user's fetch. And it only goes to public addresses: a URL whose host is, or resolves
//! to, a loopback, private, link-local or otherwise internal address is refused unless
//! the host is in `jobs.git_private_hosts`. Over HTTP, git is pinned to the addresses
//! that were checked (`http.curloptResolve`) and follows no redirects, so a second DNS
//! answer (DNS rebinding) or a redirect cannot take it elsewhere. Over `ssh://` and
//! `git://` git resolves the name again itself and that gap remains: allow those
//! schemes only where the workers' network is fenced too.

use chorus_config::JobsConfig;
use chorus_core::model::GitSource;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::time::Instant;

/// Why a git source could not be used; the message is shown to the job's owner.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GitError {
    /// The URL's scheme is not allowed here, or it is not a URL.
    #[error("git URL scheme not allowed: use one of {0}")]
    Scheme(String),
    /// The ref, path or URL is malformed.
    #[error("invalid git source: {0}")]
    Invalid(String),
    /// The host is, or resolves to, an address jobs may not reach.
    #[error(
        "git host {0:?} is, or resolves to, a private, loopback or link-local address: not allowed here"
    )]
    Private(String),
    /// The repository cannot be reached or is not a repository.
    #[error("repository not found or not reachable: {0}")]
    Repository(String),
    /// The ref names nothing in the repository.
    #[error("ref {0:?} not found in the repository")]
    Ref(String),
    /// The path is not a file at that commit.
    #[error("{path:?} not found at commit {commit}")]
    Path {
        /// The path asked for.
        path: String,
        /// The commit looked in.
        commit: String,
    },
    /// Git took longer than the deadline and was killed.
    #[error("git took longer than {0} s")]
    Timeout(u64),
    /// The repository is over the size limit.
    #[error("the repository is larger than {0} bytes")]
    TooLarge(u64),
    /// The module is larger than the source limit.
    #[error("the module is larger than {0} bytes")]
    SourceTooLarge(usize),
    /// `git` could not be run, or the cache directory could not be written.
    #[error("git failed: {0}")]
    Io(String),
}

/// A module read from a repository.
#[derive(Clone, Debug)]
pub struct Module {
    /// The commit it was read at.
    pub commit: String,
    /// Its source.
    pub source: Arc<str>,
}

/// Fetched repositories, by URL and commit id, and the modules read from them.
pub struct GitCache {
    root: PathBuf,
    schemes: Vec<String>,
    private_hosts: Vec<String>,
    /// Git's whole environment.
    env: Vec<(OsString, OsString)>,
    max_bytes: u64,
    timeout: Duration,
    max_source_bytes: usize,
    /// Modules by (URL key, commit, path).
    modules: Mutex<HashMap<(String, String, String), Arc<str>>>,
}

/// Modules kept in memory; the repositories stay on disk.
const MODULES: usize = 1024;

/// Over HTTP, a transfer slower than this many bytes a second…
const LOW_SPEED_BYTES: u32 = 1000;
/// …for this long is aborted by git itself (curl's low-speed limit), well before the
/// deadline when the deadline is long.
const LOW_SPEED_SECS: u32 = 10;

/// Most of `git ls-remote`'s listing read; a remote advertising more is refused rather
/// than held in memory. At about 70 bytes a ref, that is over 100,000 refs.
const MAX_LISTING_BYTES: usize = 8 << 20;

/// Most of git's error output kept (only its last line is shown).
const MAX_STDERR_BYTES: usize = 64 << 10;

impl GitCache {
    /// A cache under `root` with the git settings of `config`: allowed schemes and
    /// private hosts, largest repository, deadline, largest module.
    pub fn new(root: PathBuf, config: &JobsConfig) -> Self {
        Self::with_parent_env(root, config, std::env::vars_os())
    }

    /// [`GitCache::new`] in a process whose environment is `parent`: tests show with it
    /// what of the worker's environment git sees.
    pub(crate) fn with_parent_env(
        root: PathBuf,
        config: &JobsConfig,
        parent: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Self {
        Self {
            env: git_env(parent, &root.join("home")),
            root,
            schemes: config.git_schemes.clone(),
            private_hosts: config.git_private_hosts.clone(),
            max_bytes: config.git_max_bytes,
            timeout: Duration::from_secs(config.git_timeout_secs),
            max_source_bytes: config.max_source_bytes,
            modules: Mutex::new(HashMap::new()),
        }
    }

    /// The module `source` names, fetching its repository if its commit is not cached
    /// for its URL, and otherwise once the URL has vouched for the commit.
    pub async fn load(&self, source: &GitSource) -> Result<Module, GitError> {
        let remote = check(&self.schemes, &self.private_hosts, source)?;
        let deadline = Instant::now() + self.timeout;
        let pins = self.admit(&remote, deadline).await?;
        let git = Git {
            cache: self,
            pins: &pins,
            deadline,
        };
        // The URL's listing vouches for the commit a branch or tag names there; a
        // commit id vouches for nothing.
        let (commit, listed) = if is_commit_id(&source.reference) {
            (source.reference.to_ascii_lowercase(), false)
        } else {
            (git.resolve(source).await?, true)
        };
        let url = url_key(&source.url);
        let repo = self.root.join("repos").join(&url).join(&commit);
        if !repo.exists() {
            git.fetch(source, &commit, &repo).await?;
        } else if !listed {
            git.probe(source, &commit).await?;
        }
        // Only now that the URL has vouched for the commit is anything cached used.
        let cache_key = (url, commit.clone(), source.path.clone());
        if let Some(source) = self.cached(&cache_key) {
            return Ok(Module { commit, source });
        }
        let text = git.read(&repo, &commit, &source.path).await?;
        let text: Arc<str> = Arc::from(text);
        let mut modules = self.modules.lock().unwrap_or_else(PoisonError::into_inner);
        if modules.len() >= MODULES {
            modules.clear();
        }
        modules.insert(cache_key, text.clone());
        Ok(Module {
            commit,
            source: text,
        })
    }

    fn cached(&self, key: &(String, String, String)) -> Option<Arc<str>> {
        self.modules
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// Checks where `remote` points, and returns the settings that keep git there: over
    /// HTTP, the addresses its name resolved to.
    async fn admit(&self, remote: &Remote, deadline: Instant) -> Result<Vec<String>, GitError> {
        let Some(host) = &remote.host else {
            // `file://`: no network.
            return Ok(Vec::new());
        };
        if host.parse::<IpAddr>().is_ok() {
            // A literal address, which `check` looked at.
            return Ok(Vec::new());
        }
        let lookup = tokio::net::lookup_host((host.as_str(), remote.port.unwrap_or(0)));
        let addrs: Vec<IpAddr> = tokio::time::timeout_at(deadline, lookup)
            .await
            .map_err(|_| GitError::Timeout(self.timeout.as_secs()))?
            .map_err(|_| GitError::Repository(format!("cannot resolve host {host:?}")))?
            .map(|a| a.ip())
            .collect();
        // Git may connect to any of them.
        if addrs.is_empty()
            || !(is_listed(&self.private_hosts, host) || addrs.iter().copied().all(is_public))
        {
            return Err(GitError::Private(host.clone()));
        }
        let port = match (remote.port, remote.scheme.as_str()) {
            (Some(port), "http" | "https") => port,
            (None, "https") => 443,
            (None, "http") => 80,
            _ => return Ok(Vec::new()),
        };
        let addrs: Vec<String> = addrs
            .iter()
            .map(|ip| match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            })
            .collect();
        Ok(vec![format!(
            "http.curloptResolve={host}:{port}:{}",
            addrs.join(",")
        )])
    }
}

/// One job's git commands: the cache, the addresses they are pinned to and their
/// shared deadline.
struct Git<'a> {
    cache: &'a GitCache,
    pins: &'a [String],
    deadline: Instant,
}

impl Git<'_> {
    /// The commit a branch or tag names.
    async fn resolve(&self, source: &GitSource) -> Result<String, GitError> {
        let args = ["ls-remote", "--", &source.url];
        let out = self.git(None, &args, MAX_LISTING_BYTES).await?;
        if out.stdout.len() > MAX_LISTING_BYTES {
            return Err(GitError::Repository(format!(
                "the remote lists more than {MAX_LISTING_BYTES} bytes of refs"
            )));
        }
        if !out.success {
            return Err(GitError::Repository(stderr_line(&out.stderr)));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let r = &source.reference;
        let wanted = [
            format!("refs/heads/{r}"),
            format!("refs/tags/{r}^{{}}"),
            format!("refs/tags/{r}"),
            r.clone(),
        ];
        let refs: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .collect();
        wanted
            .iter()
            .find_map(|name| {
                refs.iter()
                    .find(|(_, n)| n == name)
                    .map(|(id, _)| id.to_string())
            })
            .ok_or_else(|| GitError::Ref(r.clone()))
    }

    /// Fetches `commit` into `repo`, through a scratch repository so that a cached
    /// repository is always complete.
    async fn fetch(&self, source: &GitSource, commit: &str, repo: &Path) -> Result<(), GitError> {
        let scratch = self.scratch().await?;
        let args = ["fetch", "-q", "--depth", "1", "--", &source.url, commit];
        let out = self.git(Some(&scratch.0), &args, 0).await?;
        if !out.success {
            return Err(GitError::Repository(stderr_line(&out.stderr)));
        }
        let max_bytes = self.cache.max_bytes;
        if dir_size(&scratch.0) > max_bytes {
            return Err(GitError::TooLarge(max_bytes));
        }
        let io = |e: std::io::Error| GitError::Io(e.to_string());
        if let Some(parent) = repo.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        match std::fs::rename(&scratch.0, repo) {
            // Another worker fetched the same commit meanwhile: theirs is as good.
            Err(_) if repo.exists() => Ok(()),
            other => other.map_err(io),
        }
    }

    /// Has the URL serve `commit` to a fetch into a scratch repository, dropped
    /// afterwards: the commit object alone where the server can filter, the commit's
    /// files too where it cannot (git then warns and fetches them).
    async fn probe(&self, source: &GitSource, commit: &str) -> Result<(), GitError> {
        let scratch = self.scratch().await?;
        let args = [
            "fetch",
            "-q",
            "--depth",
            "1",
            "--filter=tree:0",
            "--",
            &source.url,
            commit,
        ];
        let out = self.git(Some(&scratch.0), &args, 0).await?;
        if !out.success {
            return Err(GitError::Repository(stderr_line(&out.stderr)));
        }
        Ok(())
    }

    /// A new, empty bare repository under the cache, removed when dropped.
    async fn scratch(&self) -> Result<Scratch, GitError> {
        let root = &self.cache.root;
        std::fs::create_dir_all(root).map_err(|e| GitError::Io(e.to_string()))?;
        let scratch = Scratch(root.join(format!("tmp-{}", uuid::Uuid::now_v7().simple())));
        let init = ["init", "--bare", "-q", &scratch.0.to_string_lossy()];
        let out = self.git(None, &init, 0).await?;
        if !out.success {
            return Err(GitError::Io(stderr_line(&out.stderr)));
        }
        Ok(scratch)
    }

    async fn read(&self, repo: &Path, commit: &str, path: &str) -> Result<String, GitError> {
        let spec = format!("{commit}:{path}");
        let max = self.cache.max_source_bytes;
        let out = self.git(Some(repo), &["show", &spec], max).await?;
        if !out.success {
            return Err(GitError::Path {
                path: path.to_owned(),
                commit: commit.to_owned(),
            });
        }
        if out.stdout.len() > max {
            return Err(GitError::SourceTooLarge(max));
        }
        String::from_utf8(out.stdout)
            .map_err(|_| GitError::Invalid(format!("{path:?} is not UTF-8 text")))
    }

    /// Runs `git` in the environment of [`git_env`], with only the allowed protocols,
    /// no credential helper, askpass or redirects, killed (with the processes it
    /// started) at the deadline or when dropped. Keeps the first `max_stdout + 1` bytes
    /// of its output, so that a caller can tell "more than `max_stdout`" without holding
    /// it all; the rest is read and dropped so that git never blocks on a full pipe.
    async fn git(
        &self,
        repo: Option<&Path>,
        args: &[&str],
        max_stdout: usize,
    ) -> Result<Output, GitError> {
        let cache = self.cache;
        let timeout = cache.timeout.as_secs();
        let mut cmd = Command::new("git");
        let mut config = vec![
            "protocol.allow=never".to_owned(),
            "credential.helper=".to_owned(),
            "core.askPass=".to_owned(),
            "http.followRedirects=false".to_owned(),
            format!("http.lowSpeedLimit={LOW_SPEED_BYTES}"),
            format!("http.lowSpeedTime={LOW_SPEED_SECS}"),
            // No prompt on the terminal ssh may find, and a connect timeout.
            format!("core.sshCommand=ssh -o BatchMode=yes -o ConnectTimeout={timeout}"),
        ];
        config.extend(
            cache
                .schemes
                .iter()
                .map(|scheme| format!("protocol.{scheme}.allow=always")),
        );
        config.extend(self.pins.iter().cloned());
        for setting in config {
            cmd.arg("-c").arg(setting);
        }
        if let Some(repo) = repo {
            cmd.arg("--git-dir").arg(repo);
        }
        for dir in [&cache.root, &cache.root.join("home")] {
            std::fs::create_dir_all(dir).map_err(|e| GitError::Io(e.to_string()))?;
        }
        cmd.args(args)
            .current_dir(&cache.root)
            .env_clear()
            .envs(cache.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Its own process group, so that the helpers it starts can be killed with it.
        #[cfg(unix)]
        cmd.process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| GitError::Io(format!("running git: {e}")))?;
        // Declared after `child`, so dropped before it: the group is killed while git
        // is not yet reaped and its id cannot have been reused.
        let mut group = ProcessGroup::of(&child);
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let run = async {
            tokio::join!(
                read_capped(&mut stdout, max_stdout.saturating_add(1)),
                read_capped(&mut stderr, MAX_STDERR_BYTES),
                child.wait(),
            )
        };
        let (stdout, stderr, status) = tokio::time::timeout_at(self.deadline, run)
            .await
            .map_err(|_| GitError::Timeout(timeout))?;
        let status = status.map_err(|e| GitError::Io(format!("running git: {e}")))?;
        // Git has exited and its output is closed: nothing of the group is left.
        group.disarm();
        Ok(Output {
            success: status.success(),
            stdout: stdout.map_err(|e| GitError::Io(e.to_string()))?,
            stderr: stderr.map_err(|e| GitError::Io(e.to_string()))?,
        })
    }
}

/// A scratch repository, removed when dropped (unless it was renamed into the cache).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// What a git command did.
struct Output {
    success: bool,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Reads `from` to its end, keeping the first `keep` bytes.
async fn read_capped(from: &mut (impl AsyncRead + Unpin), keep: usize) -> std::io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    (&mut *from)
        .take(u64::try_from(keep).unwrap_or(u64::MAX))
        .read_to_end(&mut kept)
        .await?;
    tokio::io::copy(from, &mut tokio::io::sink()).await?;
    Ok(kept)
}

/// Kills a git's process group when dropped, unless disarmed: `kill_on_drop` reaches
/// git only, and a remote helper stuck in a connection would outlive it.
struct ProcessGroup(Option<u32>);

impl ProcessGroup {
    fn of(child: &tokio::process::Child) -> Self {
        Self(child.id())
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(pid) = self
            .0
            .and_then(|id| i32::try_from(id).ok())
            .and_then(rustix::process::Pid::from_raw)
        {
            // It may be gone already (ESRCH): nothing to do then.
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Git's whole environment: the worker's `PATH` (to find `git`, its helpers and
/// `ssh`) and nothing else of `parent`, an empty home of git's own, no system or global
/// configuration, no prompts, and messages in English (they are shown to the owner).
fn git_env(
    parent: impl IntoIterator<Item = (OsString, OsString)>,
    home: &Path,
) -> Vec<(OsString, OsString)> {
    let path = parent.into_iter().find(|(name, _)| name == "PATH");
    path.into_iter()
        .chain(
            [
                ("HOME", home.as_os_str()),
                ("GIT_CONFIG_NOSYSTEM", "1".as_ref()),
                ("GIT_CONFIG_GLOBAL", "/dev/null".as_ref()),
                ("GIT_TERMINAL_PROMPT", "0".as_ref()),
                ("LC_ALL", "C".as_ref()),
            ]
            .map(|(name, value)| (name.into(), value.to_owned())),
        )
        .collect()
}

/// Checks a source without fetching it: the URL scheme is one of `jobs.git_schemes`,
/// its host is well formed and not a literal private address (names are resolved by
/// the worker), the ref and path are well formed. The gateway calls it before queueing
/// a job.
pub fn check_source(config: &JobsConfig, source: &GitSource) -> Result<(), GitError> {
    check(&config.git_schemes, &config.git_private_hosts, source).map(|_| ())
}

/// Where a git URL points.
#[derive(Debug, PartialEq, Eq)]
struct Remote {
    scheme: String,
    /// `None` for `file://`; an IPv6 address without its brackets.
    host: Option<String>,
    port: Option<u16>,
}

/// [`check_source`], returning where the URL points.
fn check(
    schemes: &[String],
    private_hosts: &[String],
    source: &GitSource,
) -> Result<Remote, GitError> {
    let remote = parse_url(schemes, &source.url)?;
    if let Some(host) = &remote.host
        && let Ok(ip) = host.parse::<IpAddr>()
        && !is_public(ip)
        && !is_listed(private_hosts, host)
    {
        return Err(GitError::Private(host.clone()));
    }
    let r = &source.reference;
    if r.is_empty()
        || r.len() > 255
        || r.starts_with('-')
        || r.contains("..")
        || r.chars()
            .any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c))
    {
        return Err(GitError::Invalid(format!("bad ref {r:?}")));
    }
    let p = &source.path;
    if p.is_empty()
        || p.len() > 1024
        || p.starts_with('/')
        || p.split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
        || p.chars().any(char::is_control)
    {
        return Err(GitError::Invalid(format!(
            "bad path {p:?}: a relative path inside the repository"
        )));
    }
    Ok(remote)
}

/// The scheme, host and port of `url`, refusing schemes not in `schemes` and
/// authorities that URL parsers could read differently (several `@`, a backslash, a
/// `?` or `#` before the path, percent-escapes or anything else unusual in the host):
/// the host checked must be the host git connects to.
fn parse_url(schemes: &[String], url: &str) -> Result<Remote, GitError> {
    let allowed = || GitError::Scheme(schemes.join(", "));
    let (scheme, rest) = url.split_once("://").ok_or_else(allowed)?;
    if rest.is_empty() || !schemes.iter().any(|s| s == scheme) {
        return Err(allowed());
    }
    let scheme = scheme.to_owned();
    if scheme == "file" {
        return Ok(Remote {
            scheme,
            host: None,
            port: None,
        });
    }
    let bad = || GitError::Invalid("bad host in the git URL".into());
    let authority = rest.split('/').next().unwrap_or_default();
    if authority
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "\\?#%".contains(c))
    {
        return Err(bad());
    }
    let host_port = match authority.rsplit_once('@') {
        Some((userinfo, _)) if userinfo.contains('@') => return Err(bad()),
        Some((_, host_port)) => host_port,
        None => authority,
    };
    let (host, port) = match host_port.strip_prefix('[') {
        Some(bracketed) => {
            let (v6, after) = bracketed.split_once(']').ok_or_else(bad)?;
            let v6: Ipv6Addr = v6.parse().map_err(|_| bad())?;
            let port = match after {
                "" => None,
                after => Some(after.strip_prefix(':').ok_or_else(bad)?),
            };
            (v6.to_string(), port)
        }
        None => {
            let (host, port) = match host_port.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            };
            let name_like = host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if host.is_empty() || !name_like || host.starts_with(['-', '.']) || host.ends_with('.')
            {
                return Err(bad());
            }
            (host.to_ascii_lowercase(), port)
        }
    };
    let port = port
        .map(|p| p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(bad))
        .transpose()?;
    Ok(Remote {
        scheme,
        host: Some(host),
        port,
    })
}

/// Whether `host` is in `jobs.git_private_hosts` (names case-insensitively, addresses
/// in any spelling).
fn is_listed(private_hosts: &[String], host: &str) -> bool {
    let ip = host.parse::<IpAddr>().ok();
    private_hosts.iter().any(|listed| {
        let listed = listed.trim().trim_start_matches('[').trim_end_matches(']');
        match (listed.parse::<IpAddr>(), ip) {
            (Ok(a), Some(b)) => a == b,
            _ => listed.eq_ignore_ascii_case(host),
        }
    })
}

/// Whether `ip` is an address of the public internet: not loopback, private,
/// link-local, unspecified, shared (carrier-grade NAT), multicast, broadcast or
/// reserved, nor an IPv6 address standing for such an IPv4 one (mapped, compatible,
/// NAT64).
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return is_public_v4(v4);
            }
            let first = v6.segments()[0];
            let unique_local = first & 0xfe00 == 0xfc00;
            let link_local = first & 0xffc0 == 0xfe80;
            let site_local = first & 0xffc0 == 0xfec0;
            !(v6.is_multicast() || unique_local || link_local || site_local)
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let this_network = a == 0;
    let shared = a == 100 && b & 0xc0 == 64;
    let protocol_assignments = a == 192 && b == 0 && c == 0;
    let benchmarking = a == 198 && b & 0xfe == 18;
    let reserved = a >= 240;
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || this_network
        || shared
        || protocol_assignments
        || benchmarking
        || reserved)
}

/// The IPv4 address an IPv6 one stands for: `::ffff:a.b.c.d`, `::a.b.c.d` (which
/// covers `::` and `::1`) and `64:ff9b::a.b.c.d`.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let [hi, lo] = [s[6], s[7]].map(|x| x.to_be_bytes());
    let v4 = Ipv4Addr::new(hi[0], hi[1], lo[0], lo[1]);
    match s[..6] {
        [0, 0, 0, 0, 0, 0] | [0x64, 0xff9b, 0, 0, 0, 0] => Some(v4),
        _ => None,
    }
}

/// The directory name of a URL's checkouts: the SHA-256 of the URL as written, in hex.
/// Two spellings of one repository are two caches (and each vouches for itself).
fn url_key(url: &str) -> String {
    Sha256::digest(url.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn is_commit_id(r: &str) -> bool {
    r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The last non-empty line git wrote to stderr (its error).
fn stderr_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("git failed")
        .trim()
        .to_owned()
}

/// Bytes of the files under `dir`.
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(url: &str, r: &str, path: &str) -> GitSource {
        GitSource {
            url: url.into(),
            reference: r.into(),
            path: path.into(),
        }
    }

    fn allowing(schemes: &[&str]) -> JobsConfig {
        JobsConfig {
            git_schemes: schemes.iter().map(|s| s.to_string()).collect(),
            ..JobsConfig::default()
        }
    }

    /// Runs `git` in `dir` with the test's own environment, panicking on failure.
    fn git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args([
                "-c",
                "commit.gpgsign=false",
                "-c",
                "protocol.file.allow=always",
            ])
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git is installed");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// A repository at `dir` whose `main` holds `a.js` = `source`; its `file://` URL and
    /// commit id.
    fn repository(dir: &Path, source: &str) -> (String, String) {
        std::fs::create_dir_all(dir).unwrap();
        git(dir, &["init", "-q", "-b", "main"]);
        std::fs::write(dir.join("a.js"), source).unwrap();
        git(dir, &["add", "."]);
        git(dir, &["commit", "-q", "-m", "a"]);
        let commit = git(dir, &["rev-parse", "HEAD"]).trim().to_owned();
        (format!("file://{}", dir.display()), commit)
    }

    #[test]
    fn only_allowed_schemes_and_sane_refs_and_paths_pass() {
        let https = allowing(&["https"]);
        assert!(check_source(&https, &src("https://h/r.git", "main", "a/b.js")).is_ok());
        for bad in [
            "file:///tmp/r",
            "ext::sh -c id",
            "-u/x",
            "h/r.git",
            "https://",
            "HTTPS://h/r.git",
        ] {
            assert!(
                matches!(
                    check_source(&https, &src(bad, "main", "a.js")),
                    Err(GitError::Scheme(_))
                ),
                "{bad}"
            );
        }
        for r in ["", "-x", "a..b", "a b", "x:y"] {
            assert!(
                check_source(&https, &src("https://h/r", r, "a.js")).is_err(),
                "{r}"
            );
        }
        for p in ["", "/etc/passwd", "../x.js", "a//b.js", "a/./b.js"] {
            assert!(
                check_source(&https, &src("https://h/r", "main", p)).is_err(),
                "{p}"
            );
        }
    }

    #[test]
    fn urls_whose_host_url_parsers_could_read_differently_are_refused() {
        let schemes = vec!["https".to_owned(), "ssh".to_owned()];
        let remote = parse_url(&schemes, "https://user:tok@GitHub.com:8443/o/r.git").unwrap();
        assert_eq!(remote.host.as_deref(), Some("github.com"));
        assert_eq!(remote.port, Some(8443));
        let remote = parse_url(&schemes, "ssh://git@[2001:DB8::1]:22/r").unwrap();
        assert_eq!(remote.host.as_deref(), Some("2001:db8::1"));
        for url in [
            "https://a@b@evil.example/r",
            "https://good.example\\@evil.example/r",
            "https://evil.example#@good.example/r",
            "https://evil.example?@good.example/r",
            "https://evil%2eexample/r",
            "https://-oProxyCommand=x/r",
            "https://.example/r",
            "https://example./r",
            "https:///r",
            "https://h:0/r",
            "https://h:65536/r",
            "https://h:x/r",
            "https://[::1/r",
            "https://[::1]x/r",
            "https://exa mple/r",
        ] {
            assert!(
                matches!(parse_url(&schemes, url), Err(GitError::Invalid(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn private_loopback_and_link_local_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "::1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "0.0.0.0",
            "::",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "140.82.121.3",
            "172.32.0.1",
            "100.128.0.1",
            "::ffff:1.1.1.1",
            "2606:4700::1111",
            "2a00:1450:4001::1",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn hosts_that_are_or_resolve_to_private_addresses_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = allowing(&["https", "http"]);
        let cache = GitCache::new(dir.path().join("git"), &config);
        let private = |r: Result<_, GitError>| matches!(r, Err(GitError::Private(_)));
        // Literal addresses: refused before the job is queued.
        for url in [
            "https://127.0.0.1/r.git",
            "https://[::1]/r.git",
            "http://10.0.0.8:8080/r.git",
            "https://192.168.1.1/r.git",
            "http://169.254.169.254/latest",
            "https://[fc00::1]/r.git",
            "https://[fe80::1]/r.git",
            "https://[::ffff:127.0.0.1]/r.git",
        ] {
            assert!(
                private(check_source(&config, &src(url, "main", "a.js"))),
                "{url}"
            );
            assert!(
                private(cache.load(&src(url, "main", "a.js")).await.map(|_| ())),
                "{url}"
            );
        }
        // Names: refused once the worker resolves them, as git's resolver would
        // (`127.1` and `2130706433` are 127.0.0.1 to it).
        for url in [
            "https://localhost/r.git",
            "http://LOCALHOST:8080/r.git",
            "https://127.1/r.git",
            "https://2130706433/r.git",
        ] {
            assert!(
                check_source(&config, &src(url, "main", "a.js")).is_ok(),
                "{url}"
            );
            assert!(
                private(cache.load(&src(url, "main", "a.js")).await.map(|_| ())),
                "{url}"
            );
        }
        // Unless the administrator allows them.
        let allowed = JobsConfig {
            git_private_hosts: vec!["Localhost".into(), "[::1]".into()],
            ..config
        };
        let cache = GitCache::new(dir.path().join("git"), &allowed);
        assert!(check_source(&allowed, &src("https://[::1]/r.git", "main", "a.js")).is_ok());
        for url in ["https://localhost/r.git", "https://[0::1]/r.git"] {
            let remote = check(
                &allowed.git_schemes,
                &allowed.git_private_hosts,
                &src(url, "main", "a.js"),
            )
            .unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            assert!(cache.admit(&remote, deadline).await.is_ok(), "{url}");
        }
    }

    #[tokio::test]
    async fn http_is_pinned_to_the_addresses_its_name_resolved_to() {
        let dir = tempfile::tempdir().unwrap();
        let config = JobsConfig {
            git_private_hosts: vec!["localhost".into()],
            ..allowing(&["https", "http", "ssh"])
        };
        let cache = GitCache::new(dir.path().join("git"), &config);
        let deadline = Instant::now() + Duration::from_secs(5);
        let pins = async |url: &str| {
            let remote = parse_url(&config.git_schemes, url).unwrap();
            cache.admit(&remote, deadline).await.unwrap()
        };
        for (url, port) in [
            ("https://localhost/r.git", 443),
            ("http://localhost:8080/r.git", 8080),
        ] {
            let pinned = pins(url).await;
            let prefix = format!("http.curloptResolve=localhost:{port}:");
            assert!(
                pinned.len() == 1
                    && pinned[0].starts_with(&prefix)
                    && pinned[0].contains("127.0.0.1"),
                "{url}: {pinned:?}"
            );
        }
        // ssh resolves the name again itself: nothing pins it (the documented gap).
        assert_eq!(pins("ssh://localhost/r.git").await, Vec::<String>::new());

        // And git connects where it is pinned, not where the name would take it (this
        // one resolves nowhere).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let pins = [format!(
            "http.curloptResolve=pinned.invalid:{port}:127.0.0.1"
        )];
        let one_second = JobsConfig {
            git_timeout_secs: 1,
            ..allowing(&["http"])
        };
        let git = Git {
            cache: &GitCache::new(dir.path().join("git"), &one_second),
            pins: &pins,
            deadline: Instant::now() + Duration::from_secs(1),
        };
        let url = format!("http://pinned.invalid:{port}/r.git");
        let source = src(&url, "main", "a.js");
        let (listing, accepted) = tokio::join!(
            git.resolve(&source),
            tokio::time::timeout(Duration::from_secs(5), listener.accept()),
        );
        assert!(
            accepted.is_ok_and(|a| a.is_ok()),
            "git connected to the pinned address"
        );
        assert_eq!(listing, Err(GitError::Timeout(1)));
    }

    #[tokio::test]
    async fn git_sees_none_of_the_workers_environment_or_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let (good, good_commit) = repository(&dir.path().join("good"), "export const v = 'good';");
        let (evil, evil_commit) = repository(&dir.path().join("evil"), "export const v = 'evil';");
        // What a worker's environment could hold that rewrites the job's URL to another
        // repository: command-line configuration passed down, or a home's .gitconfig.
        let rewrite = format!("url.{evil}.insteadOf");
        let home = dir.path().join("worker-home");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(
            home.join(".gitconfig"),
            format!("[url \"{evil}\"]\n\tinsteadOf = {good}\n"),
        )
        .unwrap();
        let hostile: [Vec<(&str, String)>; 3] = [
            vec![("GIT_CONFIG_PARAMETERS", format!("'{rewrite}'='{good}'"))],
            vec![
                ("GIT_CONFIG_COUNT", "1".into()),
                ("GIT_CONFIG_KEY_0", rewrite.clone()),
                ("GIT_CONFIG_VALUE_0", good.clone()),
            ],
            vec![("HOME", home.display().to_string())],
        ];
        let path = std::env::var_os("PATH").unwrap_or_default();
        for vars in hostile {
            // A git that inherits the variables does fetch the other repository...
            let listing = std::process::Command::new("git")
                .env_clear()
                .env("PATH", &path)
                .envs(vars.iter().map(|(k, v)| (k, v)))
                .args([
                    "-c",
                    "protocol.file.allow=always",
                    "ls-remote",
                    &good,
                    "main",
                ])
                .output()
                .unwrap();
            let listing = String::from_utf8_lossy(&listing.stdout);
            assert!(listing.starts_with(&evil_commit), "{vars:?}: {listing}");
            // ...the cache's git does not.
            let parent = std::env::vars_os().chain(vars.iter().map(|(k, v)| (k.into(), v.into())));
            let cache =
                GitCache::with_parent_env(dir.path().join("cache"), &allowing(&["file"]), parent);
            let module = cache.load(&src(&good, "main", "a.js")).await.unwrap();
            assert_eq!(module.commit, good_commit, "{vars:?}");
            assert_eq!(&*module.source, "export const v = 'good';", "{vars:?}");
        }
    }

    #[test]
    fn git_gets_the_path_and_nothing_else_of_the_workers_environment() {
        let parent = [
            ("PATH", "/usr/bin:/bin"),
            ("HOME", "/home/worker"),
            (
                "GIT_CONFIG_PARAMETERS",
                "'http.extraHeader'='Authorization: secret'",
            ),
            ("GIT_ASKPASS", "/usr/bin/askpass"),
            ("SSH_AUTH_SOCK", "/tmp/agent"),
            ("https_proxy", "http://proxy:3128"),
            ("CHORUS_JOBS_KEY", "00"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = git_env(parent, Path::new("/cache/home"));
        let env: Vec<(&str, &str)> = env
            .iter()
            .map(|(k, v)| (k.to_str().unwrap(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            env,
            [
                ("PATH", "/usr/bin:/bin"),
                ("HOME", "/cache/home"),
                ("GIT_CONFIG_NOSYSTEM", "1"),
                ("GIT_CONFIG_GLOBAL", "/dev/null"),
                ("GIT_TERMINAL_PROMPT", "0"),
                ("LC_ALL", "C"),
            ]
        );
    }

    #[tokio::test]
    async fn a_cached_commit_is_used_for_a_url_only_once_that_url_serves_it() {
        let dir = tempfile::tempdir().unwrap();
        let (private, commit) =
            repository(&dir.path().join("private"), "export const v = 'private';");
        let (other, _) = repository(&dir.path().join("other"), "export const v = 'other';");
        let cache = GitCache::new(dir.path().join("cache"), &allowing(&["file"]));
        let module = cache.load(&src(&private, &commit, "a.js")).await.unwrap();
        assert_eq!(&*module.source, "export const v = 'private';");
        let repos = dir.path().join("cache/repos");
        assert!(repos.join(url_key(&private)).join(&commit).is_dir());

        // The checkout is cached for its URL only: a URL that does not hold the commit,
        // or does not exist, gets an error, whoever knows the commit id.
        let missing = format!("file://{}/nothing-here", dir.path().display());
        for url in [&other, &missing] {
            let loaded = cache.load(&src(url, &commit, "a.js")).await;
            assert!(
                matches!(loaded, Err(GitError::Repository(_))),
                "{url}: {loaded:?}"
            );
        }
        assert_eq!(std::fs::read_dir(&repos).unwrap().count(), 1);

        // And the URL that served it is asked again each time: once the repository is
        // gone, neither its commit id nor its branch reaches the cached code.
        std::fs::rename(dir.path().join("private"), dir.path().join("moved")).unwrap();
        for r in [commit.as_str(), "main"] {
            let loaded = cache.load(&src(&private, r, "a.js")).await;
            assert!(
                matches!(loaded, Err(GitError::Repository(_))),
                "{r}: {loaded:?}"
            );
        }
        std::fs::rename(dir.path().join("moved"), dir.path().join("private")).unwrap();
        let again = cache.load(&src(&private, &commit, "a.js")).await.unwrap();
        assert_eq!(again.source, module.source);
    }
}

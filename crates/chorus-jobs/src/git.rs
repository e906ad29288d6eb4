//! Job code from git repositories, with the `git` command-line tool.
//!
//! A ref is resolved to a commit id with `git ls-remote` (a commit id is used as is);
//! a commit not yet cached is fetched (`--depth 1`) into a bare repository of its own
//! under `<data dir>/jobs/git/<commit id>`, and the module is read from it with
//! `git show <commit>:<path>`. Commits never change, so a cached one is never fetched
//! again. Only the configured URL schemes are allowed, to git itself as well
//! (`protocol.allow`), and a repository larger than the configured size is refused and
//! removed.
//!
//! Everything git does for one job shares one deadline (`jobs.git_timeout_secs`): a
//! remote that accepts a connection and never answers holds a worker, and every job
//! queued behind it, for that long at most. Git has no connect timeout of its own, so
//! the deadline is what bounds a connection that never completes (for every transport);
//! over HTTP, curl's low-speed limit also ends a transfer that stalls. A git that
//! overruns is killed with its whole process group (the remote helpers and `ssh` it
//! started), so nothing it left behind keeps the connection open.

use chorus_config::JobsConfig;
use chorus_core::model::GitSource;
use std::collections::HashMap;
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
    /// The ref or path is malformed.
    #[error("invalid git source: {0}")]
    Invalid(String),
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

/// Fetched repositories, by commit id, and the modules read from them.
pub struct GitCache {
    root: PathBuf,
    schemes: Vec<String>,
    max_bytes: u64,
    timeout: Duration,
    max_source_bytes: usize,
    modules: Mutex<HashMap<(String, String), Arc<str>>>,
}

/// Modules kept in memory; the repositories stay on disk.
const MODULES: usize = 1024;

/// Over HTTP, a transfer slower than this many bytes a second…
const LOW_SPEED_BYTES: u32 = 1000;
/// …for this long is aborted by git itself (curl's low-speed limit), well before the
/// deadline when the deadline is long.
const LOW_SPEED_SECS: u32 = 10;

/// Most of `git ls-remote`'s listing read; a remote advertising more is refused rather
/// than held in memory (the Linux kernel's repository lists about 1 MiB).
const MAX_LISTING_BYTES: usize = 8 << 20;

/// Most of git's error output kept (only its last line is shown).
const MAX_STDERR_BYTES: usize = 64 << 10;

impl GitCache {
    /// A cache under `root` with the git settings of `config`: allowed schemes, largest
    /// repository, deadline, largest module.
    pub fn new(root: PathBuf, config: &JobsConfig) -> Self {
        Self {
            root,
            schemes: config.git_schemes.clone(),
            max_bytes: config.git_max_bytes,
            timeout: Duration::from_secs(config.git_timeout_secs),
            max_source_bytes: config.max_source_bytes,
            modules: Mutex::new(HashMap::new()),
        }
    }

    /// Checks a source without fetching it: the scheme is allowed, the ref and path are
    /// well formed. The gateway calls it before queueing a job.
    pub fn check(&self, source: &GitSource) -> Result<(), GitError> {
        check_source(&self.schemes, source)
    }

    /// The module `source` names, fetching its repository if its commit is not cached.
    pub async fn load(&self, source: &GitSource) -> Result<Module, GitError> {
        self.check(source)?;
        let deadline = Instant::now() + self.timeout;
        let commit = if is_commit_id(&source.reference) {
            source.reference.to_ascii_lowercase()
        } else {
            self.resolve(source, deadline).await?
        };
        let cache_key = (commit.clone(), source.path.clone());
        if let Some(source) = self.cached(&cache_key) {
            return Ok(Module { commit, source });
        }
        let repo = self.root.join(&commit);
        if !repo.exists() {
            self.fetch(source, &commit, &repo, deadline).await?;
        }
        let text = self.read(&repo, &commit, &source.path, deadline).await?;
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

    fn cached(&self, key: &(String, String)) -> Option<Arc<str>> {
        self.modules
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// The commit a branch or tag names.
    async fn resolve(&self, source: &GitSource, deadline: Instant) -> Result<String, GitError> {
        let args = ["ls-remote", "--", &source.url];
        let out = self.git(None, &args, deadline, MAX_LISTING_BYTES).await?;
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

    /// Fetches `commit` into `repo`, through a temporary directory so that a cached
    /// repository is always complete.
    async fn fetch(
        &self,
        source: &GitSource,
        commit: &str,
        repo: &Path,
        deadline: Instant,
    ) -> Result<(), GitError> {
        let io = |e: std::io::Error| GitError::Io(e.to_string());
        std::fs::create_dir_all(&self.root).map_err(io)?;
        let tmp = self
            .root
            .join(format!("tmp-{}", uuid::Uuid::now_v7().simple()));
        let result = async {
            let init = ["init", "--bare", "-q", &tmp.to_string_lossy()];
            let out = self.git(None, &init, deadline, 0).await?;
            if !out.success {
                return Err(GitError::Io(stderr_line(&out.stderr)));
            }
            let args = ["fetch", "-q", "--depth", "1", "--", &source.url, commit];
            let out = self.git(Some(&tmp), &args, deadline, 0).await?;
            if !out.success {
                return Err(GitError::Repository(stderr_line(&out.stderr)));
            }
            if dir_size(&tmp) > self.max_bytes {
                return Err(GitError::TooLarge(self.max_bytes));
            }
            match std::fs::rename(&tmp, repo) {
                // Another worker fetched the same commit meanwhile: theirs is as good.
                Err(_) if repo.exists() => Ok(()),
                other => other.map_err(io),
            }
        }
        .await;
        if tmp.exists() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    async fn read(
        &self,
        repo: &Path,
        commit: &str,
        path: &str,
        deadline: Instant,
    ) -> Result<String, GitError> {
        let spec = format!("{commit}:{path}");
        let out = self
            .git(
                Some(repo),
                &["show", &spec],
                deadline,
                self.max_source_bytes,
            )
            .await?;
        if !out.success {
            return Err(GitError::Path {
                path: path.to_owned(),
                commit: commit.to_owned(),
            });
        }
        if out.stdout.len() > self.max_source_bytes {
            return Err(GitError::SourceTooLarge(self.max_source_bytes));
        }
        String::from_utf8(out.stdout)
            .map_err(|_| GitError::Invalid(format!("{path:?} is not UTF-8 text")))
    }

    /// Runs `git` with only the allowed protocols and no prompts, killed (with the
    /// processes it started) at `deadline` or when dropped. Keeps the first
    /// `max_stdout + 1` bytes of its output, so that a caller can tell "more than
    /// `max_stdout`" without holding it all; the rest is read and dropped so that git
    /// never blocks on a full pipe.
    async fn git(
        &self,
        repo: Option<&Path>,
        args: &[&str],
        deadline: Instant,
        max_stdout: usize,
    ) -> Result<Output, GitError> {
        let mut cmd = Command::new("git");
        cmd.arg("-c").arg("protocol.allow=never");
        for scheme in &self.schemes {
            cmd.arg("-c").arg(format!("protocol.{scheme}.allow=always"));
        }
        cmd.arg("-c")
            .arg(format!("http.lowSpeedLimit={LOW_SPEED_BYTES}"))
            .arg("-c")
            .arg(format!("http.lowSpeedTime={LOW_SPEED_SECS}"));
        if let Some(repo) = repo {
            cmd.arg("--git-dir").arg(repo);
        }
        std::fs::create_dir_all(&self.root).map_err(|e| GitError::Io(e.to_string()))?;
        cmd.args(args)
            .current_dir(&self.root)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
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
        let (stdout, stderr, status) = tokio::time::timeout_at(deadline, run)
            .await
            .map_err(|_| GitError::Timeout(self.timeout.as_secs()))?;
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

/// Checks a source without fetching it: the URL scheme is one of `schemes`, the ref and
/// path are well formed.
pub fn check_source(schemes: &[String], source: &GitSource) -> Result<(), GitError> {
    let allowed = || GitError::Scheme(schemes.join(", "));
    let (scheme, rest) = source.url.split_once("://").ok_or_else(allowed)?;
    if rest.is_empty() || !schemes.iter().any(|s| s == scheme) {
        return Err(allowed());
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
    Ok(())
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

    #[test]
    fn only_allowed_schemes_and_sane_refs_and_paths_pass() {
        let https = vec!["https".to_owned()];
        assert!(check_source(&https, &src("https://h/r.git", "main", "a/b.js")).is_ok());
        for bad in [
            "file:///tmp/r",
            "ext::sh -c id",
            "-u/x",
            "h/r.git",
            "https://",
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
}

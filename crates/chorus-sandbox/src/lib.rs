//! The JavaScript sandbox that runs users' scripts (message hooks) and jobs.
//!
//! A script is an ES module that exports functions (`onIncoming`, `onOutgoing`, `main`,
//! ...). The stages call them through [`Sandbox::call`] or, for a batch of messages,
//! [`Sandbox::call_batch`]; the API checks a script with [`Sandbox::check`] before it
//! is saved.
//!
//! # Layout
//!
//! - this file: the public API ([`Sandbox`], [`Call`], [`Kv`], [`RunError`], ...).
//! - `worker`: the fixed pool of OS threads that run the calls, and how a batch is
//!   split over them.
//! - `pool`: the idle instances, kept per key, least recently used evicted first.
//! - `instance`: one QuickJS runtime with the module loaded, the `ctx` object, the limits,
//!   and the conversions between JSON and JavaScript values.
//!
//! # Design
//!
//! **Engine.** [rquickjs] (QuickJS-ng) was chosen after measuring it against Lua, Luau and
//! WebAssembly: a live instance is ~100 KB of QuickJS heap (~180 KB resident), creating
//! one takes 100-200 µs, a hook call a few µs, JavaScript is what bot authors already
//! write, and every limit is enforced inside the engine: the interrupt that ends a script
//! cannot be caught by `try`, and it also reaches regular expressions, which run in C.
//!
//! **Instances.** An instance is one QuickJS runtime with one context and the module
//! evaluated in it, so a script's top-level state (`let count = 0`) lives as long as its
//! instance. Instances are pooled by the call's owner and a key chosen by the caller
//! (`script:<id>:<version>`) and reused only for that owner and key; an instance serves
//! one call at a time, and when every instance of a key is busy another is created. An
//! instance that hit a limit (time, memory, stack) is dropped rather than pooled: its
//! heap may be half-built, and a fresh one costs less than reasoning about it.
//!
//! **Idle memory.** Module state is kept on a best-effort basis, within caps: an instance
//! is measured each time it goes back to the pool, and one that grew beyond
//! [`SandboxConfig::max_instance_bytes`] is dropped; the idle instances of one owner stay
//! within [`SandboxConfig::max_owner_bytes`] (the owner's least recently used go first,
//! so one user cannot push out everybody else's), and all of them within
//! [`SandboxConfig::max_pooled`] and [`SandboxConfig::max_pooled_bytes`] (the least
//! recently used go first). Before issue 23 only the count was bounded: eight jobs each
//! keeping a 240 MiB array raised the process from 175 MB to 2.1 GB for as long as they
//! stayed pooled. A dropped runtime's memory goes back to the C allocator, and glibc
//! gives it back to the system. Measured with the benchmark `memory` (release, this
//! 2-core machine): eight calls each keeping a 240 MiB array leave the process at
//! 1926 MB with only the count bounded, 5 MB with the default caps (such arrays are
//! mmapped blocks, unmapped when freed); eight each keeping a million small objects
//! (~190 MB each) leave 11 MB in five runs of six, 66 MB in one, where glibc kept part
//! of a freed heap for later allocations. `malloc_trim` would return that part too, but
//! calling it takes `unsafe` (forbidden here) and no safe crate wraps it.
//!
//! **Limits.** Each call sets the runtime's memory limit and a deadline, an atomic that
//! the interrupt handler compares with the clock; the stack is limited to 256 KiB so that
//! deep recursion is a clean `RangeError`. Time spent in host calls (`ctx.kv.*`) moves
//! the deadline, so a slow store does not count against the script, but only up to
//! [`Limits::kv_time`]: whatever the store does, a call ends by `cpu + kv_time` of
//! wall-clock time (the store is given that instant as its deadline), and it makes at
//! most [`Limits::kv_calls`] host calls. Loading a module runs its top-level code under
//! [`LOAD_BUDGET`].
//!
//! **Threads.** Script calls are synchronous and CPU-bound, so they never run on the
//! async workers: [`SandboxConfig::threads`] OS threads take jobs from one channel, and
//! the async caller waits on a oneshot. A round trip through the channel costs more than
//! a hook call, which is why [`Sandbox::call_batch`] sends a whole batch at once.
//!
//! **Isolation.** Contexts get the ECMAScript builtins only (no `console`, timers, module
//! loader, file or network access, `WebAssembly`, ...); the one way out is the `ctx`
//! object passed to hooks, whose `kv` reaches only the store the caller provides.
//!
//! [rquickjs]: https://docs.rs/rquickjs

mod instance;
mod pool;
mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::instance::Instance;
use crate::pool::{Caps, Pool};
use crate::worker::Job;

/// CPU budget for a module's top-level code, when it is loaded or checked.
pub const LOAD_BUDGET: Duration = Duration::from_millis(100);

/// Most log lines a call keeps; later ones are dropped and a last line says so.
pub const MAX_LOG_LINES: usize = 100;

/// Most characters a log line keeps.
pub const MAX_LOG_LINE_CHARS: usize = 1000;

/// The line that ends the logs of a call whose logs were cut.
pub const LOGS_TRUNCATED: &str = "… (logs truncated)";

/// How the sandbox is sized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// OS threads that run scripts (at least one is started).
    pub threads: usize,
    /// Idle instances kept in total, over all owners; the least recently used go first.
    pub max_pooled: usize,
    /// Bytes of the idle instances in total; the least recently used go first.
    pub max_pooled_bytes: usize,
    /// Bytes of one owner's idle instances; the owner's least recently used go first.
    pub max_owner_bytes: usize,
    /// Bytes an instance may use when it goes back to the pool; a larger one (module
    /// state that grew) is dropped instead, and the next call starts afresh.
    pub max_instance_bytes: usize,
}

impl Default for SandboxConfig {
    /// One thread per available core; up to 4096 idle instances and 256 MiB in total,
    /// 32 MiB per owner and 16 MiB per instance (a hook keeping a counter uses ~110 KB).
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(1, usize::from),
            max_pooled: 4096,
            max_pooled_bytes: 256 << 20,
            max_owner_bytes: 32 << 20,
            max_instance_bytes: 16 << 20,
        }
    }
}

/// What one call may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Memory of the instance's runtime (module state included).
    pub memory_bytes: usize,
    /// Time the script may run, not counting host calls (up to `kv_time` of them).
    pub cpu: Duration,
    /// Time the call's host calls (`ctx.kv.*`) may take on top of `cpu`: the call ends
    /// by `cpu + kv_time` of wall-clock time, whatever they took, with
    /// [`RunError::Timeout`].
    pub kv_time: Duration,
    /// Most host calls in one call: the one after them throws, and the call fails with
    /// [`RunError::KvCalls`] whatever the script does next.
    pub kv_calls: u32,
}

impl Default for Limits {
    /// 4 MiB, 10 ms, 100 ms more for host calls, and 1000 of them (Cloudflare Workers
    /// allow 1000 KV operations per invocation).
    fn default() -> Self {
        Self {
            memory_bytes: 4 << 20,
            cpu: Duration::from_millis(10),
            kv_time: Duration::from_millis(100),
            kv_calls: 1000,
        }
    }
}

/// A key-value store that a script reaches through `ctx.kv`.
///
/// Called synchronously on a sandbox thread while the script waits. The time spent here
/// is not counted against the call's CPU budget, up to [`Limits::kv_time`]; `deadline`
/// is when the call's time is up whatever the store does: answer by then (an `Err`
/// is fine), for the sandbox cannot interrupt a store that does not. An `Err` becomes
/// a JavaScript `Error` with that message, which the script can catch.
pub trait Kv: Send {
    /// The value stored under `key`, if any (`ctx.kv.get` returns `null` otherwise).
    fn get(&mut self, key: &str, deadline: Instant) -> Result<Option<serde_json::Value>, String>;
    /// Stores `value` under `key`.
    fn set(&mut self, key: &str, value: serde_json::Value, deadline: Instant)
    -> Result<(), String>;
    /// Removes `key`, if present.
    fn delete(&mut self, key: &str, deadline: Instant) -> Result<(), String>;
}

/// One call of a function exported by a script.
pub struct Call {
    /// Whose code this is, e.g. the user id: instances are reused only for the same
    /// owner, and the idle instances of one owner are bounded by
    /// [`SandboxConfig::max_owner_bytes`].
    pub owner: String,
    /// Pool key chosen by the caller, e.g. `script:<id>:<version>`: instances are reused
    /// only for the same owner and key, so it must change whenever `source` does.
    pub key: String,
    /// The ES module.
    pub source: Arc<str>,
    /// The exported function to call, e.g. `onIncoming`.
    pub function: String,
    /// The arguments, each converted from JSON to a JavaScript value.
    pub args: Vec<serde_json::Value>,
    /// Whether to append the `ctx` object (`log`, `now`, `kv`) as the last argument.
    pub with_ctx: bool,
    /// The store behind `ctx.kv`; without one, `ctx.kv` calls throw "kv is not available".
    pub kv: Option<Box<dyn Kv>>,
    /// What the call may use.
    pub limits: Limits,
    /// Largest JSON-serialized return value accepted.
    pub max_output_bytes: usize,
}

/// A call that returned.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The returned value, or the value its promise resolved to; `Null` for `undefined`.
    pub value: serde_json::Value,
    /// Lines logged with `ctx.log`.
    pub logs: Vec<String>,
    /// Time the call took on its sandbox thread, loading the module included.
    pub elapsed: Duration,
}

/// A call that failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// Why.
    pub error: RunError,
    /// Lines logged with `ctx.log` before it failed.
    pub logs: Vec<String>,
    /// Time the call took on its sandbox thread.
    pub elapsed: Duration,
}

impl Failure {
    fn unavailable(why: &str) -> Self {
        Self {
            error: RunError::Unavailable(why.to_owned()),
            logs: Vec::new(),
            elapsed: Duration::ZERO,
        }
    }
}

/// Why a script could not be loaded or a call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RunError {
    /// The module did not load: a syntax error, an import (there is no module loader),
    /// or its top-level code threw. `line` and `column` are 1-based, when known.
    #[error("compile error: {message}{}", location(*line, *column))]
    Compile {
        /// What QuickJS said, e.g. "SyntaxError: expecting ';'".
        message: String,
        /// Line of the error in the source.
        line: Option<u32>,
        /// Column of the error in the source.
        column: Option<u32>,
    },
    /// The module does not export a function with that name.
    #[error("the script does not export a function named {0:?}")]
    Missing(String),
    /// The script threw: `String(e)` for errors, the JSON or string form of other values.
    #[error("the script threw: {0}")]
    Thrown(String),
    /// The CPU budget ran out, or the wall-clock cap (`cpu + kv_time`) passed.
    #[error("the script ran out of time")]
    Timeout,
    /// The memory limit was reached.
    #[error("the script ran out of memory")]
    OutOfMemory,
    /// The script made more host calls (`ctx.kv.*`) than [`Limits::kv_calls`].
    #[error("the script made more than {max} ctx.kv calls")]
    KvCalls {
        /// The limit.
        max: u32,
    },
    /// The returned value is not JSON-representable, or too large.
    #[error("unusable return value: {0}")]
    Output(String),
    /// The sandbox is shutting down or failed internally.
    #[error("sandbox unavailable: {0}")]
    Unavailable(String),
}

fn location(line: Option<u32>, column: Option<u32>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(" (line {line}, column {column})"),
        (Some(line), None) => format!(" (line {line})"),
        _ => String::new(),
    }
}

impl RunError {
    /// A stable code for the wire and for metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Compile { .. } => "compile",
            Self::Missing(_) => "missing",
            Self::Thrown(_) => "thrown",
            Self::Timeout => "timeout",
            Self::OutOfMemory => "out_of_memory",
            Self::KvCalls { .. } => "kv_calls",
            Self::Output(_) => "output",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

/// The sandbox: a pool of threads running pooled script instances. Cheap to clone; the
/// threads stop once every clone is dropped.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: mpsc::Sender<Job>,
    pool: Arc<Mutex<Pool<Instance>>>,
    threads: usize,
}

impl Sandbox {
    /// Starts `config.threads` sandbox threads (at least one).
    pub fn new(config: SandboxConfig) -> Self {
        let pool = Arc::new(Mutex::new(Pool::new(Caps {
            instances: config.max_pooled,
            bytes: config.max_pooled_bytes,
            owner_bytes: config.max_owner_bytes,
            instance_bytes: config.max_instance_bytes,
        })));
        let (jobs, receiver) = mpsc::channel();
        let threads = worker::spawn(config.threads.max(1), receiver, &pool);
        Self {
            inner: Arc::new(Inner {
                jobs,
                pool,
                threads: threads.max(1),
            }),
        }
    }

    /// Compiles the ES module `source` (in a throwaway runtime, default limits plus a
    /// [`LOAD_BUDGET`] for the top-level code) and returns the names it exports as
    /// functions, sorted.
    pub async fn check(&self, source: &str) -> Result<Vec<String>, RunError> {
        let (reply, answer) = oneshot::channel();
        let job = Job::Check {
            source: Arc::from(source),
            reply,
        };
        if self.inner.jobs.send(job).is_err() {
            return Err(RunError::Unavailable(STOPPED.to_owned()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(RunError::Unavailable(FAILED.to_owned())))
    }

    /// Runs `call.function` exported by the module `call.source` with `call.args`, under
    /// `call.limits`, on an idle instance of `call.key` or a new one.
    pub async fn call(&self, call: Call) -> Result<Outcome, Failure> {
        let (reply, answer) = oneshot::channel();
        if self.inner.jobs.send(Job::Call { call, reply }).is_err() {
            return Err(Failure::unavailable(STOPPED));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(Failure::unavailable(FAILED)))
    }

    /// Runs a batch of calls and returns their results in the same order.
    ///
    /// Calls with the same owner and key run one after another, in order, on one
    /// instance (so each sees the module state the previous one left); different keys
    /// are spread over the threads. One channel round trip per thread used instead of
    /// one per call.
    pub async fn call_batch(&self, calls: Vec<Call>) -> Vec<Result<Outcome, Failure>> {
        let total = calls.len();
        let mut groups: Vec<Vec<(usize, Call)>> = Vec::new();
        let mut group_of: HashMap<(String, String), usize> = HashMap::new();
        for (index, call) in calls.into_iter().enumerate() {
            let slot = (call.owner.clone(), call.key.clone());
            if let Some(&group) = group_of.get(&slot) {
                groups[group].push((index, call));
            } else {
                group_of.insert(slot, groups.len());
                groups.push(vec![(index, call)]);
            }
        }
        // Largest groups first, each onto the least loaded part: one part per thread.
        groups.sort_by_key(|group| std::cmp::Reverse(group.len()));
        let mut parts: Vec<Vec<(usize, Call)>> = Vec::new();
        parts.resize_with(self.inner.threads.min(groups.len()), Vec::new);
        for group in groups {
            if let Some(part) = parts.iter_mut().min_by_key(|part| part.len()) {
                part.extend(group);
            }
        }
        let mut answers = Vec::with_capacity(parts.len());
        for calls in parts {
            let (reply, answer) = oneshot::channel();
            if self.inner.jobs.send(Job::Batch { calls, reply }).is_ok() {
                answers.push(answer);
            }
        }
        let mut results: Vec<Option<Result<Outcome, Failure>>> = Vec::new();
        results.resize_with(total, || None);
        for answer in answers {
            for (index, result) in answer.await.unwrap_or_default() {
                results[index] = Some(result);
            }
        }
        results
            .into_iter()
            .map(|result| result.unwrap_or_else(|| Err(Failure::unavailable(FAILED))))
            .collect()
    }

    /// Idle instances currently pooled, and how many bytes they use (the sum of what
    /// each runtime held from the allocator when it was put back).
    pub fn pooled(&self) -> (usize, usize) {
        let pool = self
            .inner
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (pool.len(), pool.bytes())
    }
}

const STOPPED: &str = "the sandbox threads have stopped";
const FAILED: &str = "a sandbox thread failed during the call";

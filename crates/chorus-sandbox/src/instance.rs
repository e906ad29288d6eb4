//! One script instance: a QuickJS runtime and context with the module evaluated, the
//! `ctx` object, the limits, and the conversions between JSON and JavaScript values.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rquickjs::context::intrinsic::{
    Date, Eval, Json, MapSet, Promise as PromiseIntrinsic, Proxy, RegExp, RegExpCompiler,
    TypedArrays,
};
use rquickjs::function::{Args, Rest};
use rquickjs::promise::PromiseState;
use rquickjs::{
    Coerced, Context, Ctx, Error as JsError, Exception, FromJs, Function, Module, Object, Promise,
    Runtime, Value,
};

use crate::{Kv, LOAD_BUDGET, LOGS_TRUNCATED, Limits, MAX_LOG_LINE_CHARS, MAX_LOG_LINES, RunError};

/// The builtins a context gets: ECMAScript only. `Eval` is needed to evaluate any code
/// (modules included); left out are `performance`, `WeakRef`/`FinalizationRegistry`
/// (whose callbacks would run in some later call) and `DOMException`.
type Intrinsics = (
    Date,
    Eval,
    RegExpCompiler,
    RegExp,
    Json,
    Proxy,
    MapSet,
    TypedArrays,
    PromiseIntrinsic,
);

/// Globals QuickJS-ng adds to every context that are not ECMAScript. (QuickJS keeps its
/// own references to what it needs: removing the global bindings changes nothing else.)
const NON_STANDARD_GLOBALS: &[&str] = &["queueMicrotask", "InternalError"];

/// Stack QuickJS may use, so that deep recursion is a `RangeError`, not a crash.
pub(crate) const MAX_STACK_BYTES: usize = 256 << 10;

/// Longest error message or thrown value kept, in characters.
const MAX_ERROR_CHARS: usize = 1000;

/// Nesting depth under which JSON values are built value by value; deeper parts go
/// through `JSON.parse`, whose recursion QuickJS bounds.
const MAX_DIRECT_DEPTH: usize = 16;

/// The module's name in stack traces: errors read `user:LINE:COLUMN`.
const MODULE_NAME: &str = "user";

/// A loaded script, ready to be called.
///
/// No `Persistent` handles are kept: the module namespace and the `ctx` object live in
/// the runtime's userdata, which rquickjs frees before it frees the runtime.
pub(crate) struct Instance {
    context: Context,
    runtime: Runtime,
    host: Arc<Host>,
    source: Arc<str>,
}

/// Values kept in the runtime's userdata: the module namespace, then the `ctx` object.
type Slots<'js> = Vec<Object<'js>>;
const NAMESPACE: usize = 0;
const CTX_OBJECT: usize = 1;

/// What a call produced, and whether the instance may be reused.
pub(crate) struct Ran {
    pub(crate) result: Result<serde_json::Value, RunError>,
    pub(crate) logs: Vec<String>,
    pub(crate) reusable: bool,
}

impl Instance {
    /// Creates a runtime under `memory_bytes` and evaluates `source` in it, with
    /// [`LOAD_BUDGET`] for its top-level code.
    pub(crate) fn load(source: &Arc<str>, memory_bytes: usize) -> Result<Self, RunError> {
        let runtime = Runtime::new().map_err(|error| internal(&error))?;
        runtime.set_memory_limit(memory_bytes);
        runtime.set_max_stack_size(MAX_STACK_BYTES);
        let host = Arc::new(Host::default());
        let interrupt = Arc::clone(&host);
        runtime.set_interrupt_handler(Some(Box::new(move || interrupt.expired())));
        let context = Context::custom::<Intrinsics>(&runtime).map_err(|error| internal(&error))?;
        host.arm(LOAD_BUDGET, Duration::ZERO);
        context.with(|ctx| evaluate(&ctx, &host, source))?;
        Ok(Self {
            context,
            runtime,
            host,
            source: Arc::clone(source),
        })
    }

    /// Whether this instance was loaded from `source`.
    pub(crate) fn runs(&self, source: &Arc<str>) -> bool {
        Arc::ptr_eq(&self.source, source) || *self.source == **source
    }

    /// Bytes the runtime holds from the allocator now (QuickJS's `malloc_size`, the
    /// number its memory limit bounds; `memory_used_size` is an estimate that counted a
    /// 1 MiB string twice).
    ///
    /// QuickJS computes it by walking the heap, values of arrays included, so its cost
    /// grows with what the module keeps: measured (release, this machine) 2.3 µs for a
    /// hook keeping a counter, about what a hook call costs; 0.3 ms with an array of
    /// 1e5 numbers; 13 ms with 1e6 numbers; 18 ms with 1e5 small objects (20 MB). Hence
    /// it is measured once each time an instance goes back to the pool, not after every
    /// call, and never under the pool's lock.
    pub(crate) fn measure(&self) -> usize {
        usize::try_from(self.runtime.memory_usage().malloc_size).unwrap_or(usize::MAX)
    }

    /// The names the module exports as functions, sorted.
    pub(crate) fn exports(&self) -> Result<Vec<String>, RunError> {
        self.host.arm(LOAD_BUDGET, Duration::ZERO);
        self.context.with(|ctx| {
            let namespace = slot(&ctx, NAMESPACE)?;
            let mut names = Vec::new();
            for name in namespace.keys::<String>() {
                let name = name.map_err(|error| fault(&ctx, &self.host, error).into_load())?;
                match namespace.get::<_, Value>(name.as_str()) {
                    Ok(value) if value.is_function() => names.push(name),
                    Ok(_) => {}
                    // An export still in its temporal dead zone is not a function.
                    Err(_) => drop(ctx.catch()),
                }
            }
            names.sort();
            Ok(names)
        })
    }

    /// Calls `function` with `args` (and the `ctx` object last if `with_ctx`).
    pub(crate) fn call(&mut self, call: Invocation<'_>, kv: Option<Box<dyn Kv>>) -> Ran {
        self.runtime.set_memory_limit(call.limits.memory_bytes);
        self.host.begin(kv, &call.limits);
        let outcome = self.context.with(|ctx| invoke(&ctx, &self.host, &call));
        let logs = self.host.end();
        // A stopped run failed whatever it returned: it may have caught the error a
        // refused `ctx.kv` call threw and returned before the interrupt handler ran.
        let outcome = match self.host.stop_fault() {
            Some(stopped) => Err(stopped),
            None => outcome,
        };
        let (result, reusable) = match outcome {
            Ok(value) => (Ok(value), true),
            Err(fault) => {
                let reusable = fault.reusable();
                (Err(fault.into_call()), reusable)
            }
        };
        Ran {
            result,
            logs,
            reusable,
        }
    }
}

/// What one call needs besides the store.
pub(crate) struct Invocation<'a> {
    pub(crate) function: &'a str,
    pub(crate) args: &'a [serde_json::Value],
    pub(crate) with_ctx: bool,
    pub(crate) limits: Limits,
    pub(crate) max_output_bytes: usize,
}

/// State shared by the instance, its interrupt handler and the `ctx` functions.
#[derive(Default)]
struct Host {
    /// Nanoseconds since [`epoch`] after which the interrupt handler stops the script:
    /// the CPU budget after the start, moved by the time spent in `ctx.kv` calls, but
    /// never past `cap`.
    deadline: AtomicU64,
    /// Nanoseconds since [`epoch`] by which the run ends whatever its `ctx.kv` calls
    /// took: the CPU budget plus [`Limits::kv_time`] after the start.
    cap: AtomicU64,
    /// Why the run was stopped ([`Stop`] as a number), 0 while it may go on. Once set,
    /// the interrupt handler stops the script and `ctx.kv` calls are refused.
    stop: AtomicU8,
    call: Mutex<CallState>,
}

#[derive(Default)]
struct CallState {
    kv: Option<Box<dyn Kv>>,
    logs: Vec<String>,
    logs_truncated: bool,
    /// `ctx.kv` calls made in this run.
    kv_calls: u32,
    /// The most this run may make.
    max_kv_calls: u32,
}

/// Why a run was stopped before it returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Stop {
    /// Its deadline passed: the CPU budget, or the wall-clock cap.
    Deadline = 1,
    /// It tried one `ctx.kv` call more than its limit.
    KvCalls = 2,
    /// The caller's store panicked: the instance is dropped.
    KvPanicked = 3,
}

impl Host {
    /// Starts a run with `budget` of CPU and `kv_time` more for its `ctx.kv` calls.
    fn arm(&self, budget: Duration, kv_time: Duration) {
        self.stop.store(0, Ordering::Relaxed);
        let deadline = now_nanos().saturating_add(nanos(budget));
        self.deadline.store(deadline, Ordering::Relaxed);
        self.cap
            .store(deadline.saturating_add(nanos(kv_time)), Ordering::Relaxed);
    }

    fn begin(&self, kv: Option<Box<dyn Kv>>, limits: &Limits) {
        let mut state = self.state();
        state.kv = kv;
        state.logs.clear();
        state.logs_truncated = false;
        state.kv_calls = 0;
        state.max_kv_calls = limits.kv_calls;
        drop(state);
        self.arm(limits.cpu, limits.kv_time);
    }

    /// Drops the store and returns the logs.
    fn end(&self) -> Vec<String> {
        let mut state = self.state();
        state.kv = None;
        let mut logs = std::mem::take(&mut state.logs);
        if std::mem::take(&mut state.logs_truncated) {
            logs.push(LOGS_TRUNCATED.to_owned());
        }
        logs
    }

    /// The interrupt handler: QuickJS calls it every few thousand operations (10,000
    /// in QuickJS-ng: a few microseconds of script).
    fn expired(&self) -> bool {
        if self.stopped().is_none() && now_nanos() > self.deadline.load(Ordering::Relaxed) {
            self.halt(Stop::Deadline);
        }
        self.stopped().is_some()
    }

    /// Stops the run for `why`, unless it was stopped already (the first reason stays).
    fn halt(&self, why: Stop) {
        let _ = self
            .stop
            .compare_exchange(0, why as u8, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn stopped(&self) -> Option<Stop> {
        match self.stop.load(Ordering::Relaxed) {
            1 => Some(Stop::Deadline),
            2 => Some(Stop::KvCalls),
            3 => Some(Stop::KvPanicked),
            _ => None,
        }
    }

    /// What the run failed with, if it was stopped.
    fn stop_fault(&self) -> Option<Fault> {
        Some(match self.stopped()? {
            Stop::Deadline => Fault::Timeout,
            Stop::KvCalls => Fault::KvCalls(self.state().max_kv_calls),
            Stop::KvPanicked => Fault::Internal(KV_PANICKED.to_owned()),
        })
    }

    fn timed_out(&self) -> bool {
        self.stopped().is_some() || now_nanos() > self.deadline.load(Ordering::Relaxed)
    }

    /// The lock is never held while calling the store or JavaScript, so it can only be
    /// poisoned by a panic in this module; the state is plain data either way.
    fn state(&self) -> MutexGuard<'_, CallState> {
        self.call.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn log(&self, line: impl FnOnce() -> String) {
        if self.state().logs.len() >= MAX_LOG_LINES {
            self.state().logs_truncated = true;
            return;
        }
        let mut line = line();
        let mut state = self.state();
        if let Some((cut, _)) = line.char_indices().nth(MAX_LOG_LINE_CHARS) {
            line.truncate(cut);
            state.logs_truncated = true;
        }
        if state.logs.len() < MAX_LOG_LINES {
            state.logs.push(line);
        } else {
            state.logs_truncated = true;
        }
    }

    /// Runs `f` on the store, giving it the run's cap as its deadline; an `Err` is the
    /// message of the exception the script gets.
    ///
    /// Time spent here does not count against the CPU budget, up to the run's
    /// [`Limits::kv_time`]: the deadline moves by the time spent, but never past the
    /// cap. So a script that loops on `ctx.kv` ends by `cpu + kv_time` however slow the
    /// store (a store that ignores its deadline can make it late by one call). Until
    /// issue 23 the deadline moved without bound: `for (;;) ctx.kv.get(k)` with a 10 ms
    /// budget ran 1.1 s, with 1000 ms 155 s.
    ///
    /// A call past the run's limit of calls, past its deadline or after it was stopped
    /// is refused: it throws, and the run fails with the reason whatever the script
    /// does next (see [`Instance::call`]).
    ///
    /// A panic in the store is caught here rather than left to rquickjs, which would
    /// turn it into an exception the script can catch and resume the panic at some later
    /// exception, maybe in another call: the store is dropped, the script stopped by the
    /// interrupt handler, and the call reported as `Unavailable`.
    fn with_kv<T>(
        &self,
        f: impl FnOnce(&mut dyn Kv, Instant) -> Result<T, String>,
    ) -> Result<T, String> {
        let mut state = self.state();
        if now_nanos() > self.deadline.load(Ordering::Relaxed) {
            self.halt(Stop::Deadline);
        }
        if state.kv_calls >= state.max_kv_calls {
            self.halt(Stop::KvCalls);
        }
        if let Some(stop) = self.stopped() {
            return Err(match stop {
                Stop::Deadline => OUT_OF_TIME.to_owned(),
                Stop::KvCalls => too_many_kv_calls(state.max_kv_calls),
                Stop::KvPanicked => KV_PANICKED.to_owned(),
            });
        }
        let Some(mut kv) = state.kv.take() else {
            return Err(KV_UNAVAILABLE.to_owned());
        };
        state.kv_calls += 1;
        drop(state);
        let started = now_nanos();
        let cap = self.cap.load(Ordering::Relaxed);
        let deadline = epoch() + Duration::from_nanos(cap);
        let Ok(result) = panic::catch_unwind(AssertUnwindSafe(|| f(kv.as_mut(), deadline))) else {
            self.halt(Stop::KvPanicked);
            return Err(KV_PANICKED.to_owned());
        };
        let now = now_nanos();
        let spent = now.saturating_sub(started);
        // Only fails if the closure returns None, which it does not.
        let _ = self
            .deadline
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |deadline| {
                Some(deadline.saturating_add(spent).min(cap))
            });
        self.state().kv = Some(kv);
        if now > self.deadline.load(Ordering::Relaxed) {
            self.halt(Stop::Deadline);
            return Err(OUT_OF_TIME.to_owned());
        }
        result
    }
}

/// The message a refused `ctx.kv` call throws once the run has no time left.
const OUT_OF_TIME: &str = "out of time";

/// The message a `ctx.kv` call past the run's limit throws.
fn too_many_kv_calls(max: u32) -> String {
    format!("more than {max} ctx.kv calls in one run")
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// The instant the deadlines count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_nanos() -> u64 {
    nanos(epoch().elapsed())
}

/// Why something failed inside the engine.
enum Fault {
    Timeout,
    OutOfMemory,
    /// One `ctx.kv` call more than the limit, the number.
    KvCalls(u32),
    /// A JavaScript exception; `overflow` if it was the stack limit.
    Thrown {
        message: String,
        stack: Option<String>,
        overflow: bool,
    },
    /// The module has no such export.
    Missing(String),
    /// The returned value is unusable.
    Output(String),
    /// rquickjs failed for a reason that is not the script's.
    Internal(String),
}

impl Fault {
    fn reusable(&self) -> bool {
        match self {
            Self::Thrown { overflow, .. } => !overflow,
            Self::Missing(_) | Self::Output(_) => true,
            Self::Timeout | Self::OutOfMemory | Self::KvCalls(_) | Self::Internal(_) => false,
        }
    }

    fn into_call(self) -> RunError {
        match self {
            Self::Timeout => RunError::Timeout,
            Self::OutOfMemory => RunError::OutOfMemory,
            Self::KvCalls(max) => RunError::KvCalls { max },
            Self::Thrown { message, .. } => RunError::Thrown(message),
            Self::Missing(name) => RunError::Missing(name),
            Self::Output(why) => RunError::Output(why),
            Self::Internal(why) => RunError::Unavailable(why),
        }
    }

    fn into_load(self) -> RunError {
        match self {
            Self::Thrown { message, stack, .. } => {
                let (line, column) = stack
                    .as_deref()
                    .and_then(position)
                    .map_or((None, None), |(line, column)| (Some(line), Some(column)));
                RunError::Compile {
                    message,
                    line,
                    column,
                }
            }
            other => other.into_call(),
        }
    }
}

fn internal(error: &JsError) -> RunError {
    match error {
        JsError::Allocation => RunError::OutOfMemory,
        other => RunError::Unavailable(other.to_string()),
    }
}

/// The first `user:LINE:COLUMN` of a stack trace.
fn position(stack: &str) -> Option<(u32, u32)> {
    let prefix = format!("{MODULE_NAME}:");
    stack.match_indices(&prefix).find_map(|(at, _)| {
        let mut parts = stack[at + prefix.len()..].splitn(3, ':');
        let line = parts.next()?.parse().ok()?;
        let column: String = parts
            .next()?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        Some((line, column.parse().ok()?))
    })
}

/// Turns an rquickjs error into a [`Fault`], taking the pending exception if there is one.
fn fault(ctx: &Ctx<'_>, host: &Host, error: JsError) -> Fault {
    if let Some(stopped) = host.stop_fault() {
        drop(ctx.catch());
        return stopped;
    }
    match error {
        JsError::Exception => {
            let thrown = ctx.catch();
            thrown_fault(ctx, host, &thrown)
        }
        JsError::Allocation => Fault::OutOfMemory,
        other => Fault::Internal(other.to_string()),
    }
}

fn thrown_fault<'js>(ctx: &Ctx<'js>, host: &Host, thrown: &Value<'js>) -> Fault {
    let error = thrown
        .as_object()
        .filter(|_| thrown.is_error())
        .map(|object| {
            (
                string_property(ctx, object, "name"),
                string_property(ctx, object, "message"),
                string_property(ctx, object, "stack"),
            )
        });
    if let Some((name, message, _)) = &error
        && name.as_deref() == Some("InternalError")
        && message.as_deref() == Some("out of memory")
    {
        return Fault::OutOfMemory;
    }
    let overflow = error.as_ref().is_some_and(|(name, message, _)| {
        name.as_deref() == Some("RangeError")
            && message.as_deref() == Some("Maximum call stack size exceeded")
    });
    let message = describe(ctx, thrown);
    if let Some(stopped) = host.stop_fault() {
        return stopped;
    }
    Fault::Thrown {
        message,
        stack: error.and_then(|(_, _, stack)| stack),
        overflow,
    }
}

/// A property that is a string, without letting a throwing getter escape.
fn string_property<'js>(ctx: &Ctx<'js>, object: &Object<'js>, key: &str) -> Option<String> {
    match object.get::<_, Value>(key) {
        Ok(value) => value.as_string().and_then(|s| s.to_string().ok()),
        Err(_) => {
            drop(ctx.catch());
            None
        }
    }
}

/// A value as text, roughly as `console.log` shows it: strings as they are, errors as
/// `String(e)` (computed from `name` and `message`, so an overridden `toString` is never
/// called), symbols by description, other values as JSON. Never throws; cut to
/// [`MAX_ERROR_CHARS`] characters.
fn describe<'js>(ctx: &Ctx<'js>, value: &Value<'js>) -> String {
    let text = if let Some(string) = value.as_string() {
        string.to_string().unwrap_or_default()
    } else if let Some(symbol) = value.as_symbol() {
        let description = symbol
            .description()
            .ok()
            .and_then(|d| d.as_string().and_then(|s| s.to_string().ok()));
        format!("Symbol({})", description.unwrap_or_default())
    } else if let Some(object) = value.as_object().filter(|_| value.is_error()) {
        let name = string_property(ctx, object, "name").unwrap_or_else(|| "Error".to_owned());
        match string_property(ctx, object, "message") {
            Some(message) if !message.is_empty() => format!("{name}: {message}"),
            _ => name,
        }
    } else if value.is_object() {
        match ctx.json_stringify(value.clone()) {
            Ok(Some(json)) => json.to_string().unwrap_or_default(),
            Ok(None) => format!("[{}]", kind(value)),
            Err(_) => {
                drop(ctx.catch());
                format!("[{}]", kind(value))
            }
        }
    } else {
        // Primitives: converting them to a string runs no script code.
        match Coerced::<String>::from_js(ctx, value.clone()) {
            Ok(Coerced(text)) => text,
            Err(_) => {
                drop(ctx.catch());
                format!("[{}]", kind(value))
            }
        }
    };
    truncate(text, MAX_ERROR_CHARS)
}

/// The type of a value in words ("function" for classes too).
fn kind(value: &Value<'_>) -> &'static str {
    if value.is_function() {
        "function"
    } else {
        value.type_name()
    }
}

fn truncate(mut text: String, max_chars: usize) -> String {
    if let Some((cut, _)) = text.char_indices().nth(max_chars) {
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// The first userdata slot (see [`Slots`]).
fn slot<'js>(ctx: &Ctx<'js>, index: usize) -> Result<Object<'js>, RunError> {
    ctx.userdata::<Slots<'js>>()
        .and_then(|slots| slots.get(index).cloned())
        .ok_or_else(|| RunError::Unavailable("the instance lost its module".to_owned()))
}

/// Loads the module: builds the `ctx` object with the pristine builtins, then evaluates
/// the source and runs its jobs until its top-level code finished.
fn evaluate<'js>(ctx: &Ctx<'js>, host: &Arc<Host>, source: &str) -> Result<(), RunError> {
    let globals = ctx.globals();
    for name in NON_STANDARD_GLOBALS {
        globals
            .remove(*name)
            .map_err(|error| fault(ctx, host, error).into_load())?;
    }
    let ctx_object = ctx_object(ctx, host).map_err(|error| fault(ctx, host, error).into_load())?;
    let loaded = Module::declare(ctx.clone(), MODULE_NAME, source)
        .and_then(|module| module.eval())
        .map_err(|error| fault(ctx, host, error).into_load())?;
    let (module, promise) = loaded;
    settle(ctx, host, promise.into_value()).map_err(Fault::into_load)?;
    let namespace = module
        .namespace()
        .map_err(|error| fault(ctx, host, error).into_load())?;
    let slots: Slots<'js> = vec![namespace, ctx_object];
    ctx.store_userdata(slots)
        .map_err(|error| RunError::Unavailable(error.to_string()))?;
    Ok(())
}

/// The `ctx` object given to hooks: `log`, `now` and `kv.{get,set,delete}`, frozen.
fn ctx_object<'js>(ctx: &Ctx<'js>, host: &Arc<Host>) -> rquickjs::Result<Object<'js>> {
    let object = Object::new(ctx.clone())?;
    let kv = Object::new(ctx.clone())?;

    let log_host = Arc::clone(host);
    let log = move |ctx: Ctx<'js>, values: Rest<Value<'js>>| {
        log_host.log(|| {
            values
                .0
                .iter()
                .map(|value| describe(&ctx, value))
                .collect::<Vec<_>>()
                .join(" ")
        });
    };
    object.set("log", Function::new(ctx.clone(), log)?.with_name("log")?)?;

    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64() * 1000.0)
            .floor()
    };
    object.set("now", Function::new(ctx.clone(), now)?.with_name("now")?)?;

    let get_host = Arc::clone(host);
    let get = move |ctx: Ctx<'js>, key: Value<'js>| -> rquickjs::Result<Value<'js>> {
        let key = kv_key(&ctx, &key)?;
        match get_host.with_kv(|kv, deadline| kv.get(&key, deadline)) {
            Ok(Some(value)) => json_to_js(&ctx, &value, 0),
            Ok(None) => Ok(Value::new_null(ctx)),
            Err(message) => Err(Exception::throw_message(&ctx, &message)),
        }
    };
    kv.set("get", Function::new(ctx.clone(), get)?.with_name("get")?)?;

    let set_host = Arc::clone(host);
    let set = move |ctx: Ctx<'js>, key: Value<'js>, value: Value<'js>| -> rquickjs::Result<()> {
        let key = kv_key(&ctx, &key)?;
        let value = js_to_json(&ctx, value).map_err(|why| Exception::throw_type(&ctx, &why))?;
        set_host
            .with_kv(|kv, deadline| kv.set(&key, value, deadline))
            .map_err(|message| Exception::throw_message(&ctx, &message))
    };
    kv.set("set", Function::new(ctx.clone(), set)?.with_name("set")?)?;

    let delete_host = Arc::clone(host);
    let delete = move |ctx: Ctx<'js>, key: Value<'js>| -> rquickjs::Result<()> {
        let key = kv_key(&ctx, &key)?;
        delete_host
            .with_kv(|kv, deadline| kv.delete(&key, deadline))
            .map_err(|message| Exception::throw_message(&ctx, &message))
    };
    kv.set(
        "delete",
        Function::new(ctx.clone(), delete)?.with_name("delete")?,
    )?;

    let freeze: Function = ctx.globals().get::<_, Object>("Object")?.get("freeze")?;
    freeze.call::<_, Value>((kv.clone(),))?;
    object.set("kv", kv)?;
    freeze.call::<_, Value>((object.clone(),))?;
    Ok(object)
}

const KV_UNAVAILABLE: &str = "kv is not available";
const KV_PANICKED: &str = "the kv store failed";

fn kv_key<'js>(ctx: &Ctx<'js>, key: &Value<'js>) -> rquickjs::Result<String> {
    match key.as_string() {
        Some(key) => key.to_string(),
        None => Err(Exception::throw_type(ctx, "kv keys must be strings")),
    }
}

/// Runs one call inside the context.
fn invoke<'js>(
    ctx: &Ctx<'js>,
    host: &Host,
    call: &Invocation<'_>,
) -> Result<serde_json::Value, Fault> {
    let namespace = slot(ctx, NAMESPACE).map_err(|error| Fault::Internal(error.to_string()))?;
    let export: Value = namespace
        .get(call.function)
        .map_err(|error| fault(ctx, host, error))?;
    let Some(function) = export.into_function() else {
        return Err(Fault::Missing(call.function.to_owned()));
    };
    let mut args = Args::new(ctx.clone(), call.args.len() + usize::from(call.with_ctx));
    for arg in call.args {
        let value = json_to_js(ctx, arg, 0).map_err(|error| fault(ctx, host, error))?;
        args.push_arg(value)
            .map_err(|error| fault(ctx, host, error))?;
    }
    if call.with_ctx {
        let ctx_object =
            slot(ctx, CTX_OBJECT).map_err(|error| Fault::Internal(error.to_string()))?;
        args.push_arg(ctx_object)
            .map_err(|error| fault(ctx, host, error))?;
    }
    let returned: Value = function
        .call_arg(args)
        .map_err(|error| fault(ctx, host, error))?;
    let value = settle(ctx, host, returned)?;
    output(ctx, host, value, call.max_output_bytes)
}

/// The value itself, or what the promise settles to, running jobs meanwhile; then runs
/// the jobs left (so that nothing runs after the call, with another call's store).
fn settle<'js>(ctx: &Ctx<'js>, host: &Host, value: Value<'js>) -> Result<Value<'js>, Fault> {
    let settled = match value.as_promise() {
        None => Ok(value),
        Some(promise) => wait(ctx, host, promise),
    };
    while ctx.execute_pending_job() {
        if host.timed_out() {
            return Err(Fault::Timeout);
        }
    }
    if let Some(stopped) = host.stop_fault() {
        return Err(stopped);
    }
    settled
}

fn wait<'js>(ctx: &Ctx<'js>, host: &Host, promise: &Promise<'js>) -> Result<Value<'js>, Fault> {
    loop {
        match promise.state() {
            PromiseState::Resolved | PromiseState::Rejected => {
                return match promise.result::<Value>() {
                    Some(Ok(value)) => Ok(value),
                    Some(Err(error)) => Err(fault(ctx, host, error)),
                    None => Err(Fault::Internal(
                        "a settled promise has no result".to_owned(),
                    )),
                };
            }
            PromiseState::Pending => {
                if host.timed_out() {
                    return Err(Fault::Timeout);
                }
                if !ctx.execute_pending_job() {
                    return Err(Fault::Thrown {
                        message: "the promise never settles: nothing left to run could settle it"
                            .to_owned(),
                        stack: None,
                        overflow: false,
                    });
                }
            }
        }
    }
}

/// The returned value as JSON: stringified in the engine (under the budget), checked
/// against `max_bytes`, then parsed.
fn output<'js>(
    ctx: &Ctx<'js>,
    host: &Host,
    value: Value<'js>,
    max_bytes: usize,
) -> Result<serde_json::Value, Fault> {
    if value.is_undefined() {
        return Ok(serde_json::Value::Null);
    }
    let type_name = kind(&value);
    let json = match ctx.json_stringify(value) {
        Ok(Some(json)) => json,
        Ok(None) => {
            return Err(Fault::Output(format!(
                "a {type_name} is not JSON-representable"
            )));
        }
        Err(error) => {
            return Err(match fault(ctx, host, error) {
                Fault::Thrown { message, .. } => Fault::Output(message),
                other => other,
            });
        }
    };
    let json = json.to_string().map_err(|error| fault(ctx, host, error))?;
    if json.len() > max_bytes {
        return Err(Fault::Output(format!(
            "{} bytes of JSON, over the limit of {max_bytes}",
            json.len()
        )));
    }
    serde_json::from_str(&json).map_err(|error| Fault::Output(error.to_string()))
}

/// A JavaScript value as JSON (for `ctx.kv.set`).
fn js_to_json<'js>(ctx: &Ctx<'js>, value: Value<'js>) -> Result<serde_json::Value, String> {
    let not_json = || format!("a {} is not JSON-representable", kind(&value));
    let json = match ctx.json_stringify(value.clone()) {
        Ok(Some(json)) => json.to_string().map_err(|error| error.to_string())?,
        Ok(None) => return Err(not_json()),
        Err(_) => {
            let thrown = ctx.catch();
            return Err(describe(ctx, &thrown));
        }
    };
    serde_json::from_str(&json).map_err(|error| error.to_string())
}

/// A JSON value as a JavaScript value.
fn json_to_js<'js>(
    ctx: &Ctx<'js>,
    value: &serde_json::Value,
    depth: usize,
) -> rquickjs::Result<Value<'js>> {
    use serde_json::Value as Json;
    Ok(match value {
        Json::Null => Value::new_null(ctx.clone()),
        Json::Bool(b) => Value::new_bool(ctx.clone(), *b),
        Json::Number(number) => match number.as_i64().and_then(|n| i32::try_from(n).ok()) {
            Some(int) => Value::new_int(ctx.clone(), int),
            None => Value::new_float(ctx.clone(), number.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(string) => rquickjs::String::from_str(ctx.clone(), string)?.into_value(),
        // JSON.parse is right about `__proto__` keys (own properties, not the prototype)
        // and bounds its own recursion, so it takes those and deep values.
        Json::Object(map) if depth >= MAX_DIRECT_DEPTH || map.contains_key("__proto__") => {
            ctx.json_parse(value.to_string())?
        }
        Json::Array(_) if depth >= MAX_DIRECT_DEPTH => ctx.json_parse(value.to_string())?,
        Json::Array(items) => {
            let array = rquickjs::Array::new(ctx.clone())?;
            for (index, item) in items.iter().enumerate() {
                array.set(index, json_to_js(ctx, item, depth + 1)?)?;
            }
            array.into_value()
        }
        Json::Object(map) => {
            let object = Object::new(ctx.clone())?;
            for (key, item) in map {
                object.set(key.as_str(), json_to_js(ctx, item, depth + 1)?)?;
            }
            object.into_value()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::position;

    #[test]
    fn positions_come_from_the_first_user_frame() {
        assert_eq!(position("    at user:2:10\n"), Some((2, 10)));
        assert_eq!(
            position("    at f (user:3:7)\n    at user:9:1\n"),
            Some((3, 7))
        );
        assert_eq!(position("    at native\n"), None);
    }
}

//! The sandbox threads: each takes a job from the shared channel, runs it on pooled
//! instances and answers on the job's oneshot.

use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::instance::{Instance, Invocation};
use crate::pool::Pool;
use crate::{Call, Failure, Limits, Outcome, RunError};

/// Work for a sandbox thread.
pub(crate) enum Job {
    /// Load a module in a throwaway instance and list its function exports.
    Check {
        source: Arc<str>,
        reply: oneshot::Sender<Result<Vec<String>, RunError>>,
    },
    /// One call.
    Call {
        call: Call,
        reply: oneshot::Sender<Result<Outcome, Failure>>,
    },
    /// Calls with their index in the caller's batch, those of a key next to each other.
    Batch {
        calls: Vec<(usize, Call)>,
        reply: oneshot::Sender<Vec<(usize, Result<Outcome, Failure>)>>,
    },
}

/// Stack of a sandbox thread: QuickJS may use [`crate::instance::MAX_STACK_BYTES`] of
/// it, the rest is ample room for the Rust frames around and beneath.
const THREAD_STACK_BYTES: usize = 2 << 20;

/// Starts up to `threads` threads; returns how many started.
pub(crate) fn spawn(
    threads: usize,
    jobs: mpsc::Receiver<Job>,
    pool: &Arc<Mutex<Pool<Instance>>>,
) -> usize {
    let jobs = Arc::new(Mutex::new(jobs));
    (0..threads)
        .filter(|index| {
            let jobs = Arc::clone(&jobs);
            let pool = Arc::clone(pool);
            std::thread::Builder::new()
                .name(format!("sandbox-{index}"))
                .stack_size(THREAD_STACK_BYTES)
                .spawn(move || work(&jobs, &pool))
                .is_ok()
        })
        .count()
}

/// Runs jobs until every sender is gone.
fn work(jobs: &Mutex<mpsc::Receiver<Job>>, pool: &Mutex<Pool<Instance>>) {
    loop {
        // Holding the lock while waiting is the point: one idle thread waits on the
        // channel, the others on the lock. Poisoning cannot leave a receiver inconsistent.
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = job else { return };
        // A panic (a bug: the caller's `Kv` panics are caught earlier) drops the job's
        // reply, which the caller reports as `Unavailable`, and the instance it was
        // using; the thread goes on.
        let _ = panic::catch_unwind(AssertUnwindSafe(|| run(job, pool)));
    }
}

fn run(job: Job, pool: &Mutex<Pool<Instance>>) {
    // A caller that gave up (a dry run whose client went away) waits for nothing: its
    // work is skipped rather than run for no one.
    let abandoned = match &job {
        Job::Check { reply, .. } => reply.is_closed(),
        Job::Call { reply, .. } => reply.is_closed(),
        Job::Batch { reply, .. } => reply.is_closed(),
    };
    if abandoned {
        return;
    }
    match job {
        Job::Check { source, reply } => {
            let exports = Instance::load(&source, Limits::default().memory_bytes)
                .and_then(|instance| instance.exports());
            let _ = reply.send(exports);
        }
        Job::Call { call, reply } => {
            let mut session = Session::new(pool);
            let result = session.run(call);
            session.finish();
            let _ = reply.send(result);
        }
        Job::Batch { calls, reply } => {
            let mut session = Session::new(pool);
            let results = calls
                .into_iter()
                .map(|(index, call)| (index, session.run(call)))
                .collect();
            session.finish();
            let _ = reply.send(results);
        }
    }
}

/// Calls run by one thread in a row: the instance of the last owner and key is held on
/// to, so consecutive calls with one key use the pool once.
struct Session<'a> {
    pool: &'a Mutex<Pool<Instance>>,
    current: Option<Held>,
}

/// An instance a session holds, with the owner and key it belongs to.
struct Held {
    owner: String,
    key: String,
    instance: Instance,
}

impl<'a> Session<'a> {
    fn new(pool: &'a Mutex<Pool<Instance>>) -> Self {
        Self {
            pool,
            current: None,
        }
    }

    fn run(&mut self, call: Call) -> Result<Outcome, Failure> {
        let started = Instant::now();
        let Call {
            owner,
            key,
            source,
            function,
            args,
            with_ctx,
            kv,
            limits,
            max_output_bytes,
        } = call;
        let fail = |error| Failure {
            error,
            logs: Vec::new(),
            elapsed: started.elapsed(),
        };
        let mut instance = match self.current.take() {
            Some(held) if held.owner == owner && held.key == key && held.instance.runs(&source) => {
                held.instance
            }
            other => {
                if let Some(held) = other {
                    self.put_back(held);
                }
                match self.take(&owner, &key, &source).map_err(fail)? {
                    Some(instance) => instance,
                    None => Instance::load(&source, limits.memory_bytes).map_err(fail)?,
                }
            }
        };
        let invocation = Invocation {
            function: &function,
            args: &args,
            with_ctx,
            limits,
            max_output_bytes,
        };
        let ran = instance.call(invocation, kv);
        if ran.reusable {
            self.current = Some(Held {
                owner,
                key,
                instance,
            });
        }
        let elapsed = started.elapsed();
        match ran.result {
            Ok(value) => Ok(Outcome {
                value,
                logs: ran.logs,
                elapsed,
            }),
            Err(error) => Err(Failure {
                error,
                logs: ran.logs,
                elapsed,
            }),
        }
    }

    /// An idle instance of `owner` and `key` loaded from `source`, if the pool has one.
    fn take(
        &self,
        owner: &str,
        key: &str,
        source: &Arc<str>,
    ) -> Result<Option<Instance>, RunError> {
        let taken = self
            .pool
            .lock()
            .map_err(|_| RunError::Unavailable("the instance pool is poisoned".to_owned()))?
            .take(owner, key);
        // A key reused for another source (a caller's mistake) gets a fresh instance.
        Ok(taken.filter(|instance| instance.runs(source)))
    }

    /// Measures the instance (outside the lock: it walks the heap) and pools it.
    fn put_back(&self, held: Held) {
        let bytes = held.instance.measure();
        // Instances not kept (this one if it grew too large or the pool is poisoned,
        // or those evicted) are dropped here, after the lock is released.
        let _dropped = match self.pool.lock() {
            Ok(mut pool) => pool.put(&held.owner, &held.key, bytes, held.instance),
            Err(_) => vec![held.instance],
        };
    }

    fn finish(mut self) {
        if let Some(held) = self.current.take() {
            self.put_back(held);
        }
    }
}

//! A node's worker tasks. A node with the worker role starts `jobs.workers` of them; in
//! embedded mode the observer resizes the pool to its decisions. A worker asked to stop
//! finishes the job it holds first.

use crate::JobsContext;
use crate::worker::run_worker;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The worker tasks of this process.
pub struct WorkerPool {
    ctx: JobsContext,
    stop: CancellationToken,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    workers: Vec<(CancellationToken, JoinHandle<()>)>,
    next: u64,
}

impl WorkerPool {
    /// An empty pool whose workers all stop when `stop` is cancelled.
    pub fn new(ctx: JobsContext, stop: CancellationToken) -> Self {
        Self {
            ctx,
            stop,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Workers running (or finishing their job after being asked to stop, not counted).
    pub fn len(&self) -> u32 {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        u32::try_from(inner.workers.len()).unwrap_or(u32::MAX)
    }

    /// Whether the pool has no worker.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts or stops workers (the newest first) until there are `n`.
    pub fn resize(&self, n: u32) {
        let n = n as usize;
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        while inner.workers.len() > n {
            if let Some((stop, _handle)) = inner.workers.pop() {
                stop.cancel();
            }
        }
        while inner.workers.len() < n {
            let stop = self.stop.child_token();
            let name = format!("{}/{}", self.ctx.node, inner.next);
            inner.next += 1;
            let handle = tokio::spawn(supervised(self.ctx.clone(), name, stop.clone()));
            inner.workers.push((stop, handle));
        }
    }

    /// Stops every worker and waits for them (each finishes its job first).
    pub async fn shutdown(&self) {
        let workers = std::mem::take(
            &mut self
                .inner
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .workers,
        );
        for (stop, _) in &workers {
            stop.cancel();
        }
        for (_, handle) in workers {
            let _ = handle.await;
        }
    }
}

/// One worker, restarted with backoff when it fails (the database or the log is down).
async fn supervised(ctx: JobsContext, name: String, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match run_worker(ctx.clone(), name.clone(), stop.clone()).await {
            Ok(()) => return,
            Err(e) => {
                metrics::counter!("chorus_role_restarts_total", "role" => "worker").increment(1);
                tracing::error!(worker = %name, error = %e, ?backoff, "worker failed; restarting");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

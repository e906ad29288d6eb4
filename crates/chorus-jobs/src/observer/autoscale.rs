//! The scaling decision, after Knative's autoscaler: a pure function of the samples,
//! the time and the configuration (plus the little state it carries from one tick to
//! the next), so tests drive it with synthetic arrivals and a made-up clock.
//!
//! Every tick, over the stable window (60 s) and the panic window (6 s):
//!
//! - `service` is the mean run time of the jobs finished in the stable window (the last
//!   one measured when none finished; 100 ms before any);
//! - the workers the arrivals need are `arrival_rate × service / target_utilization`;
//!   the workers that would drain the jobs waiting beyond one per worker within the
//!   target response time are `waiting × service / target_response`; a window's
//!   recommendation is the ceiling of their sum;
//! - the observer **panics** when the panic window's recommendation reaches
//!   `panic_threshold` (2) times the current workers, and stays in panic until a whole
//!   stable window has passed without that happening. In panic it follows the panic
//!   window up at once and never scales down;
//! - otherwise it wants the largest recommendation of the last stable window (panic ones
//!   included): it scales up as soon as the stable window asks, and down only once every
//!   recommendation for a whole window was lower (no flapping on a noisy load, no drop
//!   when panic ends).
//!
//! The result is kept within `min_workers..=max_workers`.

use chorus_config::ObserverConfig;
use std::collections::VecDeque;

/// Run time assumed before any job has finished, milliseconds.
const ASSUMED_SERVICE_MS: f64 = 100.0;

/// A finished job, as the observer saw it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Completion {
    /// When it finished (ms since the Unix epoch, or any fixed origin).
    pub at_ms: i64,
    /// How long it ran.
    pub service_ms: u64,
    /// From submission to result.
    pub response_ms: u64,
}

/// Arrivals and completions, oldest first.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    arrivals: VecDeque<i64>,
    completions: VecDeque<Completion>,
}

/// What one window measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WindowStats {
    /// Jobs submitted per second.
    pub arrival_rate: f64,
    /// Jobs finished per second.
    pub service_rate: f64,
    /// Mean run time, if any job finished.
    pub mean_service_ms: Option<f64>,
    /// Mean time from submission to result (0 if none finished).
    pub mean_response_ms: f64,
    /// 95th percentile of the same (0 if none finished).
    pub p95_response_ms: f64,
}

impl Samples {
    /// A job submitted at `at_ms`.
    pub fn arrive(&mut self, at_ms: i64) {
        let at = self.arrivals.partition_point(|&t| t <= at_ms);
        self.arrivals.insert(at, at_ms);
    }

    /// A job finished.
    pub fn complete(&mut self, c: Completion) {
        let at = self.completions.partition_point(|x| x.at_ms <= c.at_ms);
        self.completions.insert(at, c);
    }

    /// Forgets samples older than `before_ms`.
    pub fn prune(&mut self, before_ms: i64) {
        while self.arrivals.front().is_some_and(|&t| t < before_ms) {
            self.arrivals.pop_front();
        }
        while self
            .completions
            .front()
            .is_some_and(|c| c.at_ms < before_ms)
        {
            self.completions.pop_front();
        }
    }

    /// The measurements over `(now - window, now]`.
    pub fn window(&self, now_ms: i64, window_ms: i64) -> WindowStats {
        let from = now_ms - window_ms;
        let secs = window_ms as f64 / 1000.0;
        let arrivals = self
            .arrivals
            .iter()
            .filter(|&&t| t > from && t <= now_ms)
            .count();
        let done: Vec<&Completion> = self
            .completions
            .iter()
            .filter(|c| c.at_ms > from && c.at_ms <= now_ms)
            .collect();
        let mut stats = WindowStats {
            arrival_rate: arrivals as f64 / secs,
            service_rate: done.len() as f64 / secs,
            ..WindowStats::default()
        };
        if !done.is_empty() {
            let n = done.len() as f64;
            stats.mean_service_ms = Some(done.iter().map(|c| c.service_ms as f64).sum::<f64>() / n);
            stats.mean_response_ms = done.iter().map(|c| c.response_ms as f64).sum::<f64>() / n;
            let mut responses: Vec<u64> = done.iter().map(|c| c.response_ms).collect();
            responses.sort_unstable();
            let rank = ((responses.len() as f64) * 0.95).ceil() as usize;
            stats.p95_response_ms = responses[rank.clamp(1, responses.len()) - 1] as f64;
        }
        stats
    }
}

/// What to do with the workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start workers.
    Add,
    /// Stop workers.
    Remove,
    /// Keep them.
    Hold,
}

impl Action {
    /// `add`, `remove` or `hold`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Remove => "remove",
            Self::Hold => "hold",
        }
    }
}

/// One tick's decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Workers wanted.
    pub desired: u32,
    /// Compared with the workers now.
    pub action: Action,
    /// Whether the panic window rules.
    pub panic: bool,
    /// Why, for people.
    pub reason: String,
    /// The stable window's measurements.
    pub stable: WindowStats,
    /// The panic window's measurements.
    pub panic_window: WindowStats,
}

/// The state the decision carries between ticks.
#[derive(Clone, Debug, Default)]
pub struct Autoscaler {
    /// Panic lasts until then.
    panic_until: Option<i64>,
    /// Recommendations of the last stable window.
    history: VecDeque<(i64, u32)>,
    /// The last measured mean run time.
    service_ms: Option<f64>,
}

impl Autoscaler {
    /// Decides at `now_ms`, with `workers` running and `queue_depth` jobs submitted and
    /// not finished.
    pub fn decide(
        &mut self,
        samples: &Samples,
        queue_depth: u64,
        workers: u32,
        now_ms: i64,
        config: &ObserverConfig,
    ) -> Decision {
        let stable_ms = (config.stable_window_secs * 1000) as i64;
        let panic_ms = (config.panic_window_secs * 1000) as i64;
        let stable = samples.window(now_ms, stable_ms);
        let panic_window = samples.window(now_ms, panic_ms);
        if let Some(s) = stable.mean_service_ms {
            self.service_ms = Some(s);
        }
        let service_s = self.service_ms.unwrap_or(ASSUMED_SERVICE_MS) / 1000.0;
        let waiting = queue_depth.saturating_sub(u64::from(workers)) as f64;
        let backlog = waiting * service_s / (config.target_response_ms as f64 / 1000.0);
        let want = |rate: f64| {
            let need = rate * service_s / config.target_utilization + backlog;
            need.ceil().min(f64::from(u32::MAX)) as u32
        };
        let want_stable = want(stable.arrival_rate);
        let want_panic = want(panic_window.arrival_rate);

        let panicking_now =
            want_panic > 0 && f64::from(want_panic) >= config.panic_threshold * f64::from(workers);
        if panicking_now {
            self.panic_until = Some(now_ms + stable_ms);
        } else if self.panic_until.is_some_and(|until| now_ms >= until) {
            self.panic_until = None;
        }
        let panic = self.panic_until.is_some();

        // The raw recommendation (in panic, the panic window's when higher): what the
        // last stable window of them allows decides scaling down.
        let recommended = if panic {
            want_panic.max(want_stable)
        } else {
            want_stable
        };
        self.history.push_back((now_ms, recommended));
        while self
            .history
            .front()
            .is_some_and(|&(t, _)| t <= now_ms - stable_ms)
        {
            self.history.pop_front();
        }
        let window_max = self.history.iter().map(|&(_, n)| n).max().unwrap_or(0);
        let (desired, why) = if panic {
            (
                window_max.max(workers),
                format!(
                    "panic (demand reached {}x capacity): {:.1} jobs/s over {}s needs {want_panic}, {window_max} at most over the stable window; no scaling down",
                    config.panic_threshold, panic_window.arrival_rate, config.panic_window_secs
                ),
            )
        } else {
            (
                window_max,
                format!(
                    "stable: {:.1} jobs/s, {:.0} ms per job, {} waiting: {want_stable} now, {window_max} at most over {}s",
                    stable.arrival_rate,
                    service_s * 1000.0,
                    waiting,
                    config.stable_window_secs
                ),
            )
        };
        let desired = desired.clamp(config.min_workers, config.max_workers);
        let action = match desired.cmp(&workers) {
            std::cmp::Ordering::Greater => Action::Add,
            std::cmp::Ordering::Less => Action::Remove,
            std::cmp::Ordering::Equal => Action::Hold,
        };
        Decision {
            desired,
            action,
            panic,
            reason: why,
            stable,
            panic_window,
        }
    }
}

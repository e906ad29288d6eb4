//! The observer's decision on synthetic load: a simulated queue served by as many
//! workers as the observer decides, on a made-up clock (no sleeps).

use chorus_config::ObserverConfig;
use chorus_jobs::observer::autoscale::{Action, Autoscaler, Completion, Samples};
use std::collections::VecDeque;

/// Simulation step, ms.
const STEP: i64 = 10;

struct Sim {
    config: ObserverConfig,
    samples: Samples,
    autoscaler: Autoscaler,
    /// Submission times of jobs waiting.
    queue: VecDeque<i64>,
    /// (busy until, submitted at) per worker; `None` when idle.
    workers: Vec<Option<(i64, i64)>>,
    service_ms: i64,
    now: i64,
    /// Fractional arrivals carried between steps.
    carry: f64,
    /// (time s, workers after the decision, panic).
    trace: Vec<(i64, u32, bool)>,
}

impl Sim {
    fn new(service_ms: i64) -> Self {
        let config = ObserverConfig {
            min_workers: 1,
            max_workers: 20,
            target_response_ms: 1000,
            ..ObserverConfig::default()
        };
        Self {
            workers: vec![None; config.min_workers as usize],
            config,
            samples: Samples::default(),
            autoscaler: Autoscaler::default(),
            queue: VecDeque::new(),
            service_ms,
            now: 0,
            carry: 0.0,
            trace: Vec::new(),
        }
    }

    fn depth(&self) -> u64 {
        (self.queue.len() + self.workers.iter().flatten().count()) as u64
    }

    /// Runs until `until_s` with `rate(t_s)` jobs per second arriving, plus `burst`
    /// jobs at once at the start.
    fn run(&mut self, until_s: i64, burst: usize, rate: impl Fn(f64) -> f64) {
        for _ in 0..burst {
            self.queue.push_back(self.now);
            self.samples.arrive(self.now);
        }
        while self.now < until_s * 1000 {
            self.now += STEP;
            self.carry += rate(self.now as f64 / 1000.0) * STEP as f64 / 1000.0;
            while self.carry >= 1.0 {
                self.carry -= 1.0;
                self.queue.push_back(self.now);
                self.samples.arrive(self.now);
            }
            for w in self.workers.iter_mut() {
                if let Some((until, submitted)) = *w
                    && until <= self.now
                {
                    self.samples.complete(Completion {
                        at_ms: self.now,
                        service_ms: self.service_ms as u64,
                        response_ms: (self.now - submitted) as u64,
                    });
                    *w = None;
                }
                if w.is_none()
                    && let Some(submitted) = self.queue.pop_front()
                {
                    *w = Some((self.now + self.service_ms, submitted));
                }
            }
            if self.now % 1000 == 0 {
                let workers = self.workers.len() as u32;
                let d = self.autoscaler.decide(
                    &self.samples,
                    self.depth(),
                    workers,
                    self.now,
                    &self.config,
                );
                assert_eq!(
                    d.action,
                    match d.desired.cmp(&workers) {
                        std::cmp::Ordering::Greater => Action::Add,
                        std::cmp::Ordering::Less => Action::Remove,
                        std::cmp::Ordering::Equal => Action::Hold,
                    }
                );
                // A removed worker finishes its job first: drop idle ones, then busy.
                self.workers.sort_by_key(|w| w.is_some());
                self.workers.reverse();
                self.workers.resize(d.desired as usize, None);
                self.trace.push((self.now / 1000, d.desired, d.panic));
            }
        }
    }

    fn workers_at(&self, t: i64) -> u32 {
        self.trace.iter().find(|(s, _, _)| *s == t).unwrap().1
    }

    /// Changes of direction (up then down or down then up) between `from` and `to` s.
    fn reversals(&self, from: i64, to: i64) -> usize {
        let counts: Vec<u32> = self
            .trace
            .iter()
            .filter(|(s, _, _)| (from..=to).contains(s))
            .map(|t| t.1)
            .collect();
        let mut last = 0i32;
        let mut reversals = 0;
        for pair in counts.windows(2) {
            let dir = (pair[1] as i32 - pair[0] as i32).signum();
            if dir != 0 {
                if last != 0 && dir != last {
                    reversals += 1;
                }
                last = dir;
            }
        }
        reversals
    }
}

#[test]
fn a_step_is_followed_within_ten_seconds_without_flapping_and_scaled_down_after_the_stable_window()
{
    let mut sim = Sim::new(100);
    sim.run(20, 0, |_| 0.0);
    assert_eq!(sim.workers_at(20), 1, "idle: the minimum");
    // Step to 30 jobs/s: 3 busy workers at 100 ms per job, 5 at 70% utilization.
    sim.run(140, 0, |_| 30.0);
    let first_up = sim
        .trace
        .iter()
        .find(|(s, n, _)| *s > 20 && *n > 1)
        .expect("scales up");
    assert!(
        first_up.0 <= 30,
        "scaled up at {} s, step at 20 s",
        first_up.0
    );
    let enough = sim
        .trace
        .iter()
        .find(|(s, n, _)| *s > 20 && *n >= 4)
        .expect("reaches capacity");
    assert!(enough.0 <= 30, "enough workers only at {} s", enough.0);
    assert!(sim.trace.iter().any(|t| t.2), "the step panics");
    assert_eq!(sim.reversals(20, 140), 0, "no flapping under a steady load");
    let steady = sim.workers_at(140);
    assert!((4..=8).contains(&steady), "steady at {steady}");
    // The load stops: nothing is removed for a whole stable window.
    sim.run(400, 0, |_| 0.0);
    for t in 141..=199 {
        assert!(
            sim.workers_at(t) >= steady,
            "scaled down at {t} s, before the stable window"
        );
    }
    assert_eq!(sim.workers_at(400), 1, "back to the minimum once idle");
    assert_eq!(sim.reversals(140, 400), 0);
}

#[test]
fn a_ramp_is_followed_up_and_never_flaps() {
    let mut sim = Sim::new(100);
    sim.run(120, 0, |t| t / 120.0 * 40.0);
    sim.run(180, 0, |_| 40.0);
    assert_eq!(sim.reversals(0, 180), 0, "{:?}", sim.trace);
    let end = sim.workers_at(180);
    assert!(
        end >= 6,
        "40 jobs/s at 100 ms with 70% utilization needs 6, got {end}"
    );
    assert!(end <= 10, "overshoot: {end}");
    let last = sim.samples.window(sim.now, 60_000);
    assert!(
        last.p95_response_ms < 1000.0,
        "p95 {}",
        last.p95_response_ms
    );
}

#[test]
fn a_burst_panics_up_at_once_and_never_scales_down_while_panicking() {
    let mut sim = Sim::new(200);
    sim.run(10, 0, |_| 0.0);
    sim.run(300, 200, |_| 0.0);
    let up = sim
        .trace
        .iter()
        .find(|(s, n, _)| *s > 10 && *n > 1)
        .expect("scales up");
    assert!(up.0 <= 20 && up.2, "panic scale-up at {} s", up.0);
    let mut last = 0;
    for (t, n, panic) in &sim.trace {
        if *panic {
            assert!(*n >= last, "scaled down while panicking at {t} s");
        }
        last = *n;
    }
    assert_eq!(sim.workers_at(300), 1, "idle again after the windows");
}

#[test]
fn idle_stays_at_the_minimum_and_holds() {
    let mut sim = Sim::new(100);
    sim.config.min_workers = 2;
    sim.workers = vec![None; 2];
    sim.run(200, 0, |_| 0.0);
    assert!(sim.trace.iter().all(|(_, n, panic)| *n == 2 && !panic));
}

#[test]
fn windows_measure_rates_and_percentiles() {
    let mut s = Samples::default();
    for i in 0..100 {
        s.arrive(i * 100);
        s.complete(Completion {
            at_ms: i * 100 + 50,
            service_ms: 10,
            response_ms: (i as u64 + 1) * 10,
        });
    }
    let w = s.window(10_000, 10_000);
    assert!((w.arrival_rate - 10.0).abs() < 0.2, "{w:?}");
    assert!((w.service_rate - 10.0).abs() < 0.2, "{w:?}");
    assert_eq!(w.mean_service_ms, Some(10.0));
    assert_eq!(w.p95_response_ms, 950.0);
    let recent = s.window(10_000, 1_000);
    assert!((recent.arrival_rate - 10.0).abs() < 1.1, "{recent:?}");
    s.prune(9_000);
    assert_eq!(s.window(10_000, 10_000).mean_service_ms, Some(10.0));
    assert!((s.window(10_000, 10_000).arrival_rate - 1.0).abs() < 0.2);
}

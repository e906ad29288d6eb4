//! The report: numbers from the counters and histograms, as a table for people and as
//! JSON for scripts.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Latency percentiles in milliseconds (the histogram holds microseconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub(crate) struct Percentiles {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest value.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// Number of values.
    #[serde(rename = "latency_samples")]
    pub count: u64,
}

impl Percentiles {
    /// The percentiles of a histogram of microseconds (all zero when empty).
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
            count: h.len(),
        }
    }
}

/// `count` per second over `secs` (0 for an empty interval).
pub(crate) fn per_second(count: u64, secs: f64) -> f64 {
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// Share of the expected deliveries that arrived, in percent (100 when none were
/// expected).
pub(crate) fn delivered_percent(delivered: u64, expected: u64) -> f64 {
    if expected == 0 {
        100.0
    } else {
        delivered as f64 * 100.0 / expected as f64
    }
}

/// Growth of the server's RSS per connection, KiB.
pub(crate) fn rss_per_connection(before_kib: u64, after_kib: u64, connections: usize) -> f64 {
    if connections == 0 {
        return 0.0;
    }
    (after_kib as f64 - before_kib as f64) / connections as f64
}

/// Everything measured, as written to `--json`.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Report {
    /// open-loop, closed-loop, idle or reconnect-storm.
    pub scenario: &'static str,
    /// chorus, xmpp or relay.
    pub protocol: &'static str,
    /// The server's base URL.
    pub url: String,
    /// Users signed in.
    pub users: usize,
    /// Of them, registered by this run.
    pub registered: usize,
    /// Of them, existing and logged in.
    pub logged_in: usize,
    /// Sessions opened.
    pub connections: usize,
    /// Sessions that could not be opened.
    pub connect_failures: usize,
    /// Time to open them all, seconds.
    pub connect_s: f64,
    /// Sessions opened per second.
    pub connect_rate: f64,
    /// direct or group.
    pub conversation: &'static str,
    /// Conversations used.
    pub conversations: usize,
    /// Members per group (group mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_size: Option<usize>,
    /// Closed loop: messages outstanding per sender.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<usize>,
    /// Open loop: the offered sends per second (null in the other scenarios).
    pub offered_rate: Option<f64>,
    /// Measured window, seconds.
    pub duration_s: f64,
    /// Warm-up, seconds.
    pub warmup_s: f64,
    /// Open loop: sends scheduled in the window.
    pub scheduled: u64,
    /// Sends written in the window.
    pub sent: u64,
    /// `sent` per second.
    pub send_rate: f64,
    /// `accepted` answers to them.
    pub accepted: u64,
    /// Deliveries of them (one per member session, the sender's included).
    pub delivered: u64,
    /// Deliveries expected: `sent` × members.
    pub expected: u64,
    /// `delivered` / `expected`, percent.
    pub delivered_percent: f64,
    /// Deliveries per second of the window.
    pub throughput: f64,
    /// Errors by code (send errors and connection losses).
    pub errors: BTreeMap<String, u64>,
    /// Errors answering warm-up sends.
    pub warmup_errors: u64,
    /// Messages received twice by a session.
    pub duplicates: u64,
    /// `seq`s a session skipped.
    pub seq_gaps: u64,
    /// Latency, send to delivery, of measured messages.
    #[serde(flatten)]
    pub latency: Percentiles,
    /// Open loop: p99 of the delay between a send's scheduled time and its write (the
    /// generator's own lag; large values mean the generator is the bottleneck).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generator_lag_p99_ms: Option<f64>,
    /// Open loop: the largest such delay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generator_lag_max_ms: Option<f64>,
    /// Time waited after the window for the last deliveries, seconds.
    pub tail_s: f64,
    /// The soft open-files limit after raising it.
    pub nofile_limit: Option<u64>,
    /// Sessions still open at the end.
    pub open_at_end: i64,
    /// Server RSS before the connections opened, KiB (`--server-pid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_before_kib: Option<u64>,
    /// Server RSS at the end, KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_after_kib: Option<u64>,
    /// RSS growth per open connection, KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_per_connection_kib: Option<f64>,
    /// CPU time the server used during the measured window, seconds (`--server-pid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_s: Option<f64>,
    /// That, per send of the window, microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_send: Option<f64>,
    /// Reconnect storm: the numbers below.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm: Option<Storm>,
}

/// Reconnect-storm results.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Storm {
    /// Clients that reconnected after the drop.
    pub reconnected: u64,
    /// Clients that could not.
    pub reconnect_failures: u64,
    /// Time from the drop to `synced`: median, ms.
    pub reconnect_p50_ms: f64,
    /// 99th percentile, ms.
    pub reconnect_p99_ms: f64,
    /// Largest, ms.
    pub reconnect_max_ms: f64,
    /// Expected deliveries that never arrived (the check: 0).
    pub missed: u64,
    /// Messages delivered by `sync` replays.
    pub replayed: u64,
    /// Unconfirmed sends sent again after reconnecting.
    pub resent: u64,
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

impl Report {
    /// The report as a table.
    pub(crate) fn text(&self) -> String {
        let mut o = String::new();
        let row = |o: &mut String, k: &str, v: String| {
            let _ = writeln!(o, "  {k:<18} {v}");
        };
        let _ = writeln!(
            o,
            "chorus bench: {} against {} ({})",
            self.scenario, self.url, self.protocol
        );
        row(
            &mut o,
            "users",
            format!(
                "{} ({} registered, {} logged in)",
                self.users, self.registered, self.logged_in
            ),
        );
        row(
            &mut o,
            "connections",
            format!(
                "{} opened in {:.2} s ({:.0}/s), {} failed, {} open at the end",
                self.connections,
                self.connect_s,
                self.connect_rate,
                self.connect_failures,
                self.open_at_end
            ),
        );
        if let (Some(b), Some(a)) = (self.server_rss_before_kib, self.server_rss_after_kib) {
            row(
                &mut o,
                "server RSS",
                format!(
                    "{:.1} MiB before, {:.1} MiB after: {:.1} KiB per connection",
                    b as f64 / 1024.0,
                    a as f64 / 1024.0,
                    self.rss_per_connection_kib.unwrap_or(0.0)
                ),
            );
        }
        if let (Some(cpu), Some(per_send)) = (self.server_cpu_s, self.server_cpu_us_per_send) {
            row(
                &mut o,
                "server CPU",
                format!("{cpu:.2} s in the window: {per_send:.1} us per send"),
            );
        }
        if self.scenario == "idle" {
            row(&mut o, "held", format!("{:.1} s", self.duration_s));
            row(&mut o, "errors", errors_text(&self.errors));
            return o;
        }
        let layout = match self.group_size {
            Some(g) => format!("{} groups of {g} members", self.conversations),
            None => format!("{} {}", self.conversations, self.conversation),
        };
        row(&mut o, "conversations", layout);
        let load = match (self.offered_rate, self.in_flight) {
            (Some(r), _) => format!("{r} msg/s offered (open loop)"),
            (None, Some(k)) => format!("closed loop, {k} in flight per sender"),
            (None, None) => String::new(),
        };
        row(
            &mut o,
            "load",
            format!(
                "{load}, {:.1} s measured after {:.1} s warm-up",
                self.duration_s, self.warmup_s
            ),
        );
        o.push('\n');
        row(
            &mut o,
            "sent",
            format!(
                "{} ({:.1}/s), {} accepted",
                self.sent, self.send_rate, self.accepted
            ),
        );
        row(
            &mut o,
            "delivered",
            format!(
                "{} of {} expected ({:.3}%), tail {:.2} s",
                self.delivered, self.expected, self.delivered_percent, self.tail_s
            ),
        );
        row(
            &mut o,
            "throughput",
            format!("{:.1} deliveries/s", self.throughput),
        );
        row(&mut o, "errors", errors_text(&self.errors));
        if self.warmup_errors > 0 || self.duplicates > 0 || self.seq_gaps > 0 {
            row(
                &mut o,
                "anomalies",
                format!(
                    "{} warm-up errors, {} duplicates, {} seq gaps",
                    self.warmup_errors, self.duplicates, self.seq_gaps
                ),
            );
        }
        let l = &self.latency;
        row(
            &mut o,
            "latency ms",
            format!(
                "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}",
                ms(l.p50_ms),
                ms(l.p90_ms),
                ms(l.p99_ms),
                ms(l.p999_ms),
                ms(l.max_ms),
                ms(l.mean_ms)
            ),
        );
        if let (Some(p99), Some(max)) = (self.generator_lag_p99_ms, self.generator_lag_max_ms) {
            row(
                &mut o,
                "generator lag ms",
                format!("p99 {}  max {} (schedule to write)", ms(p99), ms(max)),
            );
        }
        if let Some(s) = &self.storm {
            o.push('\n');
            row(
                &mut o,
                "reconnect storm",
                format!(
                    "{} reconnected, {} failed; drop to synced p50 {} ms, p99 {} ms, max {} ms",
                    s.reconnected,
                    s.reconnect_failures,
                    ms(s.reconnect_p50_ms),
                    ms(s.reconnect_p99_ms),
                    ms(s.reconnect_max_ms)
                ),
            );
            row(
                &mut o,
                "missed messages",
                format!(
                    "{} ({}); {} replayed by sync, {} resent",
                    s.missed,
                    if s.missed == 0 { "ok" } else { "FAILED" },
                    s.replayed,
                    s.resent
                ),
            );
        }
        o
    }
}

fn errors_text(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        return "none".into();
    }
    errors
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

    #[test]
    fn percentiles_are_in_milliseconds() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        let near = |a: f64, b: f64| (a - b).abs() <= b * 0.002;
        assert!(near(p.p50_ms, 500.0), "{p:?}");
        assert!(near(p.p90_ms, 900.0), "{p:?}");
        assert!(near(p.p99_ms, 990.0), "{p:?}");
        assert!(near(p.p999_ms, 999.0), "{p:?}");
        assert!(near(p.max_ms, 1000.0), "{p:?}");
        assert!(near(p.mean_ms, 500.5), "{p:?}");
        assert_eq!(Percentiles::of(&new_histogram()), Percentiles::default());
    }

    #[test]
    fn rates_and_ratios() {
        assert_eq!(per_second(4000, 2.0), 2000.0);
        assert_eq!(per_second(5, 0.0), 0.0);
        assert_eq!(delivered_percent(50, 200), 25.0);
        assert_eq!(delivered_percent(0, 0), 100.0);
        assert_eq!(rss_per_connection(1000, 9000, 1000), 8.0);
        assert_eq!(rss_per_connection(1000, 900, 100), -1.0);
        assert_eq!(rss_per_connection(1, 2, 0), 0.0);
    }

    #[test]
    fn the_json_has_the_promised_fields() {
        let r = Report {
            scenario: "open-loop",
            conversation: "direct",
            offered_rate: Some(2000.0),
            sent: 10,
            ..Report::default()
        };
        let v = serde_json::to_value(&r).unwrap();
        for field in [
            "sent",
            "delivered",
            "expected",
            "errors",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "p999_ms",
            "max_ms",
            "throughput",
            "protocol",
            "offered_rate",
            "send_rate",
            "users",
            "conversation",
            "duration_s",
        ] {
            assert!(v.get(field).is_some(), "missing {field}: {v}");
        }
        assert!(v.get("storm").is_none());
        assert_eq!(v["offered_rate"], 2000.0);
    }

    #[test]
    fn the_table_names_the_numbers() {
        let mut r = Report {
            scenario: "reconnect-storm",
            conversation: "direct",
            offered_rate: Some(100.0),
            sent: 7,
            expected: 14,
            delivered: 14,
            storm: Some(Storm::default()),
            ..Report::default()
        };
        r.errors.insert("rate_limited".into(), 3);
        let t = r.text();
        assert!(t.contains("7 (0.0/s)"), "{t}");
        assert!(t.contains("14 of 14 expected"), "{t}");
        assert!(t.contains("rate_limited 3"), "{t}");
        assert!(t.contains("missed messages    0 (ok)"), "{t}");
        r.scenario = "idle";
        r.server_rss_before_kib = Some(1024);
        r.server_rss_after_kib = Some(2048);
        r.rss_per_connection_kib = Some(1.0);
        let t = r.text();
        assert!(
            t.contains("1.0 MiB before, 2.0 MiB after: 1.0 KiB per connection"),
            "{t}"
        );
        assert!(!t.contains("latency"), "{t}");
    }
}

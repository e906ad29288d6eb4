//! Logs (text or JSON lines, filtered by `CHORUS_LOG` or `RUST_LOG`) and the
//! process-wide Prometheus recorder.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;

/// Installs the log subscriber; `json` selects one JSON object per line.
pub fn init_logs(json: bool) {
    let filter = std::env::var("CHORUS_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    // A second initialisation (tests building several nodes) keeps the first.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// The process-wide metrics recorder, installed on first use.
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ])
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests embedding chorus in
            // a larger program); the handle still renders this one's metrics.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

/// Every metric's help text: Prometheus (and `promtool check metrics`, run on a live
/// node's output by the conformance suite) wants one per metric. A metric appears in
/// `/metrics` once it has a value.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    // Gateway: connections and frames.
    describe_gauge!(
        "chorus_ws_connections",
        "WebSocket sessions open on this node"
    );
    describe_gauge!(
        "chorus_http_connections",
        "HTTP connections open on this node, WebSocket sessions included"
    );
    describe_counter!(
        "chorus_http_connections_refused_total",
        "Connections closed at once for a limit, by limit (total or per_address)"
    );
    describe_counter!(
        "chorus_http_accept_errors_total",
        "Failed accepts (out of file descriptors, ...)"
    );
    describe_counter!(
        "chorus_membership_notices_lost_total",
        "Membership change notices the log never took (other nodes catch up as their cache expires)"
    );
    describe_gauge!(
        "chorus_ws_sessions_local",
        "Sessions in this node's local fan-out table (set on each scrape)"
    );
    describe_counter!(
        "chorus_ws_connections_opened_total",
        "WebSocket sessions opened"
    );
    describe_counter!(
        "chorus_ws_frames_rejected_total",
        "Client frames answered with an error, by code"
    );
    describe_counter!(
        "chorus_ws_gap_fills_total",
        "Sessions that filled a seq gap from the store"
    );
    describe_counter!(
        "chorus_ws_overflow_closed_total",
        "Sessions closed because their client stopped reading"
    );
    describe_counter!(
        "chorus_gateway_frames_delivered_total",
        "Message and notice frames queued to local sessions"
    );
    describe_counter!(
        "chorus_messages_accepted_total",
        "Sends accepted onto the log"
    );
    describe_counter!(
        "chorus_mentions_offline_total",
        "Mentions of members with no open session (where push notifications will start)"
    );
    describe_counter!(
        "chorus_attachment_uploads_total",
        "Uploads of attachments, by outcome (stored, refused)"
    );
    describe_counter!(
        "chorus_attachment_upload_bytes_total",
        "Bytes of attachments stored by uploads"
    );
    describe_gauge!(
        "chorus_attachments_stored_objects",
        "Attachments stored (complete uploads), as of the last sweep"
    );
    describe_gauge!(
        "chorus_attachments_stored_bytes",
        "Bytes of stored attachments, as of the last sweep"
    );
    describe_histogram!(
        "chorus_thumbnail_seconds",
        "Time to decode a picture and make its thumbnail, seconds"
    );
    describe_counter!(
        "chorus_oidc_key_fetches_total",
        "Fetches of the OIDC provider's keys, by outcome"
    );
    describe_counter!(
        "chorus_auth_refused_total",
        "Sign-ups and sign-ins refused by a limit (login_address, login_account, registration, hash_queue)"
    );
    // Stages.
    describe_counter!("chorus_stage_events_total", "Events processed, by stage");
    describe_histogram!(
        "chorus_stage_batch_seconds",
        "Time to process and commit one batch, by stage"
    );
    describe_gauge!(
        "chorus_consumer_lag",
        "Records not yet processed, by consumer group, topic and partition (as of its last batch)"
    );
    describe_counter!(
        "chorus_dead_letter_total",
        "Events sent to the dead-letter topic, by stage"
    );
    describe_counter!(
        "chorus_messages_stored_total",
        "Messages stored with a new seq"
    );
    describe_counter!(
        "chorus_messages_duplicate_total",
        "Messages found stored already (retries, redeliveries)"
    );
    describe_counter!(
        "chorus_changes_unchanged_total",
        "Edits, deletes and reactions not stored because they changed nothing by the time \
         they were stored (their message deleted meanwhile, a reaction there already)"
    );
    describe_counter!(
        "chorus_route_deliveries_total",
        "Delivery records sent to gateway nodes"
    );
    describe_counter!(
        "chorus_role_restarts_total",
        "Role loops restarted after a failure, by role"
    );
    describe_counter!(
        "chorus_kafka_producer_renewed_total",
        "Kafka producers replaced after a fatal error"
    );
    describe_counter!(
        "chorus_log_journal_bytes_total",
        "Bytes written to the embedded log's journal"
    );
    describe_histogram!(
        "chorus_log_journal_write_seconds",
        "Time of one write (and sync, with sync_to_disk) of the embedded log's journal"
    );
    describe_counter!(
        "chorus_log_journal_failures_total",
        "Writes of the embedded log's journal that failed (publishing fails from then on)"
    );
    describe_histogram!(
        "chorus_db_query_seconds",
        "Database call latency, by operation"
    );
    // Scripts and auto-replies.
    describe_counter!(
        "chorus_script_runs_total",
        "Script runs, by hook and outcome"
    );
    describe_histogram!("chorus_script_run_seconds", "Script run time, by hook");
    describe_counter!(
        "chorus_scripts_disabled_total",
        "Scripts disabled after failing too often"
    );
    describe_counter!(
        "chorus_automation_messages_total",
        "Messages scripts and auto-replies produced, by kind"
    );
    describe_counter!(
        "chorus_automation_chain_stopped_total",
        "Automation chains stopped at the hop limit"
    );
    describe_counter!(
        "chorus_automation_refused_total",
        "Messages automation was not let send, by reason (budget, rate_limited)"
    );
    describe_counter!(
        "chorus_messages_blocked_total",
        "Sends blocked by an outgoing script"
    );
    describe_counter!(
        "chorus_messages_dropped_for_recipient_total",
        "Messages an incoming script dropped for its owner"
    );
    // Jobs and the observer.
    describe_counter!("chorus_jobs_submitted_total", "Jobs submitted");
    describe_counter!("chorus_jobs_started_total", "Jobs a worker started");
    describe_counter!("chorus_jobs_finished_total", "Jobs finished, by outcome");
    describe_counter!(
        "chorus_jobs_duplicate_results_total",
        "Job results recorded after the first (ignored)"
    );
    describe_histogram!("chorus_job_duration_seconds", "Job run time on a worker");
    describe_gauge!(
        "chorus_observer_workers",
        "Workers running, as the observer counts them"
    );
    describe_gauge!(
        "chorus_observer_desired_workers",
        "Workers the observer wants"
    );
    describe_gauge!(
        "chorus_observer_arrival_rate",
        "Jobs arriving per second (stable window)"
    );
    describe_gauge!(
        "chorus_observer_service_rate",
        "Jobs one worker finishes per second"
    );
    describe_gauge!(
        "chorus_observer_p95_response_seconds",
        "95th percentile of job response time (submission to result)"
    );
    describe_gauge!(
        "chorus_observer_queue_depth",
        "Jobs submitted and not yet finished"
    );
    describe_gauge!(
        "chorus_observer_panic",
        "1 while the observer is in panic mode"
    );
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The names in `source` right after `macro!(`, for each macro.
    fn names_after<'a>(source: &'a str, macros: &[&str]) -> Vec<&'a str> {
        let mut names = Vec::new();
        for mac in macros {
            for (at, _) in source.match_indices(mac) {
                let rest = source[at + mac.len()..].trim_start();
                if let Some(rest) = rest.strip_prefix('"')
                    && let Some(end) = rest.find('"')
                {
                    names.push(&rest[..end]);
                }
            }
        }
        names
    }

    fn sources(dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(std::fs::read_to_string(path).unwrap());
            }
        }
    }

    /// Prometheus tools (promtool, the conformance suite) want help text for every
    /// metric family, and a family gets it only from a `describe_*!` here.
    #[test]
    fn every_metric_the_code_records_is_described() {
        let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let mut all = Vec::new();
        sources(crates, &mut all);
        let described = names_after(
            include_str!("telemetry.rs"),
            &[
                "describe_counter!(",
                "describe_gauge!(",
                "describe_histogram!(",
            ],
        );
        let mut missing: Vec<&str> = all
            .iter()
            .flat_map(|s| names_after(s, &["counter!(", "gauge!(", "histogram!("]))
            .filter(|name| name.starts_with("chorus_") && !described.contains(name))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        assert!(
            missing.is_empty(),
            "not described in telemetry.rs: {missing:?}"
        );
    }
}

#!/usr/bin/env python3
"""The jobs observer following a load step, embedded mode: a CSV and a plot.

Starts `target/release/chorus serve` (every role, memory log, SQLite in a temporary
data directory, a free port) with the observer configuration below, registers a user,
then submits jobs at a fixed rate in three phases:

    low   LOW_SECS  s at LOW_RATE  jobs/s
    step  STEP_SECS s at STEP_RATE jobs/s   (well above what one worker serves)
    idle  IDLE_SECS s at IDLE_RATE jobs/s   (long enough to see the scale-down)

Every job is the same module, a busy loop of JOB_MS milliseconds (wall clock) in
`main`, so one worker serves at most 1000 / JOB_MS jobs/s. Every second the script
reads `GET /api/v1/observer` and writes a row of the CSV; at the end it plots workers
(running and desired, panic shaded), queue depth, mean / p95 response time, and
arrival / service rate (the observer's stable-window figures, plus the rate the
script actually submitted in that second) against time.

The driving part is Python 3 standard library only. The plot needs matplotlib; from
the repository root:

    python3 -m venv target/py-plot && target/py-plot/bin/pip install matplotlib
    cargo build --release -p chorus
    target/py-plot/bin/python bench/observer-step.py

Writes docs/bench/observer-step.csv and docs/bench/observer-step.png (see --csv and
--png); `--plot-only` redraws the PNG from an existing CSV. The server's log is kept
in the temporary directory and the observer's resize lines are printed at the end.
"""

import argparse
import csv
import datetime
import http.client
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The load.
LOW_RATE, LOW_SECS = 5.0, 20
STEP_RATE, STEP_SECS = 80.0, 60
IDLE_RATE, IDLE_SECS = 0.0, 100
JOB_MS = 20

# The observer (`[jobs.observer]`). A 30 s stable window (Knative and chorus default:
# 60 s) so that the scale-down shows within about a minute of the end of the step; the
# rest are chorus's defaults except max_workers.
OBSERVER = {
    "min_workers": 1,
    "max_workers": 4,
    "target_response_ms": 1000,
    "stable_window_secs": 30,
    "panic_window_secs": 6,
    "panic_threshold": 2.0,
    "target_utilization": 0.7,
    "tick_ms": 1000,
}

JOB_SOURCE = """export function main(input) {
  const until = Date.now() + input.ms;
  let n = 0;
  while (Date.now() < until) { n++; }
  return n;
}
"""

FIELDS = [
    "t", "phase", "submitted", "submit_errors", "arrival_rate", "service_rate",
    "mean_response_ms", "p95_response_ms", "queue_depth", "workers",
    "desired_workers", "panic", "action",
]


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def config_toml(observer):
    lines = ["[jobs]", "workers = 1", "", "[jobs.observer]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in observer.items()]
    return "\n".join(lines) + "\n"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    """Small JSON client on one keep-alive connection (one per thread)."""

    def __init__(self, port, token=None):
        self.port = port
        self.token = token
        self.conn = None

    def call(self, method, path, body=None):
        headers = {"content-type": "application/json"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self.conn.request(method, "/api/v1" + path, body=data, headers=headers)
                resp = self.conn.getresponse()
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw else None)
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise


def wait_ready(port, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"chorus exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    sys.exit("chorus not ready after 60 s")


def job_body():
    return {"source": {"script": JOB_SOURCE}, "input": {"ms": JOB_MS}}


def calibrate(api):
    """Runs a few jobs one at a time: checks the module works, reports its run time."""
    elapsed = []
    for _ in range(5):
        status, body = api.call("POST", "/jobs", job_body())
        assert status == 202, (status, body)
        job = body["job_id"]
        while True:
            status, res = api.call("GET", f"/jobs/{job}/result")
            if status == 200:
                break
            time.sleep(0.01)
        assert res["status"] == "succeeded", res
        elapsed.append(res["elapsed_ms"])
    return elapsed


class Load:
    """Submits jobs on a fixed schedule from a few sender threads."""

    def __init__(self, port, token, senders=16):
        self.todo = queue.Queue()
        self.lock = threading.Lock()
        self.submitted = 0
        self.errors = 0
        self.late = 0.0
        self.threads = [
            threading.Thread(target=self.send, args=(Api(port, token),), daemon=True)
            for _ in range(senders)
        ]
        for t in self.threads:
            t.start()

    def send(self, api):
        body = job_body()
        while True:
            due = self.todo.get()
            if due is None:
                return
            try:
                status, _ = api.call("POST", "/jobs", body)
                ok = status == 202
            except OSError:
                ok = False
            with self.lock:
                if ok:
                    self.submitted += 1
                else:
                    self.errors += 1
                self.late = max(self.late, time.monotonic() - due)

    def schedule(self, phases, t0):
        """Queues one submission per 1/rate seconds of each phase, at its due time."""
        start = t0
        for _name, rate, secs in phases:
            if rate > 0:
                n = int(rate * secs)
                for i in range(n):
                    due = start + i / rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    self.todo.put(due)
            start += secs
        for _ in self.threads:
            self.todo.put(None)

    def counts(self):
        with self.lock:
            return self.submitted, self.errors


def drive(args):
    binary = args.binary
    if not os.access(binary, os.X_OK):
        sys.exit(f"{binary} missing: cargo build --release -p chorus")
    tmp = tempfile.mkdtemp(prefix="chorus-observer-step-")
    config = os.path.join(tmp, "chorus.toml")
    with open(config, "w") as f:
        f.write(config_toml(OBSERVER))
    port = free_port()
    log_path = os.path.join(tmp, "chorus.log")
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [binary, "serve", "--config", config, "--data-dir", os.path.join(tmp, "data"),
         "--listen", f"127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")},
    )
    wall0 = None
    try:
        wait_ready(port, proc)
        api = Api(port)
        status, body = api.call("POST", "/auth/register",
                                {"username": "stepper", "password": "observer-step-pw"})
        assert status == 201, (status, body)
        token = body["token"]
        api = Api(port, token)
        status, obs = api.call("GET", "/observer")
        assert status == 200, (status, obs)
        print("observer configuration:", json.dumps(obs["config"]))
        runs = calibrate(api)
        print(f"calibration: {JOB_MS} ms busy loop ran in {runs} ms (elapsed_ms)")
        # Let the calibration jobs leave the panic window before the run starts.
        time.sleep(OBSERVER["panic_window_secs"] + 1)

        phases = [("low", LOW_RATE, LOW_SECS), ("step", STEP_RATE, STEP_SECS),
                  ("idle", IDLE_RATE, IDLE_SECS)]
        total = sum(p[2] for p in phases)
        load = Load(port, token)
        t0 = time.monotonic() + 0.5
        wall0 = time.time() + 0.5
        sched = threading.Thread(target=load.schedule, args=(phases, t0), daemon=True)
        sched.start()

        rows = []
        prev = 0
        sampler = Api(port, token)
        for k in range(total + 1):
            due = t0 + k
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t = time.monotonic() - t0
            edge, phase = 0, phases[-1][0]
            for name, _rate, secs in phases:
                if t < edge + secs:
                    phase = name
                    break
                edge += secs
            status, o = sampler.call("GET", "/observer")
            submitted, errors = load.counts()
            row = {
                "t": round(t, 2), "phase": phase, "submitted": submitted - prev,
                "submit_errors": errors,
                "arrival_rate": round(o["arrival_rate"], 3),
                "service_rate": round(o["service_rate"], 3),
                "mean_response_ms": round(o["mean_response_ms"], 1),
                "p95_response_ms": round(o["p95_response_ms"], 1),
                "queue_depth": o["queue_depth"], "workers": o["workers"],
                "desired_workers": o["desired_workers"], "panic": int(o["panic"]),
                "action": (o.get("last_decision") or {}).get("action", ""),
            }
            prev = submitted
            rows.append(row)
            print(" ".join(f"{k}={row[k]}" for k in FIELDS), flush=True)
        sched.join(timeout=5)
        print(f"submitted {load.counts()[0]} jobs, {load.counts()[1]} errors, "
              f"latest submission {load.late * 1000:.0f} ms behind schedule")
        os.makedirs(os.path.dirname(args.csv), exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            w.writerows(rows)
        print("wrote", os.path.relpath(args.csv, ROOT))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    with open(log_path) as f:
        for line in f:
            if wall0 is not None and "resizing the worker pool" in line:
                line = ansi.sub("", line).rstrip()
                at = datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00"))
                print(f"t={at.timestamp() - wall0:6.1f}s {line.split(' ', 1)[1]}")
    if args.keep:
        print("kept", tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def plot(args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(args.csv) as f:
        rows = list(csv.DictReader(f))
    t = [float(r["t"]) for r in rows]
    col = lambda k: [float(r[k]) for r in rows]  # noqa: E731
    fig, ax = plt.subplots(4, 1, sharex=True, figsize=(10, 10), constrained_layout=True)
    step_at, idle_at = LOW_SECS, LOW_SECS + STEP_SECS

    ax[0].step(t, col("workers"), where="post", label="workers", lw=2)
    ax[0].step(t, col("desired_workers"), where="post", label="desired_workers", ls="--")
    panic = col("panic")
    ax[0].fill_between(t, 0, OBSERVER["max_workers"] + 0.5, where=[p > 0 for p in panic],
                       step="post", color="tab:red", alpha=0.12, label="panic")
    ax[0].set_ylim(0, OBSERVER["max_workers"] + 0.5)
    ax[0].set_ylabel("workers")

    ax[1].plot(t, col("queue_depth"), color="tab:purple")
    ax[1].set_ylabel("queue depth\n(submitted, not finished)")

    ax[2].plot(t, col("p95_response_ms"), label="p95")
    ax[2].plot(t, col("mean_response_ms"), label="mean")
    ax[2].set_yscale("log")
    ax[2].set_ylabel("response time, ms\n(submit → result)")

    ax[3].step(t, col("submitted"), where="pre", color="0.6", lw=0.8,
               label="submitted by the script (per second)")
    ax[3].axhline(1000 / JOB_MS, color="tab:red", lw=0.8, ls="--",
                  label=f"one worker's ceiling ({1000 / JOB_MS:g}/s)")
    ax[3].plot(t, col("arrival_rate"), label="arrival_rate")
    ax[3].plot(t, col("service_rate"), label="service_rate")
    ax[3].set_ylabel("jobs/s")
    ax[3].set_xlabel("seconds since the start of the load")

    for a in ax:
        a.axvline(step_at, color="k", lw=0.8, ls=":")
        a.axvline(idle_at, color="k", lw=0.8, ls=":")
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(loc="upper right", fontsize=8)
    ob = OBSERVER
    fig.suptitle(
        f"chorus observer, load step {LOW_RATE:g} → {STEP_RATE:g} jobs/s at t={step_at}s, "
        f"idle at t={idle_at}s ({JOB_MS} ms jobs)\n"
        f"workers {ob['min_workers']}..{ob['max_workers']}, target {ob['target_response_ms']} ms, "
        f"windows {ob['stable_window_secs']} s / {ob['panic_window_secs']} s, "
        f"utilization {ob['target_utilization']}, tick {ob['tick_ms']} ms; "
        "rates and response times are the stable window's",
        fontsize=9)
    os.makedirs(os.path.dirname(args.png), exist_ok=True)
    fig.savefig(args.png, dpi=100)
    print("wrote", os.path.relpath(args.png, ROOT))


def main():
    global LOW_SECS, STEP_SECS, IDLE_SECS
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--csv", default=os.path.join(ROOT, "docs", "bench", "observer-step.csv"))
    p.add_argument("--png", default=os.path.join(ROOT, "docs", "bench", "observer-step.png"))
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "chorus"))
    p.add_argument("--durations", metavar="LOW,STEP,IDLE",
                   help=f"phase lengths in seconds (default {LOW_SECS},{STEP_SECS},{IDLE_SECS})")
    p.add_argument("--plot-only", action="store_true", help="redraw the PNG from the CSV")
    p.add_argument("--keep", action="store_true", help="keep the temporary data directory and log")
    args = p.parse_args()
    if args.durations:
        LOW_SECS, STEP_SECS, IDLE_SECS = (int(x) for x in args.durations.split(","))
    if not args.plot_only:
        drive(args)
    plot(args)


if __name__ == "__main__":
    main()

"""Plots and tables of bench/run-all.sh's results.

python bench/plot.py RESULTS_DIR PLOTS_DIR

Reads RESULTS_DIR/rate-SERVER-RATE.json and RESULTS_DIR/groupSIZE-SERVER-DELIVERIES.json
(chorus bench reports) and RESULTS_DIR/idle-SERVER-SIZE.json (run-all.sh's idle memory
lines), writes PLOTS_DIR/latency-vs-rate.png, PLOTS_DIR/group-fanout.png and
PLOTS_DIR/idle-rss.png, and prints the tables of BENCHMARKS.md in Markdown.
"""

import glob
import json
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SERVERS = ["chorus", "ejabberd", "ejabberd-mam", "relay"]
COLORS = {"chorus": "tab:blue", "ejabberd": "tab:red", "ejabberd-mam": "tab:orange", "relay": "tab:gray"}


def load(results, kind):
    out = {}
    for path in glob.glob(os.path.join(results, f"{kind}-*.json")):
        m = re.fullmatch(rf"{kind}-([a-z][a-z-]*)-(\d+)\.json", os.path.basename(path))
        if not m:
            continue
        with open(path) as f:
            out.setdefault(m[1], {})[int(m[2])] = json.load(f)
    return out


def draw(ax, runs, x, y, xlabel, title):
    """One panel: report field y against field x, a line per server, both axes log."""
    for server in SERVERS:
        points = sorted(runs.get(server, {}).items())
        if not points:
            continue
        xs = [r[x] for _, r in points]
        ys = [max(r[y], 0.01) for _, r in points]
        ax.plot(xs, ys, "o-", color=COLORS[server], label=server)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.axhline(10, color="black", lw=0.6, ls="--")


def save(fig, axes, path):
    axes[0].set_ylabel("ms (log)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def rows(runs):
    """(point, server, report) by point, then in SERVERS order."""
    for point in sorted({k for v in runs.values() for k in v}):
        for server in SERVERS:
            r = runs.get(server, {}).get(point)
            if r is not None:
                yield point, server, r


def plot_rates(rates, path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, (key, label) in zip(axes, [("p50_ms", "p50"), ("p99_ms", "p99")]):
        draw(ax, rates, "send_rate", key, "messages sent per second (1:1, 100 pairs)", f"{label} send → receive latency")
    save(fig, axes, path)


def plot_idle(idle, path):
    fig, ax = plt.subplots(figsize=(6, 4))
    for server in SERVERS:
        runs = sorted(idle.get(server, {}).items())
        if not runs:
            continue
        ax.plot(
            [r["connections"] for _, r in runs],
            [r["kib_per_connection"] for _, r in runs],
            "o-",
            color=COLORS[server],
            label=server,
        )
    ax.axhline(6, color="black", lw=0.6, ls="--", label="target (6 KiB)")
    ax.set_xlabel("idle WebSocket connections")
    ax.set_ylabel("server RSS per connection, KiB")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def ratio(a, b):
    return f"{a / b:.2f}×" if a and b else "–"


def tables(rates, idle):
    if idle:
        print("| connections | " + " | ".join(f"{s} KiB/conn" for s in SERVERS) + " | ejabberd / chorus | chorus / relay |")
        print("|---" * (len(SERVERS) + 3) + "|")
        for size in sorted({k for v in idle.values() for k in v}):
            row = {s: idle.get(s, {}).get(size, {}).get("kib_per_connection") for s in SERVERS}
            cells = [f"{row[s]:.1f}" if row[s] is not None else "–" for s in SERVERS]
            print(f"| {size} | " + " | ".join(cells) + f" | {ratio(row['ejabberd'], row['chorus'])} | {ratio(row['chorus'], row['relay'])} |")
        print()
    if rates:
        print("| offered msg/s | server | sent/s | delivered | deliveries/s | p50 ms | p99 ms | p99.9 ms | max ms | server CPU µs/send |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for rate, s, r in rows(rates):
            cpu = r.get("server_cpu_us_per_send")
            print(
                f"| {rate} | {s} | {r['send_rate']:.0f} | {r['delivered']}/{r['expected']} ({r['delivered_percent']:.2f}%) "
                f"| {r['throughput']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['p999_ms']:.2f} | {r['max_ms']:.1f} "
                f"| {'–' if cpu is None else f'{cpu:.1f}'} |"
            )
        print()
        print("Highest rate with ≥ 99.9% delivered and p99 ≤ 10 ms, per server:")
        best = {}
        for s in SERVERS:
            ok = [r for r in rates.get(s, {}).values() if r["delivered_percent"] >= 99.9 and r["p99_ms"] <= 10]
            best[s] = max((r["send_rate"] for r in ok), default=0)
            print(f"- {s}: {best[s]:.0f} msg/s")
        print(f"- chorus / ejabberd: {ratio(best['chorus'], best['ejabberd'])}; relay / chorus: {ratio(best['relay'], best['chorus'])}")


def load_groups(results):
    """{group size: {server: {offered deliveries/s: report}}}"""
    names = (os.path.basename(p) for p in glob.glob(os.path.join(results, "group*-*.json")))
    sizes = {int(m[1]) for m in (re.fullmatch(r"group(\d+)-.*", n) for n in names) if m}
    return {size: load(results, f"group{size}") for size in sorted(sizes)}


def plot_groups(groups, path):
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), sharey=True, squeeze=False)
    for ax, (size, runs) in zip(axes[0], groups.items()):
        draw(ax, runs, "throughput", "p99_ms", "deliveries per second", f"p99 send → receive, groups of {size}")
    save(fig, axes[0], path)


def group_tables(groups):
    for size, runs in groups.items():
        print(f"Groups of {size}:")
        print("| offered deliveries/s | server | msg/s | delivered | deliveries/s | p50 ms | p99 ms | p99.9 ms | generator lag p99 ms | server CPU µs/delivery |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for point, s, r in rows(runs):
            cpu = r.get("server_cpu_us_per_send")
            print(
                f"| {point} | {s} | {r['send_rate']:.0f} | {r['delivered_percent']:.2f}% | {r['throughput']:.0f} "
                f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['p999_ms']:.2f} | {r['generator_lag_p99_ms']:.1f} "
                f"| {'–' if cpu is None else f'{cpu / size:.2f}'} |"
            )
        print()


def main():
    results, plots = sys.argv[1], sys.argv[2]
    os.makedirs(plots, exist_ok=True)
    rates, idle = load(results, "rate"), load(results, "idle")
    if rates:
        plot_rates(rates, os.path.join(plots, "latency-vs-rate.png"))
    if idle:
        plot_idle(idle, os.path.join(plots, "idle-rss.png"))
    tables(rates, idle)
    groups = load_groups(results)
    if groups:
        plot_groups(groups, os.path.join(plots, "group-fanout.png"))
        group_tables(groups)


if __name__ == "__main__":
    main()

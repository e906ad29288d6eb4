#!/usr/bin/env python3
"""Checks the deployment files in deploy/ as far as a machine without a container
engine or a cluster can, and that the environment variables the binary reads and the
ones docs/operations.md documents are the same.

- deploy/docker-compose.yml: `docker-compose config -q` (the Python docker-compose
  1.29, which validates without an engine) with CHORUS_JWT_SECRET set, and that it
  fails without it (the file has no default secret); files it mounts exist; the roles
  and CHORUS_* variables it sets exist; Prometheus, promtail and Grafana point at its
  services; the gateways' OIDC settings match the Keycloak realm; the gateways share one
  object store for attachments (CHORUS_FILES, not a local directory) and wait for the
  compose service behind its AWS_ENDPOINT.
- deploy/k8s: every object against the Kubernetes JSON schemas (kubernetes-validate,
  strict, oldest and newest supported versions); the kustomization lists every file
  but the examples (EXAMPLE_FILES), which it must not list; every token secret in an
  example is one the node refuses (EXAMPLE_JWT_SECRETS in crates/chorus-config);
  Service, PodDisruptionBudget and HPA selectors and targets, configMap/secret
  references, Ingress backends and named ports resolve; every chorus container has
  /readyz and /healthz probes and resource requests and limits; gateways get a
  CHORUS_FILES that is not a local directory; `kubectl kustomize` builds it when
  kubectl is installed.
- deploy/grafana: the dashboard parses, its data sources are the provisioned ones,
  and every metric its queries use is exported by the code (or is in PENDING_METRICS).
- deploy/prometheus/prometheus.yml: parses, scrapes every role, and passes
  `promtool check config` when promtool is installed.
- Environment: every CHORUS_* variable read in crates/ is documented in
  docs/operations.md, and every one documented there is read (CHORUS_TEST_* excluded).

Exits 1 with one line per problem, 0 when all is well. Run from anywhere:

    python tests/deploy/check.py

DOCKER_COMPOSE names the docker-compose executable (default: target/py-compose/bin/
docker-compose, else the one on PATH).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "chorus.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "datasources.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
PROMTAIL = DEPLOY / "promtail" / "promtail.yml"
ADAPTER = DEPLOY / "prometheus-adapter" / "values.yaml"
REALM = DEPLOY / "keycloak" / "chorus-realm.json"
OPERATIONS = ROOT / "docs" / "operations.md"

# Names the deployment files use before the code has them: each entry says what will
# add it. An entry the code now has is reported, so that it can be removed.
PENDING_ENV: dict[str, str] = {}
PENDING_ROLES: dict[str, str] = {}
PENDING_METRICS: dict[str, str] = {}
# Files in deploy/k8s that the kustomization deliberately leaves out: examples of
# objects the operator creates with values of their own. Their objects are still
# validated, and references to them resolve (the Deployments need that Secret).
EXAMPLE_FILES = {"secret.example.yaml", "secret-files.example.yaml"}
CONFIG_LIB = ROOT / "crates" / "chorus-config" / "src" / "lib.rs"
# Kubernetes versions whose schemas every object must satisfy: the oldest supported
# (autoscaling/v2 and policy/v1 are GA well before it) and the newest bundled.
K8S_OLDEST = "1.29"
# The roles every deployment runs, each as its own process.
DEPLOYED_ROLES = {"gateway", "stages", "worker", "observer"}

problems: list[str] = []
notes: list[str] = []


def fail(where: str, message: str) -> None:
    problems.append(f"{where}: {message}")


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def load_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        fail(rel(path), f"does not parse: {e}")
        return None


# ---------------------------------------------------------------- what the code has


def rust_sources() -> list[Path]:
    return sorted(p for p in (ROOT / "crates").rglob("*.rs") if "target" not in p.parts)


def code_env_vars() -> set[str]:
    """CHORUS_* variables the Rust code reads: clap `env = "…"`, `env::var("…")`,
    `var_os("…")`, `env!`/`option_env!`, and string constants passed to them."""
    found: set[str] = set()
    literal = re.compile(r'"(CHORUS_[A-Z0-9_]*[A-Z0-9])"')
    for path in rust_sources():
        for name in literal.findall(path.read_text(errors="replace")):
            if not name.startswith("CHORUS_TEST_"):
                found.add(name)
    return found


def code_metrics() -> set[str]:
    """Metric names the code registers with the `metrics` macros (directly or through
    a `const NAME: &str = "chorus_…"`)."""
    found: set[str] = set()
    macro = re.compile(
        r'\b(?:describe_)?(?:counter|gauge|histogram)!\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"'
    )
    const = re.compile(r'const\s+[A-Z0-9_]+\s*:\s*&(?:\'static\s+)?str\s*=\s*"(chorus_[a-z0-9_]+)"')
    for path in rust_sources():
        text = path.read_text(errors="replace")
        found.update(macro.findall(text))
        found.update(const.findall(text))
    return found


def code_roles() -> set[str]:
    """Role names `--roles` accepts: the gateway's and the stages' names."""
    roles: set[str] = set()
    node = ROOT / "crates" / "chorus" / "src" / "node.rs"
    roles.update(re.findall(r'Role::[A-Za-z]+\s*=>\s*"([a-z][a-z-]*)"', node.read_text()))
    topics = ROOT / "crates" / "chorus-core" / "src" / "topics.rs"
    text = topics.read_text()
    m = re.search(r"fn name\(self\)[^{]*\{(.*?)\n    \}", text, re.S)
    if m:
        roles.update(re.findall(r'=>\s*"([a-z][a-z-]*)"', m.group(1)))
    if "gateway" not in roles or len(roles) < 2:
        fail("tests/deploy/check.py", "cannot find the role names in node.rs / topics.rs; update code_roles()")
    return roles


def refused_jwt_secrets() -> set[str]:
    """The example token secrets the node refuses to start with."""
    m = re.search(r"EXAMPLE_JWT_SECRETS: &\[&str\] = &\[(.*?)\];", CONFIG_LIB.read_text(), re.S)
    if not m:
        fail(rel(CONFIG_LIB), "cannot find EXAMPLE_JWT_SECRETS; update refused_jwt_secrets()")
        return set()
    return set(re.findall(r'"([^"]+)"', m.group(1)))


def documented_env_vars() -> set[str]:
    text = OPERATIONS.read_text()
    return {
        v
        for v in re.findall(r"\b(CHORUS_[A-Z0-9_]*[A-Z0-9])\b", text)
        if not v.startswith("CHORUS_TEST_")
    }


# ---------------------------------------------------------------- environment


def check_env(read: set[str]) -> None:
    documented = documented_env_vars()
    where = rel(OPERATIONS)
    for v in sorted(read - documented):
        fail(where, f"{v} is read by the code but not documented")
    for v in sorted(documented - read):
        if v in PENDING_ENV:
            notes.append(f"{v} is documented ahead of the code ({PENDING_ENV[v]})")
        else:
            fail(where, f"{v} is documented but no code reads it")
    for v in sorted(read & set(PENDING_ENV)):
        notes.append(f"{v} is now read by the code: drop it from PENDING_ENV")


def check_deploy_env_name(where: str, name: str, read: set[str]) -> None:
    if name.startswith("CHORUS_") and name not in read and name not in PENDING_ENV:
        fail(where, f"sets {name}, which no code reads (a typo?)")


def check_roles(where: str, roles_value: str, roles: set[str]) -> None:
    for r in (x.strip() for x in roles_value.split(",")):
        if r in PENDING_ROLES and r not in roles:
            continue
        if r not in roles:
            fail(where, f"unknown role {r!r} (known: {', '.join(sorted(roles))})")


def roles_in_args(args: list[str]) -> str | None:
    for i, a in enumerate(args):
        if a == "--roles" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--roles="):
            return a.split("=", 1)[1]
    return None


# ---------------------------------------------------------------- compose


def find_docker_compose() -> str | None:
    if os.environ.get("DOCKER_COMPOSE"):
        return os.environ["DOCKER_COMPOSE"]
    local = ROOT / "target" / "py-compose" / "bin" / "docker-compose"
    if local.exists():
        return str(local)
    return shutil.which("docker-compose")


def check_compose(read: set[str], roles: set[str]) -> dict:
    where = rel(COMPOSE)
    exe = find_docker_compose()
    if exe is None:
        fail(where, "docker-compose not found: pip install -r tests/deploy/compose-requirements.txt "
             "into target/py-compose, or set DOCKER_COMPOSE")
    else:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("COMPOSE_") and k != "CHORUS_JWT_SECRET"}
        # The file has no default token secret: it is valid with one set, as an
        # operator sets it, and refused without (docker-compose reads deploy/.env too,
        # so an empty project directory stands in for it).
        with_secret = {**env, "CHORUS_JWT_SECRET": secrets.token_urlsafe(48)}
        r = subprocess.run([exe, "-f", str(COMPOSE), "config", "-q"], cwd=ROOT, env=with_secret,
                           capture_output=True, text=True)
        if r.returncode != 0:
            fail(where, f"docker-compose config -q: {(r.stderr or r.stdout).strip()}")
        with tempfile.TemporaryDirectory() as empty:
            r = subprocess.run([exe, "-f", str(COMPOSE), "--project-directory", empty,
                                "config", "-q"], cwd=ROOT, env=env, capture_output=True, text=True)
        if r.returncode == 0 or "CHORUS_JWT_SECRET" not in r.stderr + r.stdout:
            fail(where, "docker-compose config passes without CHORUS_JWT_SECRET: the token "
                 "secret must be required (${CHORUS_JWT_SECRET:?…}), not defaulted")
    doc = load_yaml(COMPOSE)
    if not isinstance(doc, dict):
        return {}
    services = doc.get("services") or {}
    seen_roles: set[str] = set()
    for name, svc in services.items():
        w = f"{where}: service {name}"
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
        for var in env:
            check_deploy_env_name(w, var, read)
        # Bind mounts must exist (relative to the compose file's directory).
        for vol in svc.get("volumes") or []:
            source = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
            if source.startswith("."):
                if not (COMPOSE.parent / source).exists():
                    fail(w, f"mounts {source}, which does not exist")
        for dep in svc.get("depends_on") or []:
            if dep not in services:
                fail(w, f"depends on unknown service {dep}")
        if str(svc.get("image", "")).startswith("chorus"):
            role_value = env.get("CHORUS_ROLES")
            entry = svc.get("entrypoint") or []
            command = svc.get("command") or []
            args = (entry if isinstance(entry, list) else [entry]) + (
                command if isinstance(command, list) else [command])
            role_value = roles_in_args(args) or role_value
            if not role_value:
                fail(w, "runs chorus without --roles or CHORUS_ROLES (every role in one process)")
                continue
            check_roles(w, role_value, roles)
            rs = {x.strip() for x in role_value.split(",")}
            seen_roles.update({"stages"} if rs & (roles - {"gateway"} - set(PENDING_ROLES)) else set())
            seen_roles.update(rs & {"gateway", "worker", "observer"})
            if "gateway" in rs:
                for var in ("CHORUS_OIDC_ISSUER", "CHORUS_OIDC_AUDIENCE", "CHORUS_JWT_SECRET"):
                    if var not in env:
                        fail(w, f"gateway without {var}")
    for missing in sorted(DEPLOYED_ROLES - seen_roles):
        fail(where, f"no service runs the {missing} role")
    gateways = [n for n, s in services.items()
                if "gateway" in str((s.get("environment") or {}).get("CHORUS_ROLES", ""))]
    if len(gateways) < 2:
        fail(where, f"expected two gateways, found {gateways}")
    check_compose_files(services, gateways)
    return services


def shared_store_problem(url: str | None) -> str | None:
    """Why a gateway's CHORUS_FILES is not an object store every gateway shares."""
    if not url:
        return "no CHORUS_FILES: attachments would go to the node's data directory"
    if str(url).startswith("file:"):
        return f"CHORUS_FILES={url} is a local directory"
    return None


def check_compose_files(services: dict, gateways: list[str]) -> None:
    """The gateways keep attachments in one object store that is not a directory of
    their own (a file uploaded through one must be readable through the other), and
    wait for the compose service that serves it, if one does."""
    where = rel(COMPOSE)

    def env_of(svc):
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
        return env

    def waits_for(name, seen=None):
        seen = set() if seen is None else seen
        for dep in services.get(name, {}).get("depends_on") or []:
            if dep not in seen:
                seen.add(dep)
                waits_for(dep, seen)
        return seen

    stores = set()
    for name in gateways:
        env = env_of(services[name])
        url = env.get("CHORUS_FILES")
        problem = shared_store_problem(url)
        if problem:
            fail(f"{where}: service {name}", f"{problem}, which the other gateways cannot read")
            continue
        stores.add(str(url))
        endpoint = env.get("AWS_ENDPOINT") if str(url).startswith(("s3://", "s3a://")) else None
        host = re.match(r"https?://([^:/]+)", str(endpoint or ""))
        if host and host.group(1) not in ("localhost", "127.0.0.1"):
            if host.group(1) not in services:
                fail(f"{where}: service {name}", f"AWS_ENDPOINT {endpoint} is no compose service")
            elif host.group(1) not in waits_for(name):
                fail(f"{where}: service {name}", f"does not wait for {host.group(1)}, its object store")
    if len(stores) > 1:
        fail(where, f"the gateways keep attachments in different object stores: {sorted(stores)}")


# ---------------------------------------------------------------- Prometheus


def check_prometheus(services: dict, known_metrics: set[str]) -> None:
    where = rel(PROMETHEUS)
    doc = load_yaml(PROMETHEUS)
    if not isinstance(doc, dict):
        return
    jobs = {}
    for sc in doc.get("scrape_configs") or []:
        jobs[sc.get("job_name")] = sc
        hosts = []
        for st in sc.get("static_configs") or []:
            hosts += [t.rsplit(":", 1)[0] for t in st.get("targets") or []]
        for dns in sc.get("dns_sd_configs") or []:
            hosts += dns.get("names") or []
        for h in hosts:
            if h != "localhost" and services and h not in services:
                fail(where, f"job {sc.get('job_name')} scrapes {h}, which is no compose service")
    for role in sorted(DEPLOYED_ROLES - set(jobs)):
        fail(where, f"no scrape job for the {role} role")
    promtool = shutil.which("promtool")
    if promtool:
        r = subprocess.run([promtool, "check", "config", str(PROMETHEUS)], capture_output=True, text=True)
        if r.returncode != 0:
            fail(where, f"promtool check config: {(r.stderr + r.stdout).strip()}")
    else:
        notes.append("promtool not installed: prometheus.yml was parsed but not checked by promtool")
    # The HPA's metric, as prometheus-adapter serves it.
    adapter = load_yaml(ADAPTER)
    if isinstance(adapter, dict):
        for rule in (adapter.get("rules") or {}).get("external") or []:
            name = (rule.get("name") or {}).get("as")
            series = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", rule.get("seriesQuery", ""))
            for n in filter(None, [name, series and series.group(1)]):
                if n not in known_metrics:
                    fail(rel(ADAPTER), f"unknown metric {n}")


def check_promtail(services: dict) -> None:
    doc = load_yaml(PROMTAIL)
    if not isinstance(doc, dict):
        return
    for client in doc.get("clients") or []:
        host = re.match(r"https?://([^:/]+)", client.get("url", ""))
        if not host or (services and host.group(1) not in services):
            fail(rel(PROMTAIL), f"pushes to {client.get('url')}, which is no compose service")


# ---------------------------------------------------------------- Grafana

PROMQL_WORDS = {
    # functions
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp",
    "clamp_max", "clamp_min", "count_over_time", "delta", "deriv", "exp", "floor",
    "histogram_quantile", "idelta", "increase", "irate", "label_join", "label_replace",
    "last_over_time", "ln", "log2", "log10", "max_over_time", "min_over_time",
    "predict_linear", "quantile_over_time", "rate", "resets", "round", "scalar", "sort",
    "sort_desc", "sqrt", "stddev_over_time", "sum_over_time", "time", "timestamp", "vector",
    # aggregations and keywords
    "sum", "avg", "min", "max", "count", "count_values", "group", "quantile", "stddev",
    "stdvar", "topk", "bottomk", "by", "without", "on", "ignoring", "group_left",
    "group_right", "and", "or", "unless", "bool", "offset",
}


def promql_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers left once strings, label
    matchers, grouping lists, ranges, Grafana variables, numbers and function names
    are taken out."""
    e = re.sub(r"\$\{[^}]*\}|\$\w+", "", expr)
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', "", e)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", e)
    e = re.sub(r"\b\d+(\.\d+)?([eE][+-]?\d+)?\b", "", e)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e))
    return {n for n in names if n not in PROMQL_WORDS}


def metric_known(name: str, known: set[str]) -> bool:
    if name in known:
        return True
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in known:
            return True
    return False


def check_grafana(known_metrics: set[str], services: dict) -> None:
    where = rel(DASHBOARD)
    try:
        dash = json.loads(DASHBOARD.read_text())
    except (OSError, json.JSONDecodeError) as e:
        fail(where, f"does not parse: {e}")
        return
    sources = load_yaml(DATASOURCES) or {}
    uids = {d.get("uid"): d.get("type") for d in sources.get("datasources") or []}
    for d in sources.get("datasources") or []:
        host = re.match(r"https?://([^:/]+)", d.get("url", ""))
        if services and (not host or host.group(1) not in services):
            fail(rel(DATASOURCES), f"data source {d.get('name')} points at {d.get('url')}, no compose service")
    providers = load_yaml(DASHBOARD_PROVIDERS) or {}
    paths = {(p.get("options") or {}).get("path") for p in providers.get("providers") or []}
    grafana = services.get("grafana") or {}
    mounted = {v.split(":")[1] for v in grafana.get("volumes") or []
               if isinstance(v, str) and v.startswith("./grafana/dashboards")}
    if services and not paths & mounted:
        fail(rel(DASHBOARD_PROVIDERS), f"loads dashboards from {paths}, but compose mounts them at {mounted}")

    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels") or [])

    ids = set()
    queried: set[str] = set()
    panels = list(walk(dash.get("panels") or []))
    if not panels:
        fail(where, "has no panels")
    for p in panels:
        title = p.get("title", "?")
        if p.get("id") in ids:
            fail(where, f"panel id {p.get('id')} used twice")
        ids.add(p.get("id"))
        if "gridPos" not in p:
            fail(where, f"panel {title!r} has no gridPos")
        if p.get("type") == "row":
            continue
        targets = p.get("targets") or []
        if not targets:
            fail(where, f"panel {title!r} has no queries")
        for t in targets:
            ds = t.get("datasource") or p.get("datasource") or {}
            uid = ds.get("uid") if isinstance(ds, dict) else ds
            if uid not in uids:
                fail(where, f"panel {title!r} uses data source {uid!r}, not provisioned ({sorted(uids)})")
                continue
            expr = t.get("expr", "")
            if not expr.strip():
                fail(where, f"panel {title!r} has an empty query")
            if uids[uid] == "prometheus":
                if expr.count("(") != expr.count(")"):
                    fail(where, f"panel {title!r}: unbalanced parentheses in {expr}")
                for m in promql_metrics(expr):
                    queried.add(m)
                    if not metric_known(m, known_metrics):
                        fail(where, f"panel {title!r} queries {m}, which the code does not export")
            elif uids[uid] == "loki" and not expr.lstrip().startswith("{"):
                fail(where, f"panel {title!r}: a LogQL query starts with a stream selector")
    # What the dashboard must show (issue 8): connections, stages, latency, lag, jobs, workers.
    for needed in ("chorus_ws_connections", "chorus_stage_events_total", "chorus_stage_batch_seconds_bucket",
                   "chorus_consumer_lag", "chorus_jobs_finished_total", "chorus_observer_workers"):
        if needed not in queried:
            fail(where, f"no panel shows {needed}")


# ---------------------------------------------------------------- Keycloak


def check_keycloak(services: dict) -> None:
    where = rel(REALM)
    try:
        realm = json.loads(REALM.read_text())
    except (OSError, json.JSONDecodeError) as e:
        fail(where, f"does not parse: {e}")
        return
    name = realm.get("realm")
    clients = {c.get("clientId"): c for c in realm.get("clients") or []}
    web = clients.get("chorus-web")
    audiences = set()
    if not web:
        fail(where, "no chorus-web client")
    else:
        if not web.get("publicClient"):
            fail(where, "chorus-web is not a public client")
        for m in web.get("protocolMappers") or []:
            if m.get("protocolMapper") == "oidc-audience-mapper":
                cfg = m.get("config") or {}
                if cfg.get("access.token.claim") == "true":
                    audiences.add(cfg.get("included.custom.audience") or cfg.get("included.client.audience"))
        if not audiences:
            fail(where, "chorus-web has no audience mapper on access tokens")
    if not any(u.get("credentials") for u in realm.get("users") or []):
        fail(where, "no test user with a password")
    for svc_name, svc in services.items():
        env = svc.get("environment") or {}
        issuer = env.get("CHORUS_OIDC_ISSUER")
        if issuer is None:
            continue
        if not str(issuer).rstrip("/").endswith(f"/realms/{name}"):
            fail(rel(COMPOSE), f"{svc_name}: issuer {issuer} is not realm {name}")
        host = re.match(r"https?://([^:/]+)(?::(\d+))?", issuer)
        kc = services.get(host.group(1)) if host else None
        if kc is None:
            fail(rel(COMPOSE), f"{svc_name}: issuer {issuer} is no compose service")
        else:
            kc_env = kc.get("environment") or {}
            if str(kc_env.get("KC_HOSTNAME", "")).rstrip("/") != issuer.rsplit("/realms/", 1)[0]:
                fail(rel(COMPOSE), f"{svc_name}: issuer {issuer} is not under KC_HOSTNAME "
                     f"{kc_env.get('KC_HOSTNAME')} (tokens would carry another iss)")
        if env.get("CHORUS_OIDC_AUDIENCE") not in audiences:
            fail(rel(COMPOSE), f"{svc_name}: audience {env.get('CHORUS_OIDC_AUDIENCE')} is not "
                 f"one the realm puts in access tokens ({sorted(filter(None, audiences))})")


# ---------------------------------------------------------------- Kubernetes


def labels_match(selector: dict, labels: dict) -> bool:
    match = selector.get("matchLabels", selector) if selector else {}
    if not match and not selector.get("matchExpressions"):
        return False
    if any(labels.get(k) != v for k, v in match.items()):
        return False
    for ex in selector.get("matchExpressions") or []:
        key, op, values = ex.get("key"), ex.get("operator"), ex.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def check_k8s(read: set[str], roles: set[str], known_metrics: set[str]) -> None:
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    kust_path = K8S / "kustomization.yaml"
    kust = load_yaml(kust_path) or {}
    namespace = kust.get("namespace")
    listed = set(kust.get("resources") or [])
    files = sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml") and p != kust_path)
    for f in files:
        name = str(f.relative_to(K8S))
        if name in EXAMPLE_FILES:
            if name in listed:
                fail(rel(kust_path), f"lists {name}, an example whose values are public")
        elif name not in listed:
            fail(rel(kust_path), f"does not list {name}")
    for name in sorted(EXAMPLE_FILES):
        if not (K8S / name).exists():
            fail(rel(K8S), f"EXAMPLE_FILES names {name}, which does not exist")
    for r in sorted(listed):
        if not (K8S / r).exists():
            fail(rel(kust_path), f"lists {r}, which does not exist")

    objects = []  # (file, object)
    for f in files:
        try:
            docs = [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
        except yaml.YAMLError as e:
            fail(rel(f), f"does not parse: {e}")
            continue
        for d in docs:
            if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
                fail(rel(f), "a document that is not a Kubernetes object")
                continue
            for version in (K8S_OLDEST, latest_version()):
                try:
                    kubernetes_validate.validate(d, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    path = ".".join(str(x) for x in e.path)
                    fail(rel(f), f"{d['kind']}/{d['metadata'].get('name')} (Kubernetes {version}): {path}: {e.message}")
                except kubernetes_validate.SchemaNotFoundError as e:
                    fail(rel(f), f"{d['kind']}/{d['metadata'].get('name')}: {e.message}")
            objects.append((f, d))

    def ns(o):
        return o["metadata"].get("namespace") or namespace

    def named(kind, name, namespace_):
        return [o for _, o in objects
                if o["kind"] == kind and o["metadata"].get("name") == name and ns(o) == namespace_]

    for f, o in objects:
        if namespace and o["kind"] != "Namespace" and o["metadata"].get("namespace") not in (None, namespace):
            fail(rel(f), f"{o['kind']}/{o['metadata']['name']} is in namespace "
                 f"{o['metadata']['namespace']}, the kustomization in {namespace}")
    if namespace and not [o for _, o in objects
                          if o["kind"] == "Namespace" and o["metadata"]["name"] == namespace]:
        fail(rel(kust_path), f"namespace {namespace} is not created by any manifest")

    deployments = [(f, o) for f, o in objects if o["kind"] == "Deployment"]

    def pods_matching(selector, namespace_):
        return [o for _, o in deployments if ns(o) == namespace_
                and labels_match(selector, o["spec"]["template"]["metadata"].get("labels") or {})]

    def secret_keys(o):
        return set((o.get("data") or {}).keys()) | set((o.get("stringData") or {}).keys())

    def check_ref(f, owner, kind, name, key, namespace_, optional):
        found = named(kind, name, namespace_)
        if not found:
            if not optional:
                fail(rel(f), f"{owner} refers to {kind} {name}, which no manifest defines")
            return
        if key is not None:
            keys = secret_keys(found[0]) if kind == "Secret" else set((found[0].get("data") or {}).keys())
            if key not in keys:
                fail(rel(f), f"{owner} refers to key {key} of {kind} {name}, which has {sorted(keys)}")

    seen_roles: set[str] = set()
    for f, d in deployments:
        owner = f"Deployment/{d['metadata']['name']}"
        spec = d["spec"]
        tmpl = spec["template"]
        if not labels_match(spec.get("selector") or {}, tmpl["metadata"].get("labels") or {}):
            fail(rel(f), f"{owner}: selector does not match its pod labels")
        pod = tmpl["spec"]
        for vol in pod.get("volumes") or []:
            if "configMap" in vol:
                check_ref(f, owner, "ConfigMap", vol["configMap"]["name"], None, ns(d),
                          vol["configMap"].get("optional", False))
            if "secret" in vol:
                check_ref(f, owner, "Secret", vol["secret"]["secretName"], None, ns(d),
                          vol["secret"].get("optional", False))
        for c in pod.get("containers") or []:
            cw = f"{owner} container {c['name']}"
            for ef in c.get("envFrom") or []:
                if "configMapRef" in ef:
                    check_ref(f, cw, "ConfigMap", ef["configMapRef"]["name"], None, ns(d),
                              ef["configMapRef"].get("optional", False))
                if "secretRef" in ef:
                    check_ref(f, cw, "Secret", ef["secretRef"]["name"], None, ns(d),
                              ef["secretRef"].get("optional", False))
            for e in c.get("env") or []:
                check_deploy_env_name(rel(f), e["name"], read)
                vf = e.get("valueFrom") or {}
                for kind, field in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    if field in vf:
                        ref = vf[field]
                        check_ref(f, cw, kind, ref["name"], ref["key"], ns(d), ref.get("optional", False))
            port_names = {p.get("name") for p in c.get("ports") or []}
            for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                http = (c.get(probe) or {}).get("httpGet") or {}
                if http.get("path") != path:
                    fail(rel(f), f"{cw}: {probe} should GET {path}")
                elif isinstance(http.get("port"), str) and http["port"] not in port_names:
                    fail(rel(f), f"{cw}: {probe} uses port {http['port']}, not a container port")
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(part) or {}):
                        fail(rel(f), f"{cw}: no {part}.{r}")
            role_value = roles_in_args(c.get("args") or [])
            if role_value is None:
                fail(rel(f), f"{cw}: no --roles in args (would run every role)")
            else:
                check_roles(f"{rel(f)}: {cw}", role_value, roles)
                rs = {x.strip() for x in role_value.split(",")}
                if rs & (roles - {"gateway"} - set(PENDING_ROLES)):
                    seen_roles.add("stages")
                seen_roles.update(rs & {"gateway", "worker", "observer"})
                if "gateway" in rs:
                    # CHORUS_FILES as the container sees it: ConfigMaps, then env values
                    # (one from a Secret or the downward API is taken on trust).
                    env = {}
                    for ef in c.get("envFrom") or []:
                        if "configMapRef" in ef:
                            for cm in named("ConfigMap", ef["configMapRef"]["name"], ns(d)):
                                env.update(cm.get("data") or {})
                    for e in c.get("env") or []:
                        env[e["name"]] = e.get("value", "(from elsewhere)")
                    problem = shared_store_problem(env.get("CHORUS_FILES"))
                    if problem:
                        fail(rel(f), f"{cw}: {problem}, which the other gateway pods cannot read")
    for missing in sorted(DEPLOYED_ROLES - seen_roles):
        fail(rel(K8S), f"no Deployment runs the {missing} role")

    refused = refused_jwt_secrets()
    for f, o in objects:
        kind, name = o["kind"], o["metadata"]["name"]
        if kind in ("ConfigMap", "Secret"):
            keys = set((o.get("data") or {}).keys()) | set((o.get("stringData") or {}).keys())
            for k in keys:
                check_deploy_env_name(f"{rel(f)}: {kind}/{name}", k, read)
            secret = (o.get("stringData") or {}).get("CHORUS_JWT_SECRET")
            if secret is not None and secret not in refused:
                fail(rel(f), f"{kind}/{name}: its CHORUS_JWT_SECRET is not in EXAMPLE_JWT_SECRETS "
                     f"({rel(CONFIG_LIB)}), so a node would run with a published secret")
        elif kind == "Service":
            sel = o["spec"].get("selector") or {}
            pods = pods_matching({"matchLabels": sel}, ns(o)) if sel else []
            if not pods:
                fail(rel(f), f"Service/{name}: selector {sel} matches no Deployment's pods")
            for p in o["spec"].get("ports") or []:
                tp = p.get("targetPort")
                if isinstance(tp, str):
                    for dep in pods:
                        names = {cp.get("name") for c in dep["spec"]["template"]["spec"]["containers"]
                                 for cp in c.get("ports") or []}
                        if tp not in names:
                            fail(rel(f), f"Service/{name}: targetPort {tp} is no port of {dep['metadata']['name']}")
        elif kind == "PodDisruptionBudget":
            if not pods_matching(o["spec"].get("selector") or {}, ns(o)):
                fail(rel(f), f"PodDisruptionBudget/{name}: selector matches no Deployment's pods")
        elif kind == "HorizontalPodAutoscaler":
            ref = o["spec"]["scaleTargetRef"]
            if not named(ref["kind"], ref["name"], ns(o)):
                fail(rel(f), f"HorizontalPodAutoscaler/{name}: scales {ref['kind']}/{ref['name']}, "
                     "which no manifest defines")
            else:
                target = named(ref["kind"], ref["name"], ns(o))[0]
                if "replicas" in target["spec"]:
                    fail(rel(f), f"{ref['kind']}/{ref['name']} sets replicas although an HPA owns them "
                         "(every apply would reset them)")
            for m in o["spec"].get("metrics") or []:
                for key in ("external", "pods", "object"):
                    if key in m:
                        metric = m[key]["metric"]["name"]
                        if not metric_known(metric, known_metrics):
                            fail(rel(f), f"HorizontalPodAutoscaler/{name}: metric {metric} is not exported by the code")
        elif kind == "Ingress":
            for rule in o["spec"].get("rules") or []:
                for p in (rule.get("http") or {}).get("paths") or []:
                    svc = p["backend"].get("service") or {}
                    found = named("Service", svc.get("name"), ns(o))
                    if not found:
                        fail(rel(f), f"Ingress/{name}: backend {svc.get('name')} is no Service")
                        continue
                    port = svc.get("port") or {}
                    ports = found[0]["spec"].get("ports") or []
                    if "name" in port and port["name"] not in {p.get("name") for p in ports}:
                        fail(rel(f), f"Ingress/{name}: Service {svc['name']} has no port {port['name']}")
                    if "number" in port and port["number"] not in {p.get("port") for p in ports}:
                        fail(rel(f), f"Ingress/{name}: Service {svc['name']} has no port {port['number']}")

    kubectl = shutil.which("kubectl")
    if kubectl:
        r = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True)
        if r.returncode != 0:
            fail(rel(kust_path), f"kubectl kustomize: {(r.stderr or r.stdout).strip()}")
    else:
        notes.append("kubectl not installed: the kustomization's resources were checked, not built")


# ---------------------------------------------------------------- main


def main() -> int:
    read = code_env_vars()
    metrics = code_metrics()
    roles = code_roles()
    for m in sorted(metrics & set(PENDING_METRICS)):
        notes.append(f"{m} is now exported by the code: drop it from PENDING_METRICS")
    for r in sorted(roles & set(PENDING_ROLES)):
        notes.append(f"role {r} now exists in the code: drop it from PENDING_ROLES")
    known_metrics = metrics | set(PENDING_METRICS)

    check_env(read)
    services = check_compose(read, roles)
    check_prometheus(services, known_metrics)
    check_promtail(services)
    check_grafana(known_metrics, services)
    check_keycloak(services)
    check_k8s(read, roles, known_metrics)

    for n in notes:
        print(f"note: {n}")
    if problems:
        unique = list(dict.fromkeys(problems))
        print(f"deployment check: {len(unique)} problem(s)", file=sys.stderr)
        for p in unique:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"deployment check: ok ({len(read)} environment variables, {len(metrics)} metrics in the code, "
          f"{len(services)} compose services, roles {', '.join(sorted(roles))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The monitoring files of docker/: Prometheus scrape config, Grafana provisioning, dashboard.

Runs without Docker. The metrics the code exports are read from the real prometheus_client
registries: the worker's and the trainer's metrics are built with their HTTP endpoint
stubbed out, the store API's ``ProxyApi`` on a stub store with one version. Every metric
name in every panel's PromQL must be one of them (with a sample suffix its type exposes), every label it matches
or groups by must exist, and every job it selects must be scraped. The scrape config must
name every compose service that exports metrics, at the port compose configures, and
compose must mount the configuration files into the prometheus and grafana services.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.docker import test_compose as tc

DOCKER = tc.DOCKER
PROMETHEUS_CONFIG = DOCKER / "prometheus" / "prometheus.yml"
GRAFANA = DOCKER / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "idproxy.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "idproxy.yml"

model = tc.model  # the compose model fixture: raw YAML, and resolved when Compose is present

# Series Prometheus itself adds for every target (not exported by the code).
SYNTHETIC = {"up": ("job", "instance")}
TARGET_LABELS = ("job", "instance")  # attached to every scraped series

# prometheus_client's sample suffixes per metric type (text exposition format).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}


# ------------------------------------------------------------------ exported metrics
@dataclass(frozen=True)
class Family:
    name: str
    type: str
    labels: tuple[str, ...]
    exporter: str

    def series(self) -> dict[str, tuple[str, ...]]:
        """Exposed sample name -> its label names."""
        out = {}
        for suffix in SUFFIXES[self.type]:
            extra = ("le",) if suffix == "_bucket" else ()
            out[self.name + suffix] = self.labels + extra
        return out


def _families(registry, exporter: str) -> list[Family]:
    # prometheus_client has no public accessor for a labelled metric's label names while it
    # has no children yet; the registry's collectors (the metric objects) carry them.
    labels = {
        c._name: tuple(c._labelnames)
        for c in registry._collector_to_names
        if hasattr(c, "_labelnames")
    }
    # a custom collector (the store's versions) declares none: its samples carry them
    return [
        Family(
            m.name,
            m.type,
            labels.get(m.name) or tuple(sorted({k for x in m.samples for k in x.labels})),
            exporter,
        )
        for m in registry.collect()
        if m.type in SUFFIXES
    ]


class OneVersionStore:
    """What the read API's version metrics read: one published, active version."""

    def versions(self):
        from store.base import VersionInfo

        return [VersionInfo(version="v1", status="active", created_at=0, published_at=1)]

    def active_version(self) -> str:
        return "v1"

    def refresh(self) -> None:
        pass


@functools.cache
def _registries() -> dict[str, object]:
    """Exporter (the idproxy subcommand) -> the registry its metrics live in."""
    from store.http_api import ProxyApi
    from streams.loop_metrics import LoopMetrics
    from trainer.online_report import TrainerMetrics

    with pytest.MonkeyPatch.context() as mp:  # no HTTP server: the registries only
        mp.setattr("idproxy.prometheus.serve_metrics", lambda registry, port, host: (host, port))
        worker_metrics = LoopMetrics("worker", 9100, "127.0.0.1")
        materializer_metrics = LoopMetrics("materializer", 9102, "127.0.0.1")
        trainer_metrics = TrainerMetrics(9101, "127.0.0.1")
    api = ProxyApi(OneVersionStore(), max_request_bytes=1, max_batch_items=1)
    return {
        "worker": worker_metrics.registry,
        "materialize": materializer_metrics.registry,
        "trainer": trainer_metrics.registry,
        "store serve": api.registry,
    }


@functools.cache
def exported() -> dict[str, Family]:
    out: dict[str, Family] = {}
    for exporter, registry in _registries().items():
        for fam in _families(registry, exporter):
            assert fam.name not in out, f"{fam.name} exported twice"
            out[fam.name] = fam
    return out


@functools.cache
def exposed_series() -> dict[str, tuple[str, ...]]:
    """Every sample name a scrape can return -> its label names (target labels included)."""
    out = {name: labels for name, labels in SYNTHETIC.items()}
    for fam in exported().values():
        for name, labels in fam.series().items():
            out[name] = labels + TARGET_LABELS
    return out


def family_of(series: str) -> Family | None:
    """The exported family a sample name belongs to: its name plus a suffix its type has."""
    return next((f for f in exported().values() if series in f.series()), None)


def test_the_code_exports_metrics_from_every_exporter():
    by_exporter: dict[str, set[str]] = {}
    for fam in exported().values():
        by_exporter.setdefault(fam.exporter, set()).add(fam.name)
    assert set(by_exporter) == set(EXPORTERS)
    assert "idproxy_worker_batch_seconds" in by_exporter["worker"]
    assert exported()["idproxy_worker_batch_seconds"].type == "histogram"
    assert exported()["idproxy_api_requests"].labels == ("route", "status")
    assert family_of("idproxy_api_requests_total").name == "idproxy_api_requests"
    assert family_of("idproxy_worker_dead_letters_total") is None  # a gauge: no _total


# ------------------------------------------------------------------ PromQL
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(=~|!~|!=|=)")
_JOB = re.compile(r'\bjob\s*(=~|=)\s*"([^"]*)"')
KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "group_left", "group_right"}
KEYWORDS |= {"inf", "nan"}


@dataclass
class Query:
    metrics: list[tuple[str, set[str]]] = field(default_factory=list)  # (name, matcher labels)
    grouping: set[str] = field(default_factory=set)
    jobs: set[str] = field(default_factory=set)


def parse(expr: str) -> Query:
    """Metric names, the labels their selectors match, grouping labels and selected jobs."""
    q = Query()
    for op, value in _JOB.findall(expr):
        q.jobs |= set(value.split("|")) if op == "=~" else {value}
    text = _STRING.sub('""', expr)
    text = _RANGE.sub("", text)
    for m in _GROUPING.finditer(text):
        q.grouping |= {g.strip() for g in m.group(2).split(",") if g.strip()}
    text = _GROUPING.sub(" ", text)
    for m in _SELECTOR.finditer(text):
        name, braces = m.group(1), m.group(2)
        follows = text[m.end() :].lstrip()[:1]
        if name.lower() in KEYWORDS or (not braces and follows == "("):
            continue  # an operator keyword, or a function / aggregation
        q.metrics.append((name, {label for label, _ in _MATCHER.findall(braces or "")}))
    return q


def test_parse_promql():
    q = parse(
        'histogram_quantile(0.99, sum by (le, route) (rate(idproxy_api_latency_seconds_bucket{route!="metrics"}[$__rate_interval]))) '
        '/ on (job) group_left sum(up{job=~"worker|api"}) * 1e-3'
    )
    assert q.metrics == [("idproxy_api_latency_seconds_bucket", {"route"}), ("up", {"job"})]
    assert q.grouping == {"le", "route", "job"}
    assert q.jobs == {"worker", "api"}


# ------------------------------------------------------------------ dashboard
def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))  # a collapsed row holds its panels
    return out


def scrape_config() -> dict:
    return yaml.safe_load(PROMETHEUS_CONFIG.read_text())


def scraped_jobs() -> set[str]:
    return {job["job_name"] for job in scrape_config()["scrape_configs"]}


def datasource_uid() -> str:
    (ds,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    return ds["uid"]


def dashboard_problems(dashboard: dict) -> list[str]:
    """What is wrong with the dashboard's queries; empty when every one checks out."""
    problems = []
    series, jobs = exposed_series(), scraped_jobs()
    for p in panels(dashboard):
        if p.get("type") in ("row", "text"):
            continue
        title = p.get("title")
        exprs = [t.get("expr", "") for t in p.get("targets", [])]
        if not exprs or not all(e.strip() for e in exprs):
            problems.append(f"{title}: a panel without a PromQL expression")
        for t in p.get("targets", []):
            if (t.get("datasource") or p.get("datasource") or {}).get("uid") != datasource_uid():
                problems.append(f"{title}: not on the provisioned Prometheus data source")
        for expr in exprs:
            q = parse(expr)
            if not q.metrics:
                problems.append(f"{title}: no metric in {expr!r}")
            labels: set[str] = set()
            for name, matched in q.metrics:
                if name not in series:
                    base = re.sub(r"_(bucket|count|sum|total|created)$", "", name)
                    fam = exported().get(base) or exported().get(name)
                    hint = f" ({fam.type} {fam.name} has no such sample)" if fam else ""
                    problems.append(f"{title}: {name} is not exported{hint}")
                    continue
                labels |= set(series[name])
                for label in matched - set(series[name]):
                    problems.append(f"{title}: {name} has no label {label!r}")
            for label in q.grouping - labels:
                problems.append(f"{title}: grouping by {label!r}, which no series has")
            for job in q.jobs - jobs:
                problems.append(f"{title}: job {job!r} is not scraped")
    return problems


def test_dashboard_uses_only_exported_metrics():
    assert dashboard_problems(load_dashboard()) == []


def test_every_exported_metric_has_a_panel():
    used = {
        fam.name
        for p in panels(load_dashboard())
        for t in p.get("targets", [])
        for name, _ in parse(t.get("expr", "")).metrics
        if (fam := family_of(name))
    }
    assert set(exported()) - used == set(), "exported but on no panel"


def _replace_first_expr(dashboard: dict, expr: str) -> dict:
    bad = copy.deepcopy(dashboard)
    target = next(t for p in panels(bad) for t in p.get("targets", []))
    target["expr"] = expr
    return bad


@pytest.mark.parametrize(
    "expr, complaint",
    [
        ("rate(idproxy_worker_bogus_total[5m])", "idproxy_worker_bogus_total is not exported"),
        ("idproxy_worker_batch_latency_seconds", "is not exported"),
        ("rate(idproxy_worker_dead_letters_total[5m])", "gauge idproxy_worker_dead_letters"),
        ("idproxy_trainer_auc_all_bucket", "gauge idproxy_trainer_auc_all"),
        ('sum(rate(idproxy_api_requests_total{path="/x"}[5m]))', "no label 'path'"),
        ("sum by (topic) (idproxy_worker_lag)", "grouping by 'topic'"),
        ('up{job="processor"}', "job 'processor' is not scraped"),
        ("sum(rate(node_cpu_seconds_total[5m]))", "node_cpu_seconds_total is not exported"),
    ],
    ids=["bogus", "renamed", "gauge-total", "gauge-bucket", "label", "grouping", "job", "foreign"],
)
def test_a_wrong_query_is_caught(expr, complaint):
    problems = dashboard_problems(_replace_first_expr(load_dashboard(), expr))
    assert any(complaint in p for p in problems), problems


def test_dashboard_structure():
    dash = load_dashboard()
    assert dash["uid"] == "idproxy" and dash["title"]
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels(dash):
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, p["title"]
    titles = " ".join(p["title"].lower() for p in panels(dash))
    for topic in ("freshness", "lag", "dead-letter", "auc", "latency", "throughput", "api"):
        assert topic in titles, topic


# ------------------------------------------------------------------ scrape config vs compose
def _worker_port(svc: dict) -> int:
    return int(tc.environment(svc).get("IDPROXY_WORKER_METRICS_PORT", 0))


def _flag_port(svc: dict) -> int:
    argv = tc.command(svc)
    return int(argv[argv.index("--metrics-port") + 1]) if "--metrics-port" in argv else 0


def _api_port(svc: dict) -> int:
    from idproxy.settings import Settings

    default = Settings().store.http_port
    return int(tc.environment(svc).get("IDPROXY_STORE_HTTP_PORT", default))


# idproxy subcommand -> (its metrics port in a compose service, the env var of its bind host)
EXPORTERS = {
    "worker": (_worker_port, "IDPROXY_METRICS_HOST"),
    "materialize": (_flag_port, "IDPROXY_METRICS_HOST"),  # --metrics-port, as the trainer
    "trainer": (_flag_port, "IDPROXY_METRICS_HOST"),
    "store serve": (_api_port, "IDPROXY_STORE_HTTP_HOST"),
}


def exporting_services(model: dict) -> dict[str, tuple[tuple, dict]]:
    out = {}
    for name, svc in model["services"].items():
        argv = tc.command(svc)
        if argv[:1] != ["idproxy"]:
            continue
        for sub, exporter in EXPORTERS.items():
            if argv[1 : 1 + len(sub.split())] == sub.split():
                out[name] = (exporter, svc)
    return out


def scrape_targets() -> set[tuple[str, str, int]]:
    """(job, host, port) of every static target and DNS-discovered name."""
    out = set()
    for job in scrape_config()["scrape_configs"]:
        for sc in job.get("static_configs", []):
            for target in sc["targets"]:
                host, _, port = target.rpartition(":")
                out.add((job["job_name"], host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            for name in dns["names"]:
                out.add((job["job_name"], name, int(dns["port"])))
    return out


def test_scrape_config_parses():
    cfg = scrape_config()
    assert cfg["global"]["scrape_interval"]
    names = [job["job_name"] for job in cfg["scrape_configs"]]
    assert len(names) == len(set(names))


def test_every_exporting_service_is_scraped(model):
    services = exporting_services(model)
    assert set(services) == {"worker", "materializer", "trainer", "api"}, sorted(services)
    targets = {(host, port) for _, host, port in scrape_targets()}
    for name, ((port_of, host_var), svc) in services.items():
        port = port_of(svc)
        assert port > 0, f"{name}: metrics are off (port 0)"
        host = tc.environment(svc).get(host_var, "127.0.0.1")  # the settings' default
        assert host == "0.0.0.0", f"{name}: {host_var}={host}, unreachable from prometheus"
        assert (name, port) in targets, f"{name}:{port} is not scraped"
    for _, host, _ in scrape_targets():
        assert host in services, f"scrape target {host} exports no metrics"


def test_worker_replicas_are_discovered_by_dns():
    (job,) = [j for j in scrape_config()["scrape_configs"] if j["job_name"] == "worker"]
    assert job["dns_sd_configs"][0]["names"] == ["worker"]  # one A record per replica


# ------------------------------------------------------------------ compose wiring
def config_mounts(model: dict, service: str) -> dict[str, Path]:
    """Target in the container -> the repository file compose mounts there (read-only)."""
    out = {}
    for entry in model["services"][service].get("configs") or []:
        source, target = (
            (entry, f"/{entry}")
            if isinstance(entry, str)
            else (
                entry["source"],
                entry.get("target") or f"/{entry['source']}",
            )
        )
        mode = entry.get("mode") if isinstance(entry, dict) else None
        assert mode is None or int(str(mode), 8) & 0o222 == 0, f"{service}: {target} writable"
        out[target] = (DOCKER / model["configs"][source]["file"]).resolve()
    return out


def test_compose_mounts_the_prometheus_config(model):
    prom = model["services"]["prometheus"]
    assert prom["image"].startswith("prom/prometheus:v")
    mounts = config_mounts(model, "prometheus")
    target = next(a.split("=", 1)[1] for a in tc.command(prom) if a.startswith("--config.file="))
    assert mounts[target] == PROMETHEUS_CONFIG.resolve()


def test_compose_mounts_the_grafana_provisioning_and_dashboard(model):
    graf = model["services"]["grafana"]
    assert re.fullmatch(r"grafana/grafana(-oss)?:\d+\.\d+\.\d+", graf["image"])
    mounts = config_mounts(model, "grafana")
    assert mounts["/etc/grafana/provisioning/datasources/prometheus.yml"] == DATASOURCES.resolve()
    assert (
        mounts["/etc/grafana/provisioning/dashboards/idproxy.yml"] == DASHBOARD_PROVIDERS.resolve()
    )
    (dash_target,) = [t for t, src in mounts.items() if src == DASHBOARD.resolve()]
    (provider,) = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    assert Path(dash_target).parent == Path(provider["options"]["path"])
    env = tc.environment(graf)
    assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == dash_target
    assert "prometheus" in tc.depends_on(graf)


def test_grafana_datasource_is_the_compose_prometheus(model):
    (ds,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090"
    published = [spec for _, spec in tc.ports(model["services"]["prometheus"])]
    assert any("9090" in spec for spec in published)

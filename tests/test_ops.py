"""The monitoring files under ops/: Prometheus rules and config, the Grafana dashboard, compose services.

Every metric name the rules, their unit tests and the dashboard use must be one payrecon exports (a
renamed metric would otherwise leave an alert silently never firing). promtool (Debian's
``prometheus`` package) checks and unit-tests the rules when it is installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

from worker import metrics

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "ops" / "prometheus"
RULES = PROMETHEUS / "rules.yml"
RULES_TEST = PROMETHEUS / "rules_test.yml"
PROMETHEUS_CONFIG = PROMETHEUS / "prometheus.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "dashboards" / "payrecon.json"
COMPOSE = ROOT / "docker-compose.yml"

# Read from the database and the broker at scrape time (worker.observability.StateCollector), or
# exported by the nightly reconciliation: not module-level objects of worker.metrics.
SCRAPE_TIME = {
    "payrecon_pending_payments",
    "payrecon_oldest_pending_payment_age_seconds",
    "payrecon_dead_letters",
    "payrecon_waiting_deliveries",
    "payrecon_delivery_overdue_seconds",
    "payrecon_queue_depth",
    "payrecon_reconciliation_last_success_timestamp_seconds",
    "payrecon_reconciliation_runs_total",
    "payrecon_reconciliation_items_total",
    "payrecon_reconciliation_duration_seconds_bucket",
    "payrecon_reconciliation_duration_seconds_sum",
    "payrecon_reconciliation_duration_seconds_count",
}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}
ALERTS = {
    "PaymentSuccessRateLow",
    "ProviderErrorRateHigh",
    "OldestPendingPaymentTooOld",
    "NoSuccessfulReconciliation",
    "DeadLettersGrowing",
    "QueueBacklog",
    "WorkerDown",
    "BeatSilent",
}

METRIC_NAME = re.compile(r"(?<![\w:])payrecon_[a-z_]+")
RECORDED_NAME = re.compile(r"(?<![\w:])payrecon:[a-z0-9_:]+")


def exported_names() -> set[str]:
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            names.update(value._name + suffix for suffix in SUFFIXES[value._type])
    return names


def recording_rules() -> set[str]:
    return set(re.findall(r"^\s*- record:\s*(\S+)\s*$", RULES.read_text(), re.MULTILINE))


def alert_blocks() -> dict[str, str]:
    """Each alerting rule's text, by name (the rules file is YAML, but PyYAML is not a dependency)."""
    text = RULES.read_text()
    starts = [(m.start(), m.group(1)) for m in re.finditer(r"^\s*- alert:\s*(\w+)\s*$", text, re.MULTILINE)]
    ends = [start for start, _ in starts[1:]] + [len(text)]
    return {name: text[start:end] for (start, name), end in zip(starts, ends, strict=True)}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[str]:
    board = dashboard()
    queries = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    queries += [var["query"] for var in board["templating"]["list"] if var["type"] == "query"]
    return queries


def known_names() -> set[str]:
    return exported_names() | SCRAPE_TIME | recording_rules() | {"up"}


# --------------------------------------------------------------------------- metric names


def test_exported_names_include_the_suffixes_prometheus_client_adds() -> None:
    names = exported_names()
    assert {"payrecon_payments_final_total", "payrecon_provider_call_seconds_bucket"} <= names
    assert "payrecon_beat_last_dispatch_timestamp_seconds" in names
    assert "payrecon_payments_final" not in names


@pytest.mark.parametrize("path", [RULES, RULES_TEST], ids=lambda p: p.name)
def test_rules_use_only_exported_metrics(path: Path) -> None:
    text = path.read_text()
    used = set(METRIC_NAME.findall(text)) | set(RECORDED_NAME.findall(text))
    assert used, "no metric name found: the pattern is wrong"
    assert used - known_names() == set()


def test_dashboard_uses_only_exported_metrics() -> None:
    used: set[str] = set()
    for query in dashboard_queries():
        found = set(METRIC_NAME.findall(query)) | set(RECORDED_NAME.findall(query))
        assert found or re.search(r"\bup\{", query), f"no payrecon metric in {query!r}"
        used |= found
    assert used - known_names() == set()


def test_recording_rules_follow_the_naming_convention() -> None:
    names = recording_rules()
    assert {"payrecon:payments_success_ratio:rate1h", "payrecon:provider_error_ratio:rate5m"} <= names
    for name in names:
        assert re.fullmatch(r"payrecon:[a-z0-9_]+:[a-z0-9_]+", name), name


# --------------------------------------------------------------------------- alerting rules


def test_every_alert_has_a_severity_and_operator_annotations() -> None:
    blocks = alert_blocks()
    assert set(blocks) >= ALERTS
    for name, block in blocks.items():
        assert re.search(r"^\s+severity:\s*(critical|warning)\s*$", block, re.MULTILINE), name
        assert re.search(r"^\s+summary:\s*\S", block, re.MULTILINE), name
        assert re.search(r"^\s+description:\s*\S", block, re.MULTILINE), name


def test_every_alert_has_a_unit_test() -> None:
    tested = set(re.findall(r"^\s*- alertname:\s*(\w+)\s*$", RULES_TEST.read_text(), re.MULTILINE))
    assert set(alert_blocks()) - tested == set()


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("promtool")
    if executable is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return subprocess.run([executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize(
    "args",
    [
        ("check", "rules", "ops/prometheus/rules.yml"),
        ("test", "rules", "ops/prometheus/rules_test.yml"),
        ("check", "config", "ops/prometheus/prometheus.yml"),
    ],
    ids=" ".join,
)
def test_promtool(args: tuple[str, ...]) -> None:
    result = promtool(*args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_worker_and_beat_with_the_rules() -> None:
    config = PROMETHEUS_CONFIG.read_text()
    assert re.search(r"^\s*scrape_interval:\s*15s\s*$", config, re.MULTILINE)
    assert re.search(r"^\s*-\s*rules\.yml\s*$", config, re.MULTILINE)
    assert "job_name: payrecon-worker" in config  # WorkerDown matches up{job="payrecon-worker"}
    assert re.search(r"names:\s*\[worker\]", config)
    assert "port: 9808" in config
    assert '"beat:9809"' in config


# --------------------------------------------------------------------------- Grafana


def test_dashboard_is_a_classic_model_with_fixed_uid_and_variables() -> None:
    board = dashboard()
    assert board["uid"] == "payrecon-overview"
    assert board["title"] == "payrecon"
    assert isinstance(board["schemaVersion"], int)
    assert "apiVersion" not in board, "commit the Classic JSON model, not a V2 resource"
    variables = {var["name"]: var for var in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    provider = variables["provider"]
    assert provider["type"] == "query"
    assert provider["multi"] is True
    assert provider["query"] == "label_values(payrecon_payments_final_total, provider)"
    assert provider["datasource"]["uid"] == "${datasource}"


def test_every_panel_queries_the_datasource_variable() -> None:
    panels = dashboard()["panels"]
    assert len(panels) >= 10
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip(), panel["title"]
    assert any("payrecon:payments_success_ratio:rate1h" in q for q in dashboard_queries())
    assert any("histogram_quantile" in q for q in dashboard_queries())


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    provisioning = ROOT / "ops" / "grafana" / "provisioning"
    datasource = (provisioning / "datasources" / "prometheus.yml").read_text()
    assert "type: prometheus" in datasource
    assert "url: http://prometheus:9090" in datasource
    dashboards = (provisioning / "dashboards" / "payrecon.yml").read_text()
    assert "type: file" in dashboards
    path = re.search(r"^\s*path:\s*(\S+)\s*$", dashboards, re.MULTILINE)
    assert path
    assert f"./ops/grafana/dashboards:{path.group(1)}:ro" in COMPOSE.read_text()


# --------------------------------------------------------------------------- docker compose


def test_compose_file_has_prometheus_and_grafana() -> None:
    text = COMPOSE.read_text()
    for mount in ("./ops/prometheus:", "./ops/grafana/provisioning:", "./ops/grafana/dashboards:"):
        assert mount in text
        assert (ROOT / mount.rstrip(":")).is_dir()
    assert '"127.0.0.1:9090:9090"' in text
    assert '"127.0.0.1:3000:3000"' in text

    executable = shutil.which("docker-compose")
    if executable is None:
        pytest.skip("docker-compose is not installed (PyYAML is not a dependency to parse the file)")

    def compose(*args: str) -> subprocess.CompletedProcess[str]:
        command = [executable, "-f", str(COMPOSE), *args]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)

    checked = compose("config", "-q")
    assert checked.returncode == 0, checked.stderr
    services = compose("config", "--services")
    assert services.returncode == 0, services.stderr
    assert {"prometheus", "grafana", "worker", "beat"} <= set(services.stdout.split())


def test_compose_runs_the_receiver_with_the_broker_only() -> None:
    executable = shutil.which("docker-compose")
    if executable is None:
        pytest.skip("docker-compose is not installed (PyYAML is not a dependency to parse the file)")
    rendered = subprocess.run(
        [executable, "-f", str(COMPOSE), "config"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    lines = rendered.stdout.splitlines()
    start = lines.index("  receiver:")
    end = next(i for i in range(start + 1, len(lines)) if re.match(r"^  \S", lines[i]))
    block = "\n".join(lines[start:end])
    assert "- payrecon\n    - receive\n    - --host\n    - 0.0.0.0\n    - --port\n    - '8000'" in block
    environment = block[block.index("    environment:\n") :].split("\n    healthcheck:")[0]
    names = re.findall(r"^      (\w+):", environment, flags=re.MULTILINE)
    assert sorted(names) == ["CELERY_BROKER_URL", "FORWARDED_ALLOW_IPS", "PAYRECON_RECEIVER_NAME"]  # no secrets
    assert "127.0.0.1:8000:8000" in block and "http://127.0.0.1:8000/healthz" in block

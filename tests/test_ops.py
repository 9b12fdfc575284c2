"""The monitoring files under ops/: Prometheus rules and config, the Grafana dashboard, compose services.

Every metric name the rules, their unit tests and the dashboard use must be one payrecon exports (a
renamed metric would otherwise leave an alert silently never firing). promtool (Debian's
``prometheus`` package) checks and unit-tests the rules when it is installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis
from prometheus_client.metrics import MetricWrapperBase

from tests.helpers import REDIS_SERVER, _free_port
from worker import metrics
from worker.settings import CREDENTIALS

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
    "payrecon_exception_cases_open",
    "payrecon_exception_cases_overdue",
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


ENV_EXAMPLE = ROOT / ".env.example"
SANDBOX_ENV = ROOT / "ops" / "sandbox.env"
INIT_ROLES = ROOT / "ops" / "postgres" / "init-roles.sh"
#: Secrets that must be non-blank (``${VAR:?…}``): compose stops without them.
REQUIRED_SECRETS = (
    "POSTGRES_PASSWORD", "PAYRECON_DB_OWNER_PASSWORD", "PAYRECON_DB_APP_PASSWORD", "REDIS_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
)  # fmt: skip
#: Provider credentials (``${VAR?…}``): must be listed in .env; blank disables the provider.
PROVIDER_SECRETS = (*(name for names in CREDENTIALS.values() for name in names), "WAVE_WEBHOOK_SECRETS")
#: The only variables compose may default, and to what (never a secret, never the sandbox).
DEFAULTS = {
    "PAYRECON_TIMEZONE": "Africa/Abidjan",
    "PAYRECON_LANGUAGE": "en",  # the words of the reports and exception cases (en or fr)
    "PAYRECON_RECEIVER_NAME": "compose-receiver",
    "FORWARDED_ALLOW_IPS": "127.0.0.1",
    "CINETPAY_API_URL": "",  # blank: the real provider's URL (worker.settings)
    "MTN_MOMO_API_URL": "",
    "ORANGE_MONEY_API_URL": "",
    "WAVE_API_URL": "",
    "WAVE_WEBHOOK_SHARED_SECRET": "",  # optional: unset unless given
    "MTN_MOMO_CALLBACK_HOST": "",  # optional: the callback host check is off unless given
    "ORANGE_MONEY_NOTIF_URL": "",  # optional: the default notif_url rules unless given
}


def docker_compose() -> str:
    executable = shutil.which("docker-compose")
    if executable is None:
        pytest.skip("docker-compose is not installed (PyYAML is not a dependency to parse the file)")
    return executable


def compose(env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``docker-compose`` as an operator runs it, with ``env_file`` as its .env and nothing else from
    this process's environment (a variable set here would override the file)."""
    command = [docker_compose(), "--env-file", str(env_file), "-f", str(COMPOSE), *args]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}  # noqa: S108
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)


def env_file(path: Path, **values: str | None) -> Path:
    """.env.example filled in: every required secret given, then ``values`` (None: the line removed)."""
    lines = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if re.match(r"^[A-Z_]+=", line):
            name, _, value = line.partition("=")
            lines[name] = f"{name}-{os.getpid()}" if name in REQUIRED_SECRETS else value
    for name, value in values.items():
        if value is None:
            lines.pop(name, None)
        else:
            lines[name] = value
    path.write_text("".join(f"{name}={value}\n" for name, value in lines.items()))
    return path


def service(rendered: str, name: str) -> str:
    """One service's block of ``docker-compose config``'s output."""
    lines = rendered.splitlines()
    start = lines.index(f"  {name}:")
    end = next(i for i in range(start + 1, len(lines)) if re.match(r"^  \S", lines[i]) or re.match(r"^\S", lines[i]))
    return "\n".join(lines[start:end])


def environment(block: str) -> dict[str, str]:
    if "    environment:\n" not in block:
        return {}
    part = block[block.index("    environment:\n") + len("    environment:\n") :]
    found = {}
    for line in part.splitlines():
        match = re.match(r"^      (\w+): ?(.*)$", line)
        if match is None:
            break
        found[match.group(1)] = match.group(2).strip("'\"")
    return found


@pytest.fixture
def production(tmp_path: Path) -> str:
    """``docker-compose config`` of a production .env: real-looking CinetPay credentials, no URL, the
    other providers blank (disabled)."""
    path = env_file(
        tmp_path / ".env", CINETPAY_API_KEY="live-key-7f3a", CINETPAY_SITE_ID="5551234",
        CINETPAY_SECRET_KEY="live-secret-9c1d",
    )  # fmt: skip
    rendered = compose(path, "config")
    assert rendered.returncode == 0, rendered.stderr
    return rendered.stdout


def test_compose_file_has_prometheus_and_grafana(production: str, tmp_path: Path) -> None:
    text = COMPOSE.read_text()
    for mount in ("./ops/prometheus:", "./ops/grafana/provisioning:", "./ops/grafana/dashboards:"):
        assert mount in text
        assert (ROOT / mount.rstrip(":")).is_dir()
    assert '"127.0.0.1:9090:9090"' in text
    assert '"127.0.0.1:3000:3000"' in text
    assert compose(env_file(tmp_path / "prod.env"), "config", "-q").returncode == 0
    services = compose(env_file(tmp_path / "prod.env"), "config", "--services")
    assert services.returncode == 0, services.stderr
    assert {"prometheus", "grafana", "worker", "beat"} <= set(services.stdout.split())


def test_compose_runs_the_receiver_with_the_broker_only(production: str) -> None:
    block = service(production, "receiver")
    assert "- payrecon\n    - receive\n    - --host\n    - 0.0.0.0\n    - --port\n    - '8000'" in block
    names = sorted(environment(block))
    assert names == ["CELERY_BROKER_URL", "FORWARDED_ALLOW_IPS", "PAYRECON_RECEIVER_NAME"]  # no secrets
    assert "127.0.0.1:8000:8000" in block and "http://127.0.0.1:8000/healthz" in block


def test_no_secret_in_compose_has_a_default() -> None:
    text = COMPOSE.read_text()
    references = re.findall(r"\$\{(\w+)(:?[-?])?([^}]*)\}", text)
    assert references, "no ${VAR} found: the pattern is wrong"
    for name, operator, rest in references:
        if name in REQUIRED_SECRETS:
            assert operator == ":?" and rest, f"{name} must be ${{{name}:?message}}"
        elif name in PROVIDER_SECRETS:
            assert operator == "?" and rest, f"{name} must be ${{{name}?message}} (listed in .env, blank disables)"
        else:
            assert name in DEFAULTS and operator == ":-", f"{name}: not a known setting, or used without a default"
            assert rest == DEFAULTS[name], f"{name} defaults to {rest!r}"
    assert {name for name, _, _ in references} >= {*REQUIRED_SECRETS, *PROVIDER_SECRETS}
    assert "sandbox-" not in text and "sandbox:8765" not in text  # no published sandbox value


def test_compose_refuses_a_missing_or_blank_secret_by_name(tmp_path: Path) -> None:
    for name in REQUIRED_SECRETS:
        for value in (None, ""):
            checked = compose(env_file(tmp_path / f"{name}.env", **{name: value}), "config", "-q")
            assert checked.returncode != 0, name
            assert f"set {name} in .env" in checked.stderr
    for name in PROVIDER_SECRETS:  # forgotten: refused; blank: the provider is off
        checked = compose(env_file(tmp_path / f"{name}.env", **{name: None}), "config", "-q")
        assert checked.returncode != 0 and f"list {name} in .env" in checked.stderr, name
    assert compose(env_file(tmp_path / "blank.env"), "config", "-q").returncode == 0


def test_a_real_key_with_no_url_goes_to_the_real_provider_and_blank_disables(production: str) -> None:
    from worker.settings import CINETPAY_DEFAULT_URL, Settings

    worker = environment(service(production, "worker"))
    assert worker["CINETPAY_API_KEY"] == "live-key-7f3a" and worker["CINETPAY_API_URL"] == ""
    assert not any("sandbox" in value for value in worker.values())
    # What the worker makes of that environment (the variables compose passes, as it passes them).
    settings = Settings.from_env(worker)
    assert settings.providers == ("cinetpay",)
    assert settings.cinetpay is not None and settings.cinetpay.api_url == CINETPAY_DEFAULT_URL
    assert worker["PAYRECON_LANGUAGE"] == "en" and settings.language == "en"  # .env may say fr


def test_the_sandbox_is_opt_in_and_the_demo_env_matches_it(production: str, tmp_path: Path) -> None:
    from providers.sandbox import mtn_momo, orange_money, server, wave

    for name in ("postgres", "redis", "migrate", "receiver", "worker", "beat", "prometheus", "grafana"):
        assert "    profiles:" not in service(production, name), name
    assert "    profiles:\n    - sandbox\n" in service(production, "sandbox")
    # The demo: ops/sandbox.env turns the profile on and points every provider at the sandbox.
    demo = compose(SANDBOX_ENV, "--profile", "sandbox", "config")
    assert demo.returncode == 0, demo.stderr
    assert "COMPOSE_PROFILES=sandbox" in SANDBOX_ENV.read_text().splitlines()
    worker = environment(service(demo.stdout, "worker"))
    assert environment(service(demo.stdout, "sandbox")).keys() == {"CELERY_BROKER_URL"}  # no provider secret
    orange, momo, wave_config = orange_money.OrangeMoneyConfig(), mtn_momo.MtnMomoConfig(), wave.WaveConfig()
    published = {
        "CINETPAY_API_KEY": server.SANDBOX_API_KEY, "CINETPAY_SITE_ID": server.SANDBOX_SITE_ID,
        "CINETPAY_SECRET_KEY": server.SANDBOX_SECRET_KEY, "MTN_MOMO_API_USER": momo.api_user,
        "MTN_MOMO_API_KEY": momo.api_key, "MTN_MOMO_SUBSCRIPTION_KEY": momo.subscription_key,
        "ORANGE_MONEY_CLIENT_ID": orange.client_id, "ORANGE_MONEY_CLIENT_SECRET": orange.client_secret,
        "ORANGE_MONEY_MERCHANT_KEY": orange.merchant_key, "WAVE_API_KEY": wave_config.api_key,
        "WAVE_WEBHOOK_SECRETS": wave_config.webhook_secrets[0],
    }  # fmt: skip
    for name, value in published.items():
        assert worker[name] == value, name
    for provider in ("CINETPAY", "MTN_MOMO", "ORANGE_MONEY", "WAVE"):
        assert worker[f"{provider}_API_URL"] == "http://sandbox:8765"


def test_the_app_and_the_migrations_use_separate_database_roles(production: str) -> None:
    def user(url: str) -> str:
        return url.split("://", 1)[1].split(":", 1)[0]

    postgres = environment(service(production, "postgres"))
    migrate = environment(service(production, "migrate"))
    assert user(migrate["DATABASE_URL"]) == "payrecon_owner" and migrate["PAYRECON_DB_APP_ROLE"] == "payrecon_app"
    assert sorted(migrate) == ["DATABASE_URL", "PAYRECON_DB_APP_ROLE"]  # no broker, no provider secret
    for name in ("worker", "beat"):
        assert user(environment(service(production, name))["DATABASE_URL"]) == "payrecon_app", name
    assert postgres["POSTGRES_USER"] not in {"payrecon_owner", "payrecon_app"}  # the superuser is nobody's
    assert f"- {INIT_ROLES}:/docker-entrypoint-initdb.d/10-payrecon-roles.sh:ro" in service(production, "postgres")
    script = INIT_ROLES.read_text()  # its defaults are the names compose uses
    for default in (
        "PAYRECON_DB_NAME:=payrecon}",
        "PAYRECON_DB_OWNER:=payrecon_owner}",
        "PAYRECON_DB_APP:=payrecon_app}",
    ):
        assert default in script
    assert INIT_ROLES.stat().st_mode & 0o111  # executed, not sourced, by the image's entrypoint


def test_redis_requires_the_password_every_client_sends(production: str, tmp_path: Path) -> None:
    password = f"REDIS_PASSWORD-{os.getpid()}"
    for name in ("receiver", "worker", "beat"):
        assert environment(service(production, name))["CELERY_BROKER_URL"] == f"redis://:{password}@redis:6379/0"
    redis_block = service(production, "redis")
    assert "requirepass" in redis_block and "REDISCLI_AUTH=" in redis_block and "grep -q PONG" in redis_block
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    # The configuration the service writes, given to a real redis-server.
    template = re.search(r"printf '([^']*)' \"\$\$REDIS_PASSWORD\"", COMPOSE.read_text())
    assert template is not None
    config = tmp_path / "redis.conf"
    config.write_text(template.group(1).replace("\\n", "\n") % "s3cret-hex")
    port = _free_port()
    argv = [REDIS_SERVER, str(config), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        anonymous = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        deadline = time.monotonic() + 10
        while True:
            try:
                anonymous.ping()
                raise AssertionError("redis answered without the password")
            except redis.AuthenticationError:
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        assert redis.Redis(host="127.0.0.1", port=port, password="s3cret-hex", socket_timeout=5).ping()
        assert redis.Redis(host="127.0.0.1", port=port, password="s3cret-hex").config_get("appendonly") == {
            "appendonly": "yes"
        }
    finally:
        proc.kill()
        proc.wait()

"""Configuration: defaults, and errors that name the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.settings import CINETPAY_DEFAULT_URL, ConfigError, Settings

ROOT = Path(__file__).resolve().parent.parent

BASE = {"DATABASE_URL": "sqlite:///x.sqlite", "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0"}


def test_defaults_point_at_the_real_provider_and_abidjan() -> None:
    s = Settings.from_env({**BASE, "CINETPAY_API_KEY": "k", "CINETPAY_SITE_ID": "1", "CINETPAY_SECRET_KEY": "s"})
    assert s.cinetpay is not None
    assert s.cinetpay.api_url == CINETPAY_DEFAULT_URL
    assert str(s.timezone) == "Africa/Abidjan"
    assert s.providers == ("cinetpay",)


def test_secrets_stay_out_of_repr() -> None:
    s = Settings.from_env(
        {**BASE, "CINETPAY_API_KEY": "k-123", "CINETPAY_SITE_ID": "1", "CINETPAY_SECRET_KEY": "s-456"}
    )
    assert "k-123" not in repr(s)
    assert "s-456" not in repr(s)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CELERY_BROKER_URL": "redis://x"}, "DATABASE_URL is not set"),
        ({**BASE, "DATABASE_URL": "not a url"}, "DATABASE_URL is not a database URL"),
        ({**BASE, "DATABASE_URL": "postgresql+psycopg://h/db"}, "DATABASE_URL must be a PostgreSQL URL"),
        ({**BASE, "DATABASE_URL": "mysql://h/db"}, "payrecon uses psycopg2) or SQLite for the demo, got mysql://"),
        ({**BASE, "CELERY_BROKER_URL": "127.0.0.1:6379"}, "CELERY_BROKER_URL must be a broker URL"),
        ({**BASE, "CELERY_BROKER_URL": "reddis://h:6379/0"}, "got 'reddis://h:6379/0'"),
        ({**BASE, "CELERY_BROKER_URL": "redi://u:s3cret@h/0"}, "got 'redi://u:***@h/0'"),
        ({"DATABASE_URL": "sqlite://"}, "CELERY_BROKER_URL is not set"),
        ({**BASE, "PAYRECON_TIMEZONE": "Mars/Olympus"}, "PAYRECON_TIMEZONE is not an IANA time zone"),
        ({**BASE, "CINETPAY_API_KEY": "k"}, "CINETPAY_SITE_ID, CINETPAY_SECRET_KEY not set"),
        (
            {
                **BASE,
                "CINETPAY_API_KEY": "k",
                "CINETPAY_SITE_ID": "1",
                "CINETPAY_SECRET_KEY": "s",
                "CINETPAY_API_URL": "ftp://x",
            },
            "CINETPAY_API_URL must be an http(s) URL",
        ),
        ({**BASE, "PAYRECON_WORKER_CONCURRENCY": "many"}, "PAYRECON_WORKER_CONCURRENCY must be an integer"),
        ({**BASE, "PAYRECON_RECHECK_SCHEDULE": "30,-1"}, "PAYRECON_RECHECK_SCHEDULE must be comma-separated"),
        ({**BASE, "PAYRECON_HTTP_TIMEOUT": "3"}, "PAYRECON_HTTP_TIMEOUT must be 'CONNECT,READ'"),
        ({**BASE, "PAYRECON_HTTP_TIMEOUT": "3,0"}, "PAYRECON_HTTP_TIMEOUT must be two numbers of seconds above 0"),
        ({**BASE, "PAYRECON_HTTP_TIMEOUT": "inf,10"}, "PAYRECON_HTTP_TIMEOUT must be two numbers of seconds above 0"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert message in str(info.value)


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"PAYRECON_TIMEZONE": "Nowhere"})
    assert len(info.value.problems) == 3


ALL = {
    **BASE,
    "CINETPAY_API_KEY": "k",
    "CINETPAY_SITE_ID": "1",
    "CINETPAY_SECRET_KEY": "s",
    "MTN_MOMO_API_USER": "u",
    "MTN_MOMO_API_KEY": "momo-key",
    "MTN_MOMO_SUBSCRIPTION_KEY": "momo-sub",
    "MTN_MOMO_TARGET_ENVIRONMENT": "mtnivorycoast",
    "ORANGE_MONEY_CLIENT_ID": "id",
    "ORANGE_MONEY_CLIENT_SECRET": "orange-secret",
    "ORANGE_MONEY_MERCHANT_KEY": "orange-merchant",
    "ORANGE_MONEY_COUNTRY": "CI",
    "WAVE_API_KEY": "wave-key",
    "WAVE_WEBHOOK_SECRETS": "new-secret, old-secret",
}


def test_all_four_providers_configured() -> None:
    s = Settings.from_env(ALL)
    assert s.providers == ("cinetpay", "mtn_momo", "orange_money", "wave")
    assert s.mtn_momo is not None and s.mtn_momo.api_url == "https://proxy.momoapi.mtn.com"
    assert s.orange_money is not None and s.orange_money.country == "ci"
    assert s.wave is not None and s.wave.webhook_secrets == ("new-secret", "old-secret")
    for secret in ("momo-key", "momo-sub", "orange-secret", "orange-merchant", "wave-key", "new-secret"):
        assert secret not in repr(s)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"MTN_MOMO_TARGET_ENVIRONMENT": ""}, "MTN_MOMO is half configured: MTN_MOMO_TARGET_ENVIRONMENT not set"),
        ({"ORANGE_MONEY_MERCHANT_KEY": ""}, "ORANGE_MONEY is half configured: ORANGE_MONEY_MERCHANT_KEY not set"),
        ({"WAVE_WEBHOOK_SECRETS": ""}, "set WAVE_WEBHOOK_SECRETS"),
        ({"PAYRECON_BUDGET_WAVE": "fast"}, "PAYRECON_BUDGET_WAVE must be 'CALLS_PER_SECOND,BURST'"),
        ({"PAYRECON_REDIS_URL": "http://x"}, "PAYRECON_REDIS_URL must be a redis:// URL"),
        ({"ORANGE_MONEY_NOTIF_URL": "/orange/notif"}, "ORANGE_MONEY_NOTIF_URL must contain {order_id} exactly once"),
        ({"ORANGE_MONEY_NOTIF_URL": "orange/{order_id}"}, "ORANGE_MONEY_NOTIF_URL must be a URL path starting with /"),
        ({"ORANGE_MONEY_NOTIF_URL": "ftp://h/{order_id}"}, "ORANGE_MONEY_NOTIF_URL must be a URL path starting with /"),
        ({"ORANGE_MONEY_NOTIF_URL": "/n?o=ORD-{order_id}"}, "ORANGE_MONEY_NOTIF_URL a query parameter must be NAME="),
        ({"ORANGE_MONEY_NOTIF_URL": "/{shop}/{order_id}"}, "ORANGE_MONEY_NOTIF_URL the only placeholder is {order_id}"),
        # MTN compares the header as written, and only 'sandbox' selects its sandbox host.
        ({"MTN_MOMO_TARGET_ENVIRONMENT": "Sandbox"}, "MTN_MOMO_TARGET_ENVIRONMENT must be 'sandbox' or MTN's name"),
        ({"MTN_MOMO_TARGET_ENVIRONMENT": "MTNIvoryCoast"}, "MTN_MOMO_TARGET_ENVIRONMENT must be 'sandbox' or MTN's"),
        ({"MTN_MOMO_TARGET_ENVIRONMENT": "ivorycoast"}, "MTN_MOMO_TARGET_ENVIRONMENT must be 'sandbox' or MTN's name"),
    ],
)
def test_provider_settings_errors(change: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**ALL, **change})
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("change", "url"),
    [
        ({}, "https://proxy.momoapi.mtn.com"),  # ALL targets mtnivorycoast: production
        ({"MTN_MOMO_TARGET_ENVIRONMENT": "sandbox"}, "https://sandbox.momodeveloper.mtn.com"),
        (
            {"MTN_MOMO_TARGET_ENVIRONMENT": "sandbox", "MTN_MOMO_API_URL": "http://127.0.0.1:8765/"},
            "http://127.0.0.1:8765",
        ),
        ({"MTN_MOMO_API_URL": "https://momo.example"}, "https://momo.example"),
    ],
)
def test_momo_base_url_follows_the_target_environment(change: dict[str, str], url: str) -> None:
    from worker.runtime import build_clients

    s = Settings.from_env({**ALL, **change})
    assert s.mtn_momo is not None and s.mtn_momo.api_url == url
    client = build_clients(s)["mtn_momo"]
    try:
        assert getattr(client, "api_url", None) == url
    finally:
        client.close()


@pytest.mark.parametrize("value", ["30,,120", "1.5", "2m", "0,30", "30;120", ",", "1_000", "+30", "\u0663\u0660"])
def test_recheck_schedule_format_is_whole_seconds_comma_separated(value: str) -> None:
    with pytest.raises(ConfigError, match="PAYRECON_RECHECK_SCHEDULE must be comma-separated positive seconds"):
        Settings.from_env({**ALL, "PAYRECON_RECHECK_SCHEDULE": value})


def test_orange_notif_url_is_checked_while_orange_is_off() -> None:
    env = {k: v for k, v in ALL.items() if not k.startswith("ORANGE_MONEY_")}
    assert Settings.from_env({**env, "ORANGE_MONEY_NOTIF_URL": "/orange/notif/{order_id}"}).orange_money is None
    with pytest.raises(ConfigError, match=r"ORANGE_MONEY_NOTIF_URL must contain \{order_id\} exactly once"):
        Settings.from_env({**env, "ORANGE_MONEY_NOTIF_URL": "/orange/notif"})


def test_recheck_schedule_as_the_readme_writes_it() -> None:
    from worker.runtime import build_profiles

    s = Settings.from_env({**ALL, "PAYRECON_RECHECK_SCHEDULE": "30, 120,300,900,3600"})
    assert s.recheck_schedule == (30, 120, 300, 900, 3600)
    assert {p.recheck_schedule for p in build_profiles(s).values()} == {(30, 120, 300, 900, 3600)}


def test_wave_timestamp_tolerance_is_payrecons_default_and_configurable() -> None:
    from worker.runtime import build_clients

    for env, expected in (({}, 300), ({"WAVE_WEBHOOK_TOLERANCE": "600"}, 600)):
        s = Settings.from_env({**ALL, **env})
        client = build_clients(s)["wave"]
        try:
            assert getattr(client, "tolerance", None) == expected
        finally:
            client.close()
    with pytest.raises(ConfigError, match="WAVE_WEBHOOK_TOLERANCE must be >= 1"):
        Settings.from_env({**ALL, "WAVE_WEBHOOK_TOLERANCE": "0"})


def test_orange_notif_url_reaches_the_client() -> None:
    from worker.runtime import build_clients

    s = Settings.from_env({**ALL, "ORANGE_MONEY_NOTIF_URL": " https://shop.example/orange/notif/{order_id} "})
    assert s.orange_money is not None and s.orange_money.notif_url == "https://shop.example/orange/notif/{order_id}"
    client = build_clients(s)["orange_money"]
    try:
        notif_url = getattr(client, "notif_url", None)
        assert notif_url is not None and notif_url.path is not None
        assert notif_url.path.fullmatch("/orange/notif/ORD-1") is not None
    finally:
        client.close()
    assert Settings.from_env(ALL).orange_money.notif_url is None  # type: ignore[union-attr]


def test_budget_and_schedule_overrides_reach_every_profile() -> None:
    from worker.runtime import build_profiles

    s = Settings.from_env({**ALL, "PAYRECON_BUDGET_WAVE": "2.5,7", "PAYRECON_RECHECK_SCHEDULE": "5,10"})
    profiles = build_profiles(s)
    assert (profiles["wave"].api_rate, profiles["wave"].api_burst) == (2.5, 7)
    assert profiles["cinetpay"].api_burst == 20  # untouched
    assert {p.recheck_schedule for p in profiles.values()} == {(5, 10)}
    default = build_profiles(Settings.from_env(ALL))
    assert default["mtn_momo"].not_found_grace == 600
    assert default["mtn_momo"].callbacks_authenticated is False


def test_readme_shows_the_trust_profiles_as_they_are() -> None:
    from pathlib import Path

    from providers.profiles import markdown_table

    readme = (Path(__file__).resolve().parent.parent / "docs" / "providers.md").read_text(encoding="utf-8")
    shown = readme.split("<!-- trust-profiles:start -->\n")[1].split("\n<!-- trust-profiles:end -->")[0]
    assert shown == markdown_table()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PAYRECON_RECON_AT": "25:00"}, "PAYRECON_RECON_AT must be a local time HH:MM"),
        ({"PAYRECON_RECON_RERUNS": "one"}, "PAYRECON_RECON_RERUNS must be comma-separated positive days"),
        ({"PAYRECON_FEES_WAVE": "-1"}, "PAYRECON_FEES_WAVE must be >= 0"),
        ({"PAYRECON_RECON_SESSIONS": "0"}, "PAYRECON_RECON_SESSIONS must be >= 1"),
        ({"PAYRECON_RECON_SESSIONS": "8", "PAYRECON_DB_POOL_SIZE": "4"}, "needs PAYRECON_DB_POOL_SIZE >= 5"),
        ({"PAYRECON_LANGUAGE": "de"}, "PAYRECON_LANGUAGE must be one of en, fr, got 'de'"),
    ],
)
def test_reconciliation_settings_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**BASE, **env})
    assert message in str(info.value)


def test_batch_settings() -> None:
    s = Settings.from_env({**BASE, "PAYRECON_BATCH_SIZE": "50", "PAYRECON_BATCH_WAIT": "0.2",
                           "PAYRECON_BATCH_PREFETCH": "300"})  # fmt: skip
    assert (s.batch_size, s.batch_wait, s.batch_prefetch) == (50, 0.2, 300)
    default = Settings.from_env(BASE)
    assert (default.batch_size, default.batch_wait, default.batch_prefetch) == (100, 0.05, 512)
    for name in ("PAYRECON_BATCH_SIZE", "PAYRECON_BATCH_PREFETCH"):
        with pytest.raises(ConfigError, match=f"{name} must be >= 1"):
            Settings.from_env({**BASE, name: "0"})


def test_reconciliation_settings() -> None:
    s = Settings.from_env({**BASE, "PAYRECON_RECON_AT": "03:30", "PAYRECON_RECON_RERUNS": "2,7",
                           "PAYRECON_FEES_WAVE": "150", "PAYRECON_RECON_TOLERANCE": "5",
                           "PAYRECON_RECON_SESSIONS": "4", "PAYRECON_REPORTS_DIR": "/srv/reports"})  # fmt: skip
    assert (s.recon_at, s.recon_reruns, s.fees_bps, s.recon_tolerance) == ((3, 30), (2, 7), {"wave": 150}, 5)
    assert (s.recon_sessions, str(s.reports_dir)) == (4, "/srv/reports")
    assert (Settings.from_env(BASE).recon_sessions, Settings.from_env(BASE).reports_dir) == (2, None)
    assert (Settings.from_env(BASE).language, Settings.from_env({**BASE, "PAYRECON_LANGUAGE": " FR "}).language) == (
        "en", "fr",
    )  # fmt: skip


@pytest.mark.parametrize(
    "given",
    ["postgresql://u:p@db:5432/app", "postgres://u:p@db:5432/app", "postgresql+psycopg2://u:p@db:5432/app"],
)
def test_every_form_of_a_postgresql_url_runs_on_psycopg2(given: str) -> None:
    settings = Settings.from_env({**BASE, "DATABASE_URL": given})
    assert settings.database_url == "postgresql+psycopg2://u:p@db:5432/app"


def test_every_provider_of_the_contract_has_its_settings_client_and_profile() -> None:
    """Adding a provider: an entry in each registry, none forgotten (#15)."""
    from providers.profiles import PROFILES
    from schemas.messages import Provider
    from worker.runtime import CLIENTS
    from worker.settings import PROVIDERS, READERS

    contract = [p.value for p in Provider]
    assert list(PROVIDERS) == contract
    assert list(READERS) == list(CLIENTS) == contract and set(PROFILES) == set(contract)


def _celeryconfig(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Import celeryconfig in a process of its own with exactly ``env`` (as `celery -A worker.app` does)."""
    code = (
        "import celeryconfig as c; s = c.beat_schedule; "
        "print(c.timezone, c.worker_concurrency, s['recheck-due-payments']['schedule'], "
        "s['deliver-events']['schedule'], s['nightly-reconciliation']['schedule'])"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env={"PATH": os.environ["PATH"], **env}, cwd=ROOT,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_celery_reads_its_settings_through_the_same_checks() -> None:
    """celeryconfig.py read five variables itself, unchecked: a bad value was a float() traceback, or a schedule
    nobody validated (#15). It reads them through CelerySettings now, the reader Settings uses."""
    good = _celeryconfig({"PAYRECON_TIMEZONE": "Africa/Douala", "PAYRECON_WORKER_CONCURRENCY": "8",
                          "PAYRECON_RECHECK_INTERVAL": "7.5", "PAYRECON_EVENTS_INTERVAL": "2",
                          "PAYRECON_RECON_AT": "03:45"})  # fmt: skip
    assert good.returncode == 0, good.stderr
    assert good.stdout.split()[:4] == ["Africa/Douala", "8", "7.5", "2.0"] and "45 3 * * *" in good.stdout
    bad = _celeryconfig({"PAYRECON_RECON_AT": "25:99", "PAYRECON_RECHECK_INTERVAL": "soon"})
    assert bad.returncode == 1
    assert "PAYRECON_RECHECK_INTERVAL must be a number of seconds, got 'soon'" in bad.stderr
    assert "PAYRECON_RECON_AT must be a local time HH:MM" in bad.stderr
    assert Settings.from_env({**BASE, "PAYRECON_EVENTS_INTERVAL": "3"}).events_interval == 3.0

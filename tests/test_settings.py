"""Configuration: defaults, and errors that name the variable."""

from __future__ import annotations

import pytest

from worker.settings import CINETPAY_DEFAULT_URL, ConfigError, Settings

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
        ({**BASE, "DATABASE_URL": "not a url"}, "DATABASE_URL is not a valid SQLAlchemy URL"),
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

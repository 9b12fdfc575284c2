"""Subscription lifecycle toward the merchant app: manual grants and revocations (audited),
refunds, reminders once each, grace periods."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from providers.sandbox.client import SandboxClient
from reconciliation import ledger
from reconciliation.db import transaction
from reconciliation.models import OutboxEvent, Payment, PaymentStatus, Plan, Subscription
from reconciliation.subscriptions import expire_due, grant_manual, send_reminders
from tests.conftest import worker_env
from tests.helpers import new_reference, registration
from worker import pipeline
from worker.cli import main
from worker.runtime import Runtime

ABIDJAN = ZoneInfo("Africa/Abidjan")


@pytest.fixture
def env(rt: Runtime, pg_url: str, redis_url: str, sandbox_server: Any) -> dict[str, str]:
    return worker_env(pg_url, redis_url, sandbox_server)


def run(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def events(rt: Runtime, type_: str) -> list[dict[str, Any]]:
    with rt.sessions() as session:
        return [e.payload for e in session.scalars(select(OutboxEvent).where(OutboxEvent.type == type_))]


def subscription(rt: Runtime, account: str) -> Subscription:
    with rt.sessions() as session:
        return session.scalars(select(Subscription).where(Subscription.account == account)).one()


def test_manual_grant_and_revoke_are_audited(rt: Runtime, env: dict[str, str]) -> None:
    granted = run(env, "subscriptions", "grant", "tech-9", "--plan", "depannage-monthly", "--periods", "2",
                  "--reason", "approved by the admin", "--by", "alice")  # fmt: skip
    assert granted.exit_code == 0 and "+60 days" in granted.output
    shown = json.loads(run(env, "subscriptions", "show", "tech-9", "--json").output)
    assert shown["active"] is True
    assert [(g["kind"], g["days"], g["reason"], g["by"], g["payment_reference"]) for g in shown["grants"]] == [
        ("manual", 60, "approved by the admin", "alice", None)
    ]
    revoked = run(env, "subscriptions", "revoke", "tech-9", "--plan", "depannage-monthly", "--periods", "5",
                  "--reason", "fraud", "--by", "bob")  # fmt: skip
    assert revoked.exit_code == 0
    sub = subscription(rt, "tech-9")
    assert sub.active is False and sub.ends_at <= datetime.now(UTC)  # never below now
    shown = json.loads(run(env, "subscriptions", "show", "tech-9", "--json").output)
    assert shown["grants"][-1]["kind"] == "revoke" and shown["grants"][-1]["by"] == "bob"
    assert [e["source"] for e in events(rt, "subscription.granted")] == ["manual"]
    assert [e["source"] for e in events(rt, "subscription.shortened")] == ["revoke"]


def test_unknown_plan_or_subscription_is_a_clear_error(rt: Runtime, env: dict[str, str]) -> None:
    bad = CliRunner().invoke(
        main, ["subscriptions", "grant", "x", "--plan", "gold", "--reason", "r", "--by", "b"], env=env
    )
    assert bad.exit_code == 1 and "plan 'gold' is not in the catalogue" in bad.output
    none = CliRunner().invoke(
        main,
        ["subscriptions", "revoke", "nobody", "--plan", "depannage-monthly", "--reason", "r", "--by", "b"],
        env=env,
    )
    assert none.exit_code == 1 and "has no depannage subscription" in none.output


def settled(rt: Runtime, sandbox: SandboxClient, account: str) -> str:
    ref = new_reference()
    pipeline.register_payment(rt, registration(ref, account=account))
    sandbox.create_cinetpay(ref, 5000)
    pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(ref))
    return ref


def test_operator_refund_reverses_journals_and_shortens_access(
    rt: Runtime, sandbox: SandboxClient, env: dict[str, str]
) -> None:
    first, second = settled(rt, sandbox, "tech-1"), settled(rt, sandbox, "tech-1")
    before = subscription(rt, "tech-1").ends_at
    result = run(env, "payments", "refund", second, "--reason", "customer asked", "--by", "finance")
    assert result.exit_code == 0 and "access shortened by 30 days" in result.output
    assert subscription(rt, "tech-1").ends_at == before - timedelta(days=30)
    with rt.sessions() as session:
        balances = {b.account: b.balance for b in ledger.balances(session)}
        status = session.scalars(select(Payment.status).where(Payment.reference == second)).one()
    assert balances["revenue:subscriptions"] == -5000  # only the first payment's revenue remains
    assert status is PaymentStatus.REFUNDED
    assert [e["reference"] for e in events(rt, "payment.refunded")] == [second]
    again = CliRunner().invoke(main, ["payments", "refund", second, "--reason", "x", "--by", "y"], env=env)
    assert again.exit_code == 1 and "only a succeeded payment is refunded" in again.output
    assert first


def test_reminders_are_sent_once_each_nearest_first(rt: Runtime) -> None:
    now = datetime(2026, 11, 21, 10, tzinfo=UTC)
    with transaction(rt.sessions) as session:
        grant_manual(session, "soon", "depannage-monthly", 1, reason="t", by="t", now=now - timedelta(days=28),
                     tz=ABIDJAN)  # ends in 2 days  # fmt: skip
        grant_manual(session, "later", "depannage-monthly", 1, reason="t", by="t", now=now - timedelta(days=24),
                     tz=ABIDJAN)  # ends in 6 days  # fmt: skip
    with transaction(rt.sessions) as session:
        assert send_reminders(session, now, (7, 3)) == 2
    with transaction(rt.sessions) as session:
        assert send_reminders(session, now + timedelta(hours=1), (7, 3)) == 0  # once each
    sent = {e["account"]: e["days_before"] for e in events(rt, "subscription.expiring")}
    assert sent == {"soon": 3, "later": 7}  # "soon" gets only the nearest, never a 7-day one afterwards
    with transaction(rt.sessions) as session:
        assert send_reminders(session, now + timedelta(days=3, hours=1), (7, 3)) == 1  # "later": 3 days left
    assert sorted(e["days_before"] for e in events(rt, "subscription.expiring") if e["account"] == "later") == [3, 7]


@pytest.fixture
def three_days_grace(rt: Runtime) -> Any:
    with transaction(rt.sessions) as session:
        session.execute(update(Plan).where(Plan.code == "coko-premium-monthly").values(grace_days=3))
    yield
    with transaction(rt.sessions) as session:  # the catalogue is shared by the whole run
        session.execute(update(Plan).where(Plan.code == "coko-premium-monthly").values(grace_days=0))


def test_grace_keeps_access_until_its_end(rt: Runtime, env: dict[str, str], three_days_grace: Any) -> None:
    now = datetime(2026, 11, 21, 10, tzinfo=UTC)
    with transaction(rt.sessions) as session:
        grant_manual(session, "reader-1", "coko-premium-monthly", 1, reason="t", by="t", now=now, tz=ABIDJAN)
    end = now + timedelta(days=30)
    with transaction(rt.sessions) as session:
        assert expire_due(session, end + timedelta(days=2, hours=23)) == []  # in grace: still active
    with transaction(rt.sessions) as session:
        assert len(expire_due(session, end + timedelta(days=3))) == 1  # exactly at the end of grace
    assert events(rt, "subscription.expired")[0]["grace_days"] == 3


def test_import_of_a_live_platforms_subscriptions(rt: Runtime, env: dict[str, str], tmp_path: Any) -> None:
    good = tmp_path / "subs.csv"
    good.write_text(
        "account,plan,ends_at,payment_reference\n"
        "tech-100,depannage-monthly,2099-01-31,TXN-OLD1\n"
        "reader-7,coko-premium-yearly,2099-06-30T12:00:00+00:00,\n"
        "tech-101,depannage-monthly,2020-01-01,\n",
        encoding="utf-8",
    )
    result = run(env, "subscriptions", "import", str(good), "--by", "migration")
    assert result.exit_code == 0 and "imported 3 subscription(s)" in result.output
    tech = json.loads(run(env, "subscriptions", "show", "tech-100", "--json").output)
    assert tech["active"] is True and tech["ends_at"] == "2099-02-01T00:00:00+00:00"  # through Jan 31, Abidjan
    assert tech["grants"][0]["kind"] == "import" and "payment TXN-OLD1" in tech["grants"][0]["reason"]
    assert subscription(rt, "tech-101").active is False  # ended long ago: imported as expired
    assert len(events(rt, "subscription.imported")) == 3
    again = CliRunner().invoke(main, ["subscriptions", "import", str(good), "--by", "migration"], env=env)
    assert again.exit_code == 2 and "already has a depannage subscription in payrecon" in again.output


def test_import_reports_bad_rows_and_imports_nothing(rt: Runtime, env: dict[str, str], tmp_path: Any) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "account,plan,ends_at\n"
        "tech-1,depannage-monthly,2099-01-31\n"
        ",depannage-monthly,2099-01-31\n"
        "tech-2,gold,2099-01-31\n"
        "tech-3,depannage-monthly,31/01/2099\n"
        "tech-1,depannage-monthly,2099-02-28\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(main, ["subscriptions", "import", str(bad), "--by", "m"], env=env)
    assert result.exit_code == 2  # bad input, as click's bad usage
    expected = [
        "line 3: account is empty",
        "line 4: unknown plan 'gold'",
        "line 5: ends_at '31/01/2099' is not YYYY-MM-DD",
        "line 6: 'tech-1' is already on line 2",
    ]
    assert all(line in result.output for line in expected), result.output
    with rt.sessions() as session:
        assert session.scalars(select(Subscription)).all() == []  # nothing half-imported


def test_expiry_at_the_local_end_in_a_zone_with_daylight_saving(rt: Runtime) -> None:
    paris = ZoneInfo("Europe/Paris")
    start = datetime(2026, 3, 20, 9, tzinfo=UTC)  # 10:00 in Paris, before the change to summer time
    with transaction(rt.sessions) as session:
        grant = grant_manual(session, "paris-1", "depannage-monthly", 1, reason="t", by="t", now=start, tz=paris)
    assert grant.ends_at.astimezone(paris).hour == 10  # 30 local days later, at 10:00 local (08:00 UTC)
    with transaction(rt.sessions) as session:
        assert expire_due(session, grant.ends_at - timedelta(seconds=1)) == []
    with transaction(rt.sessions) as session:
        assert len(expire_due(session, grant.ends_at)) == 1

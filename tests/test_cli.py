"""The operator command line, read commands against a settled database."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import func, select, text

from providers.sandbox.client import SandboxClient
from reconciliation import ledger
from reconciliation.db import transaction
from reconciliation.models import ReconRun
from tests.conftest import worker_env
from tests.helpers import new_reference, registration
from worker import pipeline
from worker.cli import main
from worker.runtime import Runtime
from worker.settings import CREDENTIALS


@pytest.fixture
def cli_env(rt: Runtime, pg_url: str, redis_url: str, sandbox_server: Any) -> Iterator[dict[str, str]]:
    yield worker_env(pg_url, redis_url, sandbox_server)
    # Messages these tests sent must not reach the end-to-end tests' worker later.
    client = redis.Redis.from_url(redis_url)
    client.delete("webhooks")
    client.close()


def run(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def settle(rt: Runtime, sandbox: SandboxClient, reference: str, **over: Any) -> None:
    pipeline.register_payment(rt, registration(reference, **over))
    sandbox.create_cinetpay(reference, over.get("amount", 5000))
    pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(reference))


def test_payments_show_json_has_the_history(rt: Runtime, sandbox: SandboxClient, cli_env: dict[str, str]) -> None:
    ref = new_reference()
    settle(rt, sandbox, ref, amount=15000, periods=3, account="tech-9")
    result = run(cli_env, "payments", "show", ref, "--json")
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert {k: data[k] for k in ("reference", "provider", "status", "amount", "currency", "account")} == {
        "reference": ref,
        "provider": "cinetpay",
        "status": "succeeded",
        "amount": 15000,
        "currency": "XOF",
        "account": "tech-9",
    }
    assert [v["answered"]["outcome"] for v in data["verifications"]] == ["succeeded"]
    assert data["grant"]["days"] == 90
    assert [j["kind"] for j in data["journals"]] == ["settlement"]
    assert (data["confirmed_amount"], data["amount_confirmed_by_provider"]) == (15000, True)
    text_out = run(cli_env, "payments", "show", ref).output
    assert "SUCCEEDED" in text_out and "15 000 XOF" in text_out
    assert "confirmed  15 000 XOF" in text_out


def test_payments_show_says_orange_did_not_confirm_the_amount(
    rt: Runtime, sandbox: SandboxClient, cli_env: dict[str, str]
) -> None:
    ref = new_reference("ORD")
    state = sandbox.create("orange_money", reference=ref, amount=6500, currency="XOF", fate="accepted")
    pipeline.register_payment(rt, registration(ref, provider="orange_money", amount=6500, plan="coko-premium-monthly",
                                               provider_data=state["provider_data"]))  # fmt: skip
    pipeline.ingest_webhook(rt, sandbox.notification("orange_money", ref))
    data = json.loads(run(cli_env, "payments", "show", ref, "--json").output)
    assert (data["status"], data["settled"], data["amount"]) == ("succeeded", True, 6500)
    assert (data["confirmed_amount"], data["confirmed_currency"], data["amount_confirmed_by_provider"]) == (
        None,
        None,
        False,
    )
    assert [v["answered"]["amount"] for v in data["verifications"] if v["answered"]["outcome"]] == [None]
    text_out = run(cli_env, "payments", "show", ref).output
    assert "\n  confirmed  - (amount not confirmed by the provider: its status answer carries none" in text_out
    assert "confirmed  6 500 XOF" not in text_out


def test_payments_show_unknown_reference_fails(rt: Runtime, cli_env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["payments", "show", "NOPE"], env=cli_env)
    assert result.exit_code == 1
    assert "no payment with reference 'NOPE'" in result.output


def test_subscriptions_show_json(rt: Runtime, sandbox: SandboxClient, cli_env: dict[str, str]) -> None:
    refs = [new_reference(), new_reference()]
    settle(rt, sandbox, refs[0], account="tech-5")
    settle(rt, sandbox, refs[1], account="tech-5", amount=10000, periods=2)
    data = json.loads(run(cli_env, "subscriptions", "show", "tech-5", "--json").output)
    assert data["account"] == "tech-5" and data["active"] is True
    assert [(g["payment_reference"], g["days"]) for g in data["grants"]] == [(refs[0], 30), (refs[1], 60)]
    assert data["ends_at"] == data["grants"][1]["ends_at"]


def test_ledger_balances_and_check(rt: Runtime, sandbox: SandboxClient, cli_env: dict[str, str]) -> None:
    settle(rt, sandbox, new_reference())
    rows = json.loads(run(cli_env, "ledger", "balances", "--json").output)
    assert {(r["account"], r["balance"]) for r in rows} == {
        ("provider_clearing:cinetpay", 5000),
        ("revenue:subscriptions", -5000),
    }
    ok = run(cli_env, "ledger", "check")
    assert ok.exit_code == 0 and "every journal balances" in ok.output
    with rt.engine.begin() as conn:  # a writer that went around the database's guards
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(
            text(
                "INSERT INTO ledger_entries (journal_id, account_id, side, amount, currency) "
                "VALUES (1, 1, 'debit', 7, 'XOF')"
            )
        )
    bad = CliRunner().invoke(main, ["ledger", "check", "--json"], env=cli_env)
    assert bad.exit_code == 1
    assert json.loads(bad.output)["unbalanced"] == [{"journal": 1, "currency": "XOF", "difference": 7}]
    assert json.loads(bad.output)["dangling"] == []


def test_ledger_check_reports_rows_that_refer_to_nothing(
    rt: Runtime, sandbox: SandboxClient, cli_env: dict[str, str]
) -> None:
    """The guard refuses them (no foreign key since migration 0013); rows written with the triggers off are
    found by the check."""
    settle(rt, sandbox, new_reference())
    with rt.engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text("INSERT INTO ledger_journals (id, kind, memo, payment_id, reverses_id) "
                          "VALUES (90, 'k', '', 999, 998)"))  # fmt: skip
        conn.execute(
            text(
                "INSERT INTO ledger_entries (journal_id, account_id, side, amount, currency) "
                "VALUES (997, 1, 'debit', 7, 'XOF'), (997, 1, 'credit', 7, 'XOF'), "
                "(90, 996, 'debit', 3, 'XOF'), (90, 996, 'credit', 3, 'XOF')"
            )
        )
        conn.execute(
            text("INSERT INTO fee_postings (payment_id, journal_id, amount, currency) VALUES (995, 994, 5, 'XOF')")
        )
    bad = CliRunner().invoke(main, ["ledger", "check", "--json"], env=cli_env)
    assert bad.exit_code == 1
    found = {(d["what"], d["names"]) for d in json.loads(bad.output)["dangling"]}
    assert found == {
        ("entry's journal", 997),
        ("entry's account", 996),
        ("journal's payment", 999),
        ("journal's reversed journal", 998),
        ("fee posting's payment", 995),
        ("fee posting's journal", 994),
    }
    text_output = run(cli_env, "ledger", "check").output
    assert "journal's payment 999 does not exist (journal 90)" in text_output


def test_ledger_check_reports_a_fee_journal_its_postings_do_not_add_up_to(
    rt: Runtime, sandbox: SandboxClient, cli_env: dict[str, str]
) -> None:
    """A run's fee journal carries what its ``fee_postings`` rows give (the guard of migration 0025 refuses anything
    else); rows written with the triggers off are found by the check, per journal and currency: postings short of
    the journal's debits, in a currency it does not debit, naming a journal of another kind, and a fee journal no
    posting names."""
    refs = [new_reference() for _ in range(3)]
    for ref in refs:
        settle(rt, sandbox, ref)
    with rt.engine.begin() as conn:
        ids = dict(conn.execute(text("SELECT reference, id FROM payments")).all())
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text("INSERT INTO ledger_journals (id, kind, memo) VALUES (80, 'fee', ''), (81, 'fee', '')"))
        conn.execute(
            text(
                "INSERT INTO ledger_entries (journal_id, account_id, side, amount, currency) "
                "VALUES (80, 1, 'debit', 7, 'XOF'), (80, 2, 'credit', 7, 'XOF'), "
                "(81, 1, 'debit', 4, 'XOF'), (81, 2, 'credit', 4, 'XOF')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO fee_postings (payment_id, journal_id, amount, currency) "
                "VALUES (:a, 80, 5, 'XOF'), (:b, 80, 3, 'XAF'), (:c, 1, 4, 'XOF')"
            ),
            {"a": ids[refs[0]], "b": ids[refs[1]], "c": ids[refs[2]]},
        )
    bad = CliRunner().invoke(main, ["ledger", "check", "--json"], env=cli_env)
    assert bad.exit_code == 1
    assert json.loads(bad.output)["fees_not_carried"] == [
        {"journal": 1, "currency": "XOF", "debits": 0, "postings": 4},  # a settlement: it carries no fee
        {"journal": 80, "currency": "XAF", "debits": 0, "postings": 3},
        {"journal": 80, "currency": "XOF", "debits": 7, "postings": 5},
        {"journal": 81, "currency": "XOF", "debits": 4, "postings": 0},
    ]
    assert "fee journal 81 debits 4 XOF, its fee postings give 0" in run(cli_env, "ledger", "check").output


def test_payments_show_gives_the_fee_posted(rt: Runtime, sandbox: SandboxClient, cli_env: dict[str, str]) -> None:
    """A run posts a payment's fee in a journal of many payments: ``payments show`` says which, how much, which run."""
    ref = new_reference()
    settle(rt, sandbox, ref)
    assert " fee " not in run(cli_env, "payments", "show", ref).output
    with transaction(rt.sessions) as session:
        accounts = [ledger.account_id(session, code, "XOF") for code in ("fees:cinetpay", "provider_clearing:cinetpay")]
    with rt.engine.begin() as conn:
        journal = conn.execute(
            text(
                "WITH j AS (INSERT INTO ledger_journals (kind, memo) VALUES ('fee', '') RETURNING id), "
                "e AS (INSERT INTO ledger_entries (journal_id, account_id, side, amount, currency) "
                "SELECT j.id, s.account, s.side, 75, 'XOF' FROM j, (VALUES (CAST(:fees AS bigint), 'debit'), "
                "(CAST(:clearing AS bigint), 'credit')) AS s (account, side)) "
                "INSERT INTO fee_postings (payment_id, journal_id, amount, currency) "
                "SELECT p.id, j.id, 75, 'XOF' FROM j, payments p WHERE p.reference = :ref RETURNING journal_id"
            ),
            {"fees": accounts[0], "clearing": accounts[1], "ref": ref},
        ).scalar_one()
    shown = run(cli_env, "payments", "show", ref).output
    assert f"  fee        75 XOF posted in journal {journal} (its run unknown)" in shown
    assert json.loads(run(cli_env, "payments", "show", ref, "--json").output)["fee"] == {
        "amount": 75,
        "currency": "XOF",
        "journal": journal,
        "run": None,
    }


def _letters_of(ref: str, listing: str) -> list[dict[str, Any]]:
    """The listed dead letters of the payment ``ref``. Others may be there: a letter an earlier test replayed goes to
    the broker, and the session's worker process, when an end-to-end test started it, dead-letters it anew, maybe
    after this test's database was emptied."""
    return [letter for letter in json.loads(listing) if letter["reference"] == ref]


def test_dead_letters_list_and_replay(
    rt: Runtime, sandbox: SandboxClient, cli_env: dict[str, str], redis_url: str
) -> None:
    ref = new_reference()
    pipeline.register_payment(rt, registration(ref, plan="not-a-plan"))
    listed = _letters_of(ref, run(cli_env, "dead-letters", "list", "--json").output)
    assert [(d["reason"], d["reference"]) for d in listed] == [("unknown_plan", ref)]
    replay = run(cli_env, "dead-letters", "replay", str(listed[0]["id"]))
    assert replay.exit_code == 0
    pending = json.loads(run(cli_env, "dead-letters", "list", "--json").output)
    assert listed[0]["id"] not in [d["id"] for d in pending]  # a worker may dead-letter it anew
    everything = json.loads(run(cli_env, "dead-letters", "list", "--all", "--json").output)
    replayed = next(d for d in everything if d["id"] == listed[0]["id"])
    assert replayed["replayed_at"] is not None


def test_a_replay_sends_each_letter_with_no_transaction_open_and_marks_it_after(
    rt: Runtime, cli_env: dict[str, str], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The letters are read in a transaction that commits before anything is sent: a slow broker holds no
    row lock or snapshot, and a letter is marked replayed only once its message is on the broker."""
    from worker.app import app

    ref = new_reference()
    pipeline.register_payment(rt, registration(ref, plan="not-a-plan"))
    (letter,) = _letters_of(ref, run(cli_env, "dead-letters", "list", "--json").output)
    seen: list[tuple[int, Any]] = []
    send_task = app.send_task
    with rt.sessions() as session:  # the command's connections are opened from now on (its own engine)
        since = session.execute(text("SELECT clock_timestamp()")).scalar_one()

    def watched(*args: Any, **kwargs: Any) -> Any:
        with rt.sessions() as session:  # another connection: what PostgreSQL sees while the message goes out
            open_transactions = session.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid() AND backend_start >= :since"
                ),
                {"since": since},
            ).scalar_one()
            marked = session.execute(
                text("SELECT replayed_at FROM dead_letters WHERE id = :id"), {"id": letter["id"]}
            ).scalar_one()
        seen.append((open_transactions, marked))
        return send_task(*args, **kwargs)

    monkeypatch.setattr(app, "send_task", watched)  # a watch on the real send: the message does go out
    assert run(cli_env, "dead-letters", "replay", str(letter["id"])).exit_code == 0
    assert seen == [(0, None)]
    everything = json.loads(run(cli_env, "dead-letters", "list", "--all", "--json").output)
    assert next(d for d in everything if d["id"] == letter["id"])["replayed_at"] is not None


def test_a_replay_naming_a_missing_letter_sends_none_and_marks_none(
    rt: Runtime, cli_env: dict[str, str], redis_url: str
) -> None:
    ref = new_reference()
    pipeline.register_payment(rt, registration(ref, plan="not-a-plan"))
    (letter,) = _letters_of(ref, run(cli_env, "dead-letters", "list", "--json").output)
    client = redis.Redis.from_url(redis_url)
    client.delete("webhooks")
    result = CliRunner().invoke(main, ["dead-letters", "replay", str(letter["id"]), "999999"], env=cli_env)
    assert result.exit_code == 1 and "no dead letter #999999: nothing was replayed" in result.output
    assert client.llen("webhooks") == 0  # the good one was not sent either
    assert [d["id"] for d in json.loads(run(cli_env, "dead-letters", "list", "--json").output)] == [letter["id"]]
    client.close()


def test_a_replay_with_the_broker_away_marks_nothing_it_did_not_send(rt: Runtime, cli_env: dict[str, str]) -> None:
    ref = new_reference()
    pipeline.register_payment(rt, registration(ref, plan="not-a-plan"))
    (letter,) = _letters_of(ref, run(cli_env, "dead-letters", "list", "--json").output)
    away = {**os.environ, **cli_env, "CELERY_BROKER_URL": "redis://127.0.0.1:1/0"}
    # A process of its own, as a user runs it (this one's Celery app already holds the suite's broker).
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "dead-letters", "replay", str(letter["id"])],
        env=away, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1 and f"could not send dead letter #{letter['id']}" in result.stderr
    assert "0 of 1 replayed before it" in result.stderr
    pending = json.loads(run(cli_env, "dead-letters", "list", "--json").output)
    assert [d["id"] for d in pending] == [letter["id"]]  # still pending: replay it once the broker is back


def test_an_oversized_dead_letter_cannot_be_replayed_and_says_why(
    rt: Runtime, sandbox: SandboxClient, cli_env: dict[str, str]
) -> None:
    ref = new_reference()
    sandbox.create_cinetpay(ref, 5000)
    envelope = sandbox.cinetpay_notification(ref)
    envelope["body"] += "&padding=" + "x" * rt.settings.max_envelope_bytes
    pipeline.ingest_webhook(rt, envelope)
    (letter,) = json.loads(run(cli_env, "dead-letters", "list", "--json").output)
    result = CliRunner().invoke(main, ["dead-letters", "replay", str(letter["id"])], env=cli_env)
    assert result.exit_code == 1 and "too large to keep whole" in result.output
    everything = json.loads(run(cli_env, "dead-letters", "list", "--all", "--json").output)
    assert everything[0]["replayed_at"] is None


def test_enqueue_validates_before_sending(rt: Runtime, cli_env: dict[str, str]) -> None:
    bad = CliRunner().invoke(main, ["enqueue", "payment", "-"], input='{"schema": "payrecon.payment/1"}', env=cli_env)
    assert bad.exit_code == 2 and "line 1: provider: Field required" in bad.output
    good = CliRunner().invoke(
        main, ["enqueue", "payment", "-"], input=json.dumps(registration(new_reference())), env=cli_env
    )
    assert good.exit_code == 0 and "sent 1 payment message(s)" in good.output
    lines = "\n".join(json.dumps(registration(new_reference())) for _ in range(3))
    several = CliRunner().invoke(main, ["enqueue", "payment", "-"], input=lines, env=cli_env)
    assert several.exit_code == 0 and "sent 3 payment message(s)" in several.output
    broken = CliRunner().invoke(main, ["enqueue", "payment", "-"], input=lines + "\n{oops", env=cli_env)
    assert broken.exit_code == 2 and "line 4: not JSON" in broken.output


def test_missing_configuration_names_the_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "worker"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "DATABASE_URL is not set" in result.stderr and "CELERY_BROKER_URL is not set" in result.stderr


def test_bad_usage_exits_2() -> None:
    assert CliRunner().invoke(main, ["payments", "show"]).exit_code == 2


def test_reconcile_report_and_statements_commands(
    rt: Runtime, sandbox: SandboxClient, cli_env: dict[str, str], tmp_path: Any
) -> None:
    from pathlib import Path

    paid, lost = new_reference(), new_reference()
    settle(rt, sandbox, paid)
    pipeline.register_payment(rt, registration(lost))
    sandbox.create_cinetpay(lost, 5000)  # paid at CinetPay; its webhook never came
    day = datetime.now(rt.settings.timezone).date().isoformat()
    result = run(cli_env, "reconcile", "--provider", "cinetpay", "--date", day, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    run_id = summary["run"]["id"]
    assert summary["counts"]["by_class"]["matched"] == 1
    assert summary["counts"]["by_class"]["missing_in_ledger"] == 1 and summary["counts"]["healed"] == 1
    shown = run(cli_env, "report", "show", str(run_id))
    assert shown.exit_code == 0 and "missing_in_ledger" in shown.output
    out = Path(tmp_path) / "reports"
    exported = run(cli_env, "report", "export", str(run_id), "--out", str(out))
    assert exported.exit_code == 0
    assert sorted(p.suffix for p in out.iterdir()) == [".csv", ".csv", ".html", ".json", ".json", ".xlsx"]
    assert (out / f"recon_cinetpay_{day}_run{run_id}_payouts.csv").is_file()  # with the four reports and the manifest
    csv_only = run(cli_env, "report", "export", str(run_id), "--format", "csv", "--out", str(out / "csv"))
    assert [Path(line).name for line in csv_only.output.split()] == [
        f"recon_cinetpay_{day}_run{run_id}.csv",
        f"recon_cinetpay_{day}_run{run_id}_payouts.csv",
    ]
    evidence = json.loads(run(cli_env, "payments", "show", lost, "--json").output)
    assert evidence["status"] == "succeeded"
    assert [(r["class"], r["healed"]) for r in evidence["reconciliation"]] == [("missing_in_ledger", True)]
    missing = CliRunner().invoke(main, ["report", "show", "999999"], env=cli_env)
    assert missing.exit_code == 1 and "no reconciliation run #999999" in missing.output
    bad = Path(tmp_path) / "bad.csv"
    bad.write_text("transaction_id,operator_id,payment_date,amount,currency,status\nT1,,nope,5000,XOF,ACCEPTED\n")
    refused = CliRunner().invoke(main, ["statements", "import", "--provider", "cinetpay", str(bad)], env=cli_env)
    assert refused.exit_code == 2 and "line 2: time 'nope'" in refused.output  # bad input, as enqueue's
    sample = Path(__file__).resolve().parent.parent / "docs" / "statements" / "cinetpay.csv"
    imported = run(cli_env, "statements", "import", "--provider", "cinetpay", str(sample))
    assert imported.exit_code == 0 and "imported 3 row(s)" in imported.output
    again = Path(tmp_path) / "cinetpay-again.csv"  # the day exported again, a late row at the end
    again.write_text(sample.read_text() + "TXN-LATE,OP9,2026-11-21 23:00:00,5000,XOF,0,ACCEPTED,OM\n")
    replaced = run(cli_env, "statements", "import", "--provider", "cinetpay", str(again))
    assert "imported 4 row(s)" in replaced.output
    assert "replaced 3 line(s) an earlier file gave of the same transactions, on 2026-11-21" in replaced.output


def test_nightly_job_plans_yesterday_and_the_reruns(rt: Runtime) -> None:
    from datetime import date

    from worker.nightly import due_runs

    jobs = due_runs(rt, date(2026, 11, 21))
    cinetpay = [(d.isoformat(), trigger) for p, d, trigger in jobs if p == "cinetpay"]
    assert cinetpay == [("2026-11-20", "scheduled"), ("2026-11-19", "rerun"), ("2026-11-17", "rerun")]
    assert {p for p, _, _ in jobs} == {"cinetpay", "mtn_momo", "orange_money", "wave"}


def test_the_nightly_job_closes_runs_a_stopped_process_left_running_and_runs_their_days_again(rt: Runtime) -> None:
    """A worker SIGKILLed under a run (its message acknowledged on receipt), or PostgreSQL gone while it closed the
    run, left it ``running`` for good: nothing closed it, counted it or ran its day again. The nightly job closes the
    runs no process holds (their lock free; started ten minutes ago or more) as failed, once, and runs their days
    again, each day once; a run whose process holds its lock is left alone, however old, as is one just opened."""
    from datetime import date, timedelta
    from zoneinfo import ZoneInfo

    from sqlalchemy import update

    from reconciliation.models import ReconRun
    from reconciliation.nightly import runs
    from worker.nightly import due_runs

    policy = runs.Policy(tz=ZoneInfo("Africa/Abidjan"), sla=3600)
    left = runs.start(rt.sessions, "wave", date(2026, 11, 10), policy, "rerun")
    planned = runs.start(rt.sessions, "cinetpay", date(2026, 11, 20), policy, "scheduled")  # tonight's day anyway
    under_way = runs.start(rt.sessions, "cinetpay", date(2026, 11, 12), policy, "manual")
    just_opened = runs.start(rt.sessions, "cinetpay", date(2026, 11, 13), policy, "manual")
    now = datetime.now(UTC)
    with rt.sessions.begin() as session:
        session.execute(
            update(ReconRun)
            .where(ReconRun.id.in_([left, planned, under_way]))
            .values(started_at=now - timedelta(hours=5))
        )
    with runs._alive(rt.sessions, under_way):  # its process at work, five hours in
        jobs = due_runs(rt, date(2026, 11, 21), now=now)
    assert ("wave", date(2026, 11, 10), "rerun") in jobs
    assert [job for job in jobs if job[:2] == ("cinetpay", date(2026, 11, 20))] == [
        ("cinetpay", date(2026, 11, 20), "scheduled")
    ]
    assert not [job for job in jobs if job[1] in (date(2026, 11, 12), date(2026, 11, 13))]
    with rt.sessions() as session:
        closed = {r.id: (r.status, r.error or "") for r in session.scalars(select(ReconRun))}
    assert closed[left][0] == closed[planned][0] == "failed" and "abandoned" in closed[left][1]
    assert closed[under_way] == closed[just_opened] == ("running", "")
    runs.finish(rt.sessions, left)  # its own close, late: it stays as it was closed, counted once
    with rt.sessions() as session:
        again = session.get(ReconRun, left)
        assert again is not None and again.status == "failed" and "abandoned" in (again.error or "")
    later = due_runs(rt, date(2026, 11, 21), now=now)  # the five-hour run's process has stopped since (its lock free)
    assert [job for job in later if job not in jobs] == [("cinetpay", date(2026, 11, 12), "rerun")]
    assert ("wave", date(2026, 11, 10), "rerun") not in later  # closed once, run again once


def test_nightly_reconciliation_is_scheduled_at_two_in_the_business_zone() -> None:
    from worker.app import app

    entry = app.conf.beat_schedule["nightly-reconciliation"]
    assert entry["task"] == "payrecon.nightly_reconciliation"
    assert (entry["schedule"].hour, entry["schedule"].minute) == ({2}, {0})
    assert app.conf.timezone == "Africa/Abidjan"


#: Unset every provider's credentials: no API client at all (CliRunner unsets a variable set to None).
NO_CLIENTS: dict[str, str | None] = {name: None for names in CREDENTIALS.values() for name in names}


def cinetpay_statement(path: Path, rows: list[tuple[str, int, str]]) -> Path:
    """A CinetPay portal export (docs/statements/cinetpay.csv's columns) of today: (reference, amount, status)."""
    when = datetime.now(ZoneInfo("Africa/Abidjan")).strftime("%Y-%m-%d %H:%M:%S")
    lines = ["transaction_id,operator_id,payment_date,amount,currency,fees,status,payment_method"]
    lines += [f"{ref},MP{n:06d},{when},{amount},XOF,{amount * 35 // 1000},{status},OM" for n, (ref, amount, status)
              in enumerate(rows)]  # fmt: skip
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reconcile_from_an_imported_statement_without_an_api_client(
    rt: Runtime, sandbox: SandboxClient, cli_env: dict[str, str], tmp_path: Path
) -> None:
    paid, lost = new_reference(), new_reference()
    settle(rt, sandbox, paid)
    pipeline.register_payment(rt, registration(lost, account="tech-lost"))  # paid; its webhook never came
    statement = cinetpay_statement(tmp_path / "cinetpay.csv", [(paid, 5000, "ACCEPTED"), (lost, 5000, "ACCEPTED")])
    env = {**cli_env, **NO_CLIENTS}  # the database only: CinetPay is not configured
    assert run(env, "statements", "import", "--provider", "cinetpay", str(statement)).exit_code == 0
    day = datetime.now(rt.settings.timezone).date().isoformat()
    result = CliRunner().invoke(main, ["reconcile", "--provider", "cinetpay", "--date", day, "--json"], env=env)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["run"]["provider"] == "cinetpay" and summary["run"]["status"] == "succeeded"
    assert summary["counts"]["by_class"] == {"missing_in_ledger": 1, "matched": 1}
    assert summary["counts"]["healed"] == 1
    assert sandbox.get_cinetpay(paid)["check_count"] == 1  # only the webhook's check: the run asked nobody
    healed = json.loads(run(cli_env, "payments", "show", lost, "--json").output)
    assert healed["status"] == "succeeded" and healed["grant"]["days"] == 30


def test_reconcile_every_provider_it_can_into_report_files(
    rt: Runtime, sandbox: SandboxClient, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """No --provider: CinetPay from its file (no client), Wave from its listing (configured), MoMo and
    Orange skipped (neither); --out writes each run's reports into OUT/<provider>/ and prints them."""
    paid = new_reference()
    settle(rt, sandbox, paid)
    statement = cinetpay_statement(tmp_path / "cinetpay.csv", [(paid, 5000, "ACCEPTED")])
    env = {**cli_env, **NO_CLIENTS, **{k: cli_env[k] for k in cli_env if k.startswith("WAVE_")}}
    assert run(env, "statements", "import", "--provider", "cinetpay", str(statement)).exit_code == 0
    day = datetime.now(rt.settings.timezone).date().isoformat()
    out = tmp_path / "reports"
    result = CliRunner().invoke(main, ["reconcile", "--date", day, "--out", str(out)], env=env)
    assert result.exit_code == 0, result.output
    assert "skipped mtn_momo: no statement file" in result.stderr
    assert "skipped orange_money: no statement file" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["cinetpay", "wave"]
    for provider in ("cinetpay", "wave"):
        files = sorted(p.suffix for p in (out / provider).iterdir())
        assert files == [".csv", ".csv", ".html", ".json", ".json", ".xlsx"]  # 4 reports, payouts CSV, manifest
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"cinetpay +run \d+: 1 matched", lines[0])
    printed = [Path(line.strip()) for line in lines if line.startswith("  ")]
    assert len(printed) == 12 and all(p.is_file() for p in printed)
    assert re.fullmatch(r"wave +run \d+: no items", lines[7])
    assert lines[-1] == "classes seen: matched"
    as_json = CliRunner().invoke(main, ["reconcile", "--date", day, "--json"], env=env)
    assert as_json.exit_code == 0
    assert [s["run"]["provider"] for s in json.loads(as_json.stdout)] == ["cinetpay", "wave"]


def test_reconcile_says_what_is_missing(rt: Runtime, cli_env: dict[str, str]) -> None:
    env = {**cli_env, **NO_CLIENTS}
    day = datetime.now(rt.settings.timezone).date().isoformat()
    one = CliRunner().invoke(main, ["reconcile", "--provider", "mtn_momo", "--date", day], env=env)
    assert one.exit_code == 1
    assert f"cannot reconcile mtn_momo for {day}: no statement file of that day was imported" in one.output
    assert "payrecon statements import --provider mtn_momo FILE.csv" in one.output
    assert "MTN_MOMO_API_USER, MTN_MOMO_API_KEY, MTN_MOMO_SUBSCRIPTION_KEY, MTN_MOMO_TARGET_ENVIRONMENT" in one.output
    every = CliRunner().invoke(main, ["reconcile", "--date", day], env=env)
    assert every.exit_code == 1 and f"nothing to reconcile for {day}" in every.output
    with rt.sessions() as session:
        assert session.scalar(select(func.count()).select_from(ReconRun)) == 0  # no run was opened


def test_reconcile_exits_1_when_the_provider_did_not_answer(
    rt: Runtime, sandbox: SandboxClient, cli_env: dict[str, str]
) -> None:
    """A run whose status checks got no answer is kept, marked failed, and the command says so."""
    ref = new_reference()
    pipeline.register_payment(rt, registration(ref))
    sandbox.create_cinetpay(ref, 5000, faults=[{"status": 503}] * 12)  # every attempt of the check fails
    day = datetime.now(rt.settings.timezone).date().isoformat()
    result = CliRunner().invoke(main, ["reconcile", "--provider", "cinetpay", "--date", day, "--json"], env=cli_env)
    assert result.exit_code == 1, result.output
    assert '"status": "failed"' in result.output and "got no answer" in result.output


def test_a_large_statement_import_has_connections_for_all_its_sessions(
    rt: Runtime, cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four sessions side by side and the importing one: the command's pool lends five."""
    from pathlib import Path

    from reconciliation.statements import pg as statements_pg

    monkeypatch.setattr(statements_pg, "PARALLEL_FROM", 1)  # the sample is loaded as a large file is
    taken: list[bool] = []
    optimistic = statements_pg._fast_insert
    monkeypatch.setattr(statements_pg, "_fast_insert", lambda *a, **k: taken.append(True) or optimistic(*a, **k))
    sample = Path(__file__).resolve().parent.parent / "docs" / "statements" / "wave.csv"
    env = {**cli_env, "PAYRECON_RECON_SESSIONS": "4"}
    result = run(env, "statements", "import", "--provider", "wave", str(sample))
    assert result.exit_code == 0 and "imported 4 row(s)" in result.output, result.output
    assert taken == [True] * 4

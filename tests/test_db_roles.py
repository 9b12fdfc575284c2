"""The database roles of a production deployment, as compose sets them up: ops/postgres/init-roles.sh
creates a migration role (owner of the database) and an application role; ``payrecon migrate
--grant-to`` gives the application role data access only. Real PostgreSQL: a database and two roles of
this test's own (unique names), dropped at the end.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, make_url, text

from reconciliation.db import session_factory
from reconciliation.nightly import runs
from tests.conftest import PG_BASE, ROOT, WorkerProcess, worker_env
from tests.helpers import REDIS_SERVER, PrivateRedis, payrecon_command
from worker.cli import main

INIT = ROOT / "ops" / "postgres" / "init-roles.sh"

pytestmark = pytest.mark.skipif(shutil.which("psql") is None, reason="psql (the init script's client) is missing")


def _url(role: str, password: str, database: str) -> str:
    base = make_url(PG_BASE)
    return str(base.set(username=role, password=password, database=database).render_as_string(hide_password=False))


@pytest.fixture(scope="module")
def stack_db() -> Iterator[dict[str, str]]:
    """What the postgres container's first start leaves: the init script run as the superuser."""
    suffix = f"{os.getpid()}_{secrets.token_hex(3)}"
    names = {
        "PAYRECON_DB_NAME": f"payrecon_roles_{suffix}",
        "PAYRECON_DB_OWNER": f"payrecon_owner_{suffix}",
        "PAYRECON_DB_APP": f"payrecon_app_{suffix}",
    }
    passwords = {"PAYRECON_DB_OWNER_PASSWORD": secrets.token_hex(8), "PAYRECON_DB_APP_PASSWORD": secrets.token_hex(8)}
    base = make_url(PG_BASE)
    env = {
        **os.environ, **names, **passwords,
        "POSTGRES_USER": base.username or "postgres", "PGHOST": base.host or "127.0.0.1",
        "PGPORT": str(base.port or 5432), "PGPASSWORD": base.password or "",
    }  # fmt: skip
    admin = create_engine(f"{PG_BASE}/postgres", isolation_level="AUTOCOMMIT")
    try:
        created = subprocess.run(["sh", str(INIT)], env=env, capture_output=True, text=True, timeout=60, check=False)
        assert created.returncode == 0, created.stderr
        database = names["PAYRECON_DB_NAME"]
        yield {
            "owner": names["PAYRECON_DB_OWNER"],
            "app": names["PAYRECON_DB_APP"],
            "owner_url": _url(names["PAYRECON_DB_OWNER"], passwords["PAYRECON_DB_OWNER_PASSWORD"], database),
            "app_url": _url(names["PAYRECON_DB_APP"], passwords["PAYRECON_DB_APP_PASSWORD"], database),
        }
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{names["PAYRECON_DB_NAME"]}" WITH (FORCE)'))
            for role in (names["PAYRECON_DB_APP"], names["PAYRECON_DB_OWNER"]):
                conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


@pytest.fixture(scope="module")
def migrated(stack_db: dict[str, str], sandbox_server: Any) -> dict[str, str]:
    """``payrecon migrate`` as compose's migrate service runs it: as the owner, granting to the app role."""
    env = {
        **os.environ, **worker_env(stack_db["owner_url"], "redis://127.0.0.1:1/0", sandbox_server),
        "PAYRECON_DB_APP_ROLE": stack_db["app"],
    }  # fmt: skip
    result = subprocess.run(
        [payrecon_command(), "migrate"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"role '{stack_db['app']}' may read and write payrecon's data" in result.stdout
    return stack_db


def test_the_init_script_makes_plain_roles_and_the_owner_owns_the_database(stack_db: dict[str, str]) -> None:
    with psycopg2.connect(make_url(PG_BASE).set(database="postgres").render_as_string(hide_password=False)
                          .replace("postgresql+psycopg2", "postgresql")) as conn, conn.cursor() as cur:  # fmt: skip
        cur.execute(
            "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname IN (%s, %s) "
            "ORDER BY rolname = %s",
            (stack_db["owner"], stack_db["app"], stack_db["app"]),
        )
        assert cur.fetchall() == [(stack_db["owner"], False, False, False), (stack_db["app"], False, False, False)]
        cur.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
            (make_url(stack_db["owner_url"]).database,),
        )
        assert cur.fetchone() == (stack_db["owner"],)


REFUSED = (
    "ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_append_only",
    "ALTER TABLE ledger_journals DISABLE TRIGGER ALL",
    "DROP TRIGGER ledger_entries_append_only ON ledger_entries",
    "SET session_replication_role = replica",  # would silence every trigger
    "TRUNCATE ledger_entries",  # fires no row trigger
    "TRUNCATE payments",
    "UPDATE ledger_entries SET amount = amount",
    "DELETE FROM ledger_journals",
    "DELETE FROM fee_postings",
    "ALTER TABLE payments ADD COLUMN note text",
    "DROP TABLE subscriptions",
    "CREATE TABLE public.shadow (id int)",
    "UPDATE alembic_version SET version_num = version_num",
    # The function that locks ledger_journals as its owner serves the payments trigger only.
    "CREATE TABLE own_rows (id int); CREATE TRIGGER own_lock BEFORE DELETE ON own_rows "
    "FOR EACH ROW EXECUTE FUNCTION public.ledger_keep_journaled_payment()",
)


#: Views of the application role's own (its schema comes first on its search_path) named as the ledger's tables,
#: each claiming a row the real table does not have.
SHADOWS = (
    "CREATE VIEW ledger_journals AS SELECT id, payment_id FROM public.ledger_journals UNION ALL SELECT 424242, NULL",
    "CREATE VIEW ledger_accounts AS SELECT id, currency FROM public.ledger_accounts UNION ALL SELECT 777777, 'XOF'",
    "CREATE VIEW payments AS SELECT id FROM public.payments UNION ALL SELECT 555555",
)
ORPHANS = (
    "INSERT INTO public.ledger_entries (journal_id, account_id, side, amount, currency) "
    "VALUES (424242, 777777, 'debit', 7, 'XOF'), (424242, 777777, 'credit', 7, 'XOF')",
    "WITH j AS (INSERT INTO public.ledger_journals (kind, memo, payment_id, reverses_id) "
    "VALUES ('evil', '', 555555, 424242) RETURNING id) "
    "INSERT INTO public.ledger_entries (journal_id, account_id, side, amount, currency) "
    "SELECT j.id, 777777, s.side, 3, 'XOF' FROM j, (VALUES ('debit'), ('credit')) s (side)",
)


@pytest.mark.parametrize("statement", ORPHANS)
def test_the_app_role_cannot_make_the_ledger_guard_read_tables_of_its_own(
    migrated: dict[str, str], statement: str
) -> None:
    """The guard's references are checked in the ledger's own schema, whatever the caller's search_path."""
    with psycopg2.connect(migrated["app_url"].replace("postgresql+psycopg2", "postgresql")) as conn:
        with conn.cursor() as cur:
            for shadow in SHADOWS:
                cur.execute(shadow)
            with pytest.raises(psycopg2.errors.ForeignKeyViolation):
                cur.execute(statement)
        conn.rollback()


@pytest.mark.parametrize("statement", REFUSED)
def test_the_app_role_cannot_touch_the_ledger_guards_or_the_schema(migrated: dict[str, str], statement: str) -> None:
    with psycopg2.connect(migrated["app_url"].replace("postgresql+psycopg2", "postgresql")) as conn:
        with conn.cursor() as cur, pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute(statement)
        conn.rollback()


def test_migrate_refuses_a_role_that_would_defeat_the_point(migrated: dict[str, str], sandbox_server: Any) -> None:
    env = worker_env(migrated["owner_url"], "redis://127.0.0.1:1/0", sandbox_server)
    superuser = make_url(PG_BASE).username or "postgres"
    for role, why in (
        ("payrecon_no_such_role", "role 'payrecon_no_such_role' does not exist: create it first"),
        (superuser, f"role '{superuser}' is a superuser: whatever it is granted, it can disable the ledger's"),
        (migrated["owner"], f"role '{migrated['owner']}' is the role migrate runs as, or a member of it"),
    ):
        result = CliRunner().invoke(main, ["migrate", "--grant-to", role], env=env)
        assert result.exit_code == 1, result.output
        assert why in result.output


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_worker_beat_demo_and_reconciliation_run_as_the_app_role(
    migrated: dict[str, str], sandbox_server: Any, tmp_path: Path
) -> None:
    """The stack as compose runs it: worker, beat and ``docker compose run worker payrecon demo
    --external-worker`` (payments, webhooks, re-checks, statement imports), then a reconciliation and a
    purge, every one connected as the application role."""
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    broker = PrivateRedis(redis_dir)
    broker.start()
    env = {**os.environ, **worker_env(migrated["app_url"], broker.url, sandbox_server, PAYRECON_RECHECK_INTERVAL="0.5")}
    worker = WorkerProcess(env, tmp_path / "worker.log")
    beat: subprocess.Popen[bytes] | None = None
    try:
        worker.start()
        with (tmp_path / "beat.log").open("wb") as log:
            beat = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "worker.app", "beat", "-s", str(tmp_path / "schedule")],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        demo = subprocess.run(
            [payrecon_command(), "demo", "--payments", "8", "--sandbox-url", sandbox_server.url, "--external-worker"],
            env=env, capture_output=True, text=True, timeout=240, check=False, cwd=tmp_path,
        )  # fmt: skip
        assert demo.returncode == 0, demo.stdout + demo.stderr + worker.log()
        assert "every journal balances: yes" in demo.stdout
        day = re.search(r"payrecon reconcile --date (\d{4}-\d{2}-\d{2})", demo.stdout)
        assert day is not None, demo.stdout
        for command in (["reconcile", "--date", day.group(1)], ["purge", "--older-than", "1"], ["health"]):
            done = subprocess.run(
                [payrecon_command(), *command], env=env, capture_output=True, text=True, timeout=240, check=False
            )
            assert done.returncode == 0, " ".join(command) + "\n" + done.stdout + done.stderr
    finally:
        if beat is not None:
            beat.terminate()
            beat.wait(timeout=20)
        worker.stop()
        broker.kill()
    assert "InsufficientPrivilege" not in worker.log() and "permission denied" not in worker.log()
    engine = create_engine(migrated["owner_url"])
    try:
        with engine.connect() as conn:
            journals = conn.execute(text("SELECT count(*) FROM ledger_journals")).scalar_one()
            lines = conn.execute(text("SELECT count(*) FROM statement_lines")).scalar_one()
            runs = conn.execute(text("SELECT count(*) FROM recon_runs WHERE status = 'succeeded'")).scalar_one()
    finally:
        engine.dispose()
    assert journals > 0 and lines > 0 and runs > 0


def test_a_large_statement_import_takes_the_copy_path_as_the_app_role(
    migrated: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast path stages the file in an unlogged table: the app role creates it in its own schema (a
    refusal would silently send every import down the slow streamed path)."""
    from zoneinfo import ZoneInfo

    from sqlalchemy.orm import Session

    from reconciliation.statements import pg as statements_pg
    from reconciliation.statements.files import import_file

    monkeypatch.setattr(statements_pg, "PARALLEL_FROM", 1)  # side by side, as for a large file
    taken: list[bool] = []
    optimistic = statements_pg._fast_insert

    def spy(*args: Any, **kwargs: Any) -> Any:
        result = optimistic(*args, **kwargs)
        taken.append(result is not None)
        return result

    monkeypatch.setattr(statements_pg, "_fast_insert", spy)
    engine = create_engine(migrated["app_url"])
    try:
        with Session(engine) as session, session.begin():
            imported = import_file(
                session, "wave", ROOT / "docs" / "statements" / "wave.csv", business_tz=ZoneInfo("Africa/Abidjan"),
                sessions=2,
            )  # fmt: skip
        with engine.connect() as conn:
            stages = conn.execute(text(r"SELECT count(*) FROM pg_tables WHERE tablename LIKE 'payrecon\_stage\_%'"))
            left = stages.scalar_one()
    finally:
        engine.dispose()
    assert imported.rows > 0
    assert taken == [True, True]
    assert left == 0  # dropped with its import


def test_the_app_role_summarizes_the_items_index_only_through_its_function(
    migrated: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A run's fee chunks need the items' BRIN index summarized (migration 0022): the app role may do that through
    ``recon_items_summarize()``, which runs as the owner, and not by calling ``brin_summarize_new_values`` on an
    index of its choosing."""
    with psycopg2.connect(migrated["app_url"].replace("postgresql+psycopg2", "postgresql")) as conn:
        with conn.cursor() as cursor:
            cursor.execute(
                "INSERT INTO recon_items (run_id, cls, reference, provider_lines, healed, detail) "
                "SELECT 0, 'matched', 'R' || n, 1, false, '' FROM generate_series(1, 20000) AS n"
            )
            cursor.execute("SELECT recon_items_summarize()")
            assert cursor.fetchone()[0] > 0  # page ranges summarized
            cursor.execute("SAVEPOINT direct")
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cursor.execute("SELECT brin_summarize_new_values('ix_recon_items_run_id')")
            cursor.execute("ROLLBACK TO SAVEPOINT direct")
        conn.rollback()
    owner = create_engine(migrated["owner_url"])
    app = create_engine(migrated["app_url"])
    try:
        with owner.begin() as conn:  # granted to the application role, not to every role that may connect
            grantees = conn.execute(
                text(
                    "SELECT array_agg(a.grantee) FROM pg_proc p, aclexplode(p.proacl) a "
                    "WHERE p.proname = 'recon_items_summarize'"
                )
            ).scalar_one()
            assert 0 not in grantees  # 0: PUBLIC
            conn.execute(text(f'REVOKE EXECUTE ON FUNCTION recon_items_summarize() FROM "{migrated["app"]}"'))
        with caplog.at_level(logging.WARNING, logger="reconciliation.nightly.runs"):
            runs._summarize_items(session_factory(app))  # granted before 0022: the fees go on without it
        assert "not summarized first" in caplog.text and "permission denied" in caplog.text
    finally:
        with owner.begin() as conn:
            conn.execute(text(f'GRANT EXECUTE ON FUNCTION recon_items_summarize() TO "{migrated["app"]}"'))
        owner.dispose()
        app.dispose()

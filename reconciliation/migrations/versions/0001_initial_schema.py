"""Initial schema: payments, inbox, verifications, ledger, plans, subscriptions, dead letters.

Also creates the ledger's guards (append-only, balanced journals) and ships the plan
catalogue of the two launch platforms.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("task", sa.String(length=100), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=True),
        sa.Column("reference", sa.String(length=100), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
    )
    op.create_table(
        "inbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("dedupe_key", sa.String(length=200), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "received",
                "processed",
                "ping",
                "ignored",
                "forged",
                "malformed",
                "failed",
                name="inbox_status",
                native_enum=False,
                create_constraint=True,
                length=24,
            ),
            nullable=False,
        ),
        sa.Column("reference", sa.String(length=100), nullable=True),
        sa.Column("method", sa.String(length=10), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column(
            "headers",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("envelope_raw", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "first_seen_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column(
            "last_seen_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column("repeat_count", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbox")),
        sa.UniqueConstraint("provider", "dedupe_key", name=op.f("uq_inbox_provider_dedupe_key")),
    )
    with op.batch_alter_table("inbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_inbox_reference"), ["reference"], unique=False)

    op.create_table(
        "ledger_accounts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("code", sa.String(length=100), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_accounts")),
        sa.UniqueConstraint("code", "currency", name=op.f("uq_ledger_accounts_code_currency")),
    )
    op.create_table(
        "payments",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("reference", sa.String(length=100), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "registered",
                "pending",
                "succeeded",
                "failed",
                "expired",
                "refunded",
                name="payment_status",
                native_enum=False,
                create_constraint=True,
                length=24,
            ),
            nullable=False,
        ),
        sa.Column("amount", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("account", sa.String(length=200), nullable=True),
        sa.Column("plan_code", sa.String(length=100), nullable=True),
        sa.Column("periods", sa.Integer(), nullable=False),
        sa.Column(
            "provider_data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "metadata",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("registration_raw", sa.Text(), nullable=True),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("confirmed_amount", sa.BigInteger(), nullable=True),
        sa.Column("confirmed_currency", sa.String(length=3), nullable=True),
        sa.Column("provider_transaction_id", sa.String(length=200), nullable=True),
        sa.Column("paid_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("settled", sa.Boolean(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column("finalized_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_check_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("check_count", sa.Integer(), nullable=False),
        sa.CheckConstraint("amount IS NULL OR amount > 0", name=op.f("ck_payments_amount_positive")),
        sa.CheckConstraint("periods >= 1", name=op.f("ck_payments_periods_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments")),
        sa.UniqueConstraint("provider", "reference", name=op.f("uq_payments_provider_reference")),
    )
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.create_index("ix_payments_due", ["next_check_at"], unique=False)

    op.create_table(
        "plans",
        sa.Column("code", sa.String(length=100), nullable=False),
        sa.Column("product", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("price", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("period_days", sa.Integer(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.CheckConstraint("period_days > 0", name=op.f("ck_plans_period_positive")),
        sa.CheckConstraint("price >= 0", name=op.f("ck_plans_price_non_negative")),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_plans")),
    )
    op.create_table(
        "ledger_journals",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("payment_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("memo", sa.Text(), nullable=False),
        sa.Column("reverses_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(["payment_id"], ["payments.id"], name=op.f("fk_ledger_journals_payment_id_payments")),
        sa.ForeignKeyConstraint(
            ["reverses_id"],
            ["ledger_journals.id"],
            name=op.f("fk_ledger_journals_reverses_id_ledger_journals"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_journals")),
        sa.UniqueConstraint("payment_id", "kind", name=op.f("uq_ledger_journals_payment_id_kind")),
    )
    with op.batch_alter_table("ledger_journals", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ledger_journals_payment_id"), ["payment_id"], unique=False)

    op.create_table(
        "payment_flags",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("payment_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "orphan",
                "amount_mismatch",
                "currency_mismatch",
                "late_success",
                "adopted",
                "regression_ignored",
                "claim_disagrees",
                name="flag_kind",
                native_enum=False,
                create_constraint=True,
                length=24,
            ),
            nullable=False,
        ),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(["payment_id"], ["payments.id"], name=op.f("fk_payment_flags_payment_id_payments")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_flags")),
        sa.UniqueConstraint("payment_id", "kind", name=op.f("uq_payment_flags_payment_id_kind")),
    )
    with op.batch_alter_table("payment_flags", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_payment_flags_payment_id"), ["payment_id"], unique=False)

    op.create_table(
        "subscriptions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("product", sa.String(length=100), nullable=False),
        sa.Column("account", sa.String(length=200), nullable=False),
        sa.Column("plan_code", sa.String(length=100), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("expired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(["plan_code"], ["plans.code"], name=op.f("fk_subscriptions_plan_code_plans")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
        sa.UniqueConstraint("product", "account", name=op.f("uq_subscriptions_product_account")),
    )
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_subscriptions_ends_at"), ["ends_at"], unique=False)

    op.create_table(
        "verifications",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("payment_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("inbox_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("trigger", sa.String(length=24), nullable=False),
        sa.Column("claimed_status", sa.String(length=64), nullable=True),
        sa.Column("claimed_amount", sa.BigInteger(), nullable=True),
        sa.Column("claimed_currency", sa.String(length=3), nullable=True),
        sa.Column("outcome", sa.String(length=24), nullable=True),
        sa.Column("provider_status", sa.String(length=64), nullable=True),
        sa.Column("provider_code", sa.String(length=64), nullable=True),
        sa.Column("provider_message", sa.Text(), nullable=True),
        sa.Column("answered_amount", sa.BigInteger(), nullable=True),
        sa.Column("answered_currency", sa.String(length=3), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("decision", sa.Text(), nullable=False),
        sa.Column("raw_response", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(["inbox_id"], ["inbox.id"], name=op.f("fk_verifications_inbox_id_inbox")),
        sa.ForeignKeyConstraint(["payment_id"], ["payments.id"], name=op.f("fk_verifications_payment_id_payments")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verifications")),
    )
    with op.batch_alter_table("verifications", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_verifications_payment_id"), ["payment_id"], unique=False)

    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("journal_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("side", sa.String(length=6), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.CheckConstraint("side IN ('debit', 'credit')", name=op.f("ck_ledger_entries_side_valid")),
        sa.CheckConstraint("amount > 0", name=op.f("ck_ledger_entries_amount_positive")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["ledger_accounts.id"], name=op.f("fk_ledger_entries_account_id_ledger_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["journal_id"], ["ledger_journals.id"], name=op.f("fk_ledger_entries_journal_id_ledger_journals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
    )
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ledger_entries_account_id"), ["account_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_ledger_entries_journal_id"), ["journal_id"], unique=False)

    op.create_table(
        "subscription_grants",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("subscription_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("payment_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("plan_code", sa.String(length=100), nullable=False),
        sa.Column("periods", sa.Integer(), nullable=False),
        sa.Column("days", sa.Integer(), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.CheckConstraint("days > 0", name=op.f("ck_subscription_grants_days_positive")),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.id"], name=op.f("fk_subscription_grants_payment_id_payments")
        ),
        sa.ForeignKeyConstraint(["plan_code"], ["plans.code"], name=op.f("fk_subscription_grants_plan_code_plans")),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.id"],
            name=op.f("fk_subscription_grants_subscription_id_subscriptions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscription_grants")),
        sa.UniqueConstraint("payment_id", name=op.f("uq_subscription_grants_payment_id")),
    )
    with op.batch_alter_table("subscription_grants", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_subscription_grants_subscription_id"), ["subscription_id"], unique=False)

    _create_ledger_guards()
    _seed_plans()


def downgrade() -> None:
    _drop_ledger_guards()
    with op.batch_alter_table("subscription_grants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subscription_grants_subscription_id"))

    op.drop_table("subscription_grants")
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ledger_entries_journal_id"))
        batch_op.drop_index(batch_op.f("ix_ledger_entries_account_id"))

    op.drop_table("ledger_entries")
    with op.batch_alter_table("verifications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_verifications_payment_id"))

    op.drop_table("verifications")
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subscriptions_ends_at"))

    op.drop_table("subscriptions")
    with op.batch_alter_table("payment_flags", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_payment_flags_payment_id"))

    op.drop_table("payment_flags")
    with op.batch_alter_table("ledger_journals", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ledger_journals_payment_id"))

    op.drop_table("ledger_journals")
    op.drop_table("plans")
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_index("ix_payments_due")

    op.drop_table("payments")
    op.drop_table("ledger_accounts")
    with op.batch_alter_table("inbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inbox_reference"))

    op.drop_table("inbox")
    op.drop_table("dead_letters")


PLANS = [
    # code, product, name, price (minor units per period), currency, period_days
    (
        "depannage-monthly",
        "depannage",
        "Dépannage technician subscription, per month (sold as 1, 3 or 6 periods)",
        5000,
        "XOF",
        30,
    ),
    ("coko-premium-monthly", "coko", "Coko premium, monthly", 6500, "XOF", 30),
    ("coko-premium-quarterly", "coko", "Coko premium, quarterly", 18000, "XOF", 90),
    ("coko-premium-yearly", "coko", "Coko premium, yearly", 65000, "XOF", 365),
    ("coko-creator-monthly", "coko", "Coko creator, monthly", 13000, "XOF", 30),
    ("coko-creator-quarterly", "coko", "Coko creator, quarterly", 35000, "XOF", 90),
    ("coko-creator-yearly", "coko", "Coko creator, yearly", 130000, "XOF", 365),
    ("coko-institutional-monthly", "coko", "Coko institutional, monthly", 32500, "XOF", 30),
    ("coko-institutional-quarterly", "coko", "Coko institutional, quarterly", 90000, "XOF", 90),
    ("coko-institutional-yearly", "coko", "Coko institutional, yearly", 325000, "XOF", 365),
]


def _seed_plans() -> None:
    plans = sa.table(
        "plans",
        sa.column("code", sa.String),
        sa.column("product", sa.String),
        sa.column("name", sa.String),
        sa.column("price", sa.BigInteger),
        sa.column("currency", sa.String),
        sa.column("period_days", sa.Integer),
        sa.column("active", sa.Boolean),
    )
    op.bulk_insert(
        plans,
        [
            {
                "code": c,
                "product": p,
                "name": n,
                "price": pr,
                "currency": cur,
                "period_days": d,
                "active": True,
            }
            for c, p, n, pr, cur, d in PLANS
        ],
    )


PG_GUARDS = """
CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger rows are append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_journals_append_only BEFORE UPDATE OR DELETE ON ledger_journals
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();

CREATE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    jid bigint;
    bad record;
BEGIN
    IF TG_TABLE_NAME = 'ledger_entries' THEN jid := NEW.journal_id; ELSE jid := NEW.id; END IF;
    IF NOT EXISTS (SELECT 1 FROM ledger_entries WHERE journal_id = jid) THEN
        RAISE EXCEPTION 'journal % has no entries', jid USING ERRCODE = 'check_violation';
    END IF;
    SELECT currency, sum(CASE side WHEN 'debit' THEN amount ELSE -amount END) AS diff INTO bad
      FROM ledger_entries WHERE journal_id = jid
     GROUP BY currency HAVING sum(CASE side WHEN 'debit' THEN amount ELSE -amount END) <> 0
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal % does not balance in %: debit - credit = %', jid, bad.currency, bad.diff
            USING ERRCODE = 'check_violation';
    END IF;
    IF EXISTS (SELECT 1 FROM ledger_entries e JOIN ledger_accounts a ON a.id = e.account_id
                WHERE e.journal_id = jid AND a.currency <> e.currency) THEN
        RAISE EXCEPTION 'journal % posts to an account of another currency', jid
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

-- Checked at COMMIT, once all entries of the journal are in.
CREATE CONSTRAINT TRIGGER ledger_entries_balanced AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_balanced();
CREATE CONSTRAINT TRIGGER ledger_journals_balanced AFTER INSERT ON ledger_journals
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_balanced();
"""

SQLITE_GUARDS = [
    f"""CREATE TRIGGER {table}_no_{op_name.lower()} BEFORE {op_name} ON {table}
        BEGIN SELECT RAISE(ABORT, 'ledger rows are append-only: {op_name} on {table} refused'); END"""
    for table in ("ledger_entries", "ledger_journals")
    for op_name in ("UPDATE", "DELETE")
]


def _create_ledger_guards() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_GUARDS)
    else:
        for statement in SQLITE_GUARDS:
            op.execute(statement)


def _drop_ledger_guards() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS ledger_entries_balanced ON ledger_entries")
        op.execute("DROP TRIGGER IF EXISTS ledger_journals_balanced ON ledger_journals")
        op.execute("DROP TRIGGER IF EXISTS ledger_entries_append_only ON ledger_entries")
        op.execute("DROP TRIGGER IF EXISTS ledger_journals_append_only ON ledger_journals")
        op.execute("DROP FUNCTION IF EXISTS ledger_check_balanced()")
        op.execute("DROP FUNCTION IF EXISTS ledger_refuse_change()")
    else:
        for table in ("ledger_entries", "ledger_journals"):
            for op_name in ("update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{op_name}")

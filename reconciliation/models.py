"""Database models (SQLAlchemy 2). PostgreSQL in production and tests; SQLite for the demo.

Idempotency lives here, as constraints: one inbox row per (provider, dedupe key),
one payment per (provider, reference), one journal per (payment, kind), one
subscription grant per payment, one ledger posting per provider payout. Ledger rows are append-only (enforced by
triggers created in the migrations).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: JSON on SQLite, JSONB on PostgreSQL.
JsonType = JSON().with_variant(JSONB(), "postgresql")
#: BIGINT primary keys on PostgreSQL, INTEGER (rowid alias) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware timestamps on every backend: ``timestamptz`` on PostgreSQL, UTC text on
    SQLite (which would otherwise hand back naive datetimes). Naive input is refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: payrecon stores aware timestamps only")
        return value.astimezone(UTC) if dialect.name != "sqlite" else value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _enum(cls: type[StrEnum], name: str) -> Enum:
    # Stored as VARCHAR + CHECK so adding a value is a plain migration.
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=24,
        values_callable=lambda e: [m.value for m in e],
    )


class PaymentStatus(StrEnum):
    REGISTERED = "registered"
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    REFUNDED = "refunded"


FINAL_STATUSES = frozenset(
    {PaymentStatus.SUCCEEDED, PaymentStatus.FAILED, PaymentStatus.EXPIRED, PaymentStatus.REFUNDED}
)


class InboxStatus(StrEnum):
    RECEIVED = "received"  # stored, not processed yet
    PROCESSED = "processed"  # verified and settled (whatever the outcome)
    PING = "ping"  # a liveness probe; nothing to do
    IGNORED = "ignored"  # authentic but not about a payment we track
    FORGED = "forged"  # failed authentication: quarantined, no API call spent
    MALFORMED = "malformed"  # cannot be parsed: dead-lettered
    FAILED = "failed"  # verification gave up (provider errors): dead-lettered


class FlagKind(StrEnum):
    ORPHAN = "orphan"  # paid, but no registration known (yet)
    AMOUNT_MISMATCH = "amount_mismatch"
    CURRENCY_MISMATCH = "currency_mismatch"
    LATE_SUCCESS = "late_success"  # success after failed/expired: honoured
    ADOPTED = "adopted"  # orphan adopted by a late registration
    REGRESSION_IGNORED = "regression_ignored"  # failed/pending answer after a success
    CLAIM_DISAGREES = "claim_disagrees"  # the webhook claimed something the API denied
    HEALED = "healed"  # a lost webhook, found and settled by the nightly reconciliation
    PROVIDER_REFUSED = "provider_refused"  # the provider refused the status question for its data: not re-asked


class Payment(Base):
    """One payment attempt, keyed by the merchant's reference at its provider."""

    __tablename__ = "payments"
    __table_args__ = (
        UniqueConstraint("provider", "reference"),
        CheckConstraint("amount IS NULL OR amount > 0", name="amount_positive"),
        CheckConstraint("periods >= 1", name="periods_positive"),
        Index("ix_payments_due", "next_check_at"),
        # A provider's business day of payments (classification, the status-API run, the day-at-a-glance
        # report) by the time that places a payment in a day (``payments.business_time``): without it each
        # nightly run read every payment ever stored (migration 0017).
        Index("ix_payments_business_time", "provider", text("coalesce(paid_at, registered_at, created_at)")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    reference: Mapped[str] = mapped_column(String(100))
    status: Mapped[PaymentStatus] = mapped_column(_enum(PaymentStatus, "payment_status"))
    # What the merchant registered. NULL while the payment is an orphan.
    amount: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(String(3))
    account: Mapped[str | None] = mapped_column(String(200))
    plan_code: Mapped[str | None] = mapped_column(String(100))
    periods: Mapped[int] = mapped_column(Integer, default=1)
    provider_data: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JsonType)
    registration_raw: Mapped[str | None] = mapped_column(Text)
    registered_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # What the provider confirmed (from its status API only).
    confirmed_amount: Mapped[int | None] = mapped_column(BigInteger)
    confirmed_currency: Mapped[str | None] = mapped_column(String(3))
    provider_transaction_id: Mapped[str | None] = mapped_column(String(200))
    paid_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # True once the ledger holds this payment as revenue and access was granted.
    settled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())
    finalized_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Re-check schedule for non-final payments (the janitor).
    next_check_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    check_count: Mapped[int] = mapped_column(Integer, default=0)

    verifications: Mapped[list[Verification]] = relationship(back_populates="payment", order_by="Verification.id")
    flags: Mapped[list[PaymentFlag]] = relationship(order_by="PaymentFlag.id")

    @property
    def is_orphan(self) -> bool:
        return self.registered_at is None


class PaymentFlag(Base):
    """Something about a payment a person should look at. One row per kind."""

    __tablename__ = "payment_flags"
    __table_args__ = (UniqueConstraint("payment_id", "kind"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    payment_id: Mapped[int] = mapped_column(ForeignKey("payments.id"), index=True)
    kind: Mapped[FlagKind] = mapped_column(_enum(FlagKind, "flag_kind"))
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())


class InboxDelivery(Base):
    """Every webhook delivery. The first raw envelope is kept byte for byte, repeats counted.

    A ``received`` row is unfinished work (docs/pipeline.md): ``next_attempt_at`` is both when it is
    due and, while a worker holds it, the end of that worker's lease. Any worker may take a row
    that is due, so a worker that dies leaves nothing behind but a lease that runs out.
    """

    __tablename__ = "inbox"
    __table_args__ = (
        UniqueConstraint("provider", "dedupe_key"),
        Index(
            "ix_inbox_due",
            "next_attempt_at",
            postgresql_where=text("status = 'received'"),
            sqlite_where=text("status = 'received'"),
        ),
        Index("ix_inbox_last_seen_at", "last_seen_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    dedupe_key: Mapped[str] = mapped_column(String(200))
    status: Mapped[InboxStatus] = mapped_column(_enum(InboxStatus, "inbox_status"))
    reference: Mapped[str | None] = mapped_column(String(100), index=True)
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(Text)
    headers: Mapped[dict[str, str]] = mapped_column(JsonType)
    body: Mapped[str] = mapped_column(Text)
    envelope_raw: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())
    first_seen_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())
    last_seen_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())
    repeat_count: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[str] = mapped_column(Text, default="")
    # The work on a ``received`` row: when it is due (or its lease ends), when it began, the
    # provider failures (``attempts``) and internal errors (``errors``) so far, the waits that were
    # not failures (``deferrals``: call budget, awaiting a registration), and the call-budget stage
    # whose token it holds.
    # (A row a worker of an earlier version inserts gets both server defaults: due at once.)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), server_default=func.now())
    opened_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), server_default=func.now())
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    errors: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # internal errors (bugs)
    deferrals: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    budget_slot: Mapped[str | None] = mapped_column(String(16))
    # Not authenticated yet, for want of its registration (which wakes it): no provider answer about
    # the payment may finish it meanwhile (it might be forged).
    awaiting_registration: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))


class Verification(Base):
    """One question to the provider's API: what the webhook claimed next to what the API answered."""

    __tablename__ = "verifications"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    payment_id: Mapped[int] = mapped_column(ForeignKey("payments.id"), index=True)
    inbox_id: Mapped[int | None] = mapped_column(ForeignKey("inbox.id"), index=True)
    trigger: Mapped[str] = mapped_column(String(24))  # webhook | recheck | registration | manual
    claimed_status: Mapped[str | None] = mapped_column(String(64))
    claimed_amount: Mapped[int | None] = mapped_column(BigInteger)
    claimed_currency: Mapped[str | None] = mapped_column(String(3))
    outcome: Mapped[str | None] = mapped_column(String(24))  # normalised answer, NULL on error
    provider_status: Mapped[str | None] = mapped_column(String(64))
    provider_code: Mapped[str | None] = mapped_column(String(64))
    provider_message: Mapped[str | None] = mapped_column(Text)
    answered_amount: Mapped[int | None] = mapped_column(BigInteger)
    answered_currency: Mapped[str | None] = mapped_column(String(3))
    error: Mapped[str | None] = mapped_column(Text)
    decision: Mapped[str] = mapped_column(Text, default="")
    raw_response: Mapped[str | None] = mapped_column(Text)
    # When the provider was asked (its answer reflects the payment from then on); NULL when no live
    # question was asked (an error, a deferral, a statement, an operator).
    asked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now(), index=True)

    payment: Mapped[Payment] = relationship(back_populates="verifications")


# --------------------------------------------------------------------------- ledger


class Account(Base):
    """A ledger account in one currency, e.g. ``provider_clearing:cinetpay`` in XOF."""

    __tablename__ = "ledger_accounts"
    __table_args__ = (UniqueConstraint("code", "currency"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    code: Mapped[str] = mapped_column(String(100))
    currency: Mapped[str] = mapped_column(String(3))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())


class Journal(Base):
    """A balanced set of entries. Never updated or deleted; corrections are new journals."""

    __tablename__ = "ledger_journals"
    __table_args__ = (
        # One journal per payment and kind: the settlement path is idempotent by this key.
        UniqueConstraint("payment_id", "kind"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # The payment and the reversed journal exist: checked per statement by the ledger's guard, not by
    # foreign keys (migration 0013), as are an entry's journal and account. Found by payment through the
    # unique key above, which starts with it (no index of its own since 0014).
    payment_id: Mapped[int | None] = mapped_column(BigId)
    kind: Mapped[str] = mapped_column(String(40))
    memo: Mapped[str] = mapped_column(Text, default="")
    reverses_id: Mapped[int | None] = mapped_column(BigId)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())

    entries: Mapped[list[Entry]] = relationship(
        order_by="Entry.id", primaryjoin="Journal.id == foreign(Entry.journal_id)", viewonly=True
    )


class Entry(Base):
    """One side of a journal. ``amount`` is positive; ``side`` says debit or credit."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("side IN ('debit', 'credit')", name="side_valid"),
        # On PostgreSQL the key is (journal_id, id), which serves the reads by journal (0018); SQLite keeps the
        # key on id (its rowid, which numbers the entries) and this index. Alembic compares no primary keys, and
        # the drift check honours ``ddl_if`` (migrations/env.py).
        Index("ix_ledger_entries_journal_id", "journal_id").ddl_if(dialect="sqlite"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    journal_id: Mapped[int] = mapped_column(BigId)  # no foreign keys: see Journal.payment_id
    account_id: Mapped[int] = mapped_column(BigId)  # not indexed: nothing reads entries by account alone (0016)
    side: Mapped[str] = mapped_column(String(6))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))


# --------------------------------------------------------------------------- subscriptions


class Plan(Base):
    """The plan catalogue. Ships with both platforms' plans; editable."""

    __tablename__ = "plans"

    code: Mapped[str] = mapped_column(String(100), primary_key=True)
    product: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    price: Mapped[int] = mapped_column(BigInteger)  # minor units, per period
    currency: Mapped[str] = mapped_column(String(3))
    period_days: Mapped[int] = mapped_column(Integer)
    grace_days: Mapped[int] = mapped_column(Integer, server_default="0")  # access continues after the end
    active: Mapped[bool] = mapped_column(Boolean, default=True)

    __table_args__ = (
        CheckConstraint("price >= 0", name="price_non_negative"),
        CheckConstraint("period_days > 0", name="period_positive"),
    )


class Subscription(Base):
    """Access of one account to one product. ``ends_at`` is the entitlement."""

    __tablename__ = "subscriptions"
    __table_args__ = (UniqueConstraint("product", "account"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    product: Mapped[str] = mapped_column(String(100))
    account: Mapped[str] = mapped_column(String(200))
    plan_code: Mapped[str] = mapped_column(ForeignKey("plans.code"))
    starts_at: Mapped[datetime] = mapped_column(UtcDateTime())
    ends_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    expired_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())

    grants: Mapped[list[SubscriptionGrant]] = relationship(order_by="SubscriptionGrant.id")


class SubscriptionGrant(Base):
    """A change of an account's access, with what caused it: a payment (exactly one grant per
    payment), its refund (negative days), or an operator's manual grant or revocation (audited)."""

    __tablename__ = "subscription_grants"
    __table_args__ = (
        UniqueConstraint("payment_id", "kind"),
        CheckConstraint("days <> 0", name="days_nonzero"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscriptions.id"), index=True)
    payment_id: Mapped[int | None] = mapped_column(ForeignKey("payments.id"))
    kind: Mapped[str] = mapped_column(String(16), server_default="payment")  # payment|refund|manual|revoke|import
    reason: Mapped[str | None] = mapped_column(Text)
    granted_by: Mapped[str | None] = mapped_column(String(200))
    plan_code: Mapped[str] = mapped_column(ForeignKey("plans.code"))
    periods: Mapped[int] = mapped_column(Integer)
    days: Mapped[int] = mapped_column(Integer)
    starts_at: Mapped[datetime] = mapped_column(UtcDateTime())
    ends_at: Mapped[datetime] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())

    payment: Mapped[Payment | None] = relationship()


class SubscriptionReminder(Base):
    """A ``subscription.expiring`` reminder sent: once per (subscription, end, days before)."""

    __tablename__ = "subscription_reminders"
    __table_args__ = (UniqueConstraint("subscription_id", "ends_at", "days_before"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscriptions.id"))
    ends_at: Mapped[datetime] = mapped_column(UtcDateTime())
    days_before: Mapped[int] = mapped_column(Integer)
    sent_at: Mapped[datetime] = mapped_column(UtcDateTime())


# --------------------------------------------------------------------------- dead letters


class DeadLetter(Base):
    """Input the worker could not process, kept whole for replay with the reason."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    task: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(String(64))  # invalid_envelope, malformed_body, ...
    detail: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)  # the raw input, as received
    provider: Mapped[str | None] = mapped_column(String(32))
    reference: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now(), index=True)
    replayed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class Heartbeat(Base):
    """Liveness of the processes that have no queue to watch (beat): last time each was seen."""

    __tablename__ = "heartbeats"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())


# --------------------------------------------------------------------------- reconciliation


class ReconClass(StrEnum):
    MATCHED = "matched"
    MISSING_IN_LEDGER = "missing_in_ledger"  # the provider has it, we did not (a lost webhook): healed
    MISSING_AT_PROVIDER = "missing_at_provider"  # we recorded a success the provider does not have
    AMOUNT_MISMATCH = "amount_mismatch"
    CURRENCY_MISMATCH = "currency_mismatch"
    STATUS_MISMATCH = "status_mismatch"
    DUPLICATE = "duplicate"  # the provider reports one reference more than once
    FEE_VARIANCE = "fee_variance"  # the fee the provider took differs from the fee expected
    MISSING_AFTER_SLA = "missing_after_sla"  # still not final past the provider's SLA, nothing at the provider


class StatementLine(Base):
    """One transaction as the provider reports it: its listing API, its status API, or a statement file."""

    __tablename__ = "statement_lines"
    __table_args__ = (
        # A run reads its provider's day; nothing looks lines up by reference alone (a B-tree on the
        # reference cost more than the rest of a 1,000,000-line import when references are random), nor by id
        # alone. On PostgreSQL no B-tree over every line (0023; the key (provider, business_date, id) of 0019 went):
        # an import writes a provider's day together, and a BRIN index by provider and day finds it. SQLite keeps
        # the key on id (its rowid) and a day index (the drift check honours ``ddl_if``: env.py).
        Index("ix_statement_lines_day", "provider", "business_date").ddl_if(dialect="sqlite"),
        Index(
            "ix_statement_lines_day_range",
            "provider",
            "business_date",
            postgresql_using="brin",
            postgresql_ops={"business_date": "date_minmax_multi_ops"},  # a range keeps several days: 0023
            postgresql_with={"autosummarize": "on"},
        ).ddl_if(dialect="postgresql"),
        Index("ix_statement_lines_payout", "provider", "payout_id", postgresql_where=text("payout_id IS NOT NULL")),
        # A run's payouts start from its day's lines that name one (``matching._DAY_PAYOUTS``): on PostgreSQL the
        # day's index would give every line of the day for them, and most providers name none (0021).
        Index(
            "ix_statement_lines_payout_day", "provider", "business_date", postgresql_where=text("payout_id IS NOT NULL")
        ).ddl_if(dialect="postgresql"),
        # An import's lines lie together: BRIN finds those of a load that never committed (statements_pg._sweep).
        Index("ix_statement_lines_import", "import_id", postgresql_using="brin"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    business_date: Mapped[date] = mapped_column(Date)
    source: Mapped[str] = mapped_column(String(16))  # listing | status_api | file
    # The import that wrote the line (NULL: a listing or status API). Deliberately no foreign key,
    # here and on recon_items.run_id: the import and the run write and own these rows in bulk, and a
    # per-row constraint trigger was 30 % of a 1,000,000-row import (BENCHMARKS.md).
    import_id: Mapped[int | None] = mapped_column(BigId)
    line_no: Mapped[int | None] = mapped_column(Integer)
    provider_txn_id: Mapped[str | None] = mapped_column(String(200))
    reference: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16))  # succeeded | failed | pending | refunded
    amount: Mapped[int] = mapped_column(BigInteger)  # minor units, gross
    currency: Mapped[str] = mapped_column(String(3))
    fee: Mapped[int | None] = mapped_column(BigInteger)
    occurred_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    payout_id: Mapped[str | None] = mapped_column(String(200))
    raw: Mapped[str] = mapped_column(Text, default="")


class StatementImport(Base):
    """A statement file finance staff imported: whole or not at all, never twice."""

    __tablename__ = "statement_imports"
    __table_args__ = (UniqueConstraint("provider", "sha256"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int] = mapped_column(Integer)
    imported_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())


class StatementImportDay(Base):
    """A business day an imported statement file has lines on: which days two files share, so that the newer one
    replaces the lines the older one gave of the same transactions (``statements.files.import_file``), and nothing
    is looked at where none are shared."""

    __tablename__ = "statement_import_days"

    provider: Mapped[str] = mapped_column(String(32), primary_key=True)
    business_date: Mapped[date] = mapped_column(Date, primary_key=True)
    import_id: Mapped[int] = mapped_column(
        ForeignKey("statement_imports.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class ReconRun(Base):
    """One reconciliation of one provider's business day."""

    __tablename__ = "recon_runs"
    __table_args__ = (Index("ix_recon_runs_day", "provider", "business_date"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    business_date: Mapped[date] = mapped_column(Date)
    timezone: Mapped[str] = mapped_column(String(64))
    window_start: Mapped[datetime] = mapped_column(UtcDateTime())
    window_end: Mapped[datetime] = mapped_column(UtcDateTime())
    trigger: Mapped[str] = mapped_column(String(16))  # scheduled | rerun | manual
    status: Mapped[str] = mapped_column(String(16))  # running | succeeded | failed
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    counts: Mapped[dict[str, int]] = mapped_column(JsonType, default=dict)
    previous_run_id: Mapped[int | None] = mapped_column(ForeignKey("recon_runs.id"))
    error: Mapped[str | None] = mapped_column(Text)


class ReconItem(Base):
    """One reference of a run, classified."""

    __tablename__ = "recon_items"
    __table_args__ = (
        # A run writes its items together, so a BRIN index finds them by block range at almost no
        # cost per row; exceptions are found by reference, matched items through their run
        # (views.payment_detail). Two B-trees here were a third of a 1,000,000-item run.
        Index("ix_recon_items_run", "run_id").ddl_if(dialect="sqlite"),
        # On PostgreSQL (migration 0020) no B-tree over every item's id, the key's (which a table there may lack:
        # ids come from one sequence, as the statement lines' and ledger entries'): the BRIN index by run and id
        # (a fee chunk's ids, once the run's pages are summarized: runs._summarize_items, 0022), and an exception
        # found by its id through a partial index, when the query says it wants an exception (runs.exception_item:
        # heal, refunds).
        Index("ix_recon_items_run_id", "run_id", "id", postgresql_using="brin").ddl_if(dialect="postgresql"),
        Index("ix_recon_items_exception_id", "id", unique=True, postgresql_where=text("cls <> 'matched'")).ddl_if(
            dialect="postgresql"
        ),
        Index(
            "ix_recon_items_exception",
            "reference",
            postgresql_where=text("cls <> 'matched'"),
            sqlite_where=text("cls <> 'matched'"),
        ),
    )

    # The key of the ORM's identity map; on PostgreSQL not a constraint since migration 0020 (see above).
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(BigId)  # no foreign key: see StatementLine.import_id
    cls: Mapped[str] = mapped_column(String(24))
    reference: Mapped[str | None] = mapped_column(String(100))
    payment_id: Mapped[int | None] = mapped_column(BigInteger)
    provider_txn_id: Mapped[str | None] = mapped_column(String(200))
    internal_status: Mapped[str | None] = mapped_column(String(16))
    internal_amount: Mapped[int | None] = mapped_column(BigInteger)
    internal_currency: Mapped[str | None] = mapped_column(String(3))
    provider_status: Mapped[str | None] = mapped_column(String(16))
    provider_amount: Mapped[int | None] = mapped_column(BigInteger)
    provider_currency: Mapped[str | None] = mapped_column(String(3))
    provider_lines: Mapped[int] = mapped_column(Integer, default=0)
    fee: Mapped[int | None] = mapped_column(BigInteger)
    expected_fee: Mapped[int | None] = mapped_column(BigInteger)
    difference: Mapped[int | None] = mapped_column(BigInteger)
    healed: Mapped[bool] = mapped_column(Boolean, default=False)
    detail: Mapped[str] = mapped_column(Text, default="")


# --------------------------------------------------------------------------- outbox


class OutboxEvent(Base):
    """A change a merchant app cares about, written in the same transaction as the change."""

    __tablename__ = "outbox_events"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # evt_<hex>: stable, for deduplication
    type: Mapped[str] = mapped_column(String(40))
    product: Mapped[str | None] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class OutboxDelivery(Base):
    """One event to one merchant app: retried on a schedule until delivered or given up."""

    __tablename__ = "outbox_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "app"),
        Index("ix_outbox_deliveries_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("outbox_events.id"))
    app: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class ReconPayout(Base):
    """One provider payout of a run, matched to the many payments it settles (by payout id)."""

    __tablename__ = "recon_payouts"
    __table_args__ = (Index("ix_recon_payouts_run", "run_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("recon_runs.id"))
    payout_id: Mapped[str] = mapped_column(String(200))
    currency: Mapped[str | None] = mapped_column(String(3))
    payout_amount: Mapped[int | None] = mapped_column(BigInteger)  # what the provider paid out
    settled_net: Mapped[int | None] = mapped_column(BigInteger)  # sum of its payments, net of fees
    payments: Mapped[int] = mapped_column(Integer, default=0)
    difference: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))  # matched | mismatch | pending | unexplained


class PayoutPosting(Base):
    """A matched payout posted to the ledger (Dr ``bank:<provider>`` / Cr provider clearing), once.

    Why a table of its own rather than a unique key on ``ledger_journals``: the journals' key is
    ``(payment_id, kind)`` and a payout journal has no payment (a NULL ``payment_id`` never conflicts),
    so it cannot make a payout once. The provider's own payout identity is the natural key: the
    primary key ``(provider, payout_id)`` is what refuses a second posting, however often and however
    concurrently the day is re-run (the writer inserts with ``ON CONFLICT DO NOTHING`` in the
    transaction of the journal, and drops the journal when the row was already there), and
    ``run_id`` says which run posted it.
    """

    __tablename__ = "payout_postings"

    provider: Mapped[str] = mapped_column(String(32), primary_key=True)
    payout_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    journal_id: Mapped[int] = mapped_column(ForeignKey("ledger_journals.id"), unique=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("recon_runs.id"))
    posted_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())


class FeePosting(Base):
    """A payment's provider fee, posted to the ledger once (migration 0025): the fee's own row.

    A reconciliation run posts its fees as one journal per chunk of payments (``runs.FEE_CHUNK_SQL``, ``FEE_CHUNK`` on
    SQLite) and currency (``kind`` ``fee``, no payment: Dr ``fees:<provider>`` / Cr provider clearing, the chunk's
    total), and a row here per payment, written by the same statement: which journal carries the payment's fee, how
    much, and which run found it. The primary key is what makes a fee once per payment, however often and however
    concurrently a day is run (as ``payout_postings`` does for payouts). A refund reverses the payment's fee from its
    row (a ``fee_refund`` journal of the payment, naming the fee's journal in ``reverses_id``).

    Fees posted before 0025 were a journal per payment; 0025 gave each its row here (``run_id`` from its memo).
    Like the ledger, append-only, and without per-row foreign keys on PostgreSQL: a trigger per statement checks
    that the payments and runs exist and that each journal named is a fee journal written by the same statement
    whose debits are the statement's fees in it, per currency (0025; ``ledger.fees_not_carried`` finds a journal
    whose postings do not add up to it, e.g. on SQLite, whose row triggers check the references only).
    """

    __tablename__ = "fee_postings"
    __table_args__ = (CheckConstraint("amount > 0", name="amount_positive"),)

    payment_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    journal_id: Mapped[int] = mapped_column(BigId)
    run_id: Mapped[int | None] = mapped_column(BigId)  # NULL: posted before 0025 by a run its memo did not name
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))


# --------------------------------------------------------------------------- exceptions as work


class CaseStatus(StrEnum):
    OPEN = "open"  # found by a run, nobody on it yet
    INVESTIGATING = "investigating"  # somebody is on it
    RESOLVED = "resolved"  # closed: see ``resolution``
    WRITTEN_OFF = "written_off"  # closed with a write-off journal in the ledger


class Resolution(StrEnum):
    HEALED = "healed"  # a run settled the lost webhook itself
    MATCHED_LATER = "matched_later"  # a later run of the day matches it, or finance found the match
    CLEARED = "cleared"  # a later run of the day no longer finds the reference at all (data restated)
    REFUNDED = "refunded"  # the payment was refunded (by a run that applied the provider's refund, or by hand)
    WRITTEN_OFF = "written_off"  # the difference written off with a ledger journal
    DISMISSED = "dismissed"  # not a problem after all (the reason is in the note)


class ReconCase(Base):
    """An exception found by reconciliation, as work: one case per (provider, business day, reference),
    carried across every run and re-run of its day until a run or a person resolves it."""

    __tablename__ = "recon_cases"
    __table_args__ = (
        UniqueConstraint("provider", "business_date", "reference"),
        Index("ix_recon_cases_open", "status", "business_date"),
        CheckConstraint("priority IN ('high', 'medium', 'low')", name="priority_valid"),
        CheckConstraint(
            "(status IN ('resolved', 'written_off')) = (resolution IS NOT NULL)", name="closed_has_resolution"
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    business_date: Mapped[date] = mapped_column(Date)  # the day it became a break
    reference: Mapped[str] = mapped_column(String(100))
    cls: Mapped[str] = mapped_column(String(24))  # its class in the latest run that found it
    payment_id: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(String(3))
    amount: Mapped[int | None] = mapped_column(BigInteger)  # the amount at stake, minor units (see cases.exposure)
    internal_amount: Mapped[int | None] = mapped_column(BigInteger)
    internal_currency: Mapped[str | None] = mapped_column(String(3))
    provider_amount: Mapped[int | None] = mapped_column(BigInteger)
    provider_currency: Mapped[str | None] = mapped_column(String(3))
    internal_status: Mapped[str | None] = mapped_column(String(16))
    provider_status: Mapped[str | None] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="")
    priority: Mapped[str] = mapped_column(String(8))
    sla_due: Mapped[date] = mapped_column(Date)  # to be resolved by the end of this business day
    status: Mapped[CaseStatus] = mapped_column(_enum(CaseStatus, "case_status"))
    assignee: Mapped[str | None] = mapped_column(String(100))
    resolution: Mapped[Resolution | None] = mapped_column(_enum(Resolution, "case_resolution"))
    resolution_note: Mapped[str | None] = mapped_column(Text)
    resolved_by: Mapped[str | None] = mapped_column(String(100))
    resolved_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    journal_id: Mapped[int | None] = mapped_column(ForeignKey("ledger_journals.id"))  # the write-off
    opened_at: Mapped[datetime] = mapped_column(UtcDateTime())
    opened_run_id: Mapped[int] = mapped_column(BigInteger)
    last_run_id: Mapped[int] = mapped_column(BigInteger)  # the latest run of its day (found or not)
    runs_seen: Mapped[int] = mapped_column(Integer, default=1)  # runs of its day that found it
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ReconCaseEvent(Base):
    """The audit trail of a case: who did what, when. Appended, never changed."""

    __tablename__ = "recon_case_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("recon_cases.id"), index=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    actor: Mapped[str] = mapped_column(String(100))  # a person (--by), or "run <id>"
    action: Mapped[str] = mapped_column(String(24))
    detail: Mapped[str] = mapped_column(Text, default="")

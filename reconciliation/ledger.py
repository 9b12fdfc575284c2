"""Double-entry ledger: append-only, integer minor units, one currency per account.

``post`` and ``post_many`` refuse a journal whose debits and credits differ (per currency) before
any SQL. PostgreSQL refuses it too, so the rule holds for writers that bypass this module: an
AFTER INSERT trigger per statement on each ledger table (migration 0010) reads the statement's new
rows as one set and refuses the statement unless every new journal has entries, the new entries
of each journal sum to zero per currency, and each entry is in its account's currency. Since
migration 0013 the same triggers check the references, in place of per-row foreign keys: each new
entry's journal and account exist, each new journal's payment and reversed journal exist (a
DELETE of a payment waits for the transactions writing journals, then looks for its journals).
Other triggers refuse any UPDATE or DELETE of journals, entries and accounts (corrections are new
journals), the DELETE of a payment with journals, and a TRUNCATE that would leave ledger rows
referring to nothing.

The guard runs at the end of each statement, not at COMMIT (a statement-level trigger cannot be
deferred), so **a journal and its entries are written by one SQL statement**. On PostgreSQL this
module writes them with one data-modifying CTE (journal ids drawn from their sequence first, so
that each journal's entries can name it in the same statement), up to ``POST_CHUNK`` journals per
statement for ``post_many``: a bulk posting is a few statements, not three trigger calls per
journal. A journal inserted by one statement and its entries by a later one is refused at the end
of the first; entries added to an existing journal later must balance among themselves. SQLite
(the embedded demo) has only the append-only triggers and cannot insert from a CTE: there a
journal is inserted, then its entries.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, case, func, select, text
from sqlalchemy import insert as sa_insert
from sqlalchemy.orm import Session, aliased, make_transient_to_detached

from reconciliation.db import advisory_lock, is_postgres
from reconciliation.dialect import insert
from reconciliation.models import Account, Entry, FeePosting, Journal, Payment

DEBIT = "debit"
CREDIT = "credit"

REVENUE = "revenue:subscriptions"
SUSPENSE = "suspense"
REFUNDS = "refunds"

#: The kind of the journals carrying the providers' fees (``payments.FEE``), which ``fee_postings`` rows name.
FEE_KIND = "fee"


def clearing(provider: str) -> str:
    """Money the provider holds for us."""
    return f"provider_clearing:{provider}"


def fees(provider: str) -> str:
    return f"fees:{provider}"


def bank(provider: str) -> str:
    """Money the provider paid out to our bank account (its matched payouts)."""
    return f"bank:{provider}"


def writeoffs(provider: str) -> str:
    """Exceptions of the provider written off by a person: a loss (debit) or a gain (credit)."""
    return f"writeoffs:{provider}"


def hold_fees(session: Session, provider: str, *, posting: bool) -> None:
    """The lock between posting a provider's fees and refunding one of its payments, held until the
    transaction ends (PostgreSQL; the demo's SQLite takes writers in turn).

    Fee posting (``posting``) holds it shared, so that its chunks run side by side, and reads its payments
    without locking them (a row lock writes each payment's tuple: 450 MB of WAL for a million); a refund
    holds it alone, before it reads the journals and the fee posting it reverses. A refund therefore either
    commits before a chunk reads its payments (which no longer counts the refunded one as paid), or waits for
    the chunks under way to commit and then reverses the payment's fee they posted too (``fee_postings``). That
    takes READ COMMITTED (each statement after the lock sees what committed while it waited): under a snapshot
    taken earlier, ``RuntimeError``."""
    advisory_lock(session, f"fees:{provider}", shared=posting)
    if is_postgres(session):
        isolation = session.scalar(text("SELECT current_setting('transaction_isolation')"))
        if isolation != "read committed":
            raise RuntimeError(f"the fee lock needs READ COMMITTED, not {isolation}: a refund could miss a fee")


class UnbalancedJournal(ValueError):
    """Debits and credits of a journal differ."""


@dataclass(frozen=True, slots=True)
class Line:
    account: str
    side: str  # DEBIT | CREDIT
    amount: int  # minor units, > 0
    currency: str


@dataclass(frozen=True, slots=True)
class NewJournal:
    """A journal to post with ``post_many``: its lines and what ``post`` takes as keywords."""

    lines: Sequence[Line]
    kind: str
    payment_id: int | None = None
    memo: str = ""
    reverses_id: int | None = None


def transfer(debit: str, credit: str, amount: int, currency: str) -> list[Line]:
    """The common two-line journal: ``amount`` moves from ``credit`` to ``debit``."""
    return [Line(debit, DEBIT, amount, currency), Line(credit, CREDIT, amount, currency)]


def check_balanced(lines: Sequence[Line]) -> None:
    if not lines:
        raise UnbalancedJournal("a journal needs entries")
    totals: dict[str, int] = defaultdict(int)
    for line in lines:
        if isinstance(line.amount, bool) or not isinstance(line.amount, int) or line.amount <= 0:
            raise UnbalancedJournal(f"entry amount must be a positive integer, got {line.amount!r}")
        if line.side not in (DEBIT, CREDIT):
            raise UnbalancedJournal(f"entry side must be debit or credit, got {line.side!r}")
        totals[line.currency] += line.amount if line.side == DEBIT else -line.amount
    unbalanced = {cur: diff for cur, diff in totals.items() if diff}
    if unbalanced:
        raise UnbalancedJournal(f"journal does not balance: debit - credit = {unbalanced}")


def account_ids(session: Session, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Ids of the accounts ``(code, currency)``, those not there yet created without racing.

    One query for all of them; when some are new, one ``INSERT ... ON CONFLICT DO NOTHING`` (in a
    fixed order, so two writers creating the same accounts cannot deadlock) and one more query,
    which also finds the accounts a concurrent writer created first.
    """
    wanted = set(pairs)
    if not wanted:
        return {}
    found = _known_accounts(session, wanted)
    missing = wanted - found.keys()
    if missing:
        session.execute(
            insert(session, Account)
            .values([{"code": code, "currency": currency} for code, currency in sorted(missing)])
            .on_conflict_do_nothing(index_elements=["code", "currency"])
        )
        found |= _known_accounts(session, missing)
    assert found.keys() == wanted  # noqa: S101 - just inserted or inserted concurrently
    return found


def _known_accounts(session: Session, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
    rows = session.execute(
        select(Account.code, Account.currency, Account.id).where(Account.code.in_(sorted({c for c, _ in pairs})))
    ).all()
    return {(code, currency): id_ for code, currency, id_ in rows if (code, currency) in pairs}


def account_id(session: Session, code: str, currency: str) -> int:
    """Id of the account (code, currency), created on first use without racing."""
    return account_ids(session, [(code, currency)])[code, currency]


def post(
    session: Session,
    lines: Sequence[Line],
    *,
    kind: str,
    payment_id: int | None = None,
    memo: str = "",
    reverses_id: int | None = None,
) -> Journal:
    """Post a balanced journal with its entries. ``(payment_id, kind)`` is unique: callers hold the payment lock.

    Returns the journal, persistent in ``session`` (written by a Core statement, so the ORM is told
    it exists rather than given it to insert; unset columns such as ``created_at`` load on access).
    """
    (journal_id,) = post_many(
        session, [NewJournal(lines, kind=kind, payment_id=payment_id, memo=memo, reverses_id=reverses_id)]
    )
    assert journal_id is not None  # noqa: S101 - posted or refused, never skipped without skip_posted
    journal = Journal(id=journal_id, payment_id=payment_id, kind=kind, memo=memo, reverses_id=reverses_id)
    make_transient_to_detached(journal)
    session.add(journal)
    return journal


#: Journals per statement of ``post_many`` on PostgreSQL (a journal is never split across two):
#: bounds the size of a statement's parameters and of the transition tables the guard reads.
POST_CHUNK = 5_000


def post_many(session: Session, journals: Sequence[NewJournal], *, skip_posted: bool = False) -> list[int | None]:
    """Post balanced journals with their entries, set-based; returns their ids, in order.

    Every journal is checked before any SQL, so one unbalanced journal refuses the whole call. On
    PostgreSQL, each ``POST_CHUNK`` journals and their entries are one statement, which the
    database's guard checks as one set. ``skip_posted``: a journal whose ``(payment_id, kind)``
    was posted before is skipped (``ON CONFLICT DO NOTHING`` on that key; its id is ``None``);
    without it the key refuses the statement. Either way the key is what makes a journal once:
    callers hold the payments' locks, as for ``post``.
    """
    for journal in journals:
        check_balanced(journal.lines)
    if not journals:
        return []
    session.flush()  # what the journals refer to (a payment created in this session) is written first
    accounts = account_ids(session, ((line.account, line.currency) for j in journals for line in j.lines))
    write = _insert_together if is_postgres(session) else _insert_one_by_one
    ids: list[int | None] = []
    for start in range(0, len(journals), POST_CHUNK):
        ids += write(session, journals[start : start + POST_CHUNK], accounts, skip_posted)
    return ids


# Journal ids are drawn first (``nextval`` in a materialized CTE, in input order), so that the
# entries can name their journal in the same statement; ``RETURNING`` could not say which input
# row a journal came from. Entries are inserted in input order (``reverse`` mirrors them by id).
_INSERT_TOGETHER = """
WITH draft AS MATERIALIZED (
    SELECT nextval('ledger_journals_id_seq') AS id, d.ord, d.payment_id, d.kind, d.memo, d.reverses_id
      FROM unnest(CAST(:ord AS integer[]), CAST(:payment_id AS bigint[]), CAST(:kind AS text[]),
                  CAST(:memo AS text[]), CAST(:reverses_id AS bigint[]))
           AS d (ord, payment_id, kind, memo, reverses_id)
),
posted AS (
    INSERT INTO ledger_journals (id, payment_id, kind, memo, reverses_id)
    SELECT id, payment_id, kind, memo, reverses_id FROM draft ORDER BY ord
    {on_conflict}
    RETURNING id
),
entries AS (
    INSERT INTO ledger_entries (journal_id, account_id, side, amount, currency)
    SELECT d.id, e.account_id, e.side, e.amount, e.currency
      FROM unnest(CAST(:entry_ord AS integer[]), CAST(:account_id AS bigint[]), CAST(:side AS text[]),
                  CAST(:amount AS bigint[]), CAST(:currency AS text[])) WITH ORDINALITY
           AS e (ord, account_id, side, amount, currency, n)
      JOIN draft d ON d.ord = e.ord
     WHERE d.id IN (SELECT id FROM posted)
     ORDER BY e.n
)
SELECT d.ord, d.id FROM draft d WHERE d.id IN (SELECT id FROM posted)
"""
_POSTED_ONCE = "ON CONFLICT (payment_id, kind) DO NOTHING"


def _insert_together(
    session: Session, journals: Sequence[NewJournal], accounts: dict[tuple[str, str], int], skip_posted: bool
) -> list[int | None]:
    """PostgreSQL: the journals and all their entries in one statement (a data-modifying CTE)."""
    lines = [(ord_, line) for ord_, journal in enumerate(journals) for line in journal.lines]
    columns: dict[str, list[int | str | None]] = {
        "ord": list(range(len(journals))),
        "payment_id": [j.payment_id for j in journals],
        "kind": [j.kind for j in journals],
        "memo": [j.memo for j in journals],
        "reverses_id": [j.reverses_id for j in journals],
        "entry_ord": [ord_ for ord_, _ in lines],
        "account_id": [accounts[line.account, line.currency] for _, line in lines],
        "side": [line.side for _, line in lines],
        "amount": [line.amount for _, line in lines],
        "currency": [line.currency for _, line in lines],
    }
    statement = text(_INSERT_TOGETHER.format(on_conflict=_POSTED_ONCE if skip_posted else ""))
    params = {name: _array_literal(values) for name, values in columns.items()}
    posted: dict[int, int] = {ord_: id_ for ord_, id_ in session.execute(statement, params)}
    return [posted.get(ord_) for ord_ in range(len(journals))]


def _array_literal(values: Sequence[int | str | None]) -> str:
    """A PostgreSQL array literal (``{1,NULL,"a \\"b\\""}``), sent as one string parameter.

    psycopg2 sends a list as ``ARRAY[...]``, one constant per element for the server to parse and
    plan: for a chunk of 5,000 journals (75,000 values) that took longer than the statement's
    guard. The literal is read by the array type's input function instead.
    """
    items = []
    for value in values:
        if value is None:
            items.append("NULL")
        elif isinstance(value, int):
            items.append(str(value))
        else:
            items.append('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(items) + "}"


def _insert_one_by_one(
    session: Session, journals: Sequence[NewJournal], accounts: dict[tuple[str, str], int], skip_posted: bool
) -> list[int | None]:
    """SQLite (no INSERT inside a CTE, and no balance guard to satisfy): each journal, then its entries."""
    ids: list[int | None] = []
    for journal in journals:
        statement = insert(session, Journal).values(
            payment_id=journal.payment_id, kind=journal.kind, memo=journal.memo, reverses_id=journal.reverses_id
        )
        if skip_posted:
            statement = statement.on_conflict_do_nothing(index_elements=["payment_id", "kind"])
        journal_id = session.scalar(statement.returning(Journal.id))
        if journal_id is not None:
            session.execute(
                sa_insert(Entry),
                [
                    {"journal_id": journal_id, "account_id": accounts[line.account, line.currency],
                     "side": line.side, "amount": line.amount, "currency": line.currency}
                    for line in journal.lines
                ],
            )  # fmt: skip
        ids.append(journal_id)
    return ids


def reverse(session: Session, original: Journal, *, kind: str, memo: str = "") -> Journal:
    """A new journal that mirrors ``original`` (debits become credits)."""
    rows = session.execute(
        select(Account.code, Entry.side, Entry.amount, Entry.currency)
        .join(Account, Account.id == Entry.account_id)
        .where(Entry.journal_id == original.id)
        .order_by(Entry.id)
    ).all()
    lines = [Line(code, CREDIT if side == DEBIT else DEBIT, amount, currency) for code, side, amount, currency in rows]
    return post(
        session,
        lines,
        kind=kind,
        payment_id=original.payment_id,
        memo=memo or f"reversal of journal {original.id} ({original.kind})",
        reverses_id=original.id,
    )


@dataclass(frozen=True, slots=True)
class Balance:
    account: str
    currency: str
    debits: int
    credits: int

    @property
    def balance(self) -> int:
        """Debit-normal balance (debits - credits)."""
        return self.debits - self.credits


def balances(session: Session, *, before: datetime | None = None) -> list[Balance]:
    """Every account's debits, credits and balance, summed in SQL from the entries.

    ``before``: only the journals posted (``created_at``) before that instant, and only the accounts
    with an entry by then (``ledger balances --as-of`` passes the end of a business day). Without
    it, every journal and every account, an account without entries at 0.
    """
    debit_sum = func.coalesce(func.sum(case((Entry.side == DEBIT, Entry.amount), else_=0)), 0)
    credit_sum = func.coalesce(func.sum(case((Entry.side == CREDIT, Entry.amount), else_=0)), 0)
    stmt = select(Account.code, Account.currency, debit_sum, credit_sum)
    if before is None:
        stmt = stmt.join(Entry, Entry.account_id == Account.id, isouter=True)
    else:
        stmt = (
            stmt.join(Entry, Entry.account_id == Account.id)
            .join(Journal, Journal.id == Entry.journal_id)
            .where(Journal.created_at < before)
        )
    rows = session.execute(stmt.group_by(Account.code, Account.currency).order_by(Account.code, Account.currency)).all()
    return [Balance(code, cur, int(d), int(c)) for code, cur, d, c in rows]


def unbalanced_journals(session: Session) -> list[tuple[int, str, int]]:
    """Journals whose entries do not sum to zero per currency: (journal id, currency, difference)."""
    signed = func.sum(case((Entry.side == DEBIT, Entry.amount), else_=-Entry.amount))
    rows = session.execute(
        select(Entry.journal_id, Entry.currency, signed)
        .group_by(Entry.journal_id, Entry.currency)
        .having(signed != 0)
        .order_by(Entry.journal_id)
    ).all()
    empty = session.execute(
        select(Journal.id).where(~select(Entry.id).where(Entry.journal_id == Journal.id).exists())
    ).scalars()
    return [(jid, cur, int(diff)) for jid, cur, diff in rows] + [(jid, "", 0) for jid in empty]


def fees_not_carried(session: Session) -> list[tuple[int, str, int, int]]:
    """Fee journals and the fees their postings give (``fee_postings``, migration 0025) that differ, per journal and
    currency: (journal id, currency, the fee journal's debits, the postings' sum), e.g. rows written with triggers
    off, or SQLite's, whose triggers check a posting's references, not its amount. A posting in a currency its
    journal does not debit, or naming a journal of another kind, counts against debits of 0; a fee journal no posting
    names has postings of 0. One pass over the fee journals' entries and one over the postings."""
    debits = (
        select(Entry.journal_id, Entry.currency, func.sum(Entry.amount).label("amount"))
        .join(Journal, Journal.id == Entry.journal_id)
        .where(Journal.kind == FEE_KIND, Entry.side == DEBIT)
        .group_by(Entry.journal_id, Entry.currency)
        .subquery()
    )
    posted = (
        select(FeePosting.journal_id, FeePosting.currency, func.sum(FeePosting.amount).label("amount"))
        .group_by(FeePosting.journal_id, FeePosting.currency)
        .subquery()
    )
    journal_id = func.coalesce(debits.c.journal_id, posted.c.journal_id)
    currency = func.coalesce(debits.c.currency, posted.c.currency)
    debit, carried = func.coalesce(debits.c.amount, 0), func.coalesce(posted.c.amount, 0)
    same = and_(posted.c.journal_id == debits.c.journal_id, posted.c.currency == debits.c.currency)
    rows = session.execute(
        select(journal_id, currency, debit, carried)
        .select_from(debits)
        .join(posted, same, full=True)
        .where(debit != carried)
        .order_by(journal_id, currency)
    ).all()
    return [(int(jid), code, int(amount), int(given)) for jid, code, amount, given in rows]


_Reversed = aliased(Journal)


def dangling_references(session: Session) -> list[tuple[str, int, int]]:
    """Ledger rows that refer to nothing, which the guard refuses to write (no foreign key does, since 0013):
    (what, the row's id, the id it names), e.g. rows written with triggers off."""
    found: list[tuple[str, int, int]] = []
    checks = (
        ("entry's journal", Entry.id, Entry.journal_id, Journal.id),
        ("entry's account", Entry.id, Entry.account_id, Account.id),
        ("journal's payment", Journal.id, Journal.payment_id, Payment.id),
        ("journal's reversed journal", Journal.id, Journal.reverses_id, _Reversed.id),
        ("fee posting's payment", FeePosting.payment_id, FeePosting.payment_id, Payment.id),
        ("fee posting's journal", FeePosting.payment_id, FeePosting.journal_id, Journal.id),
    )
    for what, row_id, ref, target in checks:
        missing = ~select(target).where(target == ref).exists()
        rows = session.execute(select(row_id, ref).where(ref.is_not(None), missing).order_by(row_id).limit(100))
        found += [(what, int(row), int(named)) for row, named in rows if named is not None]
    return found

"""Double-entry ledger: append-only, integer minor units, one currency per account.

``post`` refuses a journal whose debits and credits differ (per currency). The
database refuses it too (a deferred constraint trigger on PostgreSQL), and refuses
any UPDATE or DELETE of journals and entries, so the rule holds for writers that
bypass this module.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from reconciliation.dialect import insert
from reconciliation.models import Account, Entry, Journal

DEBIT = "debit"
CREDIT = "credit"

REVENUE = "revenue:subscriptions"
SUSPENSE = "suspense"
REFUNDS = "refunds"


def clearing(provider: str) -> str:
    """Money the provider holds for us."""
    return f"provider_clearing:{provider}"


def fees(provider: str) -> str:
    return f"fees:{provider}"


def bank(provider: str) -> str:
    """Money the provider paid out to our bank account (its matched payouts)."""
    return f"bank:{provider}"


class UnbalancedJournal(ValueError):
    """Debits and credits of a journal differ."""


@dataclass(frozen=True, slots=True)
class Line:
    account: str
    side: str  # DEBIT | CREDIT
    amount: int  # minor units, > 0
    currency: str


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


def account_id(session: Session, code: str, currency: str) -> int:
    """Id of the account (code, currency), created on first use without racing."""
    found = session.scalar(select(Account.id).where(Account.code == code, Account.currency == currency))
    if found is not None:
        return found
    session.execute(
        insert(session, Account)
        .values(code=code, currency=currency)
        .on_conflict_do_nothing(index_elements=["code", "currency"])
    )
    created = session.scalar(select(Account.id).where(Account.code == code, Account.currency == currency))
    assert created is not None  # noqa: S101 - just inserted or inserted concurrently
    return created


def post(
    session: Session,
    lines: Sequence[Line],
    *,
    kind: str,
    payment_id: int | None = None,
    memo: str = "",
    reverses_id: int | None = None,
) -> Journal:
    """Post a balanced journal. ``(payment_id, kind)`` is unique: callers hold the payment lock."""
    check_balanced(lines)
    journal = Journal(payment_id=payment_id, kind=kind, memo=memo, reverses_id=reverses_id)
    session.add(journal)
    session.flush()
    for line in lines:
        session.add(
            Entry(
                journal_id=journal.id,
                account_id=account_id(session, line.account, line.currency),
                side=line.side,
                amount=line.amount,
                currency=line.currency,
            )
        )
    session.flush()
    return journal


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


def balances(session: Session) -> list[Balance]:
    debit_sum = func.coalesce(func.sum(case((Entry.side == DEBIT, Entry.amount), else_=0)), 0)
    credit_sum = func.coalesce(func.sum(case((Entry.side == CREDIT, Entry.amount), else_=0)), 0)
    rows = session.execute(
        select(Account.code, Account.currency, debit_sum, credit_sum)
        .join(Entry, Entry.account_id == Account.id, isouter=True)
        .group_by(Account.code, Account.currency)
        .order_by(Account.code, Account.currency)
    ).all()
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

"""Shared pieces of the reconciliation reports (``reconciliation.reports.run``): the item row, the
order of classes and of payout statuses, payout totals, money display, and escaping of untrusted
text. No database access here."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from reconciliation.models import ReconClass
from reconciliation.reports.labels import NOT_AT_ALL, WHY, Language
from schemas.currency import AmountError, exponent, format_amount, to_major

#: Exceptions, most serious first. Every item listing uses this order, then unknown classes, then matched.
EXCEPTION_ORDER: tuple[str, ...] = (
    ReconClass.MISSING_AT_PROVIDER.value,
    ReconClass.AMOUNT_MISMATCH.value,
    ReconClass.CURRENCY_MISMATCH.value,
    ReconClass.STATUS_MISMATCH.value,
    ReconClass.MISSING_AFTER_SLA.value,
    ReconClass.DUPLICATE.value,
    ReconClass.FEE_VARIANCE.value,
    ReconClass.MISSING_IN_LEDGER.value,  # healed by the run: read, but no action needed
)
MATCHED = ReconClass.MATCHED.value
#: Payout statuses (``recon_payouts.status``), exceptions first: paid out differs from the net of its
#: payments, paid out with nothing of ours behind it, its payments waiting for it; then matched.
PAYOUT_ORDER: tuple[str, ...] = ("mismatch", "unexplained", "pending", "matched")
PAYOUT_MATCHED = "matched"

#: The collation item listings and changes sort references in on PostgreSQL: byte order (of UTF-8: code points),
#: as SQLite's ``BINARY`` compares text, the same whatever the server's locale; and a sort of a million
#: references by ``memcmp``, where a locale's collation (glibc's, ``C.UTF-8`` included) copies and compares
#: each pair with ``strcoll`` (measured 2026-12-06, with the keys ahead of the formatted lines,
#: ``reports_pg._sorted``: the report COPY's sort 1.6 -> 0.8 s a worker).
BYTE_ORDER = "C"

#: First characters that make a spreadsheet read a cell as a formula (OWASP CSV injection, CWE-1236).
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\0")


def class_rank(cls: str) -> int:
    """Sort key of a class: exceptions by seriousness, then unknown classes, then ``matched``."""
    if cls == MATCHED:
        return len(EXCEPTION_ORDER) + 1
    try:
        return EXCEPTION_ORDER.index(cls)
    except ValueError:
        return len(EXCEPTION_ORDER)


def payout_rank(status: str) -> int:
    """Sort key of a payout status: ``PAYOUT_ORDER``; an unknown status ranks with pending, before matched."""
    try:
        return PAYOUT_ORDER.index(status)
    except ValueError:
        return PAYOUT_ORDER.index(PAYOUT_MATCHED) - 1


def payout_totals(payouts: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Payouts (``reports.payouts``) counted and totalled per currency and status, exceptions first.

    Each total is ``{currency, status, count, posted, payout_total_minor, settled_net_total_minor,
    difference_total_minor}`` (a missing amount counts as 0: a pending payout has no amount yet).
    """
    totals: dict[tuple[str, str], dict[str, Any]] = {}
    for p in payouts:
        key = (p["currency"] or "", p["status"])
        total = totals.setdefault(
            key,
            {
                "currency": p["currency"], "status": p["status"], "count": 0, "posted": 0,
                "payout_total_minor": 0, "settled_net_total_minor": 0, "difference_total_minor": 0,
            },
        )  # fmt: skip
        total["count"] += 1
        total["posted"] += 1 if p["posted"] else 0
        total["payout_total_minor"] += p["payout_amount"] or 0
        total["settled_net_total_minor"] += p["settled_net"] or 0
        total["difference_total_minor"] += p["difference"] or 0
    return [totals[k] for k in sorted(totals, key=lambda k: (k[0], payout_rank(k[1]), k[1]))]


class ItemRow(NamedTuple):
    """One ``recon_items`` row as the reports read it (column order of ``reports.ITEM_COLUMNS``)."""

    id: int
    cls: str
    healed: bool
    reference: str | None
    payment_id: int | None
    provider_txn_id: str | None
    internal_status: str | None
    provider_status: str | None
    internal_amount: int | None
    internal_currency: str | None
    provider_amount: int | None
    provider_currency: str | None
    provider_lines: int
    fee: int | None
    expected_fee: int | None
    difference: int | None
    detail: str

    @property
    def currency(self) -> str | None:
        """The item's currency: ours when we have the payment, else the provider's."""
        return self.internal_currency or self.provider_currency

    @property
    def fee_currency(self) -> str | None:
        """Fees are taken by the provider, in its currency."""
        return self.provider_currency or self.internal_currency


def formula_safe(value: str | None) -> str:
    """Text for a spreadsheet cell: a leading ``'`` when it would start a formula; ``None`` is ``""``.

    Only for text columns: numeric columns are written as numbers and never touched (a negative
    difference must stay ``-500``).
    """
    if value is None:
        return ""
    return "'" + value if value.startswith(FORMULA_TRIGGERS) else value


def printable(value: str | None) -> str:
    """Text for a terminal: control characters (ANSI escapes, CR, ...) replaced by ``?``."""
    if value is None:
        return ""
    return "".join(ch if ch.isprintable() else "?" for ch in value)


def exponent_or_none(currency: str | None) -> int | None:
    """The currency's minor-unit exponent, ``None`` when missing or not supported."""
    if not currency:
        return None
    try:
        return exponent(currency)
    except AmountError:
        return None


def plain_amount(minor: int | None, currency: str | None) -> str:
    """Major units without grouping or code, as CSV wants them: ``15000`` XOF, ``12.50`` USD, ``-5.00``.

    ``""`` when the amount is missing or its currency unknown (the ``*_minor`` column still has it).
    """
    exp = exponent_or_none(currency)
    if minor is None or currency is None or exp is None:
        return ""
    return f"{to_major(minor, currency):.{exp}f}"


def display_amount(minor: int | None, currency: str | None) -> str:
    """Human display with the code (``15 000 XOF``, ``12.50 USD``); ``—`` when missing."""
    if minor is None:
        return "—"
    if currency is None or exponent_or_none(currency) is None:
        return f"{minor} {currency or '???'} (minor units)"
    return format_amount(minor, currency)


def spreadsheet_amount(minor: int, currency: str | None) -> tuple[Decimal | int, str]:
    """A numeric cell value in major units and its number format (``#,##0`` for XOF, ``#,##0.00`` for USD).

    An unknown currency keeps the integer minor units (format ``#,##0``) rather than guess.
    """
    exp = exponent_or_none(currency)
    if currency is None or exp is None:
        return minor, "#,##0"
    return to_major(minor, currency), "#,##0" if exp == 0 else "#,##0." + "0" * exp


def why(item: ItemRow, language: Language = "en") -> str:
    """What the Detail column says: the run's own detail, else why the item is an exception, in words
    (``labels.WHY``); empty for a matched item."""
    if item.detail or item.cls not in WHY:
        return item.detail
    return WHY[item.cls][language].format(
        ours=display_amount(item.internal_amount, item.internal_currency),
        theirs=display_amount(item.provider_amount, item.provider_currency),
        ours_status=item.internal_status or NOT_AT_ALL[language],
        theirs_status=item.provider_status or NOT_AT_ALL[language],
        lines=item.provider_lines,
        fee=display_amount(item.fee, item.fee_currency),
        expected_fee=display_amount(item.expected_fee, item.fee_currency),
    )


def local_time(value: str | datetime | None, zone: str) -> str:
    """A timestamp for people: in the business time zone, to the second, without microseconds
    (``2026-11-21 02:00:13``); ``—`` when missing."""
    if value is None:
        return "—"
    when = datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value
    return when.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S")


def iso_utc(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z`` (``2026-11-20T23:00:00Z``)."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")

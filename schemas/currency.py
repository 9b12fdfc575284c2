"""ISO 4217 currencies payrecon handles, with their minor-unit exponents.

Money is always an ``int`` in the currency's minor unit plus its ISO code. The
exponent tells how many minor units make one major unit (XOF has none, USD has
two). Provider APIs that speak in major units (CinetPay's ``"100"``) are
converted here and only here.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

#: Exponent of the minor unit for each currency the providers settle in.
MINOR_UNIT_EXPONENT: dict[str, int] = {
    "XOF": 0,  # West African CFA franc
    "XAF": 0,  # Central African CFA franc
    "GNF": 0,  # Guinean franc
    "CDF": 2,  # Congolese franc
    "USD": 2,
    "EUR": 2,
    "GHS": 2,  # Ghana cedi (MTN MoMo)
    "UGX": 0,  # Ugandan shilling (MTN MoMo)
    "RWF": 0,  # Rwandan franc (MTN MoMo)
    "ZMW": 2,  # Zambian kwacha (MTN MoMo)
    "GMD": 2,  # Gambian dalasi (Wave)
    "NGN": 2,
    "KES": 2,
    "MAD": 2,
    "SLE": 2,
    "LRD": 2,
}


class AmountError(ValueError):
    """An amount that cannot be represented exactly in the currency's minor unit."""


def exponent(currency: str) -> int:
    """Return the minor-unit exponent of ``currency``; raise ``AmountError`` if unknown."""
    try:
        return MINOR_UNIT_EXPONENT[currency]
    except KeyError:
        raise AmountError(f"unsupported currency {currency!r}") from None


def to_minor(amount: str | int | Decimal, currency: str) -> int:
    """Convert a major-unit amount (``"100"``, ``"0.20"``) to integer minor units.

    Refuses anything that is not an exact amount in that currency: ``"10.5"`` XOF,
    ``"1.234"`` USD, ``"abc"``, ``NaN``, infinities and floats.
    """
    if isinstance(amount, float):
        raise AmountError("float amounts are refused; pass a string or Decimal")
    try:
        value = Decimal(str(amount).strip())
    except InvalidOperation:
        raise AmountError(f"not a number: {amount!r}") from None
    if not value.is_finite():
        raise AmountError(f"not a finite amount: {amount!r}")
    scaled = value.scaleb(exponent(currency))
    if scaled != scaled.to_integral_value():
        raise AmountError(f"{amount!r} has more decimals than {currency} allows")
    return int(scaled)


def to_major(minor: int, currency: str) -> Decimal:
    """Convert integer minor units to an exact ``Decimal`` in major units."""
    return Decimal(minor).scaleb(-exponent(currency))


def format_amount(minor: int, currency: str) -> str:
    """Human display: ``15000 XOF``, ``12.50 USD``."""
    exp = exponent(currency)
    major = to_major(minor, currency)
    return f"{major:,.{exp}f} {currency}".replace(",", " ")

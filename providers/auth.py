"""Bearer tokens shared by the threads of one client (MTN MoMo, Orange Money).

A token is fetched once, reused until shortly before the provider says it expires, and
replaced once when a business call answers 401 (the provider may expire it early).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from providers.base import ProviderAuthError

T = TypeVar("T")


class TokenCache:
    """A thread-safe cached token: concurrent callers share one fetch.

    ``fetch()`` returns ``(token, lifetime in seconds)``; the token is reused until
    ``lifetime - min(margin, lifetime / margin_divisor)`` seconds of ``clock`` after the
    fetch started. ``forget_refused``: whether a token refused with 401 is forgotten
    before the refresh, so that a failed refresh leaves no token (MoMo), or kept until
    a new one replaces it (Orange).
    """

    def __init__(
        self,
        fetch: Callable[[], tuple[str, float]],
        *,
        clock: Callable[[], float],
        margin: float,
        margin_divisor: float,
        forget_refused: bool,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._margin = margin
        self._margin_divisor = margin_divisor
        self._forget_refused = forget_refused
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        #: How many tokens were fetched (observability; tests check the cache with it).
        self.fetched = 0

    @property
    def current(self) -> str | None:
        """The cached token, if any (for redaction; may be expired)."""
        return self._token

    def get(self, *, stale: str | None = None) -> str:
        """The cached token, or a new one if it is (nearly) expired or is ``stale`` (refused with 401).

        The lock makes concurrent callers share one refresh: a thread that waited while
        another refreshed gets the new token instead of fetching its own.
        """
        with self._lock:
            token = self._token
            if token is not None and token != stale and self._clock() < self._refresh_at:
                return token
            started = self._clock()
            token, ttl = self._fetch()
            self._token = token
            self._refresh_at = started + ttl - min(self._margin, ttl / self._margin_divisor)
            self.fetched += 1
            return token

    def call(self, request: Callable[[str], T]) -> T:
        """``request(token)``; on a 401, get a fresh token once and try once more.

        A second 401 (or a token endpoint refusing us) propagates as ``ProviderAuthError``.
        """
        token = self.get()
        try:
            return request(token)
        except ProviderAuthError as exc:
            if exc.http_status != 401:
                raise
        if self._forget_refused:
            with self._lock:
                if self._token == token:  # unless another thread already replaced it
                    self._token = None
        return request(self.get(stale=token))

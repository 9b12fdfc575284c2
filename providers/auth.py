"""Bearer tokens shared by the threads of one client (MTN MoMo, Orange Money), and the construction
those clients share (``TokenClient``).

A token is fetched once, reused until shortly before the provider says it expires, and
replaced once when a business call answers 401 (the provider may expire it early).
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from typing import ClassVar, TypedDict, TypeVar

import requests
from tenacity.wait import wait_base

from providers import hub as call_hub
from providers.base import ProviderAuthError
from providers.http import CodeExtractor, HttpClient, retry_policy

T = TypeVar("T")


def basic_authorization(user: str, secret: str) -> str:
    """The token call's ``Authorization`` value: ``Basic base64(user:secret)`` (MoMo's API user and key,
    Orange's client id and secret)."""
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")


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
        another refreshed gets the new token instead of fetching its own. In a hub
        (``providers.hub``) the lock never blocks the hub's thread: a valid token is taken if the
        lock is free at once; otherwise the wait for the lock and the refresh run on one of the
        hub's offload threads while its other calls go on.
        """
        if call_hub.current() is not None:
            if self._lock.acquire(blocking=False):
                try:
                    token = self._fresh(stale)
                finally:
                    self._lock.release()
                if token is not None:
                    return token
            return call_hub.offload(lambda: self.get(stale=stale))
        with self._lock:
            token = self._fresh(stale)
            if token is not None:
                return token
            started = self._clock()
            token, ttl = self._fetch()
            self._token = token
            self._refresh_at = started + ttl - min(self._margin, ttl / self._margin_divisor)
            self.fetched += 1
            return token

    def _fresh(self, stale: str | None) -> str | None:
        """The cached token if it is neither (nearly) expired nor ``stale``; the caller holds the lock."""
        token = self._token
        return token if token is not None and token != stale and self._clock() < self._refresh_at else None

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
        return request(call_hub.offload(lambda: self._replace(token)))  # in a hub: the lock on an offload thread

    def _replace(self, refused: str) -> str:
        """A token other than ``refused`` (forgotten first if ``forget_refused``)."""
        if self._forget_refused:
            with self._lock:
                if self._token == refused:  # unless another thread already replaced it
                    self._token = None
        return self.get(stale=refused)


class Transport(TypedDict, total=False):
    """How a token client talks to its provider; every key may be left out (``TokenClient``'s defaults).

    ``session``: a pooled session to use (None: a new one, closed by ``close``); ``timeout``: (connect,
    read) seconds; ``max_attempts`` and ``deadline``: the retry policy inside one call; ``wait`` replaces
    its jittered backoff (tests pass ``wait_none()``); ``clock`` (seconds, monotonic) times the token cache.
    """

    session: requests.Session | None
    timeout: tuple[float, float]
    max_attempts: int
    deadline: float
    wait: wait_base | None
    clock: Callable[[], float]


class TokenClient(HttpClient):
    """A provider client whose API calls carry a bearer token got with a Basic-authenticated token call
    (MTN MoMo, Orange Money): the API URL, the token call's authorization, the HTTP session, timeout and
    retry policy, and the token cache, built once here. A subclass sets how its provider's tokens are
    refreshed (the three class attributes) and fetches one (``_fetch_token``)."""

    #: A token is refreshed ``min(token_margin, lifetime / token_margin_divisor)`` seconds before it expires.
    token_margin: ClassVar[float]
    token_margin_divisor: ClassVar[float]
    #: Whether a token refused with 401 is forgotten before the refresh (``TokenCache``).
    forget_refused_token: ClassVar[bool]

    def __init__(
        self,
        error_code: CodeExtractor,
        *,
        api_url: str,
        user: str,
        secret: str,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (3.05, 10.0),
        max_attempts: int = 3,
        deadline: float = 20.0,
        wait: wait_base | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Nothing is sent until the first call. Secrets live in underscored attributes that ``__repr__``
        never shows."""
        self.api_url = api_url.rstrip("/")
        self._basic = basic_authorization(user, secret)
        super().__init__(error_code, session, timeout, retry_policy(max_attempts, deadline, wait))
        self._tokens = TokenCache(
            self._fetch_token, clock=clock, margin=self.token_margin, margin_divisor=self.token_margin_divisor,
            forget_refused=self.forget_refused_token,
        )  # fmt: skip

    def _fetch_token(self) -> tuple[str, float]:
        """The provider's token call (the cache holds its lock): ``(token, lifetime in seconds)``."""
        raise NotImplementedError

    @property
    def tokens_fetched(self) -> int:
        """How many tokens this client obtained (observability; tests check the cache with it)."""
        return self._tokens.fetched

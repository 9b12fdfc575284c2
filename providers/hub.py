"""A batch's provider calls side by side in the calling thread: each call a greenlet, their sockets on one selector.

A worker settles a batch's deliveries after asking the provider about each, a hundred calls at once that
mostly wait (a provider answers in 100-500 ms). A thread per call cost each call about three times the CPU
of the call itself (``bench/provider_calls.py``: 0.62-0.67 ms against 0.24 ms a check): a hundred threads
waking, taking the interpreter's lock from one another and handing results back. Here each call runs in a
**greenlet** of the thread that runs the batch (the ``greenlet`` package: the coroutines behind gevent and
SQLAlchemy's asyncio layer, switched in C), written as it is, blocking style; only the lowest layer of the
provider session (``providers.http``: sending a request and reading its answer on a pooled keep-alive
connection, and the retry loop's pauses) asks ``current()`` whether it runs in a hub, and then waits by
switching back to the hub (``wait``, ``sleep``) instead of blocking the thread. The hub waits for every
socket at once (one ``selectors`` selector) and switches back to the call whose socket is ready or whose
time is up.

What would block the thread for long and is not written for the hub runs on a thread of ``offload`` while
the hub goes on with the other calls (``offload``): opening a connection (name lookup, TCP and TLS
handshakes), and a request that takes requests' own path (a proxy, a client certificate). Code that holds a
thread lock while it calls a provider must not hold it in a greenlet of the hub (another call of the hub would
run into it and block the thread for good), nor wait for it there (the thread, and every call of the hub, would
wait with it): it takes the lock on an offload thread (a token cache's refresh: ``providers.auth``). Outside a
hub (``current()`` is None) everything blocks as before.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

import greenlet

T = TypeVar("T")

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


class _Call(greenlet.greenlet):  # type: ignore[misc]  # greenlet's class is untyped
    """One call of a hub: the greenlet that runs it, and what it waits for."""

    def __init__(self, hub: Hub, run: Callable[[], Any]) -> None:
        super().__init__(run)
        self.hub = hub
        self.token = 0  # the wait it is in (a later wake-up for an earlier wait is ignored)


class Hub:
    """Runs calls side by side in the calling thread (``run``); ``offload``: the threads for what blocks."""

    def __init__(self, offload: Executor) -> None:
        self._offload = offload
        self._main: Any = None
        self._selector: selectors.BaseSelector | None = None
        self._timers: list[tuple[float, int, _Call, int]] = []
        self._ready: deque[tuple[_Call, int, Any]] = deque()
        self._done: deque[tuple[_Call, int, Future[Any]]] = deque()  # offloaded work finished, from other threads
        self._waker: socket.socket | None = None
        self._order = itertools.count()
        self._live = 0  # calls of the running set not finished

    def run(self, calls: Sequence[Callable[[], T]]) -> list[T]:
        """Each of ``calls`` (without arguments), side by side; their results in order, once all are done. A call
        that raises: the first such exception is raised, after every call has finished."""
        if self._main is not None:
            raise RuntimeError("a hub runs one set of calls at a time")
        self._main = greenlet.getcurrent()
        results: list[Any] = [None] * len(calls)
        errors: list[BaseException | None] = [None] * len(calls)
        self._selector = selectors.DefaultSelector()
        wake, self._waker = socket.socketpair()
        wake.setblocking(False)
        self._waker.setblocking(False)
        self._selector.register(wake, READ, None)
        started: list[_Call] = []
        try:
            for i, call in enumerate(calls):
                started.append(_Call(self, self._body(call, i, results, errors)))
            self._live = len(started)
            for task in started:
                self._switch(task, None)
            while self._live:
                self._turn(wake)
        finally:
            for task in started:  # only after a failure of the hub itself: its calls are ended, their sockets closed
                if not task.dead:
                    task.throw(greenlet.GreenletExit)
            self._selector.close()
            wake.close()
            self._waker.close()
            self._main, self._selector, self._waker = None, None, None
            self._timers.clear()
            self._ready.clear()
            self._done.clear()
        for error in errors:
            if error is not None:
                raise error
        return results

    def _body(
        self, call: Callable[[], Any], i: int, results: list[Any], errors: list[BaseException | None]
    ) -> Callable[[], None]:
        def body(*_: Any) -> None:  # started with the value of a switch: none
            try:
                results[i] = call()
            except BaseException as exc:
                errors[i] = exc
            finally:
                self._live -= 1

        return body

    def _turn(self, wake: socket.socket) -> None:
        """Wait for the next socket, timer or offloaded work, and switch to the calls it wakes."""
        assert self._selector is not None  # noqa: S101 - running
        timeout = None
        if self._timers:
            timeout = max(0.0, self._timers[0][0] - time.monotonic())
        if self._done:
            timeout = 0.0
        events = self._selector.select(timeout)
        for key, _ in events:
            if key.data is None:  # the waker: offloaded work finished
                try:
                    while wake.recv(4096):
                        pass
                except BlockingIOError:
                    pass
                continue
            task, token = key.data
            self._selector.unregister(key.fileobj)
            self._ready.append((task, token, True))
        while self._done:
            task, token, future = self._done.popleft()
            self._ready.append((task, token, future))
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, task, token = heapq.heappop(self._timers)
            if task.token == token:  # still in that wait: its time is up
                self._ready.append((task, token, False))
        while self._ready:
            task, token, value = self._ready.popleft()
            self._switch(task, value, token)

    def _switch(self, task: _Call, value: Any, token: int | None = None) -> None:
        if task.dead or (token is not None and task.token != token):
            return  # woken twice (its socket and its timer in the same turn): the first wins
        task.token = next(self._order)  # whatever it waited for no longer applies
        task.switch(value)

    def _wait(self, task: _Call, sock: Any, events: int, timeout: float | None) -> Any:
        assert self._selector is not None  # noqa: S101 - running
        token = task.token = next(self._order)
        if sock is not None:
            self._selector.register(sock, events, (task, token))
        if timeout is not None:
            heapq.heappush(self._timers, (time.monotonic() + timeout, next(self._order), task, token))
        ready = False
        try:
            ready = self._main.switch()
            return ready
        finally:
            if sock is not None and ready is not True and self._selector is not None:
                # Its time is up, or the hub ends it (the hub unregisters a socket that became ready itself).
                with contextlib.suppress(KeyError):
                    self._selector.unregister(sock)

    def _offloaded(self, task: _Call, work: Callable[[], T], undo: Callable[[T], Any] | None = None) -> T:
        token = task.token = next(self._order)
        future = self._offload.submit(work)
        waker = self._waker

        def finished(done: Future[Any]) -> None:  # on the offload thread
            self._done.append((task, token, done))
            try:
                if waker is not None:
                    waker.send(b"\0")
            except OSError:  # full (the hub will see the queue anyway) or closed (the hub has gone)
                pass

        future.add_done_callback(finished)
        try:
            result: Future[T] = self._main.switch()
        except BaseException:  # the hub ends the call (GreenletExit) before the work is done: no one takes its result
            if undo is not None:
                future.add_done_callback(lambda done: None if done.exception() is not None else undo(done.result()))
            raise
        return result.result()


def current() -> tuple[Hub, _Call] | None:
    """The hub the calling code runs in and its call, or None outside a hub."""
    task = greenlet.getcurrent()
    if isinstance(task, _Call):
        return task.hub, task
    return None


def wait(sock: Any, events: int, timeout: float | None) -> bool:
    """In a hub: switch to it until ``sock`` is ready for ``events`` (``READ``/``WRITE``), True, or ``timeout``
    seconds have passed (None: no limit), False. Only from code that ``current()`` found in a hub."""
    found = current()
    if found is None:
        raise RuntimeError("providers.hub.wait outside a hub")
    hub, task = found
    return bool(hub._wait(task, sock, events, timeout))


def sleep(seconds: float) -> None:
    """``time.sleep``, or in a hub a pause of this call alone (the others go on)."""
    found = current()
    if found is None:
        time.sleep(seconds)
        return
    hub, task = found
    hub._wait(task, None, 0, max(0.0, seconds))


def offload(work: Callable[[], T], undo: Callable[[T], Any] | None = None) -> T:
    """``work()``: in a hub, on one of its offload threads while the other calls go on; else here. ``undo``: what
    to do with the result of work whose call the hub ended before it was done (close a connection)."""
    found = current()
    if found is None:
        return work()
    hub, task = found
    return hub._offloaded(task, work, undo)

"""A Redis restart under a running ``payrecon worker`` (issue #10, cause 4).

With celery/kombu 5.7.0 alone the worker stopped on the restart ("Unrecoverable error:
AttributeError('NoneType' object has no attribute 'hostname')", see ``worker/broker_recovery.py``)
and ``payrecon worker`` exited 0, so a supervisor restarting only on failure left it dead. Here a
private redis-server (AOF on, as docker-compose.yml runs it) on a free port is restarted under a
real ``payrecon worker`` process started as the README starts it; PostgreSQL is the suite's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import create_engine, select

from providers.sandbox.client import SandboxClient
from providers.sandbox.server import SandboxServer
from reconciliation.models import Payment
from tests.conftest import ROOT, wait_for, worker_env
from tests.helpers import PrivateRedis, new_reference, registration

pytestmark = pytest.mark.e2e

UNRECOVERABLE = "Unrecoverable error"


def payrecon() -> list[str]:
    """The ``payrecon`` command of this environment (README: ``.venv/bin/payrecon``)."""
    script = Path(sys.executable).with_name("payrecon")
    return [str(script)] if script.exists() else [sys.executable, "-m", "worker.cli"]


def start_worker(env: dict[str, str], log_path: Path, argv: list[str]) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while b" ready." not in log_path.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"worker did not become ready:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.1)
    return proc


def send(broker_url: str, task: str, **kwargs: Any) -> None:
    """Send one contract message as a producer does."""
    app = Celery("producer", broker=broker_url)
    app.conf.update(task_serializer="json", accept_content=["json"], broker_connection_retry_on_startup=True)
    try:
        app.send_task(task, kwargs=kwargs, queue="webhooks")
    finally:
        app.close()


def send_registrations(broker_url: str, references: list[str], countdown: float | None = None) -> list[str]:
    """Send ``payrecon.register_payment`` as a merchant app does; the task ids."""
    app = Celery("producer", broker=broker_url)
    app.conf.update(task_serializer="json", accept_content=["json"], broker_connection_retry_on_startup=True)
    try:
        return [
            app.send_task(
                "payrecon.register_payment",
                kwargs={"payment": registration(ref)},
                queue="webhooks",
                countdown=countdown,
            ).id
            for ref in references
        ]
    finally:
        app.close()


def test_worker_keeps_consuming_across_a_redis_restart(
    private_redis: PrivateRedis, pg_url: str, sandbox_server: SandboxServer, sandbox: SandboxClient, tmp_path: Path
) -> None:
    engine = create_engine(pg_url)

    def registered(references: list[str]) -> set[str]:
        with engine.connect() as conn:
            return set(conn.scalars(select(Payment.reference).where(Payment.reference.in_(references))))

    log_path = tmp_path / "worker.log"
    worker = start_worker(
        worker_env(pg_url, private_redis.url, sandbox_server, PAYRECON_HTTP_TIMEOUT="10,10"),
        log_path,
        [*payrecon(), "worker", "--concurrency", "4"],
    )

    def alive() -> None:
        code = worker.poll()
        assert code is None, f"the worker stopped (exit code {code}):\n{log_path.read_text(errors='replace')[-6000:]}"

    try:
        before = [new_reference() for _ in range(3)]
        send_registrations(private_redis.url, before)
        wait_for(lambda: registered(before) == set(before), what="registrations before the restart")
        # In flight during the restart: delivered to the worker, held unacknowledged until their ETA.
        held = send_registrations(private_redis.url, [new_reference() for _ in range(3)], countdown=3600)
        with private_redis.client() as client:
            wait_for(lambda: client.hlen("unacked") >= len(held), what="messages held by the worker")

        # Running during the restart: a webhook whose provider answers slowly, acknowledged after it.
        slow = new_reference()
        send(private_redis.url, "payrecon.register_payment", payment=registration(slow))
        wait_for(lambda: registered([slow]) == {slow}, what="the slow payment's registration")
        sandbox.create_cinetpay(slow, 5000, faults=[{"delay": 4}])
        send(private_redis.url, "payrecon.ingest_webhook", envelope=sandbox.cinetpay_notification(slow))
        wait_for(lambda: sandbox.get_cinetpay(slow)["check_count"] >= 1, what="the slow webhook's provider call")

        private_redis.shutdown()
        time.sleep(1)  # the worker sees the connection drop and retries against a closed port
        alive()
        private_redis.start()

        after = [new_reference() for _ in range(3)]
        send_registrations(private_redis.url, after)

        def landed() -> bool:
            alive()
            return registered(after) == set(after)

        wait_for(landed, timeout=30, what="registrations sent after the restart")
        with engine.connect() as conn:  # the slow webhook finished, and its late acknowledgement did no harm
            assert conn.scalar(select(Payment.settled).where(Payment.reference == slow)) is True
        time.sleep(1)
        alive()
        assert UNRECOVERABLE not in log_path.read_text(errors="replace")

        # The held messages are not lost: still in Redis (redelivered after the visibility timeout).
        with private_redis.client() as client:
            kept = {json.loads(raw)[0]["headers"]["id"] for raw in client.hvals("unacked")}
            kept |= {json.loads(raw)["headers"]["id"] for raw in client.lrange("webhooks", 0, -1)}
        assert set(held) <= kept

        worker.terminate()  # warm shutdown: a clean stop exits 0
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        engine.dispose()


def test_worker_exits_non_zero_after_an_unrecoverable_error(
    private_redis: PrivateRedis, pg_url: str, sandbox_server: SandboxServer, tmp_path: Path
) -> None:
    """Whatever stops the worker on an unrecoverable error, ``payrecon worker`` exits non-zero, so a
    supervisor that restarts only on failure (systemd ``Restart=on-failure``) restarts it."""
    failing_step = textwrap.dedent(
        """
        import sys
        from celery import bootsteps
        from worker.app import app
        from worker.cli import main

        class Boom(bootsteps.StartStopStep):
            requires = ("celery.worker.components:Pool",)  # before the consumer (last)

            def start(self, parent):
                raise RuntimeError("boom")

        app.steps["worker"].add(Boom)
        sys.argv[0] = "payrecon"
        main()
        """
    )
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        result = subprocess.run(
            [sys.executable, "-c", failing_step, "worker", "--concurrency", "2"],
            cwd=ROOT,
            env={**os.environ, **worker_env(pg_url, private_redis.url, sandbox_server)},
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=60,
            check=False,
        )
    output = log_path.read_text(errors="replace")
    assert UNRECOVERABLE in output and "boom" in output, output
    assert result.returncode != 0, output


def test_a_message_a_killed_worker_had_just_taken_is_not_lost(
    private_redis: PrivateRedis, pg_url: str, sandbox_server: SandboxServer, tmp_path: Path
) -> None:
    """kombu took a message off its list before recording it as unacknowledged: a worker SIGKILLed
    in between lost it (the storm's lost registrations). Now a taken message waits in
    ``<queue>:incoming`` until it is recorded, and the restore sweep puts back what a dead worker left."""
    engine = create_engine(pg_url)
    orphaned, normal = new_reference(), new_reference()
    send_registrations(private_redis.url, [orphaned])
    with private_redis.client() as client:  # a worker took it, then died: left in its incoming list
        assert client.lmove("webhooks", "webhooks:incoming", "RIGHT", "LEFT") is not None
    send_registrations(private_redis.url, [normal])
    worker = start_worker(
        worker_env(pg_url, private_redis.url, sandbox_server),
        tmp_path / "worker.log",
        [*payrecon(), "worker", "-c", "4"],
    )
    try:

        def registered() -> set[str]:
            with engine.connect() as conn:
                refs = [orphaned, normal]
                return set(conn.scalars(select(Payment.reference).where(Payment.reference.in_(refs))))

        wait_for(lambda: registered() == {normal}, timeout=20, what="the queued registration")
        wait_for(lambda: registered() == {orphaned, normal}, timeout=30, what="the one a dead worker had taken")
        with private_redis.client() as client:
            assert client.llen("webhooks:incoming") == 0  # a live worker leaves nothing there
            assert client.hlen("unacked") == 0
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        engine.dispose()


@contextmanager
def _taking(conn: Any, channel: Any, count: int) -> Iterator[list[Any]]:
    """The messages of ``webhooks`` a kombu consumer (prefetch 50) has received, once ``count`` are in or 10 s
    have passed; the consumer stays open in the block (unacknowledged messages stay in ``unacked``)."""
    from kombu import Consumer, Queue

    received: list[Any] = []
    consumer = Consumer(channel, [Queue("webhooks", routing_key="webhooks")], callbacks=[
        lambda body, message: received.append(message)])  # fmt: skip
    consumer.qos(prefetch_count=50)
    with consumer:
        deadline = time.monotonic() + 10
        while len(received) < count and time.monotonic() < deadline:
            conn.drain_events(timeout=1)
        yield received


def test_messages_taken_together_are_recorded_as_kombu_records_them(private_redis: PrivateRedis) -> None:
    """Under load the worker takes many messages in one round trip (``broker_recovery._TAKE``): each is
    in ``unacked`` exactly as kombu's own ``QoS.append`` writes it, from the moment it leaves its
    queue, so that kombu restores it (here: the consumer closes without acknowledging)."""
    from kombu import Connection

    from worker import broker_recovery

    broker_recovery.apply_reliable_fetch()
    references = [new_reference() for _ in range(5)]
    ids = send_registrations(private_redis.url, references)
    with private_redis.client() as client:
        client.config_resetstat()
    with Connection(private_redis.url) as conn:
        channel = conn.channel()
        with _taking(conn, channel, 5) as received:
            with private_redis.client() as client:
                stats = client.info("commandstats")
                assert client.llen("webhooks") == 0 and client.llen("webhooks:incoming") == 0
                unacked = client.hgetall("unacked")
                assert client.zcard("unacked_index") == 5
            assert [m.headers["id"] for m in received] == ids
            # Taken together by the script, not moved one by one.
            assert stats.get("cmdstat_eval", {}).get("calls", 0) >= 1 and "cmdstat_lmove" not in stats
            for message in received:
                raw, exchange, routing_key = json.loads(unacked[message.delivery_tag.encode()])
                assert (raw, exchange, routing_key) == (message._raw, "", "webhooks")  # what QoS.append writes
        channel.close()  # unacknowledged: kombu puts them back from unacked
    with private_redis.client() as client:
        assert client.llen("webhooks") == 5 and client.hlen("unacked") == 0


def test_messages_of_a_queue_consumed_without_acknowledgements_are_not_recorded(private_redis: PrivateRedis) -> None:
    """Celery's replies (mingle, control) are consumed with ``no_ack``: nothing acknowledges them, so the
    fetch must not record them as unacknowledged (they would sit in ``unacked`` and come back)."""
    from kombu import Connection, Consumer, Producer, Queue

    from worker import broker_recovery

    broker_recovery.apply_reliable_fetch()
    replies = Queue("replies", routing_key="replies")
    received: list[Any] = []
    with Connection(private_redis.url) as conn:
        producer = Producer(conn.channel())
        for n in range(3):
            producer.publish({"reply": n}, routing_key="replies", declare=[replies], serializer="json")
        channel = conn.channel()
        with Consumer(channel, [replies], no_ack=True, callbacks=[lambda body, message: received.append(body)]):
            deadline = time.monotonic() + 10
            while len(received) < 3 and time.monotonic() < deadline:
                conn.drain_events(timeout=1)
        assert received == [{"reply": 0}, {"reply": 1}, {"reply": 2}]
        with private_redis.client() as client:
            assert client.hlen("unacked") == 0 and client.llen("replies:incoming") == 0


def test_a_batch_is_acknowledged_in_one_round_trip(private_redis: PrivateRedis) -> None:
    """The messages of a batch whose work is done are acknowledged together (``Batcher._acknowledge`` with
    ``broker_recovery.ack_together``): one Redis pipeline removes every record from ``unacked``, where kombu
    sends one per message; each message still ends acknowledged, and a message sent back (its work not done)
    is put back on its queue as before."""
    from kombu import Connection

    from worker import broker_recovery
    from worker.batching import Batcher

    broker_recovery.apply()
    broker_recovery.apply_reliable_fetch()
    app = Celery("producer", broker=private_redis.url)
    app.conf.update(task_serializer="json", accept_content=["json"])
    try:
        for i in range(6):
            app.send_task("payrecon.ingest_webhook", kwargs={"envelope": {"n": i}}, queue="webhooks")
    finally:
        app.close()
    with Connection(private_redis.url) as conn:
        channel = conn.channel()
        with _taking(conn, channel, 6) as received:
            assert len(received) == 6

            class Pool:  # the job's outcome at once: the first five done, the last sent back
                def apply_async(self, _fn: Any, args: Any, callback: Any, error_callback: Any) -> None:
                    callback([True] * 5 + [False])

            stub: Any = type("Consumer", (), {})()
            timer = type(
                "Timer", (), {"call_after": lambda self, wait, fn: type("Entry", (), {"cancel": lambda e: None})()}
            )()
            stub.pool, stub.timer, stub.connection_errors = Pool(), timer, conn.connection_errors
            stub.qos = type("Qos", (), {"increment_eventually": lambda self: None,
                                        "decrement_eventually": lambda self, n: None})()  # fmt: skip
            stub.task_consumer = type("TaskConsumer", (), {"channel": channel})()  # whose channel is current
            batcher = Batcher(stub, None, size=6, wait=1.0, prefetch=18)
            with private_redis.client() as client:
                client.config_resetstat()
            for message in received:
                batcher(message, None, message.ack_log_error, message.reject_log_error, [])
            with private_redis.client() as client:
                stats = client.info("commandstats")
                assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
                assert client.llen("webhooks") == 1  # the one sent back
            # One pipeline for the five (kombu: one each), one to put the sixth back (as before).
            assert stats["cmdstat_exec"]["calls"] == 2, stats
            assert [m.acknowledged for m in received] == [True] * 6
            assert [m._state for m in received] == ["ACK"] * 5 + ["REJECTED"]
            channel.qos._flush()
            assert not channel.qos._delivered
        channel.close()
    with private_redis.client() as client:  # nothing comes back on close: every record is gone
        assert client.llen("webhooks") == 1 and client.hlen("unacked") == 0


def test_an_idle_worker_waits_on_the_queue_that_last_had_messages(private_redis: PrivateRedis) -> None:
    """With every list empty, the fetch waits (``BLMOVE``, ``KEY_WAIT`` at a time) on the list that last had
    messages, where the next one most likely comes and is then taken at once, not on the list where its round
    ended (always the same priority list: a message waited up to ``KEY_WAIT`` while the worker watched it)."""
    from kombu import Connection, Consumer, Producer, Queue

    from worker import broker_recovery

    broker_recovery.apply_reliable_fetch()
    queues = [Queue(name, routing_key=name) for name in ("webhooks", "verify")]
    received: list[Any] = []
    with Connection(private_redis.url) as conn:
        Producer(conn.channel()).publish({"n": 1}, routing_key="verify", declare=queues, serializer="json")
        channel = conn.channel()
        with Consumer(channel, queues, callbacks=[lambda body, message: received.append(message)]):
            deadline = time.monotonic() + 10
            while not received and time.monotonic() < deadline:
                conn.drain_events(timeout=1)
            assert len(received) == 1
            received[0].ack()
            with private_redis.client() as client:
                monitor = client.monitor()
                waits: list[list[str]] = []
                with monitor:
                    started = time.monotonic()
                    with pytest.raises(TimeoutError):  # nothing more to take: the fetch waits in turns
                        conn.drain_events(timeout=1.0)
                    while time.monotonic() - started < 1.5:
                        try:
                            command = monitor.next_command()["command"]
                        except (TimeoutError, redis.exceptions.TimeoutError):  # no more commands
                            break
                        if command.upper().startswith("BLMOVE "):
                            waits.append(command.split())
                            if len(waits) >= 4:
                                break
        assert len(waits) >= 4, waits
        assert {wait[1] for wait in waits} == {"verify"}, waits  # each wait on the list that had the message


def test_an_idle_worker_still_takes_a_message_on_another_queue(private_redis: PrivateRedis) -> None:
    """Waiting on the list that last had messages must not skip another list: after a webhook, an idle worker
    still takes a message sent to ``verify`` (then to ``maintenance``) within a few ``KEY_WAIT``. (Counting the
    wait as a visit to the round's list skipped the list after the hot one for as long as nothing else came.)"""
    from kombu import Connection, Consumer, Producer, Queue

    from worker import broker_recovery

    broker_recovery.apply_reliable_fetch()
    queues = [Queue(name, routing_key=name) for name in ("webhooks", "verify", "maintenance")]
    received: list[Any] = []

    def take(within: float) -> None:
        deadline = time.monotonic() + within
        while not received and time.monotonic() < deadline:
            with suppress(TimeoutError):
                conn.drain_events(timeout=0.2)

    with Connection(private_redis.url) as conn:
        producer = Producer(conn.channel())
        channel = conn.channel()
        with Consumer(channel, queues, callbacks=[lambda body, message: received.append(message)]):
            for queue in ("webhooks", "verify", "maintenance"):
                take(0.5)  # idle in between: the fetch waits on the list that had the last message
                assert not received
                producer.publish({"queue": queue}, routing_key=queue, declare=queues, serializer="json")
                take(5.0)  # KEY_WAIT is 0.1 s
                assert [m.payload for m in received] == [{"queue": queue}], queue
                received.pop().ack()
    with private_redis.client() as client:
        assert sum(client.llen(name) for name in ("webhooks", "verify", "maintenance")) == 0

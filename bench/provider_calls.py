"""A worker's CPU per provider status check when a batch's checks wait together: a thread each, or a greenlet each
in the batch's own thread (``providers.hub``, what ``worker.pipeline`` does).

    .venv/bin/python bench/provider_calls.py --latency 0.2 --batch 100 --rounds 20 --repeat 3

The sandbox runs in a process of its own (as in ``bench/sandbox_cpu.py``) and answers each check after
``--latency`` seconds. This process makes ``--rounds`` batches of ``--batch`` CinetPay status checks with the real
client (``CinetPayClient.check`` through ``timed_call``, as ``pipeline._ask_all`` does), alternately through a
thread pool (``--batch`` x 3 threads, what the worker had before) and through ``providers.hub.Hub``, ``--repeat``
times each, and prints this process's CPU (user + system, ``getrusage``) per check for each. The **floor**,
measured in the same run on the same connections' kind: the same request bytes written and the answers read
on one selector with no HTTP client at all (status line and Content-Length only, one ``json.loads``): what any
client must at least spend. The last line: ``pool_ms=<median> hub_ms=<median> floor_ms=<median>``.
"""

from __future__ import annotations

import argparse
import json
import resource
import selectors
import socket
import statistics
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import sandbox_cpu

from providers.base import RegistrationView
from providers.cinetpay import CinetPayClient
from providers.hub import Hub
from worker.observability import timed_call


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _per_check(rounds: int, batch: int, one_round: Callable[[], Any]) -> float:
    before = _cpu()
    for _ in range(rounds):
        one_round()
    return 1000 * (_cpu() - before) / (rounds * batch)


def _floor_round(port: int, socks: list[socket.socket], bodies: list[bytes]) -> None:
    selector = selectors.DefaultSelector()
    try:
        buffers: dict[int, bytearray] = {}
        for i, sock in enumerate(socks):
            sock.sendall(
                b"POST /v2/payment/check HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (port, len(bodies[i]), bodies[i])
            )
            selector.register(sock, selectors.EVENT_READ, i)
            buffers[i] = bytearray()
        left = len(socks)
        while left:
            for key, _ in selector.select(30):
                i = key.data
                buffers[i] += key.fileobj.recv(65536)  # type: ignore[union-attr]
                head, found, rest = bytes(buffers[i]).partition(b"\r\n\r\n")
                if not found:
                    continue
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                if len(rest) >= length:
                    if json.loads(rest[:length]).get("code") != "662":
                        raise SystemExit(f"unexpected answer: {rest[:200]!r}")
                    selector.unregister(key.fileobj)
                    left -= 1
    finally:
        selector.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the sandbox takes to answer a check")
    parser.add_argument("--batch", type=int, default=100, help="checks waiting together")
    parser.add_argument("--rounds", type=int, default=20, help="batches per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="measurements of each way, alternated")
    args = parser.parse_args()
    port = sandbox_cpu._free_port()
    argv = [sys.executable, "-c", sandbox_cpu.SANDBOX_MAIN, str(port), str(args.latency)]
    sandbox = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL)
    pool = ThreadPoolExecutor(3 * args.batch, thread_name_prefix="check")
    client = None
    socks: list[socket.socket] = []
    try:
        sandbox_cpu._started(sandbox, port)
        sandbox_cpu.create_transactions(port, args.batch)
        client = CinetPayClient(
            api_url=f"http://127.0.0.1:{port}",
            api_key=sandbox_cpu.CREDS["apikey"],
            site_id=sandbox_cpu.CREDS["site_id"],
            secret_key="not-used-by-checks",  # noqa: S106 - checks are not signed
        )
        views = [RegistrationView(reference=f"CPU-{i:05d}") for i in range(args.batch)]
        bodies = [json.dumps({**sandbox_cpu.CREDS, "transaction_id": view.reference}).encode() for view in views]

        checker = client

        def ask(view: RegistrationView) -> Any:
            return timed_call("cinetpay", "status", lambda: checker.check(view))

        def pool_round() -> None:
            for future in [pool.submit(ask, view) for view in views]:
                future.result()

        hub = Hub(pool)

        def hub_round() -> None:
            hub.run([lambda view=view: ask(view) for view in views])

        socks = [socket.create_connection(("127.0.0.1", port)) for _ in views]
        for sock in socks:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        figures: dict[str, list[float]] = {"pool": [], "hub": [], "floor": []}
        pool_round(), hub_round(), _floor_round(port, socks, bodies)  # connections opened, code warm
        for _ in range(args.repeat):
            for name, one_round in (("pool", pool_round), ("hub", hub_round),
                                    ("floor", lambda: _floor_round(port, socks, bodies))):  # fmt: skip
                figures[name].append(_per_check(args.rounds, args.batch, one_round))
                print(f"{name}: {figures[name][-1]:.3f} ms of CPU a check", flush=True)
        medians = {name: statistics.median(values) for name, values in figures.items()}
        print(f"pool_ms={medians['pool']:.3f} hub_ms={medians['hub']:.3f} floor_ms={medians['floor']:.3f}")
    finally:
        for sock in socks:
            sock.close()
        if client is not None:
            client.close()
        pool.shutdown()
        sandbox.terminate()
        sandbox.wait()


if __name__ == "__main__":
    main()

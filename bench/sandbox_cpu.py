"""The provider sandbox's CPU for a CinetPay status check, alone: what it costs the machine in ``bench/throughput.py``.

    .venv/bin/python bench/sandbox_cpu.py --checks 20000 --connections 32 --latency 0

The sandbox runs in a process of its own (``serve``, as ``payrecon sandbox`` runs it, without its request log);
this process creates 200 transactions through the wire API, then ``--connections`` threads each ask the status
of them over one keep-alive connection (``http.client``, as a worker's session does), ``--checks`` in all,
``--rounds`` times; each answer's CinetPay code is checked (the sandbox answers its errors with HTTP 200). It
prints the sandbox process's CPU (user + system, from ``/proc``) per check for each round. With ``--latency
0.2`` (the throughput bench's) the checks wait as they do there, and far fewer fit in a round.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SANDBOX_MAIN = """
import sys
from providers.sandbox.server import serve
serve(port=int(sys.argv[1]), verbose=False, latency=float(sys.argv[2]))
"""
CREDS = {"apikey": "sandbox-api-key", "site_id": "100000"}  # the sandbox's own published test values
TRANSACTIONS = 200
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _post(conn: http.client.HTTPConnection, path: str, body: dict[str, object], code: str) -> None:
    """POST ``body`` as JSON; the sandbox answers its errors with HTTP 200 too, so CinetPay's ``code`` is checked."""
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json", "User-Agent": "payrecon/0.1"})
    answer = conn.getresponse()
    data = answer.read()
    if answer.status != 200 or json.loads(data).get("code") != code:
        raise RuntimeError(f"{path}: HTTP {answer.status} {data[:200]!r}, expected code {code}")


def _ask(port: int, first: int, n: int, done: list[int], failures: list[BaseException]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for j in range(n):
            _post(
                conn, "/v2/payment/check", {**CREDS, "transaction_id": f"CPU-{(first + j) % TRANSACTIONS:05d}"}, "662"
            )
            done.append(1)
    except Exception as exc:  # any failure: the main thread reports it and fails the run
        failures.append(exc)
    finally:
        conn.close()


def create_transactions(port: int, count: int) -> None:
    """CinetPay transactions ``CPU-00000`` ... at the sandbox on ``port``, by its wire API (each answer checked)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for i in range(count):
            _post(conn, "/v2/payment", {
                **CREDS, "transaction_id": f"CPU-{i:05d}", "amount": 5000, "currency": "XOF",
                "description": "bench", "notify_url": "http://127.0.0.1:9/notify",
                "return_url": "http://127.0.0.1:9/return", "channels": "ALL",
            }, "201")  # fmt: skip
    finally:
        conn.close()


def _started(sandbox: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        if sandbox.poll() is not None:
            raise SystemExit(f"the sandbox exited ({sandbox.returncode}) before it answered")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/_sandbox/health")
            conn.getresponse().read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("the sandbox did not answer within 30 s") from None
            time.sleep(0.1)
        finally:
            conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checks", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds the sandbox adds to each answer")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    port = _free_port()
    argv = [sys.executable, "-c", SANDBOX_MAIN, str(port), str(args.latency)]
    sandbox = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL)  # its errors on this terminal
    try:
        _started(sandbox, port)
        create_transactions(port, TRANSACTIONS)
        each = args.checks // args.connections
        for _ in range(args.rounds):
            done: list[int] = []
            failures: list[BaseException] = []
            before, started = _cpu(sandbox.pid), time.perf_counter()
            threads = [
                threading.Thread(target=_ask, args=(port, k * 7, each, done, failures)) for k in range(args.connections)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            spent = _cpu(sandbox.pid) - before
            if failures:
                raise SystemExit(f"{len(failures)} connection(s) failed, the first: {failures[0]!r}")
            print(
                f"{len(done)} checks over {args.connections} connections in {time.perf_counter() - started:.2f} s: "
                f"sandbox CPU {1000 * spent / len(done):.3f} ms a check",
                flush=True,
            )
    finally:
        sandbox.terminate()
        sandbox.wait()


if __name__ == "__main__":
    main()

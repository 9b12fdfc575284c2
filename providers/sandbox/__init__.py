"""payrecon's provider sandbox: a local, in-memory stand-in for the providers' APIs.

Like stripe-mock, it lets merchants' developers (and payrecon's own tests) run the
whole flow offline: it speaks each provider's real wire format, keeps transactions
in memory, sends real signed notifications, and can be scripted to misbehave.
CinetPay (checkout API v2), MTN MoMo (Collection), Orange Money (WebPay) and Wave (Checkout,
Balance & Reconciliation); each provider's wire and control API is documented in its module
(``cinetpay.py``, ``mtn_momo.py``, ``orange_money.py``, ``wave.py``). The control API below is
CinetPay's; the others have the same shape under ``/_sandbox/<provider>/`` (``reference``
instead of ``transaction_id``).

Run it: ``payrecon sandbox`` (or ``python -c "from providers.sandbox import serve; serve()"``)
prints its URL and the environment that points a payrecon worker at it
(``SandboxServer.worker_env()``: every provider's sandbox credentials). Embed it::

    with SandboxServer() as server:
        client = CinetPayClient(api_url=server.url, api_key="sandbox-api-key",
                                site_id="100000", secret_key="sandbox-secret-key")

Broker delivery: ``SandboxServer(broker_url=...)`` (or ``serve(broker_url=...)``), given
payrecon's Celery broker URL, lets the sandbox skip the HTTP receiver and enqueue a
notification's ``payrecon.webhook/1`` envelope itself, as the task the receiver would
send: ``payrecon.ingest_webhook`` with kwargs ``{"envelope": ...}`` on queue
``webhooks``, JSON serializer. The broker is connected on first use, closed by ``stop()``.

Wire API: ``POST /v2/payment`` and ``POST /v2/payment/check`` (see ``cinetpay.py``).

Control API (JSON, under ``/_sandbox/``; bad input → 400 ``{"error": ...}``):

``POST /_sandbox/cinetpay/transactions``
    ``{"transaction_id", "amount" (int, minor units), "currency" ("XOF"), "fate"
    ("accepted" | "refused" | "waiting" | "waiting_then_accepted" |
    "waiting_then_refused"), "pending_checks" (checks answered waiting before a
    waiting_then_* fate turns final, default 1), "confirm_amount" / "confirm_currency"
    (what CinetPay reports instead: tampering), "faults" (consumed in order by this
    transaction's next checks), "payment_method", "phone", "notify_url" (an http(s)
    URL, or exactly ``"enqueue"``: its notifications go to the broker; 400 without a
    broker_url), "description", "metadata"}`` → 201 with the state.
``GET /_sandbox/cinetpay/transactions[/{id}]``
    State: ``status``, ``check_count`` (checks that named it, faulted ones
    included), ``waiting_answers``, ``notifications`` sent (each with ``delivered``
    / ``enqueued`` and ``error`` once done)...
``POST /_sandbox/cinetpay/transactions/{id}/status`` ``{"status"}``
    Force ACCEPTED / REFUSED / WAITING_FOR_CUSTOMER now; ends the fate's script.
``POST /_sandbox/cinetpay/transactions/{id}/notification``
    ``{"forged", "tamper": {field: value}, "deliver_to", "enqueue", "method"}`` →
    ``{"envelope": <payrecon.webhook/1>, "delivered": <HTTP status | null>,
    "delivery_error", "enqueued": true | false, "enqueue_error"}``. ``forged`` signs
    with a wrong key; ``tamper`` edits fields after signing; ``deliver_to`` POSTs it
    there; ``"enqueue": true`` publishes the envelope on the broker (400 if the sandbox
    has no broker_url). A failed delivery or enqueue is reported, not an error.
``POST /_sandbox/cinetpay/ping`` ``{"deliver_to", "enqueue"}``
    CinetPay's empty GET ping (also ``{"ping": true}`` on the route above).
``POST /_sandbox/faults`` ``{"path", "faults"}``, ``POST /_sandbox/reset``, ``GET /_sandbox/health``
(its ``broker``: the broker URL, password masked, or null)
``POST /_sandbox/fault_rates`` ``{"rates": [{"probability": 0.1, "fault": {"status": 503}}, ...], "seed"}``
    From now on every wire answer (any provider, any path) that no queued fault claims gets one
    of these faults at random, with its probability (exclusive, at most 1 in all), from a
    ``random.Random(seed)``; ``{"rates": []}`` stops. ``GET`` shows them with ``drawn`` (answers
    drawn for) and each rate's ``injected`` count.

A fault is ``{"status": 500}``, ``{"status": 429, "retry_after": 0}``,
``{"delay": 1.5}`` (answer slowly, then normally), ``{"drop": true}`` (close the
connection) or ``{"status": 200, "body": "<html>"}`` (a custom body). Global faults
for a path are consumed before fault rates, and both before per-transaction ones.

Whenever a transaction with a ``notify_url`` changes status (forced, or a
waiting_then_* fate turning final), the sandbox POSTs a signed notification to it
in a background thread, as CinetPay notifies at every status change; with
``notify_url`` ``"enqueue"`` it enqueues the envelope on the broker instead.
``SandboxServer(notify_retry_for=seconds)`` keeps trying such a notification that failed
(an error or a non-2xx answer, or a broker that is down) for that long, as providers retry.
"""

from providers.sandbox.client import SandboxClient, SandboxError
from providers.sandbox.server import DEFAULT_PORT, SandboxServer, serve

__all__ = ["DEFAULT_PORT", "SandboxClient", "SandboxError", "SandboxServer", "serve"]

"""payrecon's provider sandbox: a local, in-memory stand-in for the providers' APIs.

Like stripe-mock, it lets merchants' developers (and payrecon's own tests) run the
whole flow offline: it speaks each provider's real wire format, keeps transactions
in memory, sends real signed notifications, and can be scripted to misbehave.
CinetPay (checkout API v2), MTN MoMo (Collection), Orange Money (WebPay) and Wave (Checkout,
Balance & Reconciliation); the control API has the same shape for every provider, under ``/_sandbox/<provider>/``.

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

The control API (scripted fates, forced statuses, notifications on request, faults and fault rates) and each
provider's wire API are documented in docs/sandbox-api.md.
"""

from providers.sandbox.client import SandboxClient, SandboxError
from providers.sandbox.server import DEFAULT_PORT, SandboxServer, serve

__all__ = ["DEFAULT_PORT", "SandboxClient", "SandboxError", "SandboxServer", "serve"]

"""The PHP producer of docs/producers.md (the raw Redis message, no Celery client), run by PHP against the session's
broker: the real worker settles the payment it registered and notified. Skipped without ``php`` and the
phpredis extension (``apt install php-cli php-redis``)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from providers.sandbox.client import SandboxClient
from reconciliation.models import Payment, PaymentStatus, SubscriptionGrant
from tests.conftest import ROOT, wait_for
from tests.helpers import new_reference, registration
from worker.runtime import Runtime

pytestmark = pytest.mark.e2e

PHP = shutil.which("php")


def readme_php() -> str:
    readme = (ROOT / "docs" / "producers.md").read_text(encoding="utf-8")  # linked from the README's contract
    section = readme[readme.index("# Sending with no Celery client") :]
    block = section[section.index("```php\n") + len("```php\n") :]
    return block[: block.index("\n```")]


def php_has_redis() -> bool:
    if PHP is None:
        return False
    modules = subprocess.run([PHP, "-m"], capture_output=True, text=True, timeout=30, check=False).stdout
    return "redis" in modules.split()


@pytest.mark.skipif(not php_has_redis(), reason="php with the phpredis extension is not installed")
def test_the_readmes_php_producer_is_settled_by_the_worker(
    e2e: Runtime, sandbox: SandboxClient, redis_url: str, tmp_path: Path
) -> None:
    assert PHP is not None
    ref = new_reference()
    sandbox.create_cinetpay(ref, 5000)
    payment, envelope = registration(ref, account="php-shop-1"), sandbox.cinetpay_notification(ref)
    assert envelope["query"] == {}  # json_decode into arrays would send it back as [] (an invalid envelope)
    (tmp_path / "registration.json").write_text(json.dumps(payment))
    (tmp_path / "envelope.json").write_text(json.dumps(envelope))
    broker = urlsplit(redis_url)
    code = readme_php()
    connect = "$redis->connect('127.0.0.1', 6379);"
    assert code.count(connect) == 1 and code.startswith("<?php\n")
    # The documented code, with this suite's Redis and the two messages read from files.
    code = code.replace(
        connect, f"$redis->connect('{broker.hostname}', {broker.port}); $redis->select({broker.path[1:]});"
    )
    code = code.replace(
        "<?php\n",
        "<?php\n$registrationJson = file_get_contents('registration.json');\n"
        "$envelopeJson = file_get_contents('envelope.json');\n",
        1,
    )
    (tmp_path / "producer.php").write_text(code)
    ran = subprocess.run([PHP, "producer.php"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0, ran.stdout + ran.stderr

    def paid() -> Any:
        with e2e.sessions() as session:
            found = session.scalars(select(Payment).where(Payment.reference == ref)).first()
            return found if found is not None and found.status is PaymentStatus.SUCCEEDED and found.settled else None

    settled = wait_for(paid, what="the PHP producer's payment settled")
    with e2e.sessions() as session:
        grant = session.scalars(select(SubscriptionGrant).where(SubscriptionGrant.payment_id == settled.id)).one()
    assert settled.account == "php-shop-1" and grant.days == 30

"""Every provider end to end through the real worker process: paid, failed, pending then paid with
no callback, forged callback, duplicate callbacks, tampered amount."""

from __future__ import annotations

import importlib
import time
from typing import Any

import pytest
from sqlalchemy import func, select

from providers.base import RegistrationView
from providers.sandbox.client import SandboxClient
from reconciliation.models import FlagKind, InboxDelivery, InboxStatus, Payment, PaymentStatus, SubscriptionGrant
from tests.conftest import wait_for
from tests.providers.kits import Kit
from worker.runtime import Runtime

pytestmark = pytest.mark.e2e

KITS = [importlib.import_module(f"tests.providers.kit_{name}").KIT for name in
        ("cinetpay", "mtn_momo", "orange_money", "wave")]  # fmt: skip
PLAN = {"cinetpay": ("depannage-monthly", 5000), "mtn_momo": ("coko-premium-monthly", 6500),
        "orange_money": ("coko-premium-monthly", 6500), "wave": ("coko-premium-monthly", 6500)}  # fmt: skip


@pytest.fixture(params=KITS, ids=lambda k: k.name)
def kit(request: pytest.FixtureRequest) -> Kit:
    return request.param  # type: ignore[no-any-return]


def registration(kit: Kit, view: RegistrationView, amount: int) -> dict[str, Any]:
    plan, _ = PLAN[kit.name]
    return {
        "schema": "payrecon.payment/1", "provider": kit.name, "reference": view.reference, "amount": amount,
        "currency": "XOF", "account": f"user-{view.reference[-6:]}", "plan": plan, "periods": 1,
        "provider_data": dict(view.provider_data),
    }  # fmt: skip


class Flow:
    def __init__(self, kit: Kit, rt: Runtime, sandbox: SandboxClient, producer: Any) -> None:
        self.kit, self.rt, self.sandbox, self.producer = kit, rt, sandbox, producer
        self.amount = PLAN[kit.name][1]

    def start(self, fate: str, **options: Any) -> RegistrationView:
        view = self.kit.create(self.sandbox, self.kit.new_reference(), self.amount, "XOF", fate, **options)
        self.send("payrecon.register_payment", payment=registration(self.kit, view, self.amount))
        wait_for(lambda: self.payment(view) is not None, what="registration")
        return view

    def send(self, task: str, **kwargs: Any) -> None:
        self.producer.send_task(task, kwargs=kwargs, queue="webhooks")

    def notify(self, view: RegistrationView, **options: Any) -> dict[str, Any]:
        envelope = self.kit.notify(self.sandbox, view, **options)
        self.send("payrecon.ingest_webhook", envelope=envelope)
        return envelope

    def payment(self, view: RegistrationView) -> Payment | None:
        with self.rt.sessions() as session:
            found = session.scalars(
                select(Payment).where(Payment.provider == self.kit.name, Payment.reference == view.reference)
            ).first()
            if found is not None:
                found.flags  # noqa: B018 - load
            return found

    def status(self, view: RegistrationView) -> PaymentStatus | None:
        found = self.payment(view)
        return found.status if found else None

    def wait_status(self, view: RegistrationView, status: PaymentStatus, *, janitor: bool = False) -> Payment:
        def reached() -> Payment | None:
            if janitor:  # what beat does on its schedule: a real task through the worker
                self.producer.send_task("payrecon.recheck_due", queue="maintenance")
                time.sleep(0.3)
            found = self.payment(view)
            return found if found is not None and found.status is status else None

        return wait_for(reached, timeout=30, what=f"{self.kit.name} payment {status.value}")  # type: ignore[no-any-return]

    def grants(self) -> int:
        with self.rt.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(SubscriptionGrant)) or 0)

    def checks(self, view: RegistrationView) -> int:
        return int(self.sandbox.get(self.kit.name, view.reference)["check_count"])


@pytest.fixture
def flow(kit: Kit, e2e: Runtime, sandbox: SandboxClient, producer: Any) -> Flow:
    return Flow(kit, e2e, sandbox, producer)


def test_paid(flow: Flow) -> None:
    view = flow.start("accepted")
    flow.notify(view)
    payment = flow.wait_status(view, PaymentStatus.SUCCEEDED)
    # Orange's status answer carries no amount: settled at the registered one, recorded as unconfirmed.
    confirmed = None if flow.kit.name == "orange_money" else flow.amount
    assert payment.settled and payment.confirmed_amount == confirmed
    assert flow.grants() == 1


def test_failed(flow: Flow) -> None:
    view = flow.start("refused")
    flow.notify(view)
    payment = flow.wait_status(view, PaymentStatus.FAILED)
    assert not payment.settled and flow.grants() == 0


def test_pending_then_paid_without_any_callback(flow: Flow) -> None:
    view = flow.start("waiting_then_accepted", pending_checks=1)
    flow.wait_status(view, PaymentStatus.PENDING, janitor=True)
    payment = flow.wait_status(view, PaymentStatus.SUCCEEDED, janitor=True)
    assert payment.settled and flow.grants() == 1
    with flow.rt.sessions() as session:
        assert session.scalar(select(func.count()).select_from(InboxDelivery)) == 0  # no callback at all


def test_forged_callback_never_pays(flow: Flow) -> None:
    view = flow.start("refused")
    flow.notify(view, forged=True)
    if flow.kit.signed:

        def quarantined() -> bool:
            with flow.rt.sessions() as session:
                return session.scalar(select(InboxDelivery.status)) is InboxStatus.FORGED

        wait_for(quarantined, what="quarantine")
        assert flow.checks(view) == 0  # refused before any API call
        assert flow.status(view) is PaymentStatus.REGISTERED
    else:  # MoMo signs nothing: the fake "SUCCESSFUL" only triggers a verification, which says no
        flow.wait_status(view, PaymentStatus.FAILED)
    assert flow.grants() == 0


def test_duplicate_callbacks_settle_once(flow: Flow) -> None:
    view = flow.start("accepted")
    envelope = flow.notify(view)
    flow.wait_status(view, PaymentStatus.SUCCEEDED)
    for _ in range(3):
        flow.send("payrecon.ingest_webhook", envelope=envelope)

    def counted() -> bool:
        with flow.rt.sessions() as session:
            return session.scalar(select(func.sum(InboxDelivery.repeat_count))) == 3

    wait_for(counted, what="repeats counted")
    assert flow.grants() == 1
    assert flow.checks(view) == 1


def test_tampered_amount_grants_nothing(flow: Flow) -> None:
    view = flow.start("accepted", confirm_amount=100)
    flow.notify(view)
    payment = flow.wait_status(view, PaymentStatus.SUCCEEDED)
    assert not payment.settled
    assert FlagKind.AMOUNT_MISMATCH in {f.kind for f in payment.flags}
    assert flow.grants() == 0

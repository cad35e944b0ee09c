"""What the approval gate says: an approval's message, worded from the manifest or a template."""

from __future__ import annotations

from broker.core.decision import ActionRequest, decide
from broker.core.limits import UsageSnapshot
from broker.core.manifest import Manifest
from broker.sidecar.approvalnotes import approval_message
from tests.strategies import refund_manifest

NOW = 1_767_225_600.0
REFUND = ActionRequest(
    action="stripe.refund", inputs={"ticket_id": "CS-1", "amount_usd": 120}, request_id="r"
)


def _with_message(message: str | None) -> Manifest:
    data = refund_manifest().model_dump()
    data["actions"]["stripe.refund"]["approval"]["message"] = message
    return Manifest.model_validate(data)


def test_the_manifests_message_is_used_when_it_has_one() -> None:
    """An approval spec with a message: that message, word for word."""
    manifest = _with_message("Refunds over $100 need finance.")
    decision = decide(REFUND, manifest, UsageSnapshot(), NOW)
    assert approval_message(manifest, "stripe.refund", decision) == (
        "Refunds over $100 need finance."
    )


def test_without_a_message_the_template_names_approvers_and_reason() -> None:
    """No message in the manifest: the action, its approvers and the approval reason."""
    manifest = _with_message(None)
    decision = decide(REFUND, manifest, UsageSnapshot(), NOW)
    assert approval_message(manifest, "stripe.refund", decision) == (
        f"stripe.refund requires approval by finance-ops@acme.example ({decision.approval_reason})."
    )
    assert decision.approval_reason

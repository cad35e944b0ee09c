"""The decision record body: a refusal's inputs and detail are bounded, an allow's are kept
whole, and the credential and reason fields come from what the service passes."""

from __future__ import annotations

from broker.audit.redaction import MAX_REFUSED_DETAIL, MAX_REFUSED_INPUTS
from broker.core.decision import ActionRequest, decide
from broker.core.limits import UsageSnapshot
from broker.core.reasons import Outcome, ReasonCode
from broker.sidecar.decisionrecord import Recorded, decision_record, jwt_claims, tool_call
from tests.strategies import refund_manifest

NOW = 1_800_000_000.0
MANIFEST = refund_manifest()
BIG = {"ticket_id": "CS-1", "note": "x" * (MAX_REFUSED_INPUTS + 10)}


def _record(outcome: Outcome, detail: str | None) -> dict[str, object]:
    req = ActionRequest(action="zendesk.get_ticket", inputs={"ticket_id": "CS-1"}, request_id="t")
    decision = decide(req, MANIFEST, UsageSnapshot(), NOW)
    rec = Recorded(
        outcome, ReasonCode.constraint_violation, BIG, "sha256:x", [], detail, ("c1", "jwt", 60)
    )
    return decision_record(req, decision, NOW, rec, {"approval_id": "apr_1"})


def test_a_refusal_records_bounded_inputs_and_detail() -> None:
    """Denied: the oversized inputs are cut with a summary, the detail clipped."""
    body = _record(Outcome.deny, "d" * (MAX_REFUSED_DETAIL * 2))
    assert body["inputs"] != BIG
    assert body["inputs_clipped"]
    assert len(str(body["output"])) <= MAX_REFUSED_DETAIL + 3
    assert (body["outcome"], body["reason"]) == ("deny", "constraint_violation")


def test_an_allow_records_its_inputs_whole_with_the_credential_and_extra() -> None:
    """Allowed: inputs kept as given, the credential's id, kind and ttl, the extra fields."""
    body = _record(Outcome.allow, None)
    assert body["inputs"] == BIG
    assert "inputs_clipped" not in body
    assert (body["credential_id"], body["credential_kind"], body["ttl"]) == ("c1", "jwt", 60)
    assert (body["approval_id"], body["inputs_hash"], body["at"]) == ("apr_1", "sha256:x", NOW)


def test_claims_come_from_a_jwt_decision_only() -> None:
    """A jwt decision gives the token's claims; the tool call names the reason."""
    req = ActionRequest(action="zendesk.get_ticket", inputs={"ticket_id": "CS-1"}, request_id="t")
    decision = decide(req, MANIFEST, UsageSnapshot(), NOW)
    assert jwt_claims(decision)["action"] == "zendesk.get_ticket"
    call = tool_call("x.y", "blocked", decision, ReasonCode.rate_limited)
    assert call == {"tool": "x.y", "status": "blocked", "reason": "rate_limited"}

"""OpenID AuthZEN 1.0 access evaluation on a live sidecar: the mapping onto the manifest,
deciding without charging unless asked, the batch form, and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from broker.dev.devstack import DevServer
from tests.harness import Harness, running_sidecar, unique_agent, write_manifest
from tests.mcp_fixtures import MANIFEST

pytestmark = pytest.mark.integration


def ask(agent: str, action: str, inputs: dict[str, Any], **broker: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "subject": {"type": "agent", "id": agent},
        "action": {"name": action},
        "resource": {"type": "tool_call", "id": action, "properties": inputs},
    }
    if broker:
        doc["context"] = {"broker": broker}
    return doc


def decisions(h: Harness) -> list[dict[str, Any]]:
    lines = h.audit_path.read_text().splitlines() if h.audit_path.exists() else []
    return [r for r in map(json.loads, lines) if r.get("type") == "decision"]


async def post(h: Harness, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, doc, _ = await h.raw(
        "POST", path, data=data, headers={"content-type": "application/json"}
    )
    return status, doc


async def start(openbao: DevServer, tmp_path: Path) -> Any:
    agent = unique_agent("authzen")
    return agent, running_sidecar(
        openbao, write_manifest(tmp_path, MANIFEST.format(agent=agent)), tmp_path
    )


REFUND = "stripe.refund"


@pytest.mark.parametrize(
    ("action", "inputs", "decision", "outcome", "reason"),
    [
        (REFUND, {"ticket_id": "CS-1", "amount_usd": 40}, True, "allow", None),
        (REFUND, {"ticket_id": "CS-1", "amount_usd": 501}, False, "deny", "constraint_violation"),
        (REFUND, {"ticket_id": "CS-1", "amount_usd": "40"}, False, "deny", "invalid_inputs"),
        (
            REFUND,
            {"ticket_id": "CS-1", "amount_usd": 80},
            False,
            "pending_approval",
            "approval_required",
        ),
        ("deploy.production", {}, False, "deny", "unknown_action"),
    ],
)
async def test_evaluation_decides_from_the_manifest_without_charging(
    openbao: DevServer,
    tmp_path: Path,
    action: str,
    inputs: dict[str, Any],
    decision: bool,
    outcome: str,
    reason: str | None,
) -> None:
    """action.name is the manifest action and resource.properties its inputs; the answer is
    the core's decision; nothing is recorded, charged, minted or opened."""
    agent, sidecar = await start(openbao, tmp_path)
    async with sidecar as h:
        status, doc = await post(h, "/access/v1/evaluation", ask(agent, action, inputs))
        assert decisions(h) == []
    assert status == 200
    assert doc["decision"] is decision
    broker = doc["context"]["broker"]
    assert (broker["outcome"], broker["reason"], broker["charged"]) == (outcome, reason, False)
    assert doc["context"]["reason_admin"]["en"]


async def test_subject_must_be_this_sidecars_agent(openbao: DevServer, tmp_path: Path) -> None:
    """Another agent's id is decision false, subject_mismatch: one sidecar, one agent."""
    _, sidecar = await start(openbao, tmp_path)
    async with sidecar as h:
        status, doc = await post(
            h,
            "/access/v1/evaluation",
            ask("other-agent", REFUND, {"ticket_id": "CS-1", "amount_usd": 1}),
        )
    assert status == 200
    assert doc["decision"] is False
    assert doc["context"]["broker"]["reason"] == "subject_mismatch"


async def test_charge_when_asked_records_charges_and_mints(
    openbao: DevServer, tmp_path: Path
) -> None:
    """With context.broker.charge the evaluation is a credential request: recorded, charged
    ($60 of $100), minted; a free evaluation of $50 afterwards says budget_exhausted."""
    agent, sidecar = await start(openbao, tmp_path)
    async with sidecar as h:
        _, charged = await post(
            h, "/access/v1/evaluation",
            ask(agent, REFUND, {"ticket_id": "CS-1", "amount_usd": 60}, charge=True),
        )  # fmt: skip
        _, free = await post(
            h, "/access/v1/evaluation", ask(agent, REFUND, {"ticket_id": "CS-1", "amount_usd": 50})
        )
        [record] = decisions(h)
    assert charged["decision"] is True
    assert charged["context"]["broker"]["credential"]["credential_id"] == record["credential_id"]
    assert free["decision"] is False
    assert free["context"]["broker"]["reason"] == "budget_exhausted"


async def test_batch_uses_defaults_and_stops_on_first_deny(
    openbao: DevServer, tmp_path: Path
) -> None:
    """Top-level subject/action are defaults each item may replace; deny_on_first_deny stops
    after the first refusal; answers come in request order."""
    agent, sidecar = await start(openbao, tmp_path)
    body = {
        "subject": {"type": "agent", "id": agent},
        "action": {"name": REFUND},
        "evaluations": [item(10), item(20), item(600), item(30)],
        "options": {"evaluations_semantic": "deny_on_first_deny"},
    }
    async with sidecar as h:
        status, doc = await post(h, "/access/v1/evaluations", body)
        _, all_of_them = await post(
            h,
            "/access/v1/evaluations",
            {**body, "options": {"evaluations_semantic": "execute_all"}},
        )
    assert status == 200
    assert [e["decision"] for e in doc["evaluations"]] == [True, True, False]
    assert [e["decision"] for e in all_of_them["evaluations"]] == [True, True, False, True]


def item(amount: float) -> dict[str, Any]:
    inputs = {"ticket_id": "CS-1", "amount_usd": amount}
    return {"resource": {"type": "t", "id": "x", "properties": inputs}}


BAD = [
    ("/access/v1/evaluation", b'{"subject": ', "malformed_json"),
    ("/access/v1/evaluation", b"[]", "invalid_body"),
    ("/access/v1/evaluation", {"subject": {"type": "agent", "id": "a"}, "action": {"name": "x"}}, "missing_field"),
    ("/access/v1/evaluation", {"subject": {"type": "agent", "id": "a", "role": "admin"}, "action": {"name": "x"}, "resource": {"type": "t", "id": "1"}}, "unknown_field"),
    ("/access/v1/evaluation", {"subject": {"type": "agent", "id": "a"}, "action": {"name": "x"}, "resource": {"type": "t", "id": "1"}, "context": {"broker": {"charge": "yes"}}}, "invalid_field"),
    ("/access/v1/evaluation", {"subject": {"type": "agent", "id": ""}, "action": {"name": "x"}, "resource": {"type": "t", "id": "1"}}, "invalid_field"),
    ("/access/v1/evaluations", {"evaluations": [{"action": {"name": "x"}}]}, "missing_field"),
    ("/access/v1/evaluations", {"evaluations": [{}] * 65}, "invalid_field"),
    ("/access/v1/evaluations", {"options": {"evaluations_semantic": "all"}}, "invalid_field"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "code"), BAD)
async def test_bad_input_is_400_with_a_stable_code_and_changes_nothing(
    openbao: DevServer, tmp_path: Path, path: str, body: Any, code: str
) -> None:
    """Malformed JSON, a missing or unknown field, a wrong type, an empty id, a batch item
    with nothing to default from, too many items: 400 with its code; nothing recorded."""
    _, sidecar = await start(openbao, tmp_path)
    async with sidecar as h:
        status, doc = await post(h, path, body)
        assert decisions(h) == []
    assert status == 400
    assert doc["error"] == code


async def test_pdp_metadata_names_both_endpoints(openbao: DevServer, tmp_path: Path) -> None:
    """The well-known document points at the two evaluation endpoints of this sidecar."""
    _, sidecar = await start(openbao, tmp_path)
    async with sidecar as h:
        status, doc, _ = await h.raw("GET", "/.well-known/authzen-configuration")
        evaluated, _ = await post(
            h, doc["access_evaluations_endpoint"].removeprefix(doc["policy_decision_point"]), {}
        )
    assert status == 200
    assert doc["policy_decision_point"] == h.url
    assert doc["access_evaluation_endpoint"] == f"{h.url}/access/v1/evaluation"
    assert evaluated == 400  # reached: an empty batch names no subject

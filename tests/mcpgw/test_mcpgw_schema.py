"""Listed input schemas built from manifest inputs (pure)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from broker.mcpgw.schema import input_property, tool_description, tool_input_schema
from broker.scopes.loader import load_manifest
from tests.harness import SCOPES


def scope_inputs(action: str) -> dict[str, dict[str, Any]]:
    """The inputs as ``/v1/scope`` renders them, from the shipped refund manifest."""
    manifest = load_manifest(SCOPES / "support-refund-agent.yaml")
    inputs = manifest.actions[action].inputs
    return {k: v.model_dump(mode="json", exclude_none=True) for k, v in inputs.items()}


def test_refund_schema_carries_every_constraint_and_is_closed() -> None:
    """Type, bounds, anchored pattern, enum and length from the manifest; optional inputs
    are not required; nothing undeclared is accepted."""
    upstream = {"properties": {"amount_usd": {"type": "number", "description": "in dollars"}}}
    schema = tool_input_schema(scope_inputs("stripe.refund"), upstream)
    assert schema == {
        "type": "object",
        "properties": {
            "ticket_id": {"type": "string", "pattern": "^(?:^CS-[0-9]+$)$", "maxLength": 32},
            "amount_usd": {
                "type": "number", "minimum": 0, "maximum": 500, "description": "in dollars"
            },
            "currency": {"type": "string", "enum": ["usd"]},
        },
        "required": ["amount_usd", "ticket_id"],
        "additionalProperties": False,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("value", "fullmatch"), [("CS-1", True), ("xCS-1", False), ("CS-1x", False), ("CS-", False)]
)
def test_anchored_pattern_matches_like_the_manifest(value: str, fullmatch: bool) -> None:
    """JSON Schema patterns search; the anchored one accepts exactly what re.fullmatch does."""
    prop = input_property({"type": "string", "pattern": "CS-[0-9]+"})
    assert bool(re.search(prop["pattern"], value)) is fullmatch
    assert bool(re.fullmatch("CS-[0-9]+", value)) is fullmatch


def test_description_names_the_action_and_any_approval_gate() -> None:
    """The model reads which action a tool is and that some calls wait for a human."""
    text = tool_description("Refund a customer.", "stripe.refund", needs_approval=True)
    assert text.startswith("Refund a customer.")
    assert "action stripe.refund" in text
    assert "human approval" in text
    assert "approval" not in tool_description(None, "zendesk.get_ticket", needs_approval=False)

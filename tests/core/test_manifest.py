"""Manifest models: what loads, what does not, the content hash and the JSON Schema."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from broker.core.constraints import CONDITION_OPS, INPUT_CHECKS
from broker.core.manifest import (
    MAX_CREDENTIAL_TTL_SECONDS,
    InputSpec,
    Manifest,
    manifest_json_schema,
    parse_duration,
)
from tests.strategies import refund_manifest

BASE = refund_manifest().model_dump(mode="json")


def mutated(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    change(data)
    return data


def refund_action(data: dict[str, Any]) -> dict[str, Any]:
    action: dict[str, Any] = data["actions"]["stripe.refund"]
    return action


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split("/")

    def change(data: dict[str, Any]) -> None:
        node = data
        for part in parents:
            node = node[part]
        node[last] = value

    return change


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split("/")

    def change(data: dict[str, Any]) -> None:
        node = data
        for part in parents:
            node = node[part]
        del node[last]

    return change


R = "actions/stripe.refund"
INVALID = [
    ("no accountable human", _drop(f"{R}/accountable"), "accountable"),
    ("ttl over the cap", _set(f"{R}/credential/ttl", "2h"), f"{MAX_CREDENTIAL_TTL_SECONDS}s"),
    ("bool as a number", _set(f"{R}/inputs/amount_usd/max", True), "valid number"),
    ("string as a number", _set("budgets/tool-calls/limit", "5"), "valid number"),
    ("unknown key", _set(f"{R}/colour", "red"), "Extra inputs"),
    ("cost names no budget", _set(f"{R}/cost/nope", 1), "not a declared budget"),
    ("cost of an undeclared input", _set(f"{R}/cost/tool-calls", "inputs.nope"),
     "not a declared input"),
    ("cost of an input without min", _drop(f"{R}/inputs/amount_usd/min"), "min >= 0"),
    ("approval on an undeclared input", _set(f"{R}/approval/when", {"amt": {"gt": 1}}),
     "not a declared input"),
    ("unknown operator", _set(f"{R}/approval/when", {"amount_usd": {"gtt": 1}}),
     "unknown operator"),
    ("operator on the wrong type", _set(f"{R}/approval/when", {"ticket_id": {"gt": 1}}),
     "does not apply"),
    ("operand of the wrong type", _set(f"{R}/approval/when", {"amount_usd": {"eq": "x"}}),
     "is not of input"),
    ("empty any", _set(f"{R}/approval/when", {"any": []}), "non-empty list"),
    ("no approvers", _set(f"{R}/approval/approvers", []), "at least 1"),
    ("redact of an undeclared input", _set(f"{R}/redact", ["nope"]), "not a declared input"),
    ("bad regex", _set(f"{R}/inputs/ticket_id/pattern", "^CS-[0-9+$"), "regular expression"),
    ("min above max", _set(f"{R}/inputs/amount_usd/min", 600), "greater than max"),
    ("constraint on the wrong type", _set(f"{R}/inputs/ticket_id/min", 1), "does not apply"),
    ("one_of of the wrong type", _set(f"{R}/inputs/ticket_id/one_of", [1]), "not of type"),
    ("bad domain", _set(f"{R}/inputs/ticket_id/domain_in", ["ACME"]), "domain name"),
    ("empty policies", _set(f"{R}/credential/policies", []), "at least 1"),
    ("root policy", _set(f"{R}/credential/policies", ["root"]), "root policy"),
    ("zero uses", _set(f"{R}/credential/uses", 0), "greater than or equal to 1"),
    ("unknown credential kind", _set(f"{R}/credential/kind", "password"), "kind"),
    ("bad email", _set("risk_owner", "risk-team"), "email address"),
    ("bad agent id", _set("agent", "Refund Agent"), "pattern"),
    ("upper-case agent id", _set("agent", "Research-Agent"), "pattern"),
    ("all-caps agent id", _set("agent", "RESEARCH-AGENT"), "pattern"),
    ("bad duration", _set("budgets/tool-calls/per", "1 day"), "duration"),
    ("bool concurrency", _set("concurrency", True), "valid integer"),
    ("reserved input name", _set(f"{R}/inputs/any", {"type": "string"}), "reserved"),
    ("action name without a dot", _set("actions/refund", BASE["actions"]["stripe.refund"]),
     "pattern"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "fragment"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_manifests_do_not_load(
    change: Callable[[dict[str, Any]], None], fragment: str
) -> None:
    """Each broken manifest is refused with an error that names the problem."""
    with pytest.raises(ValidationError) as info:
        Manifest.model_validate(mutated(change))
    assert fragment in str(info.value)


def test_example_shape_loads_with_defaults() -> None:
    """The DESIGN.md shape loads; defaults: one use, database mount, 15 minute approvals."""
    m = refund_manifest()
    refund = m.actions["stripe.refund"]
    assert refund.credential.kind == "vault_token"
    assert refund.credential.uses == 1
    assert refund.approval is not None
    assert refund.approval.expires == 900
    assert m.rate[0].per == 60


def test_dynamic_credential_defaults_to_the_database_mount() -> None:
    """A dynamic credential without a mount uses Vault's database engine."""
    data = mutated(_set(f"{R}/credential", {"kind": "dynamic", "role": "r", "ttl": "5m"}))
    credential = Manifest.model_validate(data).actions["stripe.refund"].credential
    assert credential.kind == "dynamic"
    assert credential.mount == "database"
    assert credential.ttl == 300


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("1d", 86400), (45, 45)]
)
def test_durations_parse_to_seconds(text: str | int, seconds: int) -> None:
    """Durations are stored as int seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["0s", "1w", "1.5h", "", "-1m", True, 0, -5, 1.5, "1d "])
def test_bad_durations_are_refused(bad: object) -> None:
    """Anything but N[smhd] or a positive int of seconds is refused."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_content_hash_is_stable_and_content_sensitive() -> None:
    """Equal content hashes equally (through a round trip); any change changes the hash."""
    m = refund_manifest()
    assert m.content_hash.startswith("sha256:")
    assert len(m.content_hash) == len("sha256:") + 64
    assert Manifest.model_validate(m.model_dump()).content_hash == m.content_hash
    assert refund_manifest({"concurrency": 5}).content_hash != m.content_hash


def test_single_rate_and_list_of_rates_both_load() -> None:
    """`rate` may be one limit or a list of them."""
    m = Manifest.model_validate(mutated(_set("rate", [{"limit": 1, "per": "1s"},
                                                      {"limit": 9, "per": "1h"}])))  # fmt: skip
    assert [r.limit for r in m.rate] == [1, 9]


def test_models_are_frozen() -> None:
    """A loaded manifest cannot be changed in place."""
    m = refund_manifest()
    with pytest.raises(ValidationError):
        m.agent = "other"


def test_input_constraint_fields_mirror_the_operator_table() -> None:
    """Every constraint in the table is a field of InputSpec, documented from the table."""
    fields = InputSpec.model_fields
    for name, check in INPUT_CHECKS.items():
        assert fields[name].description == check.description


def test_schema_documents_the_shape() -> None:
    """The JSON Schema requires owners and accountable humans and lists every operator."""
    schema = manifest_json_schema()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {"agent", "system_owner", "risk_owner"} <= set(schema["required"])
    action = schema["$defs"]["Action"]
    assert "accountable" in action["required"]
    assert action["additionalProperties"] is False
    ops = schema["$defs"]["Approval"]["properties"]["when"]["additionalProperties"]["properties"]
    assert set(ops) == set(CONDITION_OPS)


@pytest.mark.parametrize(
    ("budget", "why"),
    [("refunds-usd", "money"), ("tool-calls", "approval-gated")],
)
def test_a_budget_that_cannot_fall_back_to_a_local_share_is_refused(budget: str, why: str) -> None:
    """Money and approval-gated budgets fail closed: declaring a local fallback is refused with
    the stable code budget_not_shareable, naming the budget."""
    data = mutated(_set(f"budgets/{budget}/fallback", "local_share"))
    with pytest.raises(ValidationError) as info:
        Manifest.model_validate(data)
    text = str(info.value)
    assert "budget_not_shareable" in text
    assert f"budgets.{budget}.fallback" in text
    assert why in text


def test_a_rate_limit_may_fall_back_to_a_local_share_and_a_budget_may_be_exact() -> None:
    """A calls-only rate limit may declare fallback local_share; a budget may be exact."""
    data = mutated(_set("rate", {"limit": 10, "per": "1m", "fallback": "local_share"}))
    data["budgets"]["refunds-usd"]["exact"] = True
    manifest = Manifest.model_validate(data)
    assert manifest.rate[0].fallback == "local_share"
    assert manifest.budgets["refunds-usd"].exact

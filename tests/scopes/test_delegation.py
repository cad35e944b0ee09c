"""``narrow``: a grant that only narrows gets a scope; anything that widens is refused with
the rule it would break; and no chain of grants reaches outside the root's scope."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.core.decision import ActionRequest, decide
from broker.core.delegation import GrantReason, GrantRefusal, GrantRequest
from broker.core.limits import UsageSnapshot
from broker.core.manifest import Manifest
from broker.core.reasons import Outcome
from broker.scopes.delegation import narrow
from tests.harness import SCOPES
from tests.strategies import refund_manifest, requests

# The refund agent of the design brief, allowed to delegate three levels deep.
ROOT = Manifest.model_validate(
    {
        **yaml.safe_load((SCOPES / "support-refund-agent.yaml").read_text()),
        "delegation": {"max_depth": 3, "max_ttl": "1h"},
    }
)
FULL = {name: float(b.limit) for name, b in ROOT.budgets.items()}
REFUND_BUDGETS = {"refunds-usd": 30.0, "refunds-usd-hourly": 30.0, "tool-calls": 10.0}


def grant(**changes: Any) -> GrantRequest:
    body: dict[str, Any] = {
        "sub_agent": "refund-helper",
        "actions": {"stripe.refund": {"inputs": {"amount_usd": {"max": 50}}}},
        "budgets": REFUND_BUDGETS,
        "ttl": "10m",
    }
    return GrantRequest.model_validate({**body, **changes})


def test_a_narrowing_grant_gets_a_scope_with_its_carves_as_budgets() -> None:
    """Fewer actions, a lower max and carved budgets: the scope says exactly that."""
    scope = narrow(ROOT, grant(), depth=1, ttl_bound=3600, left=FULL)
    assert isinstance(scope, Manifest), scope
    assert list(scope.actions) == ["stripe.refund"]
    assert scope.actions["stripe.refund"].inputs["amount_usd"].max == 50
    assert {n: b.limit for n, b in scope.budgets.items()} == REFUND_BUDGETS
    assert scope.agent == ROOT.agent


WIDENING = [
    # (what is asked, code, rule)
    (
        {"actions": {"github.open_pr": {}}},
        GrantReason.delegation_widens,
        "actions.github.open_pr",
    ),
    (
        {"actions": {"stripe.refund": {"inputs": {"amount_usd": {"max": 600}}}}},
        GrantReason.delegation_widens,
        "actions.stripe.refund.inputs.amount_usd.max",
    ),
    (
        {"actions": {"stripe.refund": {"inputs": {"amount_usd": {"min": -5}}}}},
        GrantReason.delegation_widens,
        "actions.stripe.refund.inputs.amount_usd.min",
    ),
    (
        {"actions": {"stripe.refund": {"inputs": {"currency": {"one_of": ["usd", "eur"]}}}}},
        GrantReason.delegation_widens,
        "actions.stripe.refund.inputs.currency.one_of",
    ),
    (
        {"actions": {"stripe.refund": {"inputs": {"ticket_id": {"pattern": "^.*$"}}}}},
        GrantReason.delegation_widens,
        "actions.stripe.refund.inputs.ticket_id.pattern",
    ),
    (
        {"actions": {"stripe.refund": {"inputs": {"note": {"max_length": 3}}}}},
        GrantReason.delegation_widens,
        "actions.stripe.refund.inputs.note",
    ),
    (
        {"actions": {"zendesk.get_ticket": {"ttl": "2m"}}},
        GrantReason.delegation_widens,
        "actions.zendesk.get_ticket.credential.ttl",
    ),
    (
        {"budgets": {**REFUND_BUDGETS, "refunds-usd": 2500}},
        GrantReason.delegation_budget_exceeded,
        "budgets.refunds-usd",
    ),
    (
        {"budgets": {"refunds-usd": 30, "tool-calls": 5}},
        GrantReason.delegation_budget_exceeded,
        "actions.stripe.refund.cost.refunds-usd-hourly",
    ),
    ({"budgets": {"gold": 1}}, GrantReason.delegation_widens, "budgets.gold"),
    ({"ttl": "2h"}, GrantReason.delegation_ttl_too_long, "ttl"),
]


@pytest.mark.parametrize(("changes", "code", "rule"), WIDENING)
def test_a_widening_grant_is_refused_with_the_rule(
    changes: dict[str, Any], code: GrantReason, rule: str
) -> None:
    """Each way of asking for more than the parent has is refused, naming the rule."""
    refused = narrow(ROOT, grant(**changes), depth=1, ttl_bound=3600, left=FULL)
    assert isinstance(refused, GrantRefusal), refused
    assert (refused.reason, refused.rule) == (code, rule), refused.detail


def test_more_budget_than_the_parent_has_left_is_refused() -> None:
    """The carve is measured against what is left, not the parent's limit."""
    left = {**FULL, "refunds-usd": 29.0}
    refused = narrow(ROOT, grant(), depth=1, ttl_bound=3600, left=left)
    assert isinstance(refused, GrantRefusal)
    assert (refused.reason, refused.rule) == (
        GrantReason.delegation_budget_exceeded,
        "budgets.refunds-usd",
    )
    assert "29 left" in refused.detail


@pytest.mark.parametrize(("depth", "ok"), [(1, True), (3, True), (4, False)])
def test_depth_over_the_manifest_limit_is_refused(depth: int, ok: bool) -> None:
    """max_depth 3: grants at depth 1..3 pass, a fourth level is refused."""
    result = narrow(ROOT, grant(), depth=depth, ttl_bound=3600, left=FULL)
    if ok:
        assert isinstance(result, Manifest)
    else:
        assert isinstance(result, GrantRefusal)
        assert (result.reason, result.rule) == (
            GrantReason.delegation_too_deep,
            "delegation.max_depth",
        )


def test_a_manifest_without_delegation_grants_nothing() -> None:
    """No delegation section: refused, whatever is asked."""
    refused = narrow(refund_manifest(), grant(), depth=1, ttl_bound=3600, left=FULL)
    assert isinstance(refused, GrantRefusal)
    assert refused.reason is GrantReason.delegation_not_allowed


def test_an_incoherent_narrowing_is_refused_as_invalid() -> None:
    """min above max is no narrowing at all: refused as invalid, naming the input."""
    bad = grant(actions={"stripe.refund": {"inputs": {"amount_usd": {"min": 40, "max": 20}}}})
    refused = narrow(ROOT, bad, depth=1, ttl_bound=3600, left=FULL)
    assert isinstance(refused, GrantRefusal)
    assert refused.reason is GrantReason.invalid_grant_request
    assert "amount_usd" in refused.rule


# -- the property --------------------------------------------------------------------------


@st.composite
def narrowings(draw: st.DrawFn, scope: Manifest) -> GrantRequest:
    """A grant request that may narrow or widen anything: actions, bounds, carves, TTLs."""
    names = draw(st.sets(st.sampled_from(sorted(scope.actions)), min_size=1))
    if draw(st.integers(0, 9)) == 0:
        names.add("github.open_pr")  # not the parent's: refused
    actions: dict[str, Any] = {}
    for name in names:
        inputs: dict[str, Any] = {}
        declared = scope.actions[name].inputs if name in scope.actions else {}
        if "amount_usd" in declared and draw(st.booleans()):
            low = draw(st.just(-1.0) | st.floats(0, 600))
            inputs["amount_usd"] = {"min": low, "max": draw(st.floats(low, 700))}
        how = draw(st.sampled_from(["same", "one_of", "max_length"]))
        if "ticket_id" in declared and how == "one_of":
            inputs["ticket_id"] = {
                "one_of": draw(st.lists(st.sampled_from(["CS-1", "x"]), min_size=1))
            }
        elif "ticket_id" in declared and how == "max_length":
            inputs["ticket_id"] = {"max_length": draw(st.integers(4, 64))}
        ttl = draw(st.none() | st.integers(1, 90))
        actions[name] = {"inputs": inputs, **({"ttl": ttl} if ttl else {})}
    budgets = {
        # Mostly within what the parent has, sometimes more (which must be refused).
        n: float(b.limit) * draw(st.floats(0.01, 1.2))
        for n, b in scope.budgets.items()
        if draw(st.integers(0, 9))
    }
    return GrantRequest.model_validate(
        {"sub_agent": "sub", "actions": actions, "budgets": budgets, "ttl": 60}
    )


def _allowed(outcome: Outcome) -> bool:
    return outcome is not Outcome.deny


@st.composite
def edge_requests(draw: st.DrawFn, scope: Manifest) -> ActionRequest:
    """A request the leaf's scope is most likely to let through: its own bounds, exactly."""
    name = draw(st.sampled_from(sorted(scope.actions)))
    inputs: dict[str, Any] = {}
    for field, spec in scope.actions[name].inputs.items():
        values: list[Any] = ["CS-1", "x", "usd", "eur"]
        if spec.max_length is not None:
            values.append("CS-" + "1" * (spec.max_length - 3))
        if spec.type == "number":
            values = [v for v in (spec.min, spec.max, 0, 50, 500, 600) if v is not None]
        for value in spec.one_of or ():
            values.append(value)
        if spec.required or draw(st.booleans()):
            inputs[field] = draw(st.sampled_from(values))
    return ActionRequest(action=name, inputs=inputs, request_id="prop")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), reqs=st.lists(requests(), max_size=4))
def test_no_chain_of_grants_reaches_outside_the_roots_scope(
    data: st.DataObject, reqs: list[ActionRequest]
) -> None:
    """Whatever a chain of accepted grants allows, the root allows; its limits are no looser."""
    scope, depth = ROOT, 0
    for _ in range(data.draw(st.integers(1, 5))):
        left = {n: float(b.limit) for n, b in scope.budgets.items()}
        result = narrow(
            scope, data.draw(narrowings(scope)), depth=depth + 1, ttl_bound=3600, left=left
        )
        if isinstance(result, GrantRefusal):
            break
        scope, depth = result, depth + 1
    assert depth <= 3
    for name, budget in scope.budgets.items():
        assert budget.limit <= ROOT.budgets[name].limit
    for name, action in scope.actions.items():
        root = ROOT.actions[name]
        assert action.credential.kind == root.credential.kind
        assert action.credential.ttl <= root.credential.ttl
    unused = UsageSnapshot()
    reqs = [*reqs, *data.draw(st.lists(edge_requests(scope), min_size=1, max_size=6))]
    for req in reqs:
        leaf = decide(req, scope, unused, 1_000_000.0)
        if _allowed(leaf.outcome):
            assert _allowed(decide(req, ROOT, unused, 1_000_000.0).outcome), req
            assert leaf.credential == scope.actions[req.action].credential

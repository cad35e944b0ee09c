"""The compiled plan: cached per manifest content hash, and approval conditions as predicates."""

from __future__ import annotations

from typing import Any

import pytest

from broker.core import plan
from broker.core.plan import compile_condition, compile_plan
from tests.strategies import refund_manifest


def test_plan_is_compiled_once_per_manifest_hash() -> None:
    """Equal manifests share one compiled plan."""
    assert compile_plan(refund_manifest()) is compile_plan(refund_manifest())


def test_plan_cache_stays_bounded() -> None:
    """More distinct manifests than the cache holds: it is emptied, never grows past its size."""
    for i in range(plan._PLAN_CACHE_SIZE + 1):
        compile_plan(refund_manifest({"calls": i + 1}))
        assert len(plan._PLANS) <= plan._PLAN_CACHE_SIZE


def test_plan_carries_each_actions_raci() -> None:
    """The compiled action holds the manifest's accountable, consulted and approvers."""
    raci = compile_plan(refund_manifest()).actions["stripe.refund"].raci
    assert raci.accountable == "finance-ops@acme.example"
    assert raci.consulted == ("billing-lead@acme.example",)
    assert raci.approvers == ("finance-ops@acme.example",)


WHEN = {"usd": {"gt": 100}, "any": [{"region": {"in": ["eu"]}}, {"usd": {"ge": 1000}}]}
CONDITIONS = [
    pytest.param({"usd": 50, "region": "eu"}, False, id="a term fails"),
    pytest.param({"usd": 150, "region": "us"}, False, id="no 'any' option holds"),
    pytest.param({"usd": 150, "region": "eu"}, True, id="every term, first option"),
    pytest.param({"usd": 1500, "region": "us"}, True, id="every term, second option"),
    pytest.param({"region": "eu"}, True, id="an absent input holds: fails closed"),
]


@pytest.mark.parametrize(("inputs", "holds"), CONDITIONS)
def test_condition_compiles_to_a_predicate(inputs: dict[str, Any], holds: bool) -> None:
    """A condition holds when all terms do and one ``any`` option does; absent inputs hold."""
    assert compile_condition(WHEN)(inputs) is holds

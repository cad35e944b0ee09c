"""``diff_manifests``: each kind of manifest change is named in the manifest's own terms, with
its effect (widens, narrows, neutral), as one table."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from broker.core.manifest import Manifest
from broker.scopes.diff import Effect, diff_manifests, widening
from tests.harness import SCOPES

BASE: dict[str, Any] = yaml.safe_load((SCOPES / "support-refund-agent.yaml").read_text())
REFUND = ("actions", "stripe.refund")

Edit = Callable[[dict[str, Any]], None]


def _at(doc: dict[str, Any], *path: str) -> dict[str, Any]:
    for key in path:
        doc = doc[key]
    return doc


def _set(*path: str, value: Any) -> Edit:
    return lambda d: _at(d, *path[:-1]).__setitem__(path[-1], value)


def _drop(*path: str) -> Edit:
    return lambda d: _at(d, *path[:-1]).pop(path[-1])


NEW_ACTION = {
    "accountable": "ops@acme.example",
    "credential": {"kind": "jwt", "audience": "crm", "ttl": "60s"},
}

# (what, edit, where the change is reported, expected words, effect)
CASES: list[tuple[str, Edit, str, str, Effect]] = [
    ("action added", _set("actions", "crm.lookup", value=NEW_ACTION),
     "actions.crm.lookup", "action added", Effect.widens),
    ("action removed", _drop("actions", "zendesk.get_ticket"),
     "actions.zendesk.get_ticket", "action removed", Effect.narrows),
    ("budget limit raised", _set("budgets", "refunds-usd", "limit", value=5000),
     "budgets.refunds-usd.limit", "raised 2000 -> 5000", Effect.widens),
    ("budget limit lowered", _set("budgets", "refunds-usd", "limit", value=1000),
     "budgets.refunds-usd.limit", "lowered 2000 -> 1000", Effect.narrows),
    ("concurrency cap removed", _drop("concurrency"), "concurrency", "removed (4)", Effect.widens),
    ("delegation allowed", _set("delegation", value={"max_depth": 2, "max_ttl": "1h"}),
     "delegation", "delegation allowed", Effect.widens),
    ("agent rate limit raised", _set("rate", value={"limit": 900, "per": "1m"}),
     "rate", "per 60s limit raised 600 -> 900", Effect.widens),
    ("action rate limit dropped", _drop(*REFUND, "rate"),
     "actions.stripe.refund.rate", "rate limit 10 per 60s removed", Effect.widens),
    ("approver added", _set(*REFUND, "approval", "approvers",
                            value=["finance-ops@acme.example", "intern@acme.example"]),
     "actions.stripe.refund.approval.approvers", "intern@acme.example added", Effect.widens),
    ("approval threshold raised", _set(*REFUND, "approval", "when",
                                       value={"amount_usd": {"gt": 300}}),
     "actions.stripe.refund.approval.when.amount_usd.gt", "threshold raised 100 -> 300",
     Effect.widens),
    ("approval removed", _drop(*REFUND, "approval"),
     "actions.stripe.refund.approval", "no human in the loop", Effect.widens),
    ("ttl raised", _set(*REFUND, "credential", "ttl", value="5m"),
     "actions.stripe.refund.credential.ttl", "raised 30 -> 300", Effect.widens),
    ("ttl lowered", _set(*REFUND, "credential", "ttl", value="10s"),
     "actions.stripe.refund.credential.ttl", "lowered 30 -> 10", Effect.narrows),
    ("policy added", _set(*REFUND, "credential", "policies", value=["stripe-refund", "admin"]),
     "actions.stripe.refund.credential.policies", "policy admin added", Effect.widens),
    ("token uses raised", _set(*REFUND, "credential", "uses", value=3),
     "actions.stripe.refund.credential.uses", "raised 1 -> 3", Effect.widens),
    ("input max raised", _set(*REFUND, "inputs", "amount_usd", "max", value=5000),
     "actions.stripe.refund.inputs.amount_usd.max", "raised 500 -> 5000", Effect.widens),
    ("input max lowered (a refund limit)", _set(*REFUND, "inputs", "amount_usd", "max", value=100),
     "actions.stripe.refund.inputs.amount_usd.max", "lowered 500 -> 100", Effect.narrows),
    ("pattern removed", _drop(*REFUND, "inputs", "ticket_id", "pattern"),
     "actions.stripe.refund.inputs.ticket_id.pattern", "removed", Effect.widens),
    ("pattern rewritten", _set(*REFUND, "inputs", "ticket_id", "pattern", value="^CS-.*$"),
     "actions.stripe.refund.inputs.ticket_id.pattern", "may accept more", Effect.widens),
    ("one_of value added", _set(*REFUND, "inputs", "currency", "one_of", value=["usd", "eur"]),
     "actions.stripe.refund.inputs.currency.one_of", "'eur' allowed", Effect.widens),
    ("input made optional", _set(*REFUND, "inputs", "ticket_id", "required", value=False),
     "actions.stripe.refund.inputs.ticket_id.required", "now optional", Effect.widens),
    ("optional input added", _set(*REFUND, "inputs", "note", value={"type": "string",
                                                                     "required": False}),
     "actions.stripe.refund.inputs.note", "optional input added", Effect.widens),
    ("charge removed", _drop(*REFUND, "cost", "tool-calls"),
     "actions.stripe.refund.cost.tool-calls", "charge removed", Effect.widens),
    ("redaction dropped", _set(*REFUND, "redact", value=[]),
     "actions.stripe.refund.redact", "ticket_id no longer redacted", Effect.widens),
    ("accountable changed", _set(*REFUND, "accountable", value="cfo@acme.example"),
     "actions.stripe.refund.accountable", "-> cfo@acme.example", Effect.neutral),
    ("policy version bumped", _set("policy_version", value="refund-policy-2026-03"),
     "policy_version", "-> refund-policy-2026-03", Effect.neutral),
]  # fmt: skip


@pytest.mark.parametrize(("what", "edit", "where", "words", "effect"), CASES,
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_change_is_named_with_its_effect(
    what: str, edit: Edit, where: str, words: str, effect: Effect
) -> None:
    """One edit yields exactly one change, at the right place, with the right effect."""
    doc = copy.deepcopy(BASE)
    edit(doc)
    changes = diff_manifests(Manifest.model_validate(BASE), Manifest.model_validate(doc))
    assert len(changes) == 1, [str(c) for c in changes]
    (change,) = changes
    assert (change.where, change.effect) == (where, effect)
    assert words in change.what


def test_identical_manifests_have_no_changes() -> None:
    """A manifest compared with itself reports nothing."""
    m = Manifest.model_validate(BASE)
    assert diff_manifests(m, m) == []


def test_widening_changes_come_first_and_are_marked() -> None:
    """Several edits at once: widening changes are listed first, and printed as WIDENS."""
    doc = copy.deepcopy(BASE)
    _set("budgets", "refunds-usd", "limit", value=1000)(doc)
    _set("actions", "crm.lookup", value=NEW_ACTION)(doc)
    changes = diff_manifests(Manifest.model_validate(BASE), Manifest.model_validate(doc))
    assert [c.effect for c in changes] == [Effect.widens, Effect.narrows]
    assert str(changes[0]).startswith("WIDENS")
    assert widening(changes) == changes[:1]


def test_approver_removed_narrows() -> None:
    """Removing one of two approvers is reported as a narrowing change of the approvers."""
    two = copy.deepcopy(BASE)
    _set(*REFUND, "approval", "approvers",
         value=["finance-ops@acme.example", "cfo@acme.example"])(two)  # fmt: skip
    changes = diff_manifests(Manifest.model_validate(two), Manifest.model_validate(BASE))
    assert [(c.where, c.what, c.effect) for c in changes] == [
        ("actions.stripe.refund.approval.approvers", "cfo@acme.example removed", Effect.narrows)
    ]


@pytest.mark.parametrize(
    ("after", "where", "effect"),
    [
        ({"max_depth": 3, "max_ttl": "30m"}, "delegation.max_depth", Effect.widens),
        ({"max_depth": 2, "max_ttl": "1h"}, "delegation.max_ttl", Effect.widens),
        ({"max_depth": 1, "max_ttl": "30m"}, "delegation.max_depth", Effect.narrows),
        (None, "delegation", Effect.narrows),
    ],
)
def test_delegation_limits_are_judged(
    after: dict[str, Any] | None, where: str, effect: Effect
) -> None:
    """Deeper or longer delegation widens; shallower, or none at all, narrows."""
    before = {**copy.deepcopy(BASE), "delegation": {"max_depth": 2, "max_ttl": "30m"}}
    changed = {**copy.deepcopy(BASE), **({"delegation": after} if after else {})}
    [change] = diff_manifests(Manifest.model_validate(before), Manifest.model_validate(changed))
    assert (change.where, change.effect) == (where, effect)

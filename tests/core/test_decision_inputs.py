"""Input constraints through ``decide``, not only as rows of the constraint table: max_length,
whole-value patterns (trailing text included), domain_in and one_of, each at its edge."""

from __future__ import annotations

from typing import Any

import pytest

from broker.core.decision import ActionRequest, decide, explain
from broker.core.limits import UsageSnapshot
from broker.core.manifest import Manifest
from broker.core.reasons import Outcome, ReasonCode

NOW = 1_767_225_600.0
EMPTY = UsageSnapshot()

MANIFEST = Manifest.model_validate(
    {
        "agent": "inputs-agent",
        "policy_version": "inputs-1",
        "system_owner": "platform@acme.example",
        "risk_owner": "risk@acme.example",
        "actions": {
            "mail.send": {
                "accountable": "marketing-lead@acme.example",
                "credential": {"kind": "jwt", "audience": "mail", "ttl": "60s"},
                "inputs": {
                    "to": {"type": "string", "domain_in": ["acme.example", "partner.example"]},
                    "subject": {"type": "string", "max_length": 8, "required": False},
                    "ticket": {"type": "string", "pattern": "CS-[0-9]+", "required": False},
                    "anchored": {"type": "string", "pattern": "^CS-[0-9]+$", "required": False},
                    "channel": {"type": "string", "one_of": ["email", "sms"], "required": False},
                    "priority": {"type": "integer", "one_of": [1, 2, 3], "required": False},
                    "urgent": {"type": "boolean", "one_of": [False], "required": False},
                },
            },
            "deploy.run": {
                "accountable": "platform-lead@acme.example",
                "credential": {"kind": "jwt", "audience": "deploy", "ttl": "60s"},
                "inputs": {"env": {"type": "string"}},
                "approval": {
                    "when": {"env": {"matches": "prod-[a-z]+"}},
                    "approvers": ["platform-lead@acme.example"],
                },
            },
        },
    }
)
TO = "jo@acme.example"


def send(**inputs: Any) -> ActionRequest:
    return ActionRequest(action="mail.send", inputs={"to": TO, **inputs}, request_id="t")


ALLOWED = [
    pytest.param({"subject": ""}, id="max_length: empty"),
    pytest.param({"subject": "12345678"}, id="max_length: exactly at the limit"),
    pytest.param({"subject": "\u00e9" * 8}, id="max_length: counts characters, not bytes"),
    pytest.param({"ticket": "CS-12"}, id="pattern: the whole value"),
    pytest.param({"anchored": "CS-0"}, id="pattern: anchored, whole value"),
    pytest.param({"to": "jo@sub.partner.example"}, id="domain_in: a subdomain"),
    pytest.param({"to": "https://acme.example/x"}, id="domain_in: a URL host"),
    pytest.param({"channel": "sms"}, id="one_of: the last listed string"),
    pytest.param({"priority": 3}, id="one_of: a listed integer"),
    pytest.param({"urgent": False}, id="one_of: a listed boolean"),
]


@pytest.mark.parametrize("inputs", ALLOWED)
def test_values_inside_a_constraint_are_allowed(inputs: dict[str, Any]) -> None:
    """A value exactly at or inside each constraint is allowed, with the action's credential."""
    d = decide(send(**inputs), MANIFEST, EMPTY, NOW)
    assert (d.outcome, d.reason) == (Outcome.allow, None), d.detail
    assert d.credential is not None


REFUSED = [
    ("max_length: one over", {"subject": "123456789"}, "subject", "max_length"),
    ("max_length: far over", {"subject": "x" * 10_000}, "subject", "max_length"),
    ("pattern: trailing text", {"ticket": "CS-12 and more"}, "ticket", "pattern"),
    ("pattern: trailing letter", {"ticket": "CS-12a"}, "ticket", "pattern"),
    ("pattern: leading text", {"ticket": "xCS-12"}, "ticket", "pattern"),
    ("pattern: trailing newline, anchored", {"anchored": "CS-1\n"}, "anchored", "pattern"),
    ("pattern: trailing text, anchored", {"anchored": "CS-1;DROP"}, "anchored", "pattern"),
    ("pattern: empty", {"ticket": ""}, "ticket", "pattern"),
    ("domain_in: look-alike", {"to": "jo@evilacme.example"}, "to", "domain_in"),
    ("domain_in: listed as a prefix", {"to": "jo@acme.example.evil.example"}, "to", "domain_in"),
    ("domain_in: userinfo trick", {"to": "https://acme.example@evil.example/"}, "to", "domain_in"),
    ("domain_in: other domain", {"to": "jo@example.org"}, "to", "domain_in"),
    ("one_of: unlisted", {"channel": "fax"}, "channel", "one_of"),
    ("one_of: case differs", {"channel": "Email"}, "channel", "one_of"),
    ("one_of: trailing space", {"channel": "email "}, "channel", "one_of"),
    ("one_of: unlisted integer", {"priority": 4}, "priority", "one_of"),
    ("one_of: unlisted boolean", {"urgent": True}, "urgent", "one_of"),
]


@pytest.mark.parametrize(
    ("inputs", "name", "constraint"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED]
)
def test_values_outside_a_constraint_are_refused(
    inputs: dict[str, Any], name: str, constraint: str
) -> None:
    """Each constraint refuses through decide, naming the input and the constraint; no credential."""
    d = decide(send(**inputs), MANIFEST, EMPTY, NOW)
    assert (d.outcome, d.reason) == (Outcome.deny, ReasonCode.constraint_violation)
    assert d.detail.startswith(f"input {name!r} ")
    assert d.detail.endswith(f"({constraint})")
    assert d.credential is None
    assert d.charges == {}


def test_max_length_refusal_says_the_limit() -> None:
    """The max_length refusal tells the agent the limit it broke."""
    d = decide(send(subject="123456789"), MANIFEST, EMPTY, NOW)
    assert d.detail == "input 'subject' must be at most 8 characters (max_length)"


def test_explain_shows_the_constraint_rule_failing() -> None:
    """explain marks the constraints rule as the one that failed for an over-long input."""
    trace = {r.rule: r.status for r in explain(send(subject="x" * 9), MANIFEST, EMPTY, NOW)}
    assert trace["inputs_valid"] == "pass"
    assert trace["constraints"] == "fail"
    assert trace["approval"] == "skipped"


def test_one_of_does_not_confuse_booleans_and_integers() -> None:
    """True is not the listed integer 1: the type check refuses it before one_of is asked."""
    d = decide(send(priority=True), MANIFEST, EMPTY, NOW)
    assert (d.outcome, d.reason) == (Outcome.deny, ReasonCode.invalid_inputs)


APPROVAL_MATCHES = [
    pytest.param("prod-eu", Outcome.pending_approval, id="the whole value matches"),
    pytest.param("prod-eu-1", Outcome.allow, id="trailing text: no match"),
    pytest.param("prod-eu\n", Outcome.allow, id="trailing newline: no match"),
    pytest.param("xprod-eu", Outcome.allow, id="leading text: no match"),
    pytest.param("prod-", Outcome.allow, id="a prefix of the pattern: no match"),
]


@pytest.mark.parametrize(("env", "outcome"), APPROVAL_MATCHES)
def test_matches_condition_needs_the_whole_value(env: str, outcome: Outcome) -> None:
    """An approval condition ``matches`` holds only when the regex matches the whole value."""
    request = ActionRequest(action="deploy.run", inputs={"env": env}, request_id="t")
    assert decide(request, MANIFEST, EMPTY, NOW).outcome is outcome

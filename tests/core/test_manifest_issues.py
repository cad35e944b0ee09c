"""Load errors written out in full: for each broken manifest, the exact path inside the
document and the message, as ``broker scopes check`` prints them (the file and line prefix
left out). Only messages of our own making are pinned, not pydantic's wording."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from broker.core.manifest import Manifest, Problems
from broker.scopes.loader import load_model_text
from tests.core.test_manifest import R, _drop, _set, mutated

A = "actions.stripe.refund"
WHEN = f"{R}/approval/when"
OPS = "eq, ne, gt, ge, lt, le, in, not_in, matches"
NO_REFUND = "must declare min >= 0 so a call can never refund a budget"
NOT_NUMBER = "must be a required integer or number input"

ISSUES: list[tuple[str, Callable[[dict[str, Any]], None], list[str]]] = [
    ("cost names no budget", _set(f"{R}/cost/nope", 1),
     [f"{A}.cost.nope: 'nope' is not a declared budget"]),
    ("cost of an undeclared input", _set(f"{R}/cost/tool-calls", "inputs.nope"),
     [f"{A}.cost.tool-calls: 'inputs.nope' is not a declared input"]),
    ("cost of an input without min", _drop(f"{R}/inputs/amount_usd/min"),
     [f"{A}.cost.refunds-usd: 'inputs.amount_usd' {NO_REFUND}",
      f"{A}.cost.refunds-usd-hourly: 'inputs.amount_usd' {NO_REFUND}"]),
    ("cost of an optional input", _set(f"{R}/inputs/amount_usd/required", False),
     [f"{A}.cost.refunds-usd: 'inputs.amount_usd' {NOT_NUMBER}",
      f"{A}.cost.refunds-usd-hourly: 'inputs.amount_usd' {NOT_NUMBER}"]),
    ("cost of a string input", _set(f"{R}/cost/tool-calls", "inputs.ticket_id"),
     [f"{A}.cost.tool-calls: 'inputs.ticket_id' {NOT_NUMBER}"]),
    ("approval on an undeclared input", _set(WHEN, {"amt": {"gt": 1}}),
     [f"{A}.approval.when.amt: 'amt' is not a declared input"]),
    ("undeclared input inside any", _set(WHEN, {"any": [{"amount_usd": {"gt": 1}},
                                                       {"amt": {"gt": 1}}]}),
     [f"{A}.approval.when.any.1.amt: 'amt' is not a declared input"]),
    ("unknown operator", _set(WHEN, {"amount_usd": {"gtt": 1}}),
     [f"{A}.approval.when.amount_usd.gtt: unknown operator; expected one of {OPS}"]),
    ("unknown operator inside any", _set(WHEN, {"any": [{"amount_usd": {"gtt": 1}}]}),
     [f"{A}.approval.when.any.0.amount_usd.gtt: unknown operator; expected one of {OPS}"]),
    ("operator on the wrong type", _set(WHEN, {"ticket_id": {"gt": 1}}),
     [f"{A}.approval.when.ticket_id.gt: operator 'gt' does not apply to input 'ticket_id' of "
      "type string"]),
    ("scalar operand of the wrong type", _set(WHEN, {"amount_usd": {"eq": "x"}}),
     [f"{A}.approval.when.amount_usd.eq: 'x' is not of input 'amount_usd' type number"]),
    ("list operand of the wrong type inside any", _set(WHEN, {"any": [{"amount_usd":
                                                                     {"in": [1, "a"]}}]}),
     [f"{A}.approval.when.any.0.amount_usd.in: 'a' is not of input 'amount_usd' type number"]),
    ("bad regex operand", _set(WHEN, {"ticket_id": {"matches": "("}}),
     [f"{A}.approval.when.ticket_id.matches: invalid regular expression '(': missing ), "
      "unterminated subpattern at position 0"]),
    ("empty any", _set(WHEN, {"any": []}),
     [f"{A}.approval.when.any: 'any' needs a non-empty list of conditions"]),
    ("any of a mapping", _set(WHEN, {"any": {"amount_usd": {"gt": 1}}}),
     [f"{A}.approval.when.any: 'any' needs a non-empty list of conditions"]),
    ("any of a number", _set(WHEN, {"any": [5]}),
     [f"{A}.approval.when.any.0: expected a mapping of input name to operators, found 5"]),
    ("operators not a mapping", _set(WHEN, {"amount_usd": 5}),
     [f"{A}.approval.when.amount_usd: expected a mapping like {{gt: 100}}, found 5"]),
    ("no operators", _set(WHEN, {"amount_usd": {}}),
     [f"{A}.approval.when.amount_usd: expected a mapping like {{gt: 100}}, found {{}}"]),
    ("redact of an undeclared input", _set(f"{R}/redact", ["ticket_id", "nope"]),
     [f"{A}.redact.1: 'nope' is not a declared input"]),
    ("reserved input name", _set(f"{R}/inputs/any", {"type": "string"}),
     [f"{A}.inputs.any: 'any' is reserved and cannot name an input"]),
    ("min above max", _set(f"{R}/inputs/amount_usd/min", 600),
     [f"{A}.inputs.amount_usd.min: min 600.0 is greater than max 500.0"]),
    ("constraint on the wrong type", _set(f"{R}/inputs/ticket_id/min", 1),
     [f"{A}.inputs.ticket_id.min: 'min' does not apply to type string"]),
    ("bad regex", _set(f"{R}/inputs/ticket_id/pattern", "^CS-[0-9+$"),
     [f"{A}.inputs.ticket_id.pattern: invalid regular expression '^CS-[0-9+$': unterminated "
      "character set at position 4"]),
    ("one_of of the wrong type", _set(f"{R}/inputs/ticket_id/one_of", ["a", 1]),
     [f"{A}.inputs.ticket_id.one_of: 1 is not of type string"]),
    ("bad domain", _set(f"{R}/inputs/ticket_id/domain_in", ["acme.example", "ACME"]),
     [f"{A}.inputs.ticket_id.domain_in: 'ACME' is not a lower-case domain name like "
      "acme.example"]),
    ("domain without a dot", _set(f"{R}/inputs/ticket_id/domain_in", ["localhost"]),
     [f"{A}.inputs.ticket_id.domain_in: 'localhost' is not a lower-case domain name like "
      "acme.example"]),
    ("root policy", _set(f"{R}/credential/policies", ["stripe-refund", "root"]),
     [f"{A}.credential.policies: the root policy is never granted to an agent"]),
    ("ttl over the cap", _set(f"{R}/credential/ttl", 3601),
     [f"{A}.credential.ttl: ttl of 3601s exceeds the broker-wide maximum of 3600s "
      "(MAX_CREDENTIAL_TTL_SECONDS) (found 3601)"]),
    ("bad email", _set("risk_owner", "risk-team"),
     ["risk_owner: expected an email address like name@example.com (found 'risk-team')"]),
    ("zero seconds", _set("budgets/tool-calls/per", 0),
     ["budgets.tool-calls.per: expected a duration like 30s, 5m, 1h or 1d (found 0)"]),
]  # fmt: skip


def issues_of(data: dict[str, Any]) -> list[str]:
    """The issues ``broker scopes check`` prints, without their ``file:line:`` prefix."""
    _, issues = load_model_text(yaml.safe_dump(data, sort_keys=False), "m.yaml", Manifest)
    return [issue.split(": ", 1)[1] for issue in issues]


@pytest.mark.parametrize(
    ("change", "expected"), [c[1:] for c in ISSUES], ids=[c[0] for c in ISSUES]
)
def test_load_issues_name_the_path_and_the_problem(
    change: Callable[[dict[str, Any]], None], expected: list[str]
) -> None:
    """Each broken manifest gives exactly these issues: where in the document, and what."""
    assert issues_of(mutated(change)) == expected


EDGES = [
    pytest.param(_set(f"{R}/credential/ttl", 3600), id="ttl exactly at the cap"),
    pytest.param(_set("budgets/tool-calls/per", 1), id="a window of one second"),
    pytest.param(_set(WHEN, {"amount_usd": {"in": [100, 200.5]}}), id="a list operand"),
    pytest.param(_set(WHEN, {"amount_usd": {"eq": 100}}), id="a number operand"),
    pytest.param(_set(WHEN, {"any": [{"amount_usd": {"gt": 1}}, {"ticket_id": {"eq": "CS-1"}}]}),
                 id="terms inside any"),
    pytest.param(_set(f"{R}/inputs/ticket_id/domain_in", ["acme.example"]), id="a domain"),
]  # fmt: skip


@pytest.mark.parametrize("change", EDGES)
def test_values_at_the_edge_of_the_rules_load(change: Callable[[dict[str, Any]], None]) -> None:
    """Values exactly at a rule's bound, and well-typed operands, load without an issue."""
    assert issues_of(mutated(change)) == []


def test_several_problems_of_one_model_are_listed_with_their_paths() -> None:
    """Two problems of one action are reported together, each with its path, in order."""
    with pytest.raises(ValidationError) as info:
        Manifest.model_validate(mutated(_drop(f"{R}/inputs/amount_usd/min")))
    assert (
        f"cost.refunds-usd: 'inputs.amount_usd' {NO_REFUND}; "
        f"cost.refunds-usd-hourly: 'inputs.amount_usd' {NO_REFUND}"
    ) in str(info.value)


def test_a_problem_of_the_model_itself_is_placed_here() -> None:
    """A problem with an empty path (the failing model as a whole) reads "(here)", the others
    their dotted path; the issues are kept as given."""
    issues = [((), "expected a mapping"), (("any", "0"), "unknown operator")]
    problems = Problems(issues)
    assert str(problems) == "(here): expected a mapping; any.0: unknown operator"
    assert problems.issues == issues

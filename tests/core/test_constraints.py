"""Operator tables: input types, input constraints and approval condition operators."""

from __future__ import annotations

import math
import re

import pytest

from broker.core.constraints import (
    CONDITION_OPS,
    INPUT_CHECKS,
    INPUT_TYPES,
    constraints_markdown,
    domain_of,
    in_domains,
    operand_problem,
    regex_problem,
)

DOMAINS = ("acme.example", "partner.example")

DOMAIN_CASES = [
    ("jo@acme.example", True),
    ("jo@ACME.example", True),
    ("jo@eu.partner.example", True),
    ("https://acme.example/path", True),
    ("https://docs.acme.example:8443/x?y=1", True),
    ("acme.example", True),
    ("jo@evilacme.example", False),
    ("jo@acme.example.evil.example", False),
    ("jo@evil.example@acme.example", False),
    ("https://acme.example@evil.example/", False),
    ("https://evil.example\\@acme.example/", False),
    ("jo@acme.example\n", False),
    ("Jo <jo@acme.example>", False),
    ("jo@xn--acme-\u0430.example", False),
    ("jo@acme.ex\u0430mple", False),
    ("", False),
]


@pytest.mark.parametrize(("value", "ok"), DOMAIN_CASES)
def test_domain_in_accepts_only_listed_domains_and_their_subdomains(value: str, ok: bool) -> None:
    """domain_in matches the email domain or URL host exactly or as a subdomain, nothing else."""
    assert in_domains(value, DOMAINS) is ok


def test_domain_of_refuses_unclean_addresses() -> None:
    """Addresses with whitespace, quotes or backslashes have no domain at all."""
    assert domain_of("a b@acme.example") is None
    assert domain_of("jo@acme.example") == "acme.example"


TYPE_CASES = [
    ("number", 1, True),
    ("number", 1.5, True),
    ("number", True, False),
    ("number", math.nan, False),
    ("number", math.inf, False),
    ("number", "1", False),
    ("integer", 1, True),
    ("integer", 1.0, False),
    ("integer", False, False),
    ("integer", 2**53 - 1, True),
    ("integer", -(2**53 - 1), True),
    ("integer", 2**53, False),
    ("integer", -(2**53), False),
    ("number", 2**53 - 1, True),
    ("number", -(2**53), False),
    ("boolean", True, True),
    ("boolean", 1, False),
    ("string", "x", True),
    ("string", None, False),
]


@pytest.mark.parametrize(("type_name", "value", "ok"), TYPE_CASES)
def test_input_types_are_strict(type_name: str, value: object, ok: bool) -> None:
    """Bools are never numbers, floats never integers, NaN never a number; integers are exact
    up to 2**53 - 1 either way (I-JSON), and one beyond is refused."""
    assert INPUT_TYPES[type_name].check(value) is ok


CHECK_CASES = [
    ("min", 0, 0, True),
    ("min", -0.01, 0, False),
    ("max", 500, 500, True),
    ("max", 500.01, 500, False),
    ("pattern", "CS-12", "^CS-[0-9]+$", True),
    ("pattern", "CS-12\n", "^CS-[0-9]+$", False),
    ("pattern", "xCS-12", "CS-[0-9]+", False),
    ("one_of", "usd", ["usd"], True),
    ("one_of", "eur", ["usd"], False),
    ("max_length", "abc", 3, True),
    ("max_length", "abcd", 3, False),
    ("domain_in", "a@acme.example", ["acme.example"], True),
]


@pytest.mark.parametrize(("name", "value", "param", "ok"), CHECK_CASES)
def test_input_checks(name: str, value: object, param: object, ok: bool) -> None:
    """Each constraint row accepts and refuses as documented; patterns match the whole value."""
    check = INPUT_CHECKS[name]
    assert check.check(value, check.prepare(param)) is ok


OP_CASES = [
    ("eq", 1, 1, True),
    ("ne", 1, 1, False),
    ("gt", 100.01, 100, True),
    ("gt", 100, 100, False),
    ("ge", 100, 100, True),
    ("lt", 99, 100, True),
    ("le", 101, 100, False),
    ("in", "a", ["a", "b"], True),
    ("not_in", "a", ["a", "b"], False),
    ("matches", "prod-eu", "prod-.*", True),
    ("matches", "xprod-eu", "prod-.*", False),
    ("matches", 5, "5", False),
]


@pytest.mark.parametrize(("name", "value", "operand", "holds"), OP_CASES)
def test_condition_operators(name: str, value: object, operand: object, holds: bool) -> None:
    """Each condition operator row holds exactly when documented."""
    op = CONDITION_OPS[name]
    assert op.check(value, op.prepare(operand)) is holds


@pytest.mark.parametrize(
    ("name", "operand"),
    [("gt", "100"), ("gt", True), ("in", 3), ("eq", [1]), ("matches", "[")],
)
def test_bad_operands_are_explained(name: str, operand: object) -> None:
    """An operand that cannot work with its operator is a load-time problem."""
    assert operand_problem(CONDITION_OPS[name], operand) is not None


def test_regex_problem_reports_bad_patterns() -> None:
    """Bad regular expressions are caught at load, not at decision time."""
    assert regex_problem("^ok$") is None
    assert "invalid regular expression" in (regex_problem("(") or "")
    assert isinstance(INPUT_CHECKS["pattern"].prepare("a"), re.Pattern)


def test_docs_are_generated_from_the_tables() -> None:
    """The Markdown docs list every constraint and operator in the tables."""
    text = constraints_markdown()
    for name in (*INPUT_CHECKS, *CONDITION_OPS):
        assert f"`{name}`" in text


def test_constraints_tables_have_one_row_per_constraint_and_operator() -> None:
    """Two tables, constraints then operators, separated by one blank line."""
    lines = constraints_markdown().split("\n")
    n = len(INPUT_CHECKS)
    assert lines[:3] == [
        "| constraint | applies to | meaning |",
        "| --- | --- | --- |",
        "| `min` | integer, number | smallest allowed value (inclusive) |",
    ]
    assert lines[2 + n : 2 + n + 3] == [
        "",
        "| operator | applies to | meaning |",
        "| --- | --- | --- |",
    ]
    assert lines[2 + n + 3] == "| `eq` | boolean, integer, number, string | equals |"
    assert len(lines) == 2 + n + 3 + len(CONDITION_OPS) + 1
    assert lines[-1] == ""


UNCLEAN = [
    pytest.param("https:///no-host", id="URL without a host"),
    pytest.param("jo@evil_x.acme.example", id="underscore in the host"),
    pytest.param("jo@acme.example.", id="trailing dot"),
    pytest.param("jo@-acme.example", id="leading hyphen"),
]


@pytest.mark.parametrize("value", UNCLEAN)
def test_unclean_hosts_have_no_domain(value: str) -> None:
    """Only plain ASCII host names have a domain; anything else fails closed (None)."""
    assert domain_of(value) is None

"""Operator tables for input checks and approval conditions (pure, no I/O).

Every input type, input constraint and condition operator is a row in one of three tables.
The manifest models validate against these tables, the decision core compiles its checks
from them, and the docs and JSON Schema descriptions are generated from them, so a new
operator is one new row and cannot be half-supported.

Invariants: checks never raise on a value that passed its type check; patterns match the
whole value (``re.fullmatch``), so ``^CS-[0-9]+$`` does not accept ``"CS-1\\n"``; domain
checks accept only plain ASCII host names, so look-alike and userinfo tricks fail closed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

_HOST = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")
_UNSAFE_IN_ADDRESS = re.compile(r"[\s\\\"'<>\x00-\x1f\x7f]")
NUMERIC = frozenset({"integer", "number"})
STRING = frozenset({"string"})
ANY_TYPE = frozenset({"string", "integer", "number", "boolean"})


# Integers beyond this have no exact value in JavaScript and no RFC 8785 form (I-JSON).
MAX_SAFE_INTEGER = 2**53 - 1


def is_integer(value: object) -> bool:
    """JSON integers within I-JSON's exact range, never bools."""
    return type(value) is int and -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER


def is_number(value: object) -> bool:
    """JSON numbers: safe ints and finite floats, never bools."""
    return is_integer(value) or (type(value) is float and math.isfinite(value))


# -- input types ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InputType:
    name: str
    json_type: str
    description: str
    check: Callable[[object], bool]


INPUT_TYPES: Mapping[str, InputType] = MappingProxyType(
    {
        "string": InputType("string", "string", "a JSON string", lambda v: type(v) is str),
        "integer": InputType(
            "integer", "integer", "a JSON integer within +-(2**53 - 1)", is_integer
        ),
        "number": InputType("number", "number", "an int or finite float, not a bool", is_number),
        "boolean": InputType("boolean", "boolean", "true or false", lambda v: type(v) is bool),
    }
)


# -- input constraints ---------------------------------------------------------------------


def domain_of(value: str) -> str | None:
    """The host of a URL or the domain of an email address; None when neither is clean."""
    if _UNSAFE_IN_ADDRESS.search(value):
        return None
    if "://" in value:
        host = urlsplit(value).hostname or ""
    elif value.count("@") == 1:
        host = value.rsplit("@", 1)[1]
    else:
        host = value
    host = host.lower()
    return host if _HOST.fullmatch(host) else None


def in_domains(value: str, domains: tuple[str, ...]) -> bool:
    host = domain_of(value)
    if host is None:
        return False
    return any(host == d or host.endswith("." + d) for d in domains)


def valid_domain(domain: str) -> bool:
    return _HOST.fullmatch(domain) is not None and "." in domain


@dataclass(frozen=True, slots=True)
class InputCheck:
    """One constraint: ``check(value, prepared_param)`` is True when the value is acceptable."""

    name: str
    applies_to: frozenset[str]
    description: str
    failure: str  # format string with {param}
    check: Callable[[Any, Any], bool]
    prepare: Callable[[Any], Any] = lambda p: p


INPUT_CHECKS: Mapping[str, InputCheck] = MappingProxyType(
    {
        "min": InputCheck("min", NUMERIC, "smallest allowed value (inclusive)",
                          "must be >= {param}", lambda v, p: v >= p),
        "max": InputCheck("max", NUMERIC, "largest allowed value (inclusive)",
                          "must be <= {param}", lambda v, p: v <= p),
        "pattern": InputCheck("pattern", STRING, "regular expression the WHOLE value must match",
                              "must match {param}", lambda v, p: p.fullmatch(v) is not None,
                              re.compile),
        "one_of": InputCheck("one_of", ANY_TYPE, "list of the only allowed values",
                             "must be one of {param}", lambda v, p: v in p, tuple),
        "max_length": InputCheck("max_length", STRING, "longest allowed string (characters)",
                                 "must be at most {param} characters", lambda v, p: len(v) <= p),
        "domain_in": InputCheck("domain_in", STRING,
                                "email domain or URL host must be one of these or a subdomain",
                                "must be an address in {param}", in_domains, tuple),
    }
)  # fmt: skip


# -- approval condition operators ----------------------------------------------------------


def _fullmatch(value: Any, pattern: re.Pattern[str]) -> bool:
    return type(value) is str and pattern.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class ConditionOp:
    """``check(value, prepared_operand)``; ``operand`` says what the manifest must give."""

    name: str
    applies_to: frozenset[str]
    operand: str  # "scalar", "number", "list" or "regex"
    description: str
    check: Callable[[Any, Any], bool]
    prepare: Callable[[Any], Any] = lambda p: p


CONDITION_OPS: Mapping[str, ConditionOp] = MappingProxyType(
    {
        "eq": ConditionOp("eq", ANY_TYPE, "scalar", "equals", lambda v, p: v == p),
        "ne": ConditionOp("ne", ANY_TYPE, "scalar", "differs from", lambda v, p: v != p),
        "gt": ConditionOp("gt", NUMERIC, "number", "greater than", lambda v, p: v > p),
        "ge": ConditionOp("ge", NUMERIC, "number", "greater than or equal", lambda v, p: v >= p),
        "lt": ConditionOp("lt", NUMERIC, "number", "less than", lambda v, p: v < p),
        "le": ConditionOp("le", NUMERIC, "number", "less than or equal", lambda v, p: v <= p),
        "in": ConditionOp("in", ANY_TYPE, "list", "is one of", lambda v, p: v in p, tuple),
        "not_in": ConditionOp("not_in", ANY_TYPE, "list", "is none of",
                              lambda v, p: v not in p, tuple),
        "matches": ConditionOp("matches", STRING, "regex", "whole value matches regex",
                               _fullmatch, re.compile),
    }
)  # fmt: skip


def operand_problem(op: ConditionOp, operand: object) -> str | None:
    """Why ``operand`` cannot be used with ``op``, or None when it can."""
    if op.operand == "number" and not is_number(operand):
        return f"'{op.name}' needs a number, found {operand!r}"
    if op.operand == "list" and not isinstance(operand, list | tuple):
        return f"'{op.name}' needs a list, found {operand!r}"
    if op.operand == "scalar" and isinstance(operand, list | dict):
        return f"'{op.name}' needs a single value, found {operand!r}"
    if op.operand == "regex":
        return regex_problem(operand)
    return None


def regex_problem(pattern: object) -> str | None:
    """Why ``pattern`` is not a usable regular expression, or None."""
    if not isinstance(pattern, str):
        return f"expected a regular expression string, found {pattern!r}"
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"invalid regular expression {pattern!r}: {exc}"
    return None


# -- approval condition structure ----------------------------------------------------------

Path = tuple[str, ...]

CONDITION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "input name -> {operator: operand}; all must hold. `any: [conditions]` "
    "holds when one of them holds. An empty condition always holds.",
    "properties": {"any": {"type": "array", "items": {"type": "object"}, "minItems": 1}},
    "additionalProperties": {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": False,
        "properties": {n: {"description": op.description} for n, op in CONDITION_OPS.items()},
    },
}


def condition_problems(when: object, path: Path = ()) -> Iterator[tuple[Path, str]]:
    """Structural problems in an approval condition (operators, operands, nesting)."""
    if not isinstance(when, dict):
        yield path, f"expected a mapping of input name to operators, found {when!r}"
        return
    for key, spec in when.items():
        if key == "any":
            yield from _any_problems(spec, (*path, "any"))
        elif not isinstance(spec, dict) or not spec:
            yield (*path, str(key)), f"expected a mapping like {{gt: 100}}, found {spec!r}"
        else:
            yield from _ops_problems(spec, (*path, str(key)))


def _any_problems(items: object, path: Path) -> Iterator[tuple[Path, str]]:
    if not isinstance(items, list) or not items:
        yield path, "'any' needs a non-empty list of conditions"
        return
    for i, item in enumerate(items):
        yield from condition_problems(item, (*path, str(i)))


def _ops_problems(spec: dict[Any, Any], path: Path) -> Iterator[tuple[Path, str]]:
    for op_name, operand in spec.items():
        op = CONDITION_OPS.get(op_name)
        if op is None:
            yield (
                (*path, str(op_name)),
                f"unknown operator; expected one of {', '.join(CONDITION_OPS)}",
            )
        elif why := operand_problem(op, operand):
            yield (*path, str(op_name)), why


def condition_terms(when: dict[str, Any], path: Path = ()) -> Iterator[tuple[Path, str, str, Any]]:
    """Every (path, input name, operator, operand) a well-formed condition mentions."""
    for key, spec in when.items():
        if key == "any":
            for i, item in enumerate(spec):
                yield from condition_terms(item, (*path, "any", str(i)))
        else:
            for op_name, operand in spec.items():
                yield (*path, key, op_name), key, op_name, operand


def constraints_markdown() -> str:
    """Markdown tables of types, constraints and condition operators, for the docs."""
    lines = ["| constraint | applies to | meaning |", "| --- | --- | --- |"]
    for c in INPUT_CHECKS.values():
        lines.append(f"| `{c.name}` | {', '.join(sorted(c.applies_to))} | {c.description} |")
    lines += ["", "| operator | applies to | meaning |", "| --- | --- | --- |"]
    for o in CONDITION_OPS.values():
        lines.append(f"| `{o.name}` | {', '.join(sorted(o.applies_to))} | {o.description} |")
    return "\n".join(lines) + "\n"

"""The manifest's value types: durations and TTLs, names, emails, scalars, and the error
that carries several problems with their paths. Pure; ``broker.core.manifest`` builds the
models from them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Strict,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    WithJsonSchema,
)

from broker.core.canonical import jcs

MAX_CREDENTIAL_TTL_SECONDS = 3600
DEFAULT_APPROVAL_EXPIRY_SECONDS = 900
RESERVED_INPUT_NAMES = frozenset({"any"})

Path = tuple[str, ...]


class Problems(ValueError):
    """Several cross-field problems at once, each with its path below the failing model."""

    def __init__(self, issues: Sequence[tuple[Path, str]]) -> None:
        super().__init__("; ".join(f"{'.'.join(p) or '(here)'}: {m}" for p, m in issues))
        self.issues = list(issues)


def canonical_json(value: object) -> bytes:
    """The one JSON encoding used for hashing: RFC 8785 (JCS), as for the input binding."""
    return jcs(value)


# -- scalar types --------------------------------------------------------------------------

_DURATION = re.compile(r"([1-9][0-9]{0,8})([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def parse_duration(value: object) -> int:
    """``30s``/``5m``/``1h``/``1d`` (or a positive int of seconds) to int seconds."""
    if type(value) is int and value > 0:
        return value
    if isinstance(value, str) and (m := _DURATION.fullmatch(value)):
        return int(m[1]) * _UNIT_SECONDS[m[2]]
    raise ValueError("expected a duration like 30s, 5m, 1h or 1d")


def _cap_ttl(seconds: int) -> int:
    if seconds > MAX_CREDENTIAL_TTL_SECONDS:
        raise ValueError(
            f"ttl of {seconds}s exceeds the broker-wide maximum of "
            f"{MAX_CREDENTIAL_TTL_SECONDS}s (MAX_CREDENTIAL_TTL_SECONDS)"
        )
    return seconds


def _email(value: str) -> str:
    if not _EMAIL.fullmatch(value):
        raise ValueError("expected an email address like name@example.com")
    return value


def _listify(value: object) -> object:
    return [value] if isinstance(value, dict) else value


_DURATION_SCHEMA = {
    "anyOf": [
        {"type": "string", "pattern": "^[1-9][0-9]{0,8}[smhd]$"},
        {"type": "integer", "minimum": 1},
    ],
    "description": "a duration: 30s, 5m, 1h, 1d (or integer seconds)",
}
Duration = Annotated[int, BeforeValidator(parse_duration), WithJsonSchema(_DURATION_SCHEMA)]
Ttl = Annotated[Duration, AfterValidator(_cap_ttl)]
Email = Annotated[
    str,
    AfterValidator(_email),
    WithJsonSchema({"type": "string", "pattern": r"^[^@\s]+@[^@\s]+\.[^@\s]+$"}),
]
Number = Annotated[float, Strict()]  # strict: ints accepted, bools and strings refused
# Lower case only: an agent has one spelling, in Vault paths, certificates and tokens alike.
AGENT_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{1,62}$"
AgentId = Annotated[str, StringConstraints(pattern=AGENT_ID_PATTERN)]
# Action names need a dot, which keeps them apart from the agent-wide rate key "agent".
ActionName = Annotated[
    str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)+$", max_length=128)
]
BudgetName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
InputName = Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]{0,62}$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Scalar = Annotated[
    StrictStr | StrictInt | StrictFloat | StrictBool,
    WithJsonSchema({"type": ["string", "number", "boolean"]}),
]

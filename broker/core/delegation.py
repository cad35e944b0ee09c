"""Delegated grants: what a parent agent hands a named sub-agent, and the actor chain (pure).

A grant is a slice of its parent's scope (the root agent's manifest, or the grant above it):
fewer actions, tighter inputs, shorter TTLs, budgets carved out of what the parent has left.
``broker.scopes.delegation`` checks that a request only narrows and builds the grant's scope
as a ``Manifest``; the sidecar (``broker.sidecar.delegation``) decides every exchange against
that scope with the same ``decide`` as any request.

Credentials minted from a grant speak for the root agent (``sub``; its certificate signs them)
and carry the actors in RFC 8693's ``act`` claim, the current actor outermost:
``{"sub": "child", "grant": "dg_..", "act": {"sub": "parent-sub-agent", "grant": "dg_.."}}``.
Every grant id of the chain is in the token, so revoking a grant refuses every token minted
from it or from any grant below it, without listing the descendants."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, StringConstraints

from broker.core.manifest import Manifest
from broker.core.manifesttypes import (
    AGENT_ID_PATTERN,
    ActionName,
    BudgetName,
    Duration,
    InputName,
    Number,
    Scalar,
    Ttl,
)

GRANT_PREFIX = "dg_"
GRANT_TOKEN_TYPE = "urn:agent-credential-broker:token-type:grant"  # noqa: S105 - a URI
EXCHANGE_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URI
MAX_CHAIN = 8  # the manifest's max_depth is at most this; a longer act claim is refused
GRANT_ID_PATTERN = r"^dg_[0-9a-f]{24}$"


class GrantReason(enum.StrEnum):
    """Stable codes for a refused grant request or exchange."""

    delegation_not_allowed = "delegation_not_allowed"  # the manifest has no delegation section
    delegation_widens = "delegation_widens"  # an action, constraint or TTL the parent lacks
    delegation_too_deep = "delegation_too_deep"
    delegation_ttl_too_long = "delegation_ttl_too_long"
    delegation_budget_exceeded = "delegation_budget_exceeded"  # more than the parent has left
    invalid_grant_request = "invalid_grant_request"  # the narrowing itself does not validate
    grant_invalid = "grant_invalid"  # unknown, malformed or wrong secret
    grant_expired = "grant_expired"
    grant_revoked = "grant_revoked"


GRANT_HTTP_STATUS: Mapping[GrantReason, int] = MappingProxyType(
    dict.fromkeys(GrantReason, 403)
    | {GrantReason.grant_invalid: 401, GrantReason.invalid_grant_request: 400}
)


@dataclass(frozen=True)
class GrantRefusal:
    """A refused grant: the code, the rule of the parent's scope it would break, and why."""

    reason: GrantReason
    rule: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"reason": self.reason.value, "rule": self.rule, "detail": self.detail}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InputNarrowing(_Frozen):
    """Constraints to set on one of the parent's inputs; unnamed ones stay the parent's."""

    min: Number | None = None
    max: Number | None = None
    pattern: str | None = None
    one_of: tuple[Scalar, ...] | None = Field(default=None, min_length=1)
    max_length: Annotated[int, Strict()] | None = Field(default=None, ge=0)
    domain_in: tuple[str, ...] | None = Field(default=None, min_length=1)


class ActionNarrowing(_Frozen):
    """One of the parent's actions, as the sub-agent gets it."""

    inputs: dict[InputName, InputNarrowing] = Field(default_factory=dict)
    ttl: Ttl | None = Field(default=None, description="the credential TTL; the parent's if unset")


class GrantRequest(_Frozen):
    """``POST /v1/delegations``: a grant for ``sub_agent``, below ``parent_grant`` if given."""

    sub_agent: Annotated[str, StringConstraints(pattern=AGENT_ID_PATTERN)]
    actions: dict[ActionName, ActionNarrowing] = Field(min_length=1)
    budgets: dict[BudgetName, Annotated[float, Strict(), Field(gt=0)]] = Field(
        default_factory=dict, description="amounts carved out of the parent's remaining budget"
    )
    ttl: Duration
    parent_grant: str | None = Field(default=None, repr=False, max_length=256)


@dataclass(frozen=True)
class Actor:
    """One link of the chain: the sub-agent and the grant it holds."""

    sub: str
    grant: str


@dataclass
class Grant:
    """A live grant. ``chain`` runs from the root's first grant down to this one."""

    id: str
    agent: str  # the root agent: every credential speaks for it
    sub_agent: str
    parent: str | None  # the parent grant's id, None below the root agent itself
    depth: int
    chain: tuple[Actor, ...]
    issued_at: float
    expires_at: float
    carved: dict[str, float]
    scope: Manifest = field(repr=False)
    secret_digest: str = field(repr=False, default="")
    revoked: bool = False

    def remaining(self, now: float) -> float:
        return max(self.expires_at - now, 0.0)


def actor_claim(chain: tuple[Actor, ...]) -> dict[str, Any]:
    """The RFC 8693 ``act`` claim for ``chain`` (root's grant first): current actor outermost."""
    claim: dict[str, Any] | None = None
    for actor in chain:
        claim = {"sub": actor.sub, "grant": actor.grant, **({"act": claim} if claim else {})}
    if claim is None:
        raise ValueError("an actor chain has at least one actor")
    return claim


def actors_of(claim: Any) -> tuple[Actor, ...]:
    """The chain back from an ``act`` claim, root's grant first; ValueError when malformed."""
    found: list[Actor] = []
    while claim is not None:
        if not isinstance(claim, Mapping) or len(found) >= MAX_CHAIN:
            raise ValueError("act must be a chain of at most 8 objects")
        sub, grant = claim.get("sub"), claim.get("grant")
        if not isinstance(sub, str) or not isinstance(grant, str):
            raise ValueError("each act level needs string sub and grant")
        found.append(Actor(sub, grant))
        claim = claim.get("act")
    return tuple(reversed(found))

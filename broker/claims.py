"""Action-token claims (pure). One place defines what a token says and how it is typed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ISSUER = "urn:agent-credential-broker"
TOKEN_TYPE = "agent-action+jwt"  # noqa: S105 - a JWT "typ", not a secret
ALGORITHM = "EdDSA"
REQUIRED_CLAIMS = (
    "iss",
    "sub",
    "aud",
    "act",
    "acc",
    "pv",
    "ibh",
    "iat",
    "nbf",
    "exp",
    "jti",
    "gen",
)


@dataclass(frozen=True)
class ActionClaims:
    """A verified token's claims, typed."""

    agent: str
    audience: str
    action: str
    accountable: str
    policy_version: str
    inputs_hash: str
    issued_at: int
    expires_at: int
    jti: str
    generation: int

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> ActionClaims:
        return cls(
            agent=str(payload["sub"]),
            audience=str(payload["aud"]),
            action=str(payload["act"]),
            accountable=str(payload["acc"]),
            policy_version=str(payload["pv"]),
            inputs_hash=str(payload["ibh"]),
            issued_at=int(payload["iat"]),
            expires_at=int(payload["exp"]),
            jti=str(payload["jti"]),
            generation=_integer(payload["gen"]),
        )


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expected an integer claim")
    return value


def action_payload(
    *,
    agent: str,
    audience: str,
    action: str,
    accountable: str,
    policy_version: str,
    inputs_hash: str,
    manifest_hash: str,
    now: int,
    ttl: int,
    jti: str,
    generation: int,
) -> dict[str, Any]:
    return {
        "iss": ISSUER,
        "sub": agent,
        "aud": audience,
        "act": action,
        "acc": accountable,
        "pv": policy_version,
        "mh": manifest_hash,
        "ibh": inputs_hash,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": jti,
        "gen": generation,
    }

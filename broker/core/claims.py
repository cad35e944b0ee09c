"""Action-token claims (pure). One place defines what a token says and how it is typed.

Tokens follow the JWT access-token profile of RFC 9068: header ``typ: at+jwt``; claims
``iss``, ``sub`` (the agent), ``aud`` (a gateway name or an RFC 8707 resource URI),
``client_id`` (the agent again: it is the OAuth client acting for itself), ``iat``, ``exp``
and ``jti``. Ours follow as private claims: ``action``, ``acc`` (the accountable human),
``pv`` (policy version), ``mh`` (manifest hash), ``ibh`` (the input binding, see
``broker.core.canonical``), ``gen`` (signing-key generation) and, when the issuer publishes a
status list, ``status`` (draft-ietf-oauth-status-list). A token bound to its holder's key
carries ``cnf: {"jkt": thumbprint}`` (RFC 9449, see ``broker.core.dpop``). A token minted from
a delegated grant carries RFC 8693's ``act`` (``broker.core.delegation``): the sub-agents
acting for ``sub``. The action is not called ``act``:
RFC 8693 reserves ``act`` for the actor of a delegated token."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.core.delegation import Actor, actors_of

DEFAULT_ISSUER = "urn:agent-credential-broker"  # when no issuer URL is configured
TOKEN_TYPE = "at+jwt"  # noqa: S105 - a JWT "typ" (RFC 9068), not a secret
EDDSA = "EdDSA"
ES256 = "ES256"
ALGORITHMS = (EDDSA, ES256)  # the allowlist: every verifier refuses any other "alg"
ALGORITHM = EDDSA  # the default, for manifests that name none
REQUIRED_CLAIMS = (
    "iss",
    "sub",
    "aud",
    "client_id",
    "action",
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
    status: StatusRef | None = None
    key_thumbprint: str | None = None  # cnf.jkt: the token is usable only with a DPoP proof
    actors: tuple[Actor, ...] = ()  # from ``act``: the delegation chain, root's grant first

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> ActionClaims:
        if payload["client_id"] != payload["sub"]:
            raise ValueError("client_id must name the agent, as sub does")
        return cls(
            agent=str(payload["sub"]),
            audience=str(payload["aud"]),
            action=str(payload["action"]),
            accountable=str(payload["acc"]),
            policy_version=str(payload["pv"]),
            inputs_hash=str(payload["ibh"]),
            issued_at=int(payload["iat"]),
            expires_at=int(payload["exp"]),
            jti=str(payload["jti"]),
            generation=_integer(payload["gen"]),
            status=StatusRef.from_claim(payload["status"]) if "status" in payload else None,
            key_thumbprint=_jkt(payload["cnf"]) if "cnf" in payload else None,
            actors=actors_of(payload.get("act")),
        )


def _jkt(cnf: Any) -> str:
    jkt = cnf.get("jkt") if isinstance(cnf, Mapping) else None
    if not isinstance(jkt, str) or not jkt:
        raise ValueError("cnf must hold jkt, a key thumbprint")
    return jkt


@dataclass(frozen=True)
class StatusRef:
    """Where a token's revocation bit lives: ``{"status_list": {"idx": n, "uri": url}}``."""

    uri: str
    index: int

    @classmethod
    def from_claim(cls, claim: Any) -> StatusRef:
        ref = claim.get("status_list") if isinstance(claim, Mapping) else None
        if not isinstance(ref, Mapping) or not isinstance(ref.get("uri"), str):
            raise ValueError("status must hold status_list with uri and idx")
        return cls(uri=ref["uri"], index=_integer(ref.get("idx")))

    def to_claim(self) -> dict[str, Any]:
        return {"status_list": {"idx": self.index, "uri": self.uri}}


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expected an integer claim")
    return value


def action_payload(
    *,
    issuer: str,
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
    status: StatusRef | None = None,
    jkt: str | None = None,
    actor: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    payload = {
        "iss": issuer,
        "sub": agent,
        "aud": audience,
        "client_id": agent,
        "action": action,
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
    if status is not None:
        payload["status"] = status.to_claim()
    if jkt is not None:
        payload["cnf"] = {"jkt": jkt}
    if actor is not None:
        payload["act"] = dict(actor)
    return payload

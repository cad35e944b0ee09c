"""A credential as the agent receives it, its secret fields kept out of its repr."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeGuard

from broker.client.errors import BrokerClientError

__all__ = ["Credential"]


_PUBLIC_FIELDS = ("kind", "credential_id", "expires_at", "ttl")


@dataclass(frozen=True)
class Credential:
    """A credential as the agent receives it. ``secret`` holds every other field the broker
    sent (``token``, ``username``/``password``, ``lease_id``...) and is never in the repr."""

    kind: str
    credential_id: str
    expires_at: int
    ttl: int
    secret: Mapping[str, Any] = field(repr=False, hash=False)
    decision: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({}), repr=False, hash=False, compare=False
    )

    @classmethod
    def from_json(cls, doc: Any, decision: Any = None) -> Credential:
        if not isinstance(doc, dict):
            raise BrokerClientError("the broker allowed the action but sent no credential")
        kind, cid, expires_at, ttl = (doc.get(name) for name in _PUBLIC_FIELDS)
        if not (
            isinstance(kind, str) and isinstance(cid, str) and _number(expires_at) and _number(ttl)
        ):
            raise BrokerClientError("the broker sent a credential without kind, id, expiry or ttl")
        secret = {k: v for k, v in doc.items() if k not in _PUBLIC_FIELDS}
        return cls(
            kind=kind,
            credential_id=cid,
            expires_at=int(expires_at),
            ttl=int(ttl),
            secret=MappingProxyType(secret),
            decision=MappingProxyType(dict(decision) if isinstance(decision, dict) else {}),
        )

    def _secret_str(self, name: str) -> str | None:
        value = self.secret.get(name)
        return value if isinstance(value, str) else None

    @property
    def token(self) -> str | None:
        return self._secret_str("token")

    @property
    def username(self) -> str | None:
        return self._secret_str("username")

    @property
    def password(self) -> str | None:
        return self._secret_str("password")

    @property
    def lease_id(self) -> str | None:
        return self._secret_str("lease_id")


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

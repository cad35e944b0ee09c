"""Control state shared through Vault: kill switches, revocations, key generations (pure).

Two documents in the broker's KV mount: ``control/global`` (``killed_all``,
``revoked_before``, ``signing_generation``, ``min_generation``) and one per agent,
``control/agents/<agent>`` (``killed``, ``reason``, ``by``, ``at``, ``revoked_before``,
``revoked_before_action``), and ``control/revoked`` (``jtis``: credential id to expiry, for
single-token revocation; ``grants``: delegated grant id to expiry, ``broker revoke --grant``). Revoked delegated grants live in ``delegations/<agent>`` (``revoked``:
grant id to expiry), written by the agent's own sidecar (``broker.sidecar.delegation``). Every sidecar polls them; one runbook command writes them, with
check-and-set, so it reaches every sidecar and loses no other command's write. Missing
documents mean "nothing revoked".

Values are typed: a flag is a JSON boolean, a time a JSON number. A value of another type
(``bao kv patch ... killed_all=false`` stores the *string* "false") is refused with an error
naming the document, the field and what was found, never coerced: ``bool("false")`` is true."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.core.claims import ActionClaims
from broker.core.errors import ControlStateInvalid

GLOBAL_PATH = "control/global"
# Bumped after every control write (``broker.vault.control.control_written``): its KV
# version is all an idle sidecar reads on most polls.
VERSION_PATH = "control/version"
REVOKED_PATH = "control/revoked"  # {"jtis": {credential id: expiry}}, shared by all agents
DELEGATIONS_DIR = "delegations"
FIX_HINT = "write control state with `broker kill`, `broker revive` or `broker revoke`"


def agent_path(agent: str) -> str:
    """Agent ids are lower case; a name in any other case finds the same document, so a
    kill or revocation cannot be stepped around by changing the case of a name."""
    return f"control/agents/{agent.lower()}"


def delegations_path(agent: str) -> str:
    return f"{DELEGATIONS_DIR}/{agent.lower()}"


def _bad(path: str, key: str, expected: str, found: Any) -> ControlStateInvalid:
    shown = f"the string {found!r}" if isinstance(found, str) else repr(found)[:60]
    return ControlStateInvalid(
        f"control state {path}: {key} must be {expected}, found {shown} ({FIX_HINT})"
    )


def flag(doc: Mapping[str, Any], path: str, key: str) -> bool:
    value = doc.get(key, False)
    if not isinstance(value, bool):
        raise _bad(path, key, "true or false (a JSON boolean)", value)
    return value


def number(doc: Mapping[str, Any], path: str, key: str, default: float = 0.0) -> float:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(path, key, "a number", value)
    return float(value)


def integer(doc: Mapping[str, Any], path: str, key: str, default: int) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(path, key, "an integer", value)
    return value


def text(doc: Mapping[str, Any], path: str, key: str) -> str:
    value = doc.get(key, "")
    if not isinstance(value, str):
        raise _bad(path, key, "a string", value)
    return value


def times(doc: Mapping[str, Any], path: str, key: str) -> dict[str, float]:
    """A map of names to times (``revoked_before_action``, ``jtis``)."""
    value = doc.get(key) or {}
    if not isinstance(value, dict):
        raise _bad(path, key, "a map of names to numbers", value)
    return {str(k): number(value, f"{path}.{key}", str(k)) for k in value}


@dataclass(frozen=True)
class ControlState:
    agent: str
    killed: bool = False
    kill_reason: str = ""
    revoked_before: float = 0.0
    revoked_jtis: frozenset[str] = field(default_factory=frozenset)
    revoked_before_action: Mapping[str, float] = field(default_factory=dict)
    signing_generation: int = 1
    min_generation: int = 0
    revoked_grants: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_docs(
        cls,
        agent: str,
        global_doc: Mapping[str, Any] | None,
        agent_doc: Mapping[str, Any] | None,
        revoked_doc: Mapping[str, Any] | None = None,
        delegations_doc: Mapping[str, Any] | None = None,
    ) -> ControlState:
        """Raises ``ControlStateInvalid`` for a mistyped value (the reader fails closed)."""
        g, gp = global_doc or {}, GLOBAL_PATH
        a, ap = agent_doc or {}, agent_path(agent)
        killed_all = flag(g, gp, "killed_all")
        reason = text(g, gp, "reason") if killed_all else text(a, ap, "reason")
        return cls(
            agent=agent,
            killed=flag(a, ap, "killed") or killed_all,
            kill_reason=reason,
            revoked_before=max(number(g, gp, "revoked_before"), number(a, ap, "revoked_before")),
            revoked_jtis=frozenset(times(revoked_doc or {}, REVOKED_PATH, "jtis")),
            revoked_before_action=times(a, ap, "revoked_before_action"),
            signing_generation=integer(g, gp, "signing_generation", 1),
            min_generation=integer(g, gp, "min_generation", 0),
            # The agent's own revocations, and security's (``broker revoke --grant``).
            revoked_grants=frozenset(
                times(delegations_doc or {}, delegations_path(agent), "revoked")
            )
            | frozenset(times(revoked_doc or {}, REVOKED_PATH, "grants")),
        )

    def token_revoked(self, claims: ActionClaims) -> str | None:
        """Why a token of this agent is no longer acceptable, or None."""
        if self.killed:
            return f"agent {claims.agent} is disabled"
        if claims.jti in self.revoked_jtis:
            return f"token {claims.jti} was revoked"
        if revoked := [a for a in claims.actors if a.grant in self.revoked_grants]:
            return f"delegated grant {revoked[0].grant} (to {revoked[0].sub}) was revoked"
        if claims.issued_at <= self.revoked_before:
            return f"tokens of {claims.agent} issued before {int(self.revoked_before)} were revoked"
        if claims.issued_at <= self.revoked_before_action.get(claims.action, 0.0):
            return f"tokens of {claims.agent} for {claims.action} issued before then were revoked"
        return self._generation_revoked(claims)

    def _generation_revoked(self, claims: ActionClaims) -> str | None:
        if claims.generation < self.min_generation:
            return f"signing key generation {claims.generation} was revoked"
        return None

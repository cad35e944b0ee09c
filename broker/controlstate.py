"""Control state shared through Vault: kill switches, revocations, key generations (pure).

Two documents in the broker's KV mount: ``control/global`` (``killed_all``,
``revoked_before``, ``signing_generation``, ``min_generation``) and one per agent,
``control/agents/<agent>`` (``killed``, ``reason``, ``by``, ``at``, ``revoked_before``,
``revoked_before_action``), and
``control/revoked`` (``jtis``: credential id to expiry, for single-token revocation). Every sidecar polls both; one runbook command
writes them, so it reaches every sidecar. Missing documents mean "nothing revoked"."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.claims import ActionClaims

GLOBAL_PATH = "control/global"
REVOKED_PATH = "control/revoked"  # {"jtis": {credential id: expiry}}, shared by all agents


def agent_path(agent: str) -> str:
    """Agent ids are lower case; a name in any other case finds the same document, so a
    kill or revocation cannot be stepped around by changing the case of a name."""
    return f"control/agents/{agent.lower()}"


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

    @classmethod
    def from_docs(
        cls,
        agent: str,
        global_doc: Mapping[str, Any] | None,
        agent_doc: Mapping[str, Any] | None,
        revoked_doc: Mapping[str, Any] | None = None,
    ) -> ControlState:
        g = global_doc or {}
        a = agent_doc or {}
        r = revoked_doc or {}
        killed_all = bool(g.get("killed_all"))
        reason = str(g.get("reason", "")) if killed_all else str(a.get("reason", ""))
        return cls(
            agent=agent,
            killed=killed_all or bool(a.get("killed")),
            kill_reason=reason,
            revoked_before=max(
                float(g.get("revoked_before", 0)), float(a.get("revoked_before", 0))
            ),
            revoked_jtis=frozenset((r.get("jtis") or {}).keys()),
            revoked_before_action={
                str(k): float(v) for k, v in (a.get("revoked_before_action") or {}).items()
            },
            signing_generation=int(g.get("signing_generation", 1)),
            min_generation=int(g.get("min_generation", 0)),
        )

    def token_revoked(self, claims: ActionClaims) -> str | None:
        """Why a token of this agent is no longer acceptable, or None."""
        if self.killed:
            return f"agent {claims.agent} is disabled"
        if claims.jti in self.revoked_jtis:
            return f"token {claims.jti} was revoked"
        if claims.issued_at <= self.revoked_before:
            return f"tokens of {claims.agent} issued before {int(self.revoked_before)} were revoked"
        if claims.issued_at <= self.revoked_before_action.get(claims.action, 0.0):
            return f"tokens of {claims.agent} for {claims.action} issued before then were revoked"
        if claims.generation < self.min_generation:
            return f"signing key generation {claims.generation} was revoked"
        return None

"""``broker revoke --grant``: security revokes a delegated grant, and so every grant below it.

An agent's sidecar revokes its own grants in ``delegations/<agent>``, a document that the
agent's own identity may write. The operator's revocation goes to ``control/revoked``
(``grants``: grant id to expiry) instead. Only operators may write there, so someone holding
the agent's login cannot undo it. Every sidecar refuses the grant's exchanges, and every
verifier refuses tokens whose ``act`` chain names it."""

from __future__ import annotations

import re
from typing import Any

from broker.core.controlstate import REVOKED_PATH, delegations_path, times
from broker.core.delegation import GRANT_ID_PATTERN
from broker.ops.controlbase import ActionReport, ControlBase, given, usage
from broker.vault.delegations import live_grants
from broker.vault.kv import kv_read


def revoke_grant(control: ControlBase, grant_id: str, reason: str) -> ActionReport:
    gid = given(grant_id, "--grant")
    if re.fullmatch(GRANT_ID_PATTERN, gid) is None:
        raise usage(f"--grant {gid!r} is not a grant id (dg_ and 24 hex digits)", "unknown_grant")
    now = control.clock()
    owner, grant = _find(control, gid, now)
    report = ActionReport(
        command=f"revoke --grant {gid}", operator=control.operator.identity, started=now
    )

    def add(doc: dict[str, Any]) -> dict[str, Any]:
        kept = {k: v for k, v in times(doc, REVOKED_PATH, "grants").items() if v > now}
        return {"grants": {**kept, gid: float(grant["expires_at"])}}

    control._update(REVOKED_PATH, add)
    chain = " > ".join([owner, *(str(a.get("sub")) for a in grant.get("chain") or [])])
    report.say(
        f"{gid} ({chain}): revoked with every grant below it ({reason}); its tokens are "
        "refused by every sidecar and verifier"
    )
    report.revoked += 1
    report.took = control.clock() - now
    return report


def _find(control: ControlBase, gid: str, now: float) -> tuple[str, dict[str, Any]]:
    for agent in control.agents():
        grants = live_grants(kv_read(control.client, delegations_path(agent), control.addr), now)
        if gid in grants:
            return agent, grants[gid]
    raise usage(f"--grant {gid}: no agent holds such a live grant", "unknown_grant")

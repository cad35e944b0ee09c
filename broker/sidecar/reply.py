"""What the sidecar's service answers the HTTP layer, and the shape of a refusal."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from broker.core.decision import Decision
from broker.core.reasons import REASON_HTTP_STATUS, Outcome, ReasonCode


@dataclass(frozen=True)
class Reply:
    """An answer for the HTTP layer: status, JSON body, extra headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def refusal(
    decision: Decision, reason: ReasonCode, detail: str, retry_after: float | None
) -> Reply:
    body = {"outcome": Outcome.deny.value, "reason": reason.value, "detail": detail}
    body["policy_version"] = decision.policy_version
    status = REASON_HTTP_STATUS.get(reason, 403)
    if retry_after is None and status in (429, 503):
        retry_after = 1.0  # these refusals are temporary by nature: say when to come back
    headers = {"Retry-After": str(max(1, int(retry_after + 0.999)))} if retry_after else {}
    return Reply(status, body, headers)

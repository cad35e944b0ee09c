"""Reason codes: the HTTP status of each outcome, and the generated docs table."""

from __future__ import annotations

import pytest

from broker.core.reasons import (
    REASON_HTTP_STATUS,
    Outcome,
    ReasonCode,
    http_status,
    reasons_markdown,
)

STATUSES = [
    (None, Outcome.allow, 200),
    (ReasonCode.approval_required, Outcome.allow, 200),
    (None, Outcome.pending_approval, 202),
    (None, Outcome.deny, 403),
    (ReasonCode.approval_required, Outcome.pending_approval, 202),
    (ReasonCode.rate_limited, Outcome.deny, 429),
    (ReasonCode.backend_unavailable, Outcome.deny, 503),
]


@pytest.mark.parametrize(("reason", "outcome", "status"), STATUSES)
def test_http_status(reason: ReasonCode | None, outcome: Outcome, status: int) -> None:
    """Allow is 200 whatever the reason; otherwise the reason's status, or 202/403 without one."""
    assert http_status(reason, outcome) == status


def test_reasons_table_has_one_row_per_code() -> None:
    """The reasons table: a header, then one row per code with its status and meaning."""
    lines = reasons_markdown().split("\n")
    assert lines[:3] == [
        "| code | HTTP | meaning |",
        "| --- | --- | --- |",
        "| `unknown_action` | 403 | The action is not declared in the agent's scope manifest. |",
    ]
    assert len(lines) == 2 + len(ReasonCode) + 1
    assert lines[-1] == ""
    assert all(f"| `{c}` | {REASON_HTTP_STATUS[c]} |" in reasons_markdown() for c in ReasonCode)

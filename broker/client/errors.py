"""The errors of the agents' client: one tree, rooted at ``BrokerClientError`` (drawn in
``broker.client``). Each carries what the agent needs to act: the reason code, the approval
id, how long to wait."""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "BrokerClientError",
    "BrokerUnavailable",
    "Denied",
    "PendingApproval",
    "RateLimited",
]


class BrokerClientError(Exception):
    """Root of every error this client raises."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Denied(BrokerClientError):
    """The broker refused the action; ``reason`` is a stable reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class RateLimited(Denied):
    """A rate or concurrency limit refused the action; try again after ``retry_after`` s."""

    def __init__(self, reason: str, detail: str, retry_after: float | None) -> None:
        super().__init__(reason, detail)
        self.retry_after = retry_after


class PendingApproval(BrokerClientError):
    """A human must approve first; redeem ``approval_id`` later (``wait_for_approval``)."""

    def __init__(self, approval_id: str, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.approval_id = approval_id
        self.reason = reason

    def __str__(self) -> str:
        return f"approval {self.approval_id} pending ({self.reason}): {self.detail}"


class BrokerUnavailable(BrokerClientError):
    """The sidecar or its backend cannot serve now; worth retrying after ``retry_after``."""

    def __init__(self, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class BadRequest(BrokerClientError):
    """The request itself is wrong (unknown field, bad id...); retrying will not help."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"

"""What the three-layer report says: throughput, integrity and trust, per agent and per action.

Plain frozen values, built by ``broker.audit.report`` from the trail and read by the CLI, the
HTML page and the JSON output (``Report.to_json``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ActionReport", "AgentReport", "Integrity", "Layers", "Report", "Throughput", "Trust"]


@dataclass(frozen=True)
class Throughput:
    decisions: int
    by_outcome: dict[str, int]
    credentials_issued: int
    outcomes_reported: dict[str, int]
    ok_outcomes: int
    cost_total: dict[str, float]
    cost_per_ok: dict[str, float]


@dataclass(frozen=True)
class Integrity:
    refusals: int
    refusals_by_reason: dict[str, int]
    errors: int
    rollbacks: int
    approvals: dict[str, int]
    approval_denials: int
    revocations: int
    kills: int


@dataclass(frozen=True)
class Trust:
    auto_executed: int
    approved: int
    auto_share: float | None
    approved_share: float | None
    overrides: int
    override_rate: float | None
    audit_complete: int
    audit_completeness: float | None
    missing_outcome: tuple[str, ...]
    missing_decision: tuple[str, ...]


@dataclass(frozen=True)
class Layers:
    throughput: Throughput
    integrity: Integrity
    trust: Trust


@dataclass(frozen=True)
class ActionReport:
    action: str
    layers: Layers


@dataclass(frozen=True)
class AgentReport:
    agent: str
    total: Layers
    actions: tuple[ActionReport, ...]


@dataclass(frozen=True)
class Report:
    generated_at: str
    window_start: str | None
    records: int
    agents: tuple[AgentReport, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

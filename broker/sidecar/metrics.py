"""Prometheus metrics for one sidecar: the live form of the three metric layers.

Each ``SidecarMetrics`` owns its own ``CollectorRegistry``, never the process-wide default, so
several sidecars (``broker up``) and many tests can live in one process without colliding.

Label values are bounded: ``outcome`` and ``reason`` are the enums in ``broker.core.reasons``,
``agent`` is the sidecar's one agent, ``action`` and ``budget`` are names from the manifest
(kept current when a new manifest version is switched in: ``manifest_changed``), ``kind`` and ``status`` come from short
fixed sets. Anything else (an agent asking for an undeclared action, say) is folded into
``OTHER``, so a hostile or buggy caller cannot grow the series count without bound.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from broker.core.reasons import Outcome, ReasonCode

OTHER = "other"
NO_REASON = "none"
CREDENTIAL_KINDS = frozenset({"jwt", "vault_token", "dynamic"})
OUTCOME_STATUSES = frozenset({"ok", "error", "rolled_back"})
REVOCATION_KINDS = frozenset({"credential", "token", "lease", "approval", "agent", "all"})
VAULT_OPERATIONS = frozenset(
    {"mint_jwt", "mint_vault_token", "mint_dynamic", "revoke", "control_poll", "checkpoint"}
)
# Free-form label values (an operation or revocation kind not listed above) are accepted
# up to this many distinct values per label, then folded into OTHER.
FREE_LABEL_CAP = 16
# Credentials remembered for their action until their outcome is reported; an agent that never
# reports outcomes must not grow this without bound (the oldest are forgotten first).
HELD_CAP = 65_536

# 0.1 ms .. 1 s: a JWT is signed in well under a millisecond, a Vault round trip takes
# milliseconds, and anything near a second is already an incident.
FAST_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
# Humans answer approvals in seconds to hours.
APPROVAL_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0)

CONTROL_SOURCES = ("node_agent", "vault")
METRIC_NAMES = frozenset(
    {
        "broker_decisions_total",
        "broker_outcomes_total",
        "broker_credentials_issued_total",
        "broker_mint_seconds",
        "broker_budget_used",
        "broker_budget_limit",
        "broker_budget_leased",
        "broker_approvals_pending",
        "broker_approval_wait_seconds",
        "broker_revocations_total",
        "broker_vault_errors_total",
        "broker_audit_append_seconds",
        "broker_control_lag_seconds",
        "broker_control_reads_total",
    }
)
"""Every sample family this module exports (histograms add _bucket, _sum and _count)."""


class _Labels:
    """Maps a raw value to a bounded label value: a fixed set, else a capped free set."""

    def __init__(self, allowed: Iterable[str], *, cap: int = 0) -> None:
        self._allowed = set(allowed)
        self._free: set[str] = set()
        self._cap = cap

    def allow(self, names: Iterable[str]) -> None:
        """Names a new manifest version declares. Old names stay: their series keep counting
        credentials issued under the previous version."""
        self._allowed |= set(names)

    def __call__(self, value: str | None) -> str:
        if value is None:
            return NO_REASON
        if value in self._allowed or value in self._free:
            return value
        if len(self._free) < self._cap:
            self._free.add(value)
            return value
        return OTHER


class SidecarMetrics:
    """The counters, gauges and histograms one sidecar updates; ``render`` serves them."""

    def __init__(
        self, *, actions: Iterable[str], budgets: Iterable[str], agent: str = OTHER
    ) -> None:
        """``actions`` and ``budgets``: the manifest's names (its dicts will do)."""
        self._decision_children: dict[tuple[str, str, str | None], Any] = {}
        self._mint_children: dict[str, Any] = {}
        self._held: dict[str, str] = {}  # credential id -> action, until its outcome
        self.agent = agent
        self.registry = CollectorRegistry(auto_describe=True)
        # process_cpu_seconds_total, process_resident_memory_bytes, open fds, start time.
        ProcessCollector(registry=self.registry)
        self._action = _Labels(actions)
        self._budget = _Labels(budgets)
        self._outcome = _Labels(o.value for o in Outcome)
        self._reason = _Labels(r.value for r in ReasonCode)
        self._kind = _Labels(CREDENTIAL_KINDS)
        self._status = _Labels(OUTCOME_STATUSES)
        self._revocation = _Labels(REVOCATION_KINDS, cap=FREE_LABEL_CAP)
        self._operation = _Labels(VAULT_OPERATIONS, cap=FREE_LABEL_CAP)
        r = self.registry
        self._decisions = Counter(
            "broker_decisions",
            "Decisions by agent, action, outcome and reason code",
            ["agent", "action", "outcome", "reason"],
            registry=r,
        )
        self._outcomes = Counter(
            "broker_outcomes",
            "Outcomes reported by the agent, by agent, action and status",
            ["agent", "action", "status"],
            registry=r,
        )
        self._issued = Counter(
            "broker_credentials_issued",
            "Credentials issued, by agent, action and kind",
            ["agent", "action", "kind"],
            registry=r,
        )
        self._mint = Histogram(
            "broker_mint_seconds",
            "Time to mint one credential, by kind",
            ["kind"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self._budget_used = Gauge(
            "broker_budget_used", "Budget used in the current window", ["budget"], registry=r
        )
        self._budget_limit = Gauge(
            "broker_budget_limit", "Budget limit per window", ["budget"], registry=r
        )
        self._budget_leased = Gauge(
            "broker_budget_leased",
            "Budget leased out to the fleet's replicas and not yet spent (fleet ledger)",
            ["budget"],
            registry=r,
        )
        self._pending = Gauge(
            "broker_approvals_pending", "Approval requests awaiting a human", registry=r
        )
        self._approval_wait = Histogram(
            "broker_approval_wait_seconds",
            "Time from an approval request to its decision",
            buckets=APPROVAL_BUCKETS,
            registry=r,
        )
        self._revocations = Counter(
            "broker_revocations", "Revocations applied, by kind", ["kind"], registry=r
        )
        self._vault_errors = Counter(
            "broker_vault_errors", "Vault/OpenBao calls that failed", ["operation"], registry=r
        )
        self._audit_append = Histogram(
            "broker_audit_append_seconds",
            "Time for one durable audit append",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self._control_lag = Gauge(
            "broker_control_lag_seconds",
            "Age of the last good control-state poll",
            registry=r,
        )
        # A fleet with node agents shows almost only ``node_agent``; a rise of ``vault`` is
        # sidecars polling Vault themselves (their agent gone or not believed).
        self._control_reads = Counter(
            "broker_control_reads",
            "Confirmations of control/version taken in, by source (node_agent or vault)",
            ["source"],
            registry=r,
        )
        self._read_children = {s: self._control_reads.labels(source=s) for s in CONTROL_SOURCES}

    def decision(self, action: str, outcome: str, reason: str | None) -> None:
        # The hot path: children are cached per label set (labels() validates and locks).
        key = (action, outcome, reason)
        child = self._decision_children.get(key)
        if child is None:
            child = self._decisions.labels(
                agent=self.agent,
                action=self._action(action),
                outcome=self._outcome(outcome),
                reason=self._reason(reason),
            )
            if len(self._decision_children) < 4096:
                self._decision_children[key] = child
        child.inc()

    def manifest_changed(self, actions: Iterable[str], budgets: Iterable[str]) -> None:
        """A new manifest version is enforced: its actions and budgets get their own series."""
        self._action.allow(actions)
        self._budget.allow(budgets)
        self._decision_children.clear()  # cached children may hold an action folded to OTHER

    def outcome(self, credential_id: str, status: str) -> None:
        """An outcome, counted under the action its credential was issued for."""
        action = self._held.pop(credential_id, OTHER)
        self._outcomes.labels(
            agent=self.agent, action=self._action(action), status=self._status(status)
        ).inc()

    def credentials_issued(
        self, kind: str, *, action: str = OTHER, credential_id: str = ""
    ) -> None:
        self._issued.labels(
            agent=self.agent, action=self._action(action), kind=self._kind(kind)
        ).inc()
        if credential_id:
            if len(self._held) >= HELD_CAP:
                del self._held[next(iter(self._held))]
            self._held[credential_id] = action

    def mint_latency(self, kind: str, seconds: float) -> None:
        child = self._mint_children.get(kind)
        if child is None:
            child = self._mint.labels(kind=self._kind(kind))
            if len(self._mint_children) < 64:
                self._mint_children[kind] = child
        child.observe(seconds)

    def budget(self, name: str, used: float, limit: float) -> None:
        budget = self._budget(name)
        self._budget_used.labels(budget=budget).set(used)
        self._budget_limit.labels(budget=budget).set(limit)

    def budget_leased(self, name: str, leased: float) -> None:
        """What the fleet's live leases hold unspent, as of this replica's last ledger write."""
        self._budget_leased.labels(budget=self._budget(name)).set(leased)

    def fleet_budget(self, name: str, used: float, leased: float, limit: float) -> None:
        """The fleet's figures for one budget, as this replica's last ledger write saw them."""
        self.budget(name, used, limit)
        self.budget_leased(name, leased)

    def approvals_pending(self, n: int) -> None:
        self._pending.set(n)

    def approval_wait(self, seconds: float) -> None:
        self._approval_wait.observe(seconds)

    def revocation(self, kind: str) -> None:
        self._revocations.labels(kind=self._revocation(kind)).inc()

    def vault_error(self, operation: str) -> None:
        self._vault_errors.labels(operation=self._operation(operation)).inc()

    def audit_append(self, seconds: float) -> None:
        self._audit_append.observe(seconds)

    def control_lag(self, seconds: float) -> None:
        self._control_lag.set(seconds)

    def control_read(self, source: str) -> None:
        """One confirmation of control/version: ``vault`` (our own read) or ``node_agent``."""
        self._read_children[source].inc()

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type, for ``GET /metrics``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

"""Shared Hypothesis strategies: manifests with random limits, requests, usage figures."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from broker.core.decision import ActionRequest
from broker.core.limits import UsageSnapshot
from broker.core.manifest import Manifest

LIMIT_NAMES = (
    "daily",
    "hourly",
    "calls",
    "concurrency",
    "agent_rate",
    "ticket_rate",
    "refund_rate",
    "max_amount",
)
ACTIONS_IN_SCOPE = ("zendesk.get_ticket", "stripe.refund")


def refund_manifest(limits: dict[str, Any] | None = None) -> Manifest:
    """The refund agent of DESIGN.md, with any of its limits overridden."""
    lim = {
        "daily": 2000.0,
        "hourly": 500.0,
        "calls": 5000,
        "concurrency": 4,
        "agent_rate": 600,
        "ticket_rate": 60,
        "refund_rate": 10,
        "max_amount": 500.0,
        **(limits or {}),
    }
    return Manifest.model_validate(
        {
            "agent": "support-refund-agent",
            "policy_version": "refund-policy-2026-02",
            "system_owner": "platform-team@acme.example",
            "risk_owner": "risk@acme.example",
            "budgets": {
                "refunds-usd": {"limit": lim["daily"], "per": "1d", "unit": "usd"},
                "refunds-usd-hourly": {"limit": lim["hourly"], "per": "1h", "unit": "usd"},
                "tool-calls": {"limit": lim["calls"], "per": "1d", "unit": "calls"},
            },
            "concurrency": lim["concurrency"],
            "rate": {"limit": lim["agent_rate"], "per": "1m"},
            "actions": {
                "zendesk.get_ticket": {
                    "accountable": "support-lead@acme.example",
                    "credential": {"kind": "jwt", "audience": "zendesk-gateway", "ttl": "60s"},
                    "inputs": {"ticket_id": {"type": "string", "pattern": "^CS-[0-9]+$"}},
                    "cost": {"tool-calls": 1},
                    "rate": {"limit": lim["ticket_rate"], "per": "1m"},
                },
                "stripe.refund": {
                    "accountable": "finance-ops@acme.example",
                    "consulted": ["billing-lead@acme.example"],
                    "credential": {"kind": "vault_token", "policies": ["stripe-refund"],
                                   "ttl": "30s"},
                    "inputs": {
                        "ticket_id": {"type": "string", "pattern": "^CS-[0-9]+$"},
                        "amount_usd": {"type": "number", "min": 0, "max": lim["max_amount"]},
                    },
                    "cost": {"refunds-usd": "inputs.amount_usd",
                             "refunds-usd-hourly": "inputs.amount_usd", "tool-calls": 1},
                    "rate": {"limit": lim["refund_rate"], "per": "1m"},
                    "approval": {"when": {"amount_usd": {"gt": 100}},
                                 "approvers": ["finance-ops@acme.example"],
                                 "reason": "needs_human_approval_over_100"},
                },
            },
        }
    )  # fmt: skip


@st.composite
def limit_sets(draw: st.DrawFn) -> dict[str, Any]:
    """Random but valid limits for ``refund_manifest``."""
    return {
        "daily": draw(st.floats(1, 5000, allow_nan=False)),
        "hourly": draw(st.floats(1, 1000, allow_nan=False)),
        "calls": draw(st.integers(1, 100)),
        "concurrency": draw(st.integers(1, 8)),
        "agent_rate": draw(st.integers(1, 100)),
        "ticket_rate": draw(st.integers(1, 50)),
        "refund_rate": draw(st.integers(1, 20)),
        "max_amount": draw(st.floats(0, 1000, allow_nan=False)),
    }


@st.composite
def tightened(draw: st.DrawFn, limits: dict[str, Any]) -> dict[str, Any]:
    """The same limits with any subset lowered (never raised)."""
    out = dict(limits)
    for name in draw(st.sets(st.sampled_from(LIMIT_NAMES))):
        value = limits[name]
        low = 1 if isinstance(value, int) or name != "max_amount" else 0
        if isinstance(value, int):
            out[name] = draw(st.integers(low, value))
        else:
            out[name] = draw(st.floats(low, value, allow_nan=False))
    return out


json_scalars: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.text(max_size=12),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
)
ticket_ids = st.sampled_from(["CS-1", "CS-19422", "cs-1", "CS-", "CS-1\n"]) | st.text(max_size=8)
amounts = st.integers(-10, 2000) | st.floats(-10, 2000, allow_nan=False) | json_scalars


_action_names = st.sampled_from(ACTIONS_IN_SCOPE) | st.from_regex(
    r"[a-z]{1,6}\.[a-z_]{1,8}", fullmatch=True
)


@st.composite
def requests(draw: st.DrawFn, action_names: st.SearchStrategy[str] | None = None) -> ActionRequest:
    """Mostly near-valid refund-agent requests, with junk mixed in."""
    names = action_names if action_names is not None else _action_names
    inputs: dict[str, Any] = {}
    if draw(st.booleans()):
        inputs["ticket_id"] = draw(ticket_ids)
    if draw(st.booleans()):
        inputs["amount_usd"] = draw(amounts)
    if draw(st.integers(0, 9)) == 0:
        inputs[draw(st.from_regex(r"[a-z]{1,8}", fullmatch=True))] = draw(json_scalars)
    return ActionRequest(action=draw(names), inputs=inputs, request_id="prop")


@st.composite
def usages(draw: st.DrawFn) -> UsageSnapshot:
    """Usage figures around and beyond typical limits."""
    budgets = {
        "refunds-usd": draw(st.floats(0, 6000, allow_nan=False)),
        "refunds-usd-hourly": draw(st.floats(0, 1500, allow_nan=False)),
        "tool-calls": float(draw(st.integers(0, 120))),
    }
    rates = {key: draw(st.integers(0, 120)) for key in ("agent", *ACTIONS_IN_SCOPE)}
    return UsageSnapshot(budgets, rates, draw(st.integers(0, 10)))


now_values = st.floats(0, 4e9, allow_nan=False)


# -- usage at the edge of a limit ----------------------------------------------------------
#
# The strategies above rarely draw a count exactly at a limit. These put the usage one unit
# below, exactly at, or one unit above one chosen limit (one cent for money, one call for a
# rate, one credential for concurrency) and leave every other limit far away, so the chosen
# limit alone decides.

EDGE_OFFSETS = (-1, 0, 1)
BUDGET_EDGES = {"refunds-usd": "daily", "refunds-usd-hourly": "hourly", "tool-calls": "calls"}
RATE_EDGES = {"agent": "agent_rate", "zendesk.get_ticket": "ticket_rate",
              "stripe.refund": "refund_rate"}  # fmt: skip
EDGE_KINDS = (*BUDGET_EDGES, *RATE_EDGES, "concurrency")
LOOSE_LIMITS: dict[str, Any] = {
    "daily": 10.0**7,
    "hourly": 10.0**7,
    "calls": 10**7,
    "concurrency": 10**4,
    "agent_rate": 10**5,
    "ticket_rate": 10**5,
    "refund_rate": 10**5,
    "max_amount": 10.0**6,
}


@dataclass(frozen=True)
class Edge:
    """One request with the usage of one limit at ``offset`` units from that limit.

    For a budget, ``offset`` is (used + this call's cost) - limit: the call fits when
    offset <= 0. For a rate or the concurrency cap, it is (calls or credentials held) - limit:
    the call fits when offset < 0."""

    kind: str
    offset: int
    limits: dict[str, Any]
    request: ActionRequest
    budgets: dict[str, list[float]]  # budget -> the charges already made, in order
    rates: dict[str, int]
    in_flight: int

    @property
    def fits(self) -> bool:
        return self.offset <= 0 if self.kind in BUDGET_EDGES else self.offset < 0

    def snapshot(self) -> UsageSnapshot:
        used = {name: float(sum(map(Decimal, map(repr, c)))) for name, c in self.budgets.items()}
        return UsageSnapshot(used, self.rates, self.in_flight)


def _refund(amount: float | int) -> ActionRequest:
    return ActionRequest(
        action="stripe.refund", inputs={"ticket_id": "CS-1", "amount_usd": amount}, request_id="e"
    )


_ticket = ActionRequest(action="zendesk.get_ticket", inputs={"ticket_id": "CS-1"}, request_id="e")


@st.composite
def _split(draw: st.DrawFn, total: int) -> list[int]:
    """``total`` as up to five non-negative parts, so usage is built from several charges."""
    cuts = sorted(draw(st.lists(st.integers(0, total), max_size=4)))
    return [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]


@st.composite
def _money_edge(draw: st.DrawFn, budget: str, offset: int) -> Edge:
    limit = draw(st.integers(1, 10**7))  # cents
    amount = draw(st.integers(0, limit - (offset < 0)))
    parts = draw(_split(limit - amount + offset))
    limits = {**LOOSE_LIMITS, BUDGET_EDGES[budget]: limit / 100}
    charges = {budget: [p / 100 for p in parts]}
    return Edge(budget, offset, limits, _refund(amount / 100), charges, {}, 0)


@st.composite
def _calls_edge(draw: st.DrawFn, offset: int) -> Edge:
    limit = draw(st.integers(1, 300))
    request = draw(st.sampled_from((_ticket, _refund(1))))
    limits = {**LOOSE_LIMITS, "calls": limit}
    used = [1.0] * (limit - 1 + offset)
    return Edge("tool-calls", offset, limits, request, {"tool-calls": used}, {}, 0)


@st.composite
def _count_edge(draw: st.DrawFn, kind: str, offset: int) -> Edge:
    limit = draw(st.integers(1, 300))
    held = limit + offset
    if kind == "concurrency":
        request = draw(st.sampled_from((_ticket, _refund(1))))
        return Edge(kind, offset, {**LOOSE_LIMITS, "concurrency": limit}, request, {}, {}, held)
    if kind == "agent":
        request = draw(st.sampled_from((_ticket, _refund(1))))
    else:
        request = _ticket if kind == "zendesk.get_ticket" else _refund(1)
    limits = {**LOOSE_LIMITS, RATE_EDGES[kind]: limit}
    return Edge(kind, offset, limits, request, {}, {kind: held}, 0)


@st.composite
def edges(draw: st.DrawFn, kinds: tuple[str, ...] = EDGE_KINDS) -> Edge:
    """Usage one unit below, at, or one unit above one limit of ``refund_manifest``."""
    kind = draw(st.sampled_from(kinds))
    offset = draw(st.sampled_from(EDGE_OFFSETS))
    if kind in ("refunds-usd", "refunds-usd-hourly"):
        return draw(_money_edge(kind, offset))
    if kind == "tool-calls":
        return draw(_calls_edge(offset))
    return draw(_count_edge(kind, offset))

"""The decision core: ``decide(request, manifest, usage, now) -> Decision``. Pure: no clock,
no I/O, no randomness; equal arguments give equal decisions.

Rules run in a fixed order (``RULES``) and the first that refuses decides. ``explain`` walks
the same rules through the same function (``_evaluate``) and records each result, so the
explanation and the decision cannot disagree. Per-action checks are compiled once per
manifest content hash (``broker.core.plan``), not per call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from broker.core.canonical import UnbindableInputs, inputs_digest
from broker.core.limits import AGENT_RATE_KEY, UsageView, window_end
from broker.core.manifest import CredentialSpec, Manifest, RateLimit
from broker.core.plan import ActionPlan, Plan, Raci, compile_plan
from broker.core.reasons import Outcome, ReasonCode, http_status


class ActionRequest(BaseModel):
    """One agent request: the action type and the exact inputs of the tool call."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    action: str = Field(max_length=256)
    inputs: dict[str, JsonValue] = Field(default_factory=dict)
    workflow: str | None = Field(default=None, max_length=256)
    request_id: str = Field(min_length=1, max_length=256)

    @field_validator("inputs")
    @classmethod
    def _finite(cls, inputs: dict[str, JsonValue]) -> dict[str, JsonValue]:
        if not _all_finite(inputs):
            raise ValueError("inputs must not contain NaN or infinite numbers")
        return inputs


def _all_finite(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_all_finite(v) for v in value)
    return True


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    reason: ReasonCode | None
    approval_reason: str | None
    detail: str
    charges: Mapping[str, float]
    credential: CredentialSpec | None
    raci: Raci | None
    policy_version: str
    manifest_hash: str
    action: str
    agent: str
    inputs_hash: str
    retry_after: float | None = None
    approval_expires_in: int | None = None

    @property
    def http_status(self) -> int:
        return http_status(self.reason, self.outcome)

    def to_json(self) -> dict[str, Any]:
        """The decision as plain JSON values (credential spec included, never a secret)."""
        return {
            "outcome": str(self.outcome),
            "reason": None if self.reason is None else str(self.reason),
            "approval_reason": self.approval_reason,
            "detail": self.detail,
            "charges": dict(self.charges),
            "credential": None if self.credential is None else self.credential.model_dump(),
            "raci": None if self.raci is None else raci_json(self.raci),
            "policy_version": self.policy_version,
            "manifest_hash": self.manifest_hash,
            "action": self.action,
            "agent": self.agent,
            "inputs_hash": self.inputs_hash,
            "retry_after": self.retry_after,
            "approval_expires_in": self.approval_expires_in,
        }


def raci_json(raci: Raci) -> dict[str, Any]:
    return {
        "accountable": raci.accountable,
        "consulted": list(raci.consulted),
        "informed": list(raci.informed),
        "approvers": list(raci.approvers),
    }


@dataclass(frozen=True, slots=True)
class RuleResult:
    """One line of ``explain``: status is pass, fail, pending, skipped or decision."""

    rule: str
    status: str
    detail: str = ""
    decision: Decision | None = None


UNBINDABLE = "unbindable"  # the inputs_hash of a refused request whose inputs have no JCS form


def inputs_hash(agent: str, action: str, inputs: Mapping[str, Any]) -> str:
    """Binds approvals and tokens to exactly these inputs of exactly this call (RFC 8785)."""
    return inputs_digest(agent, action, inputs)


def _hash_or_unbindable(agent: str, action: str, inputs: Mapping[str, Any]) -> str:
    # Only refusals get here with unbindable inputs: _rule_inputs denies them first.
    try:
        return inputs_digest(agent, action, inputs)
    except UnbindableInputs:
        return UNBINDABLE


# -- rules ---------------------------------------------------------------------------------

Verdict = tuple[Outcome, ReasonCode, str, float | None]


@dataclass(slots=True)
class _Ctx:
    request: ActionRequest
    plan: Plan
    usage: UsageView
    now: float
    disabled: bool
    action: ActionPlan | None = None
    charges: dict[str, float] = field(default_factory=dict)
    binding: str | None = None  # the inputs hash, once _rule_inputs has computed it


def _deny(reason: ReasonCode, detail: str, retry_after: float | None = None) -> Verdict:
    return Outcome.deny, reason, detail, retry_after


def _rule_enabled(ctx: _Ctx) -> Verdict | None:
    if ctx.disabled:
        return _deny(ReasonCode.agent_disabled, f"agent {ctx.plan.manifest.agent} is disabled")
    return None


def _rule_in_scope(ctx: _Ctx) -> Verdict | None:
    ctx.action = ctx.plan.actions.get(ctx.request.action)
    if ctx.action is None:
        return _deny(ReasonCode.unknown_action, f"{ctx.request.action!r} is not in scope")
    return None


def _rule_inputs(ctx: _Ctx) -> Verdict | None:
    assert ctx.action is not None
    inputs, plans = ctx.request.inputs, ctx.action.inputs
    for name, value in inputs.items():
        spec = plans.get(name)
        if spec is None:
            return _deny(ReasonCode.invalid_inputs, f"input {name!r} is not declared")
        if not spec.type_check(value):
            return _deny(ReasonCode.invalid_inputs, f"input {name!r} must be a {spec.type_name}")
    missing = ctx.action.required.difference(inputs)
    if missing:
        return _deny(ReasonCode.invalid_inputs, f"missing inputs: {', '.join(sorted(missing))}")
    try:
        ctx.binding = inputs_digest(ctx.plan.manifest.agent, ctx.request.action, inputs)
    except UnbindableInputs:
        return _deny(ReasonCode.invalid_inputs, "inputs have no RFC 8785 canonical form")
    return None


def _rule_constraints(ctx: _Ctx) -> Verdict | None:
    assert ctx.action is not None
    plans = ctx.action.inputs
    for name, value in ctx.request.inputs.items():
        for check_name, raw, param, check, failure in plans[name].checks:
            if not check(value, param):
                why = failure.format(param=raw)
                return _deny(
                    ReasonCode.constraint_violation, f"input {name!r} {why} ({check_name})"
                )
    return None


def _rule_concurrency(ctx: _Ctx) -> Verdict | None:
    cap = ctx.plan.manifest.concurrency
    if cap is not None and (held := ctx.usage.in_flight(ctx.now)) >= cap:
        return _deny(
            ReasonCode.concurrency_limit,
            f"{held} credentials in flight (cap {cap})",
            ctx.usage.slot_frees_in(ctx.now),  # Retry-After: when the oldest slot frees
        )
    return None


def _rate_verdict(ctx: _Ctx, key: str, rates: tuple[RateLimit, ...]) -> Verdict | None:
    usage, now = ctx.usage, ctx.now
    for rate in rates:
        if usage.rate_count(key, rate.per, now) >= rate.limit:
            wait = usage.retry_after(key, rate.limit, rate.per, now)
            detail = f"{key}: {rate.limit} calls per {rate.per}s reached"
            return _deny(ReasonCode.rate_limited, detail, wait)
    return None


def _rule_agent_rate(ctx: _Ctx) -> Verdict | None:
    return _rate_verdict(ctx, AGENT_RATE_KEY, ctx.plan.manifest.rate)


def _rule_action_rate(ctx: _Ctx) -> Verdict | None:
    assert ctx.action is not None
    return _rate_verdict(ctx, ctx.action.name, ctx.action.rates)


def _rule_budgets(ctx: _Ctx) -> Verdict | None:
    assert ctx.action is not None
    budgets, inputs = ctx.plan.manifest.budgets, ctx.request.inputs
    for name, cost in ctx.action.costs:
        amount = float(inputs[cost]) if isinstance(cost, str) else cost  # type: ignore[arg-type]
        ctx.charges[name] = amount
        used, budget = ctx.usage.budget_used(name, ctx.now), budgets[name]
        if _exceeds(used, amount, budget.limit):
            detail = (
                f"{name}: {used:g} used + {amount:g} exceeds {budget.limit:g} per {budget.per}s"
            )
            return _deny(
                ReasonCode.budget_exhausted, detail, window_end(ctx.now, budget.per) - ctx.now
            )
    return None


def _exceeds(used: float, amount: float, limit: float) -> bool:
    """``used + amount > limit``, in decimal where floats could tip it: 10.21 + 0.05 fits a
    10.26 budget, though in floats it comes to 10.260000000000002."""
    total = used + amount
    if abs(total - limit) > 1e-9 * max(abs(limit), 1.0):
        return total > limit  # far from the edge, where float rounding cannot matter
    return Decimal(repr(used)) + Decimal(repr(amount)) > Decimal(repr(limit))


def _rule_approval(ctx: _Ctx) -> Verdict | None:
    assert ctx.action is not None
    predicate = ctx.action.approval
    if predicate is not None and predicate(ctx.request.inputs):
        who = ", ".join(ctx.action.raci.approvers)
        return (
            Outcome.pending_approval,
            ReasonCode.approval_required,
            f"needs approval by {who}",
            None,
        )
    return None


RULES: tuple[tuple[str, Callable[[_Ctx], Verdict | None]], ...] = (
    ("agent_enabled", _rule_enabled),
    ("action_in_scope", _rule_in_scope),
    ("inputs_valid", _rule_inputs),
    ("constraints", _rule_constraints),
    ("concurrency", _rule_concurrency),
    ("agent_rate", _rule_agent_rate),
    ("action_rate", _rule_action_rate),
    ("budgets", _rule_budgets),
    ("approval", _rule_approval),
)


# -- entry points --------------------------------------------------------------------------


def decide(
    request: ActionRequest,
    manifest: Manifest,
    usage: UsageView,
    now: float,
    *,
    agent_disabled: bool = False,
) -> Decision:
    """The decision for one request, given usage so far and the time ``now`` (epoch s)."""
    ctx = _Ctx(request, compile_plan(manifest), usage, now, agent_disabled)
    return _evaluate(ctx, None)


def explain(
    request: ActionRequest,
    manifest: Manifest,
    usage: UsageView,
    now: float,
    *,
    agent_disabled: bool = False,
) -> list[RuleResult]:
    """Every rule evaluated, in order, with its result; the last entry holds the decision."""
    ctx = _Ctx(request, compile_plan(manifest), usage, now, agent_disabled)
    trace: list[RuleResult] = []
    decision = _evaluate(ctx, trace)
    summary = f"{decision.outcome}" + (f" ({decision.reason})" if decision.reason else "")
    trace.append(RuleResult("decision", summary, decision.detail, decision))
    return trace


def _evaluate(ctx: _Ctx, trace: list[RuleResult] | None) -> Decision:
    for index, (name, rule) in enumerate(RULES):
        verdict = rule(ctx)
        if trace is not None:
            trace.append(_result(name, verdict))
        if verdict is not None:
            if trace is not None:
                trace += [RuleResult(n, "skipped") for n, _ in RULES[index + 1 :]]
            return _decision(ctx, *verdict)
    return _decision(ctx, Outcome.allow, None, f"{ctx.request.action} is within scope", None)


def _result(name: str, verdict: Verdict | None) -> RuleResult:
    if verdict is None:
        return RuleResult(name, "pass")
    status = "pending" if verdict[0] is Outcome.pending_approval else "fail"
    return RuleResult(name, status, f"{verdict[1]}: {verdict[2]}")


def _decision(
    ctx: _Ctx, outcome: Outcome, reason: ReasonCode | None, detail: str, retry: float | None
) -> Decision:
    manifest, request, action = ctx.plan.manifest, ctx.request, ctx.action
    granted = outcome is not Outcome.deny and action is not None
    approval = action.spec.approval if action is not None else None
    pending = outcome is Outcome.pending_approval and approval is not None
    return Decision(
        outcome=outcome,
        reason=reason,
        approval_reason=approval.reason if pending and approval else None,
        detail=detail,
        charges=ctx.charges if granted else {},
        credential=action.spec.credential if granted and action else None,
        raci=action.raci if action is not None else None,
        policy_version=manifest.policy_version,
        manifest_hash=ctx.plan.manifest_hash,
        action=request.action,
        agent=manifest.agent,
        inputs_hash=ctx.binding
        or _hash_or_unbindable(manifest.agent, request.action, request.inputs),
        retry_after=retry,
        approval_expires_in=approval.expires if pending and approval else None,
    )


def iter_rule_names() -> Iterator[str]:
    """Rule names in evaluation order, for docs and the ``explain`` output."""
    return (name for name, _ in RULES)

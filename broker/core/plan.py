"""The compiled plan: a manifest's per-action checks, costs, rates, approval condition and
RACI, compiled once per manifest content hash so ``decide`` does no parsing per call.

Approval conditions are data turned into predicates here, never evaluated code. They fail
closed: a term naming an optional input that is absent holds, so a missing value never skips
an approval.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from broker.core.constraints import CONDITION_OPS, INPUT_CHECKS, INPUT_TYPES
from broker.core.manifest import Action, Manifest, RateLimit

__all__ = ["ActionPlan", "InputPlan", "Plan", "Raci", "compile_condition", "compile_plan"]


@dataclass(frozen=True, slots=True)
class Raci:
    accountable: str
    consulted: tuple[str, ...] = ()
    informed: tuple[str, ...] = ()
    approvers: tuple[str, ...] = ()


Check = tuple[str, Any, Any, Callable[[Any, Any], bool], str]  # name, raw, prepared, fn, failure
Predicate = Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True, slots=True)
class InputPlan:
    name: str
    type_name: str
    type_check: Callable[[object], bool]
    checks: tuple[Check, ...]


@dataclass(frozen=True, slots=True)
class ActionPlan:
    name: str
    spec: Action
    inputs: Mapping[str, InputPlan]
    required: frozenset[str]
    costs: tuple[tuple[str, float | str], ...]  # budget, constant or input name
    rates: tuple[RateLimit, ...]
    approval: Predicate | None
    raci: Raci


@dataclass(frozen=True, slots=True)
class Plan:
    manifest: Manifest
    actions: Mapping[str, ActionPlan]
    manifest_hash: str  # kept here: pydantic's private-attribute lookup showed in profiles


_PLANS: dict[str, Plan] = {}
_PLAN_CACHE_SIZE = 64
_LAST_PLAN: list[Plan | None] = [None]  # the plan of the manifest asked for last, by identity


def compile_plan(manifest: Manifest) -> Plan:
    """The manifest's checks, compiled once and cached by content hash."""
    last = _LAST_PLAN[0]
    if last is not None and last.manifest is manifest:
        return last  # the common case, without pydantic's private-attribute lookup
    plan = _PLANS.get(manifest.content_hash)
    if plan is None:
        if len(_PLANS) >= _PLAN_CACHE_SIZE:
            _PLANS.clear()
        actions = {name: _compile_action(name, a) for name, a in manifest.actions.items()}
        plan = _PLANS[manifest.content_hash] = Plan(manifest, actions, manifest.content_hash)
    _LAST_PLAN[0] = plan
    return plan


def _compile_action(name: str, action: Action) -> ActionPlan:
    inputs = {n: _compile_input(n, spec) for n, spec in action.inputs.items()}
    required = frozenset(n for n, spec in action.inputs.items() if spec.required)
    costs = tuple(
        (b, v.removeprefix("inputs.") if isinstance(v, str) else float(v))
        for b, v in action.cost.items()
    )
    approval = action.approval
    raci = Raci(
        action.accountable,
        action.consulted,
        action.informed,
        approval.approvers if approval else (),
    )
    predicate = compile_condition(approval.when) if approval else None
    return ActionPlan(name, action, inputs, required, costs, action.rate, predicate, raci)


def _compile_input(name: str, spec: Any) -> InputPlan:
    checks = tuple(
        (c, raw, INPUT_CHECKS[c].prepare(raw), INPUT_CHECKS[c].check, INPUT_CHECKS[c].failure)
        for c, raw in spec.constraints().items()
    )
    return InputPlan(name, spec.type, INPUT_TYPES[spec.type].check, checks)


def compile_condition(when: Mapping[str, Any]) -> Predicate:
    """An approval condition as a predicate; all terms must hold, ``any`` needs one."""
    terms: list[Predicate] = []
    for key, spec in when.items():
        if key == "any":
            terms.append(_any_of([compile_condition(c) for c in spec]))
        else:
            terms += [_term(key, op, operand) for op, operand in spec.items()]
    return lambda inputs: all(t(inputs) for t in terms)


def _any_of(options: list[Predicate]) -> Predicate:
    return lambda inputs: any(o(inputs) for o in options)


def _term(name: str, op_name: str, operand: Any) -> Predicate:
    op = CONDITION_OPS[op_name]
    check, param = op.check, op.prepare(operand)
    return lambda inputs: name not in inputs or check(inputs[name], param)

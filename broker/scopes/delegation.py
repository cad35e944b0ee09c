"""Check that a grant only narrows its parent's scope, and build the grant's scope (pure).

The parent's scope is a ``Manifest``: the root agent's own, or a grant's (built here). The
grant's scope is the parent's with fewer actions, tighter inputs, shorter credential TTLs and
budgets set to the carved amounts; it is then compared with the parent's by the manifest diff
(``broker.scopes.diff``), and any change the diff calls widening refuses the grant, naming
that change's place as the rule. Budgets are checked here rather than by the diff: a carve
must fit in what the parent has *left*, not only under its limit.

Refusals are values (``GrantRefusal``); nothing here reads a clock or a ledger: the caller
passes the depth, the longest TTL allowed and what is left of each budget."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from broker.core.delegation import ActionNarrowing, GrantReason, GrantRefusal, GrantRequest
from broker.core.manifest import Action, InputSpec, Manifest
from broker.scopes.diff import diff_manifests, widening

_R = GrantReason


def narrow(
    parent: Manifest,
    req: GrantRequest,
    *,
    depth: int,
    ttl_bound: float,
    left: Mapping[str, float],
) -> Manifest | GrantRefusal:
    """The grant's scope, or why it is refused. ``depth`` is the new grant's (1 below the
    root agent), ``ttl_bound`` the longest it may live, ``left`` each budget's remainder."""
    refusal = _limits(parent, req, depth, ttl_bound, left)
    if refusal is not None:
        return refusal
    actions: dict[str, Action] = {}
    for name, narrowing in req.actions.items():
        built = _action(parent.actions[name], narrowing, f"actions.{name}")
        if isinstance(built, GrantRefusal):
            return built
        for budget in built.cost:
            if budget not in req.budgets:
                rule = f"actions.{name}.cost.{budget}"
                why = f"{name} charges budget {budget}: the grant must carve an amount of it"
                return GrantRefusal(_R.delegation_budget_exceeded, rule, why)
        actions[name] = built
    fields = _scope_fields(parent, req, actions)
    # Judged before it is validated, so a widening is named as one even where the result
    # would not load either (a cost input's min lowered below 0, say).
    for change in widening(diff_manifests(parent, Manifest.model_construct(**fields))):
        if not change.where.startswith("budgets."):  # carves are checked against ``left``
            return GrantRefusal(_R.delegation_widens, change.where, change.what)
    try:
        return Manifest.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return GrantRefusal(_R.invalid_grant_request, where, str(first["msg"]))


def _limits(
    parent: Manifest, req: GrantRequest, depth: int, ttl_bound: float, left: Mapping[str, float]
) -> GrantRefusal | None:
    policy = parent.delegation
    if policy is None:
        why = f"{parent.agent}'s manifest has no delegation section: it grants nothing"
        return GrantRefusal(_R.delegation_not_allowed, "delegation", why)
    if depth > policy.max_depth:
        why = f"a grant at depth {depth} is over the manifest's limit of {policy.max_depth}"
        return GrantRefusal(_R.delegation_too_deep, "delegation.max_depth", why)
    if req.ttl > ttl_bound:
        why = f"ttl {req.ttl}s is longer than the parent's {int(ttl_bound)}s"
        return GrantRefusal(_R.delegation_ttl_too_long, "ttl", why)
    return _members(parent, req, left)


def _members(parent: Manifest, req: GrantRequest, left: Mapping[str, float]) -> GrantRefusal | None:
    for name in req.actions:
        if name not in parent.actions:
            return GrantRefusal(
                _R.delegation_widens, f"actions.{name}", "not in the parent's scope"
            )
    for name, amount in req.budgets.items():
        if name not in parent.budgets:
            return GrantRefusal(
                _R.delegation_widens, f"budgets.{name}", "the parent has no such budget"
            )
        if amount > left.get(name, 0.0):
            why = f"{amount:g} asked, the parent has {left.get(name, 0.0):g} left"
            return GrantRefusal(_R.delegation_budget_exceeded, f"budgets.{name}", why)
    return None


def _action(parent: Action, narrowing: ActionNarrowing, where: str) -> Action | GrantRefusal:
    inputs = dict(parent.inputs)
    for name, tighter in narrowing.inputs.items():
        spec = inputs.get(name)
        if spec is None:
            why = "not an input of the parent's action"
            return GrantRefusal(_R.delegation_widens, f"{where}.inputs.{name}", why)
        try:
            inputs[name] = InputSpec.model_validate(
                {**spec.model_dump(), **tighter.model_dump(exclude_none=True)}
            )
        except ValidationError as exc:
            why = "; ".join(str(e["msg"]) for e in exc.errors())
            return GrantRefusal(_R.invalid_grant_request, f"{where}.inputs.{name}", why)
    update: dict[str, Any] = {"inputs": inputs}
    if narrowing.ttl is not None:
        update["credential"] = parent.credential.model_copy(update={"ttl": narrowing.ttl})
    return parent.model_copy(update=update)


def _scope_fields(
    parent: Manifest, req: GrantRequest, actions: dict[str, Action]
) -> dict[str, Any]:
    budgets = {
        name: parent.budgets[name].model_copy(update={"limit": amount})
        for name, amount in req.budgets.items()
    }
    same = ("agent", "policy_version", "system_owner", "risk_owner", "concurrency", "rate")
    return {
        **{name: getattr(parent, name) for name in same},
        "budgets": budgets,
        "actions": actions,
        "delegation": parent.delegation,
    }

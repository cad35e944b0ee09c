"""What changed between two manifests, in the manifest's own terms (pure).

Each change names its place in the document, says what happened, and carries an effect:
``widens`` (some request could now get more: an action added, a limit raised or removed, a
constraint loosened, an approval dropped, a TTL raised, a policy added), ``narrows``, or
``neutral`` (names, owners, the policy version). Where the direction cannot be known from the
data alone (a regex or an approval condition rewritten, a credential kind changed) the change
is marked ``widens``: a reviewer confirms it, with ``broker scopes replay`` as evidence.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from broker.core.manifest import Action, Approval, InputSpec, Manifest, RateLimit


class Effect(enum.StrEnum):
    widens = "widens"
    narrows = "narrows"
    neutral = "neutral"


@dataclass(frozen=True, slots=True)
class Change:
    where: str
    what: str
    effect: Effect

    def __str__(self) -> str:
        mark = {Effect.widens: "WIDENS ", Effect.narrows: "narrows", Effect.neutral: "       "}
        return f"{mark[self.effect]}  {self.where}: {self.what}"


def diff_manifests(old: Manifest, new: Manifest) -> list[Change]:
    """Every change from ``old`` to ``new``, widening changes first, then in document order."""
    changes = list(_top(old, new))
    changes += _budgets(old, new)
    changes += _limit(
        "concurrency", old.concurrency, new.concurrency, higher_widens=True, none_widens=True
    )
    changes += _rates("rate", old.rate, new.rate)
    changes += _actions(old.actions, new.actions)
    changes += _delegation(old, new)
    order = {Effect.widens: 0, Effect.narrows: 1, Effect.neutral: 2}
    return sorted(changes, key=lambda c: order[c.effect])


def _top(old: Manifest, new: Manifest) -> Iterator[Change]:
    if old.agent != new.agent:
        yield Change("agent", f"{old.agent} -> {new.agent} (a different agent)", Effect.widens)
    for name in ("policy_version", "system_owner", "risk_owner"):
        a, b = getattr(old, name), getattr(new, name)
        if a != b:
            yield Change(name, f"{a} -> {b}", Effect.neutral)


def _show(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "(none)" if value is None else str(value)


def _limit(
    where: str, old: Any, new: Any, *, higher_widens: bool, none_widens: bool, what: str = ""
) -> Iterator[Change]:
    """A number where ``None`` means "no limit" (``none_widens``) or "nothing granted"."""
    if old == new:
        return
    label = f"{what} " if what else ""
    if old is None or new is None:
        removed = new is None
        verb = "removed" if removed else "added"
        widens = removed == none_widens
        shown = _show(old if removed else new)
        yield Change(where, f"{label}{verb} ({shown})", _effect(widens))
        return
    raised = new > old
    verb = "raised" if raised else "lowered"
    yield Change(
        where, f"{label}{verb} {_show(old)} -> {_show(new)}", _effect(raised == higher_widens)
    )


def _effect(widens: bool) -> Effect:
    return Effect.widens if widens else Effect.narrows


def _added_removed(
    where: str,
    old: Mapping[str, Any] | set[Any],
    new: Mapping[str, Any] | set[Any],
    noun: str,
    *,
    added_widens: bool,
) -> Iterator[Change]:
    for key in sorted(set(new) - set(old), key=str):
        yield Change(f"{where}.{key}" if where else key, f"{noun} added", _effect(added_widens))
    for key in sorted(set(old) - set(new), key=str):
        yield Change(
            f"{where}.{key}" if where else key, f"{noun} removed", _effect(not added_widens)
        )


# -- budgets and rates ---------------------------------------------------------------------


def _budgets(old: Manifest, new: Manifest) -> Iterator[Change]:
    yield from _added_removed("budgets", old.budgets, new.budgets, "budget", added_widens=False)
    for name in sorted(old.budgets.keys() & new.budgets.keys()):
        a, b = old.budgets[name], new.budgets[name]
        where = f"budgets.{name}"
        yield from _limit(f"{where}.limit", a.limit, b.limit, higher_widens=True, none_widens=True)
        if a.per != b.per:
            # Same limit over a shorter window allows more per unit of time.
            widens = b.limit / b.per > a.limit / a.per
            yield Change(f"{where}.per", f"window {a.per}s -> {b.per}s", _effect(widens))
        if a.unit != b.unit:
            yield Change(f"{where}.unit", f"{a.unit} -> {b.unit}", Effect.neutral)


def _rates(where: str, old: tuple[RateLimit, ...], new: tuple[RateLimit, ...]) -> Iterator[Change]:
    """Rate limits are matched by window; an unmatched window was added or removed."""
    a = {r.per: r.limit for r in old}
    b = {r.per: r.limit for r in new}
    for per in sorted(b.keys() - a.keys()):
        yield Change(where, f"rate limit {b[per]} per {per}s added", Effect.narrows)
    for per in sorted(a.keys() - b.keys()):
        yield Change(where, f"rate limit {a[per]} per {per}s removed", Effect.widens)
    for per in sorted(a.keys() & b.keys()):
        yield from _limit(
            where, a[per], b[per], higher_widens=True, none_widens=True, what=f"per {per}s limit"
        )


# -- actions -------------------------------------------------------------------------------


def _actions(old: Mapping[str, Action], new: Mapping[str, Action]) -> Iterator[Change]:
    yield from _added_removed("actions", old, new, "action", added_widens=True)
    for name in sorted(old.keys() & new.keys()):
        yield from _action(f"actions.{name}", old[name], new[name])


def _action(where: str, a: Action, b: Action) -> Iterator[Change]:
    if a.accountable != b.accountable:
        yield Change(f"{where}.accountable", f"{a.accountable} -> {b.accountable}", Effect.neutral)
    for name in ("consulted", "informed"):
        yield from _people(f"{where}.{name}", getattr(a, name), getattr(b, name), Effect.neutral)
    yield from _credential(f"{where}.credential", a, b)
    yield from _inputs(f"{where}.inputs", a.inputs, b.inputs)
    yield from _costs(f"{where}.cost", a.cost, b.cost)
    yield from _rates(f"{where}.rate", a.rate, b.rate)
    yield from _approval(f"{where}.approval", a.approval, b.approval)
    for field in sorted(set(a.redact) - set(b.redact)):
        yield Change(
            f"{where}.redact", f"{field} no longer redacted in the audit trail", Effect.widens
        )
    for field in sorted(set(b.redact) - set(a.redact)):
        yield Change(f"{where}.redact", f"{field} now redacted", Effect.narrows)


def _people(
    where: str, old: tuple[str, ...], new: tuple[str, ...], added: Effect
) -> Iterator[Change]:
    removed = {Effect.widens: Effect.narrows, Effect.neutral: Effect.neutral}[added]
    for who in sorted(set(new) - set(old)):
        yield Change(where, f"{who} added", added)
    for who in sorted(set(old) - set(new)):
        yield Change(where, f"{who} removed", removed)


def _credential(where: str, a: Action, b: Action) -> Iterator[Change]:
    old, new = a.credential, b.credential
    if old.kind != new.kind:
        yield Change(f"{where}.kind", f"{old.kind} -> {new.kind}", Effect.widens)
        return
    yield from _limit(f"{where}.ttl", old.ttl, new.ttl, higher_widens=True, none_widens=True)
    x, y = old.model_dump(), new.model_dump()
    if "policies" in x:
        for policy in sorted(set(y["policies"]) - set(x["policies"])):
            yield Change(f"{where}.policies", f"policy {policy} added", Effect.widens)
        for policy in sorted(set(x["policies"]) - set(y["policies"])):
            yield Change(f"{where}.policies", f"policy {policy} removed", Effect.narrows)
        yield from _limit(
            f"{where}.uses", x["uses"], y["uses"], higher_widens=True, none_widens=True
        )
    if "dpop" in x and x["dpop"] != y["dpop"]:  # an unbound token is usable by whoever copies it
        effect = Effect.widens if y["dpop"] == "optional" else Effect.narrows
        yield Change(f"{where}.dpop", f"{x['dpop']} -> {y['dpop']}", effect)
    for name in ("audience", "mount", "role"):
        if x.get(name) != y.get(name):
            yield Change(f"{where}.{name}", f"{x[name]} -> {y[name]}", Effect.widens)


def _inputs(
    where: str, old: Mapping[str, InputSpec], new: Mapping[str, InputSpec]
) -> Iterator[Change]:
    for name in sorted(new.keys() - old.keys()):
        spec = new[name]
        # A new optional input lets through requests that carried it and were refused.
        kind = "required" if spec.required else "optional"
        yield Change(f"{where}.{name}", f"{kind} input added", _effect(not spec.required))
    for name in sorted(old.keys() - new.keys()):
        # Requests without a required input were refused; now they are not.
        required = old[name].required
        kind = "required" if required else "optional"
        yield Change(f"{where}.{name}", f"{kind} input removed", _effect(required))
    for name in sorted(old.keys() & new.keys()):
        yield from _input(f"{where}.{name}", old[name], new[name])


def _input(where: str, a: InputSpec, b: InputSpec) -> Iterator[Change]:
    if a.type != b.type:
        yield Change(f"{where}.type", f"{a.type} -> {b.type}", Effect.widens)
    if a.required != b.required:
        now = "optional" if a.required else "required"
        yield Change(f"{where}.required", f"now {now}", _effect(a.required))
    yield from _limit(f"{where}.min", a.min, b.min, higher_widens=False, none_widens=True)
    yield from _limit(f"{where}.max", a.max, b.max, higher_widens=True, none_widens=True)
    yield from _limit(
        f"{where}.max_length", a.max_length, b.max_length, higher_widens=True, none_widens=True
    )
    if a.pattern != b.pattern:
        if b.pattern is None:
            yield Change(f"{where}.pattern", f"pattern {a.pattern!r} removed", Effect.widens)
        elif a.pattern is None:
            yield Change(f"{where}.pattern", f"pattern {b.pattern!r} added", Effect.narrows)
        else:
            what = f"pattern {a.pattern!r} -> {b.pattern!r} (review: may accept more)"
            yield Change(f"{where}.pattern", what, Effect.widens)
    yield from _allowed(f"{where}.one_of", a.one_of, b.one_of)
    yield from _allowed(f"{where}.domain_in", a.domain_in, b.domain_in)


def _allowed(
    where: str, old: tuple[Any, ...] | None, new: tuple[Any, ...] | None
) -> Iterator[Change]:
    """An allow-list: gone means anything goes; more entries accept more."""
    if old == new:
        return
    if new is None:
        yield Change(where, "allow-list removed (any value accepted)", Effect.widens)
    elif old is None:
        yield Change(where, f"allow-list {list(new)} added", Effect.narrows)
    else:
        for value in sorted(set(new) - set(old), key=repr):
            yield Change(where, f"{value!r} allowed", Effect.widens)
        for value in sorted(set(old) - set(new), key=repr):
            yield Change(where, f"{value!r} no longer allowed", Effect.narrows)


def _costs(
    where: str, old: Mapping[str, float | str], new: Mapping[str, float | str]
) -> Iterator[Change]:
    yield from _added_removed(where, old, new, "charge", added_widens=False)
    for budget in sorted(old.keys() & new.keys()):
        a, b = old[budget], new[budget]
        if a == b:
            continue
        if isinstance(a, float | int) and isinstance(b, float | int):
            yield from _limit(
                f"{where}.{budget}", a, b, higher_widens=False, none_widens=True, what="charge"
            )
        else:
            yield Change(f"{where}.{budget}", f"charge {a} -> {b}", Effect.widens)


# -- approval ------------------------------------------------------------------------------

_THRESHOLD_RAISE_WIDENS = {"gt": True, "ge": True, "lt": False, "le": False}


def _approval(where: str, a: Approval | None, b: Approval | None) -> Iterator[Change]:
    if a is None and b is None:
        return
    if a is None or b is None:
        added = b is not None
        verb = "added (calls wait for a human)" if added else "removed (no human in the loop)"
        yield Change(where, f"approval {verb}", _effect(not added))
        return
    yield from _people(f"{where}.approvers", a.approvers, b.approvers, Effect.widens)
    if a.when != b.when:
        yield from _condition(f"{where}.when", a.when, b.when)
    yield from _limit(
        f"{where}.expires", a.expires, b.expires, higher_widens=True, none_widens=True
    )
    if a.reason != b.reason:
        yield Change(f"{where}.reason", f"{a.reason} -> {b.reason}", Effect.neutral)


def _condition(where: str, old: dict[str, Any], new: dict[str, Any]) -> Iterator[Change]:
    """Single-threshold changes are judged; any other rewrite is marked for review."""
    if old.keys() == new.keys() and "any" not in old:
        terms = [(k, old[k], new[k]) for k in old]
        if all(
            o.keys() == n.keys() and o.keys() <= _THRESHOLD_RAISE_WIDENS.keys() for _, o, n in terms
        ):
            for name, o, n in terms:
                for op in sorted(o):
                    yield from _limit(
                        f"{where}.{name}.{op}",
                        o[op],
                        n[op],
                        none_widens=True,
                        higher_widens=_THRESHOLD_RAISE_WIDENS[op],
                        what="threshold",
                    )
            return
    if not new:
        yield Change(where, "condition removed: every call needs approval", Effect.narrows)
        return
    yield Change(
        where, f"condition {old} -> {new} (review: fewer calls may need approval)", Effect.widens
    )


def _delegation(old: Manifest, new: Manifest) -> Iterator[Change]:
    a, b = old.delegation, new.delegation
    if a is None or b is None:
        if a != b:
            added = b is not None
            what = "delegation allowed (sub-agent grants)" if added else "delegation removed"
            yield Change("delegation", what, _effect(added))
        return
    for name in ("max_depth", "max_ttl"):
        yield from _limit(
            f"delegation.{name}",
            getattr(a, name),
            getattr(b, name),
            higher_widens=True,
            none_widens=True,
        )


def widening(changes: list[Change]) -> list[Change]:
    return [c for c in changes if c.effect is Effect.widens]

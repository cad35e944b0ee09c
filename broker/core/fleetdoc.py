"""The fleet usage ledger's document and its pure changes (no I/O, time passed in).

Document (``format`` 1), one per agent at ``ledger/<agent>`` in Vault's KV v2::

    {"format": 1, "budgets": {name: {"window_start": int, "per": 86400, "limit": "100", "used": "12",
        "leases": {replica: {"granted": "5", "spent": "2", "expires": 1700000000.0}}}}}

``used`` is what closed leases (given back or expired) spent; a live lease holds ``granted``
of which its replica has reported ``spent``. Free is ``limit - used - sum(granted)``.
Amounts are decimal strings, as in ``broker.core.limits``, so sums are exact. Rate limits are
entries of the same shape named ``rate:<key>:<per>`` (one call costs 1, fixed windows).

Concurrency slots (optional ``slots``)::

    "slots": {"limit": 4, "leases": {replica: {"granted": 2, "expires": 1700000000.0,
        "hold": 60}}, "held": [[2, 1700000060.0]]}

A slot is in use as long as the credential minted on it lives, which a dead replica cannot
report: when a lease expires, its slots stay ``held`` until ``expires + hold`` (``hold`` is the
manifest's longest credential TTL), so no credential outlives the slot it was minted on.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from broker.core.errors import LedgerInvalid
from broker.core.limits import window_start
from broker.core.manifest import Budget

DOC_FORMAT = 1
ZERO = Decimal(0)


@dataclass(frozen=True)
class Grant:
    """This replica's lease on one budget, as the document holds it after a write."""

    window_start: int
    granted: Decimal
    spent: Decimal
    expires: float


def dec(value: float | str | Decimal) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(repr(float(value)))


def _amount(raw: Any, where: str) -> Decimal:
    if not isinstance(raw, str):
        raise LedgerInvalid(f"{where} must be a decimal string, got {type(raw).__name__}")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise LedgerInvalid(f"{where} is not a decimal number: {raw[:40]!r}") from None
    if not value.is_finite() or value < 0:
        raise LedgerInvalid(f"{where} must be a finite amount >= 0, got {raw[:40]!r}")
    return value


def validate(doc: Mapping[str, Any] | None, path: str) -> dict[str, Any]:
    """The document, checked field by field; a clear ``LedgerInvalid`` naming the field, never
    a silent reset (a reset would hand the whole budget out a second time)."""
    if doc is None:
        return {"format": DOC_FORMAT, "budgets": {}}
    if doc.get("format") != DOC_FORMAT or not isinstance(doc.get("budgets"), dict):
        raise LedgerInvalid(f"{path}: format must be {DOC_FORMAT} with a budgets object")
    for name, entry in doc["budgets"].items():
        where = f"{path}: budgets.{name}"
        if not isinstance(entry, dict) or not isinstance(entry.get("leases"), dict):
            raise LedgerInvalid(f"{where} must be an object with a leases object")
        for key in ("window_start", "per"):
            if not isinstance(entry.get(key), int) or isinstance(entry.get(key), bool):
                raise LedgerInvalid(f"{where}.{key} must be an integer")
        _amount(entry.get("used"), f"{where}.used")
        _amount(entry.get("limit"), f"{where}.limit")
        for replica, lease in entry["leases"].items():
            at = f"{where}.leases.{replica}"
            if not isinstance(lease, dict) or not isinstance(lease.get("expires"), int | float):
                raise LedgerInvalid(f"{at} must be an object with a numeric expires")
            if _amount(lease.get("spent"), f"{at}.spent") > _amount(
                lease.get("granted"), f"{at}.granted"
            ):
                raise LedgerInvalid(f"{at}: spent exceeds granted")
    if "slots" in doc:
        _validate_slots(doc["slots"], f"{path}: slots")
    return copy.deepcopy(dict(doc))


def _count(raw: Any, where: str) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
        raise LedgerInvalid(f"{where} must be an integer >= 0, got {str(raw)[:40]!r}")
    return raw


def _number(raw: Any, where: str) -> float:
    if not isinstance(raw, int | float) or isinstance(raw, bool) or not math.isfinite(raw):
        raise LedgerInvalid(f"{where} must be a number, got {str(raw)[:40]!r}")
    return float(raw)


def _validate_slots(entry: Any, where: str) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("leases"), dict):
        raise LedgerInvalid(f"{where} must be an object with a leases object")
    _count(entry.get("limit"), f"{where}.limit")
    if not isinstance(entry.get("held"), list):
        raise LedgerInvalid(f"{where}.held must be a list of [slots, until] pairs")
    for i, pair in enumerate(entry["held"]):
        if not isinstance(pair, list) or len(pair) != 2:
            raise LedgerInvalid(f"{where}.held.{i} must be a [slots, until] pair")
        _count(pair[0], f"{where}.held.{i}.0")
        _number(pair[1], f"{where}.held.{i}.1")
    for replica, lease in entry["leases"].items():
        at = f"{where}.leases.{replica}"
        if not isinstance(lease, dict):
            raise LedgerInvalid(f"{at} must be an object")
        _count(lease.get("granted"), f"{at}.granted")
        _number(lease.get("expires"), f"{at}.expires")
        _number(lease.get("hold"), f"{at}.hold")


def _entry(doc: dict[str, Any], name: str, budget: Budget, now: float) -> dict[str, Any]:
    """The budget's entry in the current window (a new window starts empty)."""
    start = window_start(now, budget.per)
    entry: dict[str, Any] | None = doc["budgets"].get(name)
    if entry is None or entry["window_start"] != start:
        entry = {"window_start": start, "used": "0", "leases": {}}
        doc["budgets"][name] = entry
    entry["limit"] = str(dec(budget.limit))
    entry["per"] = budget.per
    return entry


def reclaim(entry: dict[str, Any], now: float) -> None:
    """Close expired leases: what they spent stays spent, the rest is free again."""
    for replica, lease in list(entry["leases"].items()):
        if lease["expires"] <= now:
            entry["used"] = str(Decimal(entry["used"]) + Decimal(lease["spent"]))
            del entry["leases"][replica]


def free_of(entry: Mapping[str, Any]) -> Decimal:
    held = sum((Decimal(lease["granted"]) for lease in entry["leases"].values()), ZERO)
    return Decimal(entry["limit"]) - Decimal(entry["used"]) - held


def slice_size(free: Decimal, need: Decimal, replicas: int, want: Decimal | None = None) -> Decimal:
    """What to take: a share of what is free, so the others still find some, no more than the
    observed rate asks for (``want``), but never less than the call needs (near the cap this
    is a reservation for exactly one call)."""
    share = free / (2 * max(replicas, 1))
    if want is not None:
        share = min(share, want)
    if share > need > 0:
        # Whole calls only: fractions of a call left in several slices would add up to a
        # call nobody can make (99 minted of 100).
        share = need * (share // need)
    return min(free, max(need, share))


def lease(
    doc: Mapping[str, Any] | None,
    path: str,
    *,
    budgets: Mapping[str, Budget],
    replica: str,
    spent: Mapping[str, tuple[int, Decimal]],
    needs: Mapping[str, Decimal],
    now: float,
    ttl: float,
    held: frozenset[str] = frozenset(),
    slots: SlotAsk | None = None,
    closed: Mapping[str, tuple[int, Decimal]] | None = None,
    wants: Mapping[str, Decimal] | None = None,
    ahead: Mapping[str, Decimal] | None = None,
) -> dict[str, Any]:
    """The document after ``replica`` reports ``spent`` (per budget: window, amount), renews
    its leases and tops up those whose slice cannot cover ``needs``. ``held``: the budgets this
    replica had a lease on (gone now means reclaimed: ``LeaseLost``). ``closed``: spending made
    outside any lease (a rate limit's local share), added to ``used`` as it is. ``wants``: the
    slice the observed rate asks for; ``ahead``: spending reported before it happens (never past
    the grant), so that calls in the next moment need no write; a dead replica's unused ahead
    counts as spent (lost to the window, never overspent)."""
    new = validate(doc, path)
    for name, budget in budgets.items():
        entry = _entry(new, name, budget, now)
        reclaim(entry, now)
        window, extra = (closed or {}).get(name, (-1, ZERO))
        if window == entry["window_start"]:
            entry["used"] = str(Decimal(entry["used"]) + extra)
        mine = entry["leases"].get(replica)
        window, amount = spent.get(name, (entry["window_start"], ZERO))
        current = window == entry["window_start"]
        if mine is None and amount > 0 and current and name in held:
            raise LeaseLost(f"{path}: the lease on {name} expired before its spending was reported")
        if mine is None:
            if name not in needs and not (amount > 0 and current):
                continue
            mine = entry["leases"][replica] = {"granted": "0", "spent": "0", "expires": 0.0}
        if current:
            mine["spent"] = str(max(Decimal(mine["spent"]), amount))
            # Spending made on a local share while the store was away: it was spent all the same.
            mine["granted"] = str(max(Decimal(mine["granted"]), Decimal(mine["spent"])))
        mine["expires"] = now + ttl
        want = None if wants is None or name not in wants else wants[name]
        _top_up(entry, mine, needs.get(name, ZERO), budget.exact, want)
        if ahead and current and name in ahead:
            mine["spent"] = str(
                max(Decimal(mine["spent"]), min(Decimal(mine["granted"]), amount + ahead[name]))
            )
    if slots is not None:
        lease_slots(new, replica, slots, now, ttl)
    return new


def _top_up(
    entry: dict[str, Any], mine: dict[str, Any], need: Decimal, exact: bool, want: Decimal | None
) -> None:
    left = Decimal(mine["granted"]) - Decimal(mine["spent"])
    if need <= left:
        return
    free = free_of(entry)
    if free >= need - left:
        live = len(entry["leases"])
        grant = need - left if exact else slice_size(free, need - left, live, want)
        mine["granted"] = str(Decimal(mine["granted"]) + grant)
    else:  # a rest too small for this call goes back: with others' rests it may fit
        mine["granted"] = mine["spent"]


@dataclass(frozen=True)
class SlotAsk:
    """A replica's concurrency report: its cap, credentials it has in flight, the slots this
    call needs, and how long its credentials may live (``hold``)."""

    limit: int
    in_use: int
    need: int
    hold: float
    exact: bool = False


def _slots_entry(doc: dict[str, Any], limit: int, now: float) -> dict[str, Any]:
    entry: dict[str, Any] = doc.setdefault("slots", {"limit": limit, "leases": {}, "held": []})
    entry["limit"] = limit
    for replica, lease in list(entry["leases"].items()):
        if lease["expires"] <= now:  # its credentials may still live: hold their slots
            entry["held"].append([lease["granted"], lease["expires"] + lease["hold"]])
            del entry["leases"][replica]
    entry["held"] = [h for h in entry["held"] if h[1] > now and h[0] > 0]
    return entry


def slots_free(entry: Mapping[str, Any]) -> int:
    taken = sum(int(x["granted"]) for x in entry["leases"].values())
    return int(entry["limit"]) - taken - sum(int(h[0]) for h in entry["held"])


def lease_slots(doc: dict[str, Any], replica: str, ask: SlotAsk, now: float, ttl: float) -> None:
    """Renew ``replica``'s slot lease; when the call needs a slot beyond its spare ones, take
    a share of what is free (only whole slots), or give the spare back if none is."""
    entry = _slots_entry(doc, ask.limit, now)
    mine = entry["leases"].get(replica)
    if mine is None:
        if ask.need <= 0 and ask.in_use <= 0:
            return
        mine = entry["leases"][replica] = {"granted": 0, "expires": 0.0, "hold": ask.hold}
    mine["expires"], mine["hold"] = now + ttl, ask.hold
    granted = max(int(mine["granted"]), ask.in_use)  # a slot in use is held whatever it cost
    if ask.need > 0 and granted - ask.in_use < ask.need:
        available = slots_free(entry) + int(mine["granted"]) - ask.in_use
        if available >= ask.need:
            share = (
                ask.need
                if ask.exact
                else slice_size(Decimal(available), Decimal(ask.need), len(entry["leases"]))
            )
            granted = ask.in_use + int(share)
        else:
            granted = ask.in_use
    mine["granted"] = granted


def slot_grant(doc: Mapping[str, Any], replica: str) -> tuple[int, float]:
    """This replica's slots and the lease's expiry ((0, 0.0) without a lease)."""
    mine = doc.get("slots", {}).get("leases", {}).get(replica)
    return (0, 0.0) if mine is None else (int(mine["granted"]), float(mine["expires"]))


def give_back_slots(doc: dict[str, Any], replica: str, in_use: int, busy_until: float) -> None:
    """On shutdown: free the spare slots now; those in use stay held until their credentials
    expire."""
    entry = doc.get("slots")
    if entry is None or entry["leases"].pop(replica, None) is None:
        return
    if in_use > 0:
        entry["held"].append([in_use, busy_until])


def give_back(
    doc: Mapping[str, Any] | None,
    path: str,
    replica: str,
    spent: Mapping[str, tuple[int, Decimal]],
    busy: tuple[int, float] = (0, 0.0),
) -> dict[str, Any]:
    """Close ``replica``'s leases on shutdown: its final spending stays spent, the rest frees;
    its ``busy`` (in-flight count, last expiry) slots stay held until those credentials expire."""
    new = validate(doc, path)
    give_back_slots(new, replica, *busy)
    for name, entry in new["budgets"].items():
        mine = entry["leases"].pop(replica, None)
        if mine is None:
            continue
        window, amount = spent.get(name, (-1, ZERO))
        # What was really spent: the document may hold spending reported ahead of time.
        final = amount if window == entry["window_start"] else Decimal(mine["spent"])
        entry["used"] = str(Decimal(entry["used"]) + final)
    return new


def grants(doc: Mapping[str, Any], replica: str) -> dict[str, Grant]:
    out = {}
    for name, entry in doc["budgets"].items():
        mine = entry["leases"].get(replica)
        if mine is not None:
            out[name] = Grant(
                entry["window_start"],
                Decimal(mine["granted"]),
                Decimal(mine["spent"]),
                float(mine["expires"]),
            )
    return out


def summary(doc: Mapping[str, Any] | None, path: str, now: float) -> dict[str, Any]:
    """Per budget: used (closed + reported), leased out per replica (unspent), free, window."""
    checked = validate(doc, path)
    out: dict[str, Any] = {}
    for name, entry in checked["budgets"].items():
        live = {r: x for r, x in entry["leases"].items() if x["expires"] > now}
        reported = sum((Decimal(x["spent"]) for x in entry["leases"].values()), ZERO)
        out[name] = {
            "limit": entry["limit"],
            "window_start": entry["window_start"],
            "window_end": entry["window_start"] + entry["per"],
            "used": str(Decimal(entry["used"]) + reported),
            "leased": {
                r: str(Decimal(x["granted"]) - Decimal(x["spent"])) for r, x in live.items()
            },
            "free": str(free_of(entry)),
        }
    slots = checked.get("slots")
    if slots is not None:
        live = {r: x for r, x in slots["leases"].items() if x["expires"] > now}
        out["(concurrency)"] = {
            "limit": str(slots["limit"]),
            "leased": {r: str(x["granted"]) for r, x in live.items()},
            "held": str(sum(int(h[0]) for h in slots["held"] if h[1] > now)),
            "free": str(slots_free(slots)),
        }
    return out


class LeaseLost(LedgerInvalid):
    """This replica's lease was reclaimed (it was silent past its TTL) before it reported."""

    code = "ledger_lease_lost"

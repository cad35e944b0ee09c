"""The fleet usage ledger's document and its pure changes (no I/O, time passed in).

Document (``format`` 1), one per agent at ``ledger/<agent>`` in Vault's KV v2::

    {"format": 1, "budgets": {name: {"window_start": int, "per": 86400, "limit": "100", "used": "12",
        "leases": {replica: {"granted": "5", "spent": "2", "expires": 1700000000.0}}}}}

``used`` is what closed leases (given back or expired) spent; a live lease holds ``granted``
of which its replica has reported ``spent``. Free is ``limit - used - sum(granted)``.
Amounts are decimal strings, as in ``broker.core.limits``, so sums are exact.
"""

from __future__ import annotations

import copy
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
    return copy.deepcopy(dict(doc))


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


def slice_size(free: Decimal, need: Decimal, replicas: int) -> Decimal:
    """What to take: a share of what is free, so the others still find some, but never less
    than the call needs (near the cap this is a reservation for exactly one call)."""
    share = free / (2 * max(replicas, 1))
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
) -> dict[str, Any]:
    """The document after ``replica`` reports ``spent`` (per budget: window, amount), renews
    its leases and tops up those whose slice cannot cover ``needs``."""
    new = validate(doc, path)
    for name, budget in budgets.items():
        entry = _entry(new, name, budget, now)
        reclaim(entry, now)
        mine = entry["leases"].get(replica)
        window, amount = spent.get(name, (entry["window_start"], ZERO))
        if mine is None and amount > 0 and window == entry["window_start"]:
            raise LeaseLost(f"{path}: the lease on {name} expired before its spending was reported")
        if mine is None:
            if name not in needs:
                continue
            mine = entry["leases"][replica] = {"granted": "0", "spent": "0", "expires": 0.0}
        if window == entry["window_start"]:
            mine["spent"] = str(max(Decimal(mine["spent"]), amount))
        mine["expires"] = now + ttl
        left = Decimal(mine["granted"]) - Decimal(mine["spent"])
        need = needs.get(name, ZERO)
        if need > left:
            free = free_of(entry)
            if free >= need - left:
                grant = slice_size(free, need - left, len(entry["leases"]))
                mine["granted"] = str(Decimal(mine["granted"]) + grant)
            else:  # a rest too small for this call goes back: with others' rests it may fit
                mine["granted"] = mine["spent"]
    return new


def give_back(
    doc: Mapping[str, Any] | None, path: str, replica: str, spent: Mapping[str, tuple[int, Decimal]]
) -> dict[str, Any]:
    """Close ``replica``'s leases on shutdown: its final spending stays spent, the rest frees."""
    new = validate(doc, path)
    for name, entry in new["budgets"].items():
        mine = entry["leases"].pop(replica, None)
        if mine is None:
            continue
        window, amount = spent.get(name, (entry["window_start"], ZERO))
        final = max(Decimal(mine["spent"]), amount if window == entry["window_start"] else ZERO)
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
    return out


class LeaseLost(LedgerInvalid):
    """This replica's lease was reclaimed (it was silent past its TTL) before it reported."""

    code = "ledger_lease_lost"

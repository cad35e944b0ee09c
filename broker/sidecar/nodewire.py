"""What a node agent tells the sidecars of its node, one JSON object a line.

After each poll of Vault the agent writes ``{"v": 1, "version": N, "stamp": S, "read_at": T}``:
the KV version of ``control/version`` and Vault's ``created_time`` of that version (the pair
names one write to one Vault: an agent of another cluster at the same count does not pass for
ours), and when the read that returned it was *sent*, on the host's
monotonic clock (``time.monotonic``, which every process of one kernel shares), so a sidecar
knows how old the confirmation is without trusting the agent's wall clock. A poll that failed
is ``{"v": 1, "error": "..."}``. Sidecars send nothing.

Pure: parsing and checking only, so the rules are tested without a socket."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

WIRE_VERSION = 1
MAX_LINE = 1024  # an agent line is ~60 bytes; anything longer is not an agent talking
# How far ahead of the sidecar's own monotonic clock a ``read_at`` may be: the time a line
# takes from one process to the other on one host is microseconds, not this.
CLOCK_SLACK = 0.05
# Escaped as JSON, a character may take 6 bytes: 150 keep an error line under MAX_LINE (a
# longer one made the sidecar hang up on its agent as "a line longer than any it writes").
MAX_ERROR = 150
MAX_STAMP = 64  # an RFC 3339 time with nanoseconds is 30 characters
PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class WireError(ValueError):
    """A line no node agent would write: the sidecar hangs up and polls Vault itself."""


@dataclass(frozen=True)
class Confirmation:
    """Vault said ``control/version`` was at ``version`` in answer to a read sent at
    ``read_at`` (monotonic)."""

    version: int
    read_at: float
    stamp: str = ""  # Vault's created_time of the version; an agent without it is not believed


def encode(confirmation: Confirmation | None, error: str = "") -> bytes:
    body: dict[str, object] = {"v": WIRE_VERSION}
    if confirmation is None:
        body["error"] = (error or "no confirmation yet")[:MAX_ERROR]
    else:
        body["version"], body["read_at"] = confirmation.version, confirmation.read_at
        if confirmation.stamp:
            body["stamp"] = confirmation.stamp
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes, now: float) -> Confirmation | str:
    """A confirmation, or the agent's own error text. ``now`` is the reader's monotonic
    clock: a ``read_at`` in its future means the agent does not share this host's clock."""
    try:
        body = json.loads(line)
    except ValueError as exc:
        raise WireError("not a JSON line") from exc
    if not isinstance(body, dict) or body.get("v") != WIRE_VERSION:
        raise WireError(f"not wire version {WIRE_VERSION}")
    if "error" in body:
        return str(body["error"])[:MAX_ERROR]
    version, read_at, stamp = body.get("version"), body.get("read_at"), body.get("stamp", "")
    if type(version) is not int or version < 1:
        raise WireError("version must be a whole number of at least 1")
    if not isinstance(stamp, str) or len(stamp) > MAX_STAMP:
        raise WireError(f"stamp must be text of at most {MAX_STAMP} characters")
    if not isinstance(read_at, int | float) or isinstance(read_at, bool):
        raise WireError("read_at must be a number")
    if not math.isfinite(read_at):
        raise WireError("read_at must be a finite number")
    if read_at > now + CLOCK_SLACK:
        raise WireError(
            "read_at is ahead of this host's monotonic clock: the agent is not on this host"
        )
    return Confirmation(version, float(read_at), stamp)


def peer_allowed(uid: int, own_uid: int, extra: frozenset[int]) -> bool:
    """Whose agent a sidecar believes: root's, its own user's, or a user named in
    ``BROKER_NODE_AGENT_UIDS``. Anyone else who managed to bind the socket path first could
    otherwise hold back a revocation."""
    return uid in (0, own_uid) or uid in extra

"""Token status lists (draft-ietf-oauth-status-list), pure: no I/O, no clock.

Each sidecar key gets its own list (``list_id`` is the key's serial without colons), of a
fixed ``CAPACITY``; a token's ``status`` claim names its list's URL at the issuer and its
index, given in minting order. The sidecar keeps, for each index, what revocation rules look
at (jti, iat, exp, action) while the token may live, and on every control-state change
computes which indices are revoked (``revoked_indices``, the same rules as
``ControlState.token_revoked``). It publishes those to Vault; ``broker issuer`` adds the
rules it can apply to a whole list without the sidecar (agent killed, generation revoked),
so a dead sidecar's tokens still show as revoked, and serves the list as a signed
Status List Token. One bit per token, 1 = invalid; bit ``i`` is bit ``i % 8`` (least
significant first) of byte ``i // 8``, compressed with zlib (DEFLATE), base64url."""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.core.claims import StatusRef
from broker.core.controlstate import ControlState

CAPACITY = 1 << 20  # indices per list; a key that used half of them is rotated
STATUS_LIST_TYP = "statuslist+jwt"
STATUS_LIST_TTL = 1  # seconds a verifier may reuse a list: revocation shows within about 1 s


def list_id_for(serial: str) -> str:
    return serial.replace(":", "").lower()


def encode_bits(indices: Iterable[int], size: int) -> str:
    """The ``lst`` value: zlib-compressed, base64url (no padding) bit string."""
    raw = bytearray((size + 7) // 8)
    for i in indices:
        if not 0 <= i < size:
            raise ValueError(f"index {i} is outside the list of {size}")
        raw[i // 8] |= 1 << (i % 8)
    return base64.urlsafe_b64encode(zlib.compress(bytes(raw), 9)).rstrip(b"=").decode()


def encode_all(size: int) -> str:
    """Every index set: the list of a killed agent or a revoked key generation."""
    raw = b"\xff" * (size // 8) + (bytes([(1 << (size % 8)) - 1]) if size % 8 else b"")
    return base64.urlsafe_b64encode(zlib.compress(raw, 9)).rstrip(b"=").decode()


def decode_bits(lst: str, max_bytes: int = CAPACITY // 8) -> bytes:
    """The raw bit string of an ``lst``; refuses more than ``max_bytes`` (a zip bomb)."""
    packed = base64.urlsafe_b64decode(lst + "=" * (-len(lst) % 4))
    inflater = zlib.decompressobj()
    raw = inflater.decompress(packed, max_bytes + 1)
    if len(raw) > max_bytes or not inflater.eof:
        raise ValueError("status list is larger than allowed or truncated")
    return raw


def bit_at(raw: bytes, index: int) -> int:
    if not 0 <= index < len(raw) * 8:
        raise IndexError(f"index {index} is outside the status list of {len(raw) * 8}")
    return (raw[index // 8] >> (index % 8)) & 1


@dataclass(frozen=True, slots=True)
class Entry:
    jti: str
    issued_at: int
    expires_at: int
    action: str


def revoked(entry: Entry, control: ControlState, generation: int) -> bool:
    """``ControlState.token_revoked`` for what the ledger keeps of a token."""
    return (
        control.killed
        or entry.jti in control.revoked_jtis
        or entry.issued_at <= control.revoked_before
        or entry.issued_at <= control.revoked_before_action.get(entry.action, 0.0)
        or generation < control.min_generation
    )


@dataclass
class StatusList:
    list_id: str
    uri: str
    generation: int
    not_after: int
    entries: list[Entry | None] = field(default_factory=list)

    def describe(self, revoked_at: list[int]) -> dict[str, Any]:
        """The record published to Vault for the issuer."""
        return {
            "uri": self.uri,
            "size": CAPACITY,
            "gen": self.generation,
            "not_after": self.not_after,
            "lst": encode_bits(revoked_at, CAPACITY),
        }


class StatusLedger:
    """The sidecar's lists. ``allocate`` runs on the mint path (event loop); the rest runs
    where the runtime publishes (one thread at a time)."""

    def __init__(self, base_uri: str) -> None:
        self.base_uri = base_uri.rstrip("/")
        self.lists: dict[str, StatusList] = {}

    def open(self, agent: str, serial: str, generation: int, not_after: int) -> StatusList:
        list_id = list_id_for(serial)
        found = StatusList(list_id, f"{self.base_uri}/{agent}/{list_id}", generation, not_after)
        self.lists[list_id] = found
        return found

    def allocate(self, list_id: str, entry: Entry) -> StatusRef:
        status = self.lists[list_id]
        index = len(status.entries)
        if index >= CAPACITY:
            raise RuntimeError("the status list is full; rotate the signing key")
        status.entries.append(entry)
        return StatusRef(uri=status.uri, index=index)

    def used(self, list_id: str) -> int:
        found = self.lists.get(list_id)
        return len(found.entries) if found else 0

    def snapshot(self, control: ControlState, now: float) -> dict[str, dict[str, Any]]:
        """Every list still needed, with its revoked indices; forgets expired tokens."""
        out: dict[str, dict[str, Any]] = {}
        for list_id, status in list(self.lists.items()):
            indices = self._revoked(status, control, now)
            if status.not_after < now and not any(status.entries):
                del self.lists[list_id]
                continue
            out[list_id] = status.describe(indices)
        return out

    @staticmethod
    def _revoked(status: StatusList, control: ControlState, now: float) -> list[int]:
        found: list[int] = []
        entries = status.entries
        for i, entry in enumerate(entries):
            if entry is None:
                continue
            if entry.expires_at < now:
                entries[i] = None  # expired: its bit no longer matters
            elif revoked(entry, control, status.generation):
                found.append(i)
        return found


def whole_list_revoked(record: Mapping[str, Any], *, killed: bool, min_generation: int) -> bool:
    """What the issuer decides alone for a list: every token of a killed agent, or of a
    revoked key generation, is invalid."""
    gen = record.get("gen")
    return killed or (isinstance(gen, int) and gen < min_generation)

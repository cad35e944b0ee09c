"""Token status lists: the draft's bit layout, bounded decoding, the sidecar's ledger (same
rules as ControlState.token_revoked) and the issuer's whole-list rules."""

from __future__ import annotations

import base64
import zlib
from typing import Any

import pytest

from broker.core.claims import ActionClaims
from broker.core.controlstate import ControlState
from broker.core.statuslist import (
    CAPACITY,
    Entry,
    StatusLedger,
    bit_at,
    decode_bits,
    encode_all,
    encode_bits,
    revoked,
    whole_list_revoked,
)

NOW = 1_900_000_000


def test_bit_layout_matches_the_draft_example() -> None:
    """The draft's 1-bit example: statuses 1001110111000101 are bytes b9 a3 (bit i is bit
    i % 8, least significant first, of byte i // 8)."""
    raw = decode_bits(encode_bits([0, 3, 4, 5, 7, 8, 9, 13, 15], 16))
    assert raw == bytes([0b10111001, 0b10100011])
    assert [bit_at(raw, i) for i in range(16)] == [int(c) for c in "1001110111000101"]


def test_encode_all_sets_every_index() -> None:
    """A killed agent's list has every bit set, and only its size."""
    raw = decode_bits(encode_all(13))
    assert len(raw) == 2
    assert all(bit_at(raw, i) for i in range(13))
    assert not any((raw[1] >> b) & 1 for b in range(5, 8))


@pytest.mark.parametrize("index", [-1, 16, 10**9])
def test_index_outside_the_list_is_an_index_error(index: int) -> None:
    """An index beyond the list raises IndexError naming it, never reads past the end."""
    with pytest.raises(IndexError, match=str(index)):
        bit_at(decode_bits(encode_bits([], 16)), index)


def test_oversized_list_is_refused() -> None:
    """A list that inflates past the limit (a zip bomb) is refused."""
    bomb = base64.urlsafe_b64encode(zlib.compress(bytes(CAPACITY // 8 + 1))).decode()
    with pytest.raises(ValueError, match="larger than allowed"):
        decode_bits(bomb)


CONTROLS: list[tuple[str, dict[str, Any], bool]] = [
    ("nothing revoked", {}, False),
    ("agent killed", {"killed": True}, True),
    ("jti revoked", {"revoked_jtis": frozenset({"j1"})}, True),
    ("other jti revoked", {"revoked_jtis": frozenset({"j2"})}, False),
    ("revoked before iat", {"revoked_before": NOW}, True),
    ("revoked before, earlier", {"revoked_before": NOW - 1}, False),
    ("action revoked", {"revoked_before_action": {"a.read": NOW}}, True),
    ("other action revoked", {"revoked_before_action": {"a.write": NOW}}, False),
    ("generation revoked", {"min_generation": 3}, True),
]


@pytest.mark.parametrize(
    ("changes", "expected"), [c[1:] for c in CONTROLS], ids=[c[0] for c in CONTROLS]
)
def test_ledger_rules_are_the_verifiers_rules(changes: dict[str, Any], expected: bool) -> None:
    """For each control state, the status bit agrees with ControlState.token_revoked."""
    control = ControlState(agent="a", **changes)
    claims = ActionClaims("a", "aud", "a.read", "h@x.io", "v1", "sha256:0", NOW, NOW + 60, "j1", 2)
    assert revoked(Entry("j1", NOW, NOW + 60, "a.read"), control, 2) is expected
    assert (control.token_revoked(claims) is not None) is expected


def test_ledger_publishes_revoked_indices_and_forgets_expired_tokens() -> None:
    """Indices are handed out in order; the snapshot sets revoked bits; an expired token's
    bit is dropped; an empty, expired list is forgotten."""
    ledger = StatusLedger("http://127.0.0.1:1/statuslists")
    ledger.open("a", "0a:1b", generation=1, not_after=NOW + 100)
    refs = [ledger.allocate("0a1b", Entry(f"j{i}", NOW, NOW + 10 * i, "a.read")) for i in range(3)]
    assert [r.index for r in refs] == [0, 1, 2]
    assert refs[0].uri == "http://127.0.0.1:1/statuslists/a/0a1b"
    control = ControlState(agent="a", revoked_jtis=frozenset({"j1", "j2"}))
    lists = ledger.snapshot(control, NOW + 15)  # j1 has expired (NOW + 10)
    raw = decode_bits(lists["0a1b"]["lst"])
    assert [bit_at(raw, i) for i in range(3)] == [0, 0, 1]
    assert lists["0a1b"]["size"] == CAPACITY
    assert ledger.snapshot(control, NOW + 101) == {}


@pytest.mark.parametrize(
    ("record", "killed", "min_generation", "expected"),
    [
        ({"gen": 2}, False, 0, False),
        ({"gen": 2}, True, 0, True),
        ({"gen": 2}, False, 3, True),
        ({}, False, 3, False),
    ],
)
def test_whole_list_rules(
    record: dict[str, Any], killed: bool, min_generation: int, expected: bool
) -> None:
    """The issuer sets every bit of a killed agent's lists and of revoked generations."""
    assert whole_list_revoked(record, killed=killed, min_generation=min_generation) is expected

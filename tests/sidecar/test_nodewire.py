"""The node agent's lines: what a sidecar believes, and what makes it hang up."""

from __future__ import annotations

import pytest

from broker.core.errors import ConfigError
from broker.sidecar.nodewatch import extra_uids
from broker.sidecar.nodewire import (
    CLOCK_SLACK,
    MAX_LINE,
    Confirmation,
    WireError,
    decode,
    encode,
    peer_allowed,
)

NOW = 1000.0


def test_a_confirmation_survives_the_wire() -> None:
    """What the agent encodes, a sidecar decodes to the same version and read time."""
    sent = Confirmation(42, 999.5)
    assert decode(encode(sent), NOW) == sent


def test_the_agents_error_reaches_the_sidecar_as_text() -> None:
    """A failed poll is the agent's error text, not a confirmation."""
    assert decode(encode(None, "Vault is sealed"), NOW) == "Vault is sealed"


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"not json\n", "not a JSON line"),
        (b"[1]\n", "not wire version"),
        (b'{"v": 2, "version": 3, "read_at": 1}\n', "not wire version"),
        (b'{"v": 1, "version": 0, "read_at": 1}\n', "at least 1"),
        (b'{"v": 1, "version": "3", "read_at": 1}\n', "whole number"),
        (b'{"v": 1, "version": 3.0, "read_at": 1}\n', "whole number"),
        (b'{"v": 1, "version": true, "read_at": 1}\n', "whole number"),
        (b'{"v": 1, "version": 3}\n', "read_at must be a number"),
        (b'{"v": 1, "version": 3, "read_at": "soon"}\n', "read_at must be a number"),
        (b'{"v": 1, "version": 3, "read_at": true}\n', "read_at must be a number"),
        (b'{"v": 1, "version": 3, "read_at": NaN}\n', "finite number"),
        (b'{"v": 1, "version": 3, "read_at": Infinity}\n', "finite number"),
        (b'{"v": 1, "version": 3, "read_at": 1000.5}\n', "ahead of this host"),
        (b'{"v": 1, "version": 3, "stamp": 7, "read_at": 1}\n', "stamp must be text"),
        (b'{"v": 1, "version": 3, "stamp": null, "read_at": 1}\n', "stamp must be text"),
        (b'{"v": 1, "version": 3, "stamp": "' + b"t" * 65 + b'", "read_at": 1}\n', "stamp"),
    ],
)
def test_a_line_no_agent_writes_is_refused(line: bytes, why: str) -> None:
    """Malformed lines, and a read time in the sidecar's future (an agent that does not share
    this host's monotonic clock would otherwise make stale state look fresh), are refused."""
    with pytest.raises(WireError, match=why):
        decode(line, NOW)


def test_the_write_a_confirmation_names_survives_the_wire() -> None:
    """Vault's created_time of the version goes with the number; a line without one (an
    older agent) decodes with an empty stamp, which matches no read of a sidecar's own."""
    sent = Confirmation(42, 999.5, "2026-11-30T21:31:50.123456789Z")
    assert decode(encode(sent), NOW) == sent
    assert decode(b'{"v": 1, "version": 42, "read_at": 999.5}\n', NOW).stamp == ""  # type: ignore[union-attr]


@pytest.mark.parametrize("error", ["x" * 5000, "\u2028" * 5000, "\x00" * 5000])
def test_a_long_error_still_fits_one_line_a_sidecar_reads(error: str) -> None:
    """A long failure (a TLS error, many addresses) is cut to fit MAX_LINE however JSON
    escapes it: longer, the sidecar hung up as on a line no agent writes."""
    line = encode(None, error)
    assert len(line) <= MAX_LINE
    assert decode(line, NOW) == error[:150]


def test_a_read_time_within_the_slack_is_believed() -> None:
    """The few microseconds a line takes between two processes are no reason to refuse it."""
    assert decode(encode(Confirmation(3, NOW + CLOCK_SLACK / 2)), NOW) == Confirmation(
        3, NOW + CLOCK_SLACK / 2
    )


@pytest.mark.parametrize(
    ("uid", "extra", "believed"),
    [
        (0, frozenset(), True),
        (1000, frozenset(), True),  # our own user
        (1001, frozenset(), False),
        (1001, frozenset({1001}), True),
        (65534, frozenset({1001}), False),
    ],
)
def test_whose_socket_is_believed(uid: int, extra: frozenset[int], believed: bool) -> None:
    """Root, the sidecar's own user and listed users hold a believable socket; no one else."""
    assert peer_allowed(uid, 1000, extra) is believed


def test_extra_uids_are_user_ids() -> None:
    """BROKER_NODE_AGENT_UIDS is a list of numbers; anything else is a settings error."""
    assert extra_uids(" 1001, 1002 ,") == frozenset({1001, 1002})
    assert extra_uids("") == frozenset()
    with pytest.raises(ConfigError, match="BROKER_NODE_AGENT_UIDS"):
        extra_uids("1001,nobody")

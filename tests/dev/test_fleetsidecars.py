"""``broker bench fleet --sidecars``: its arithmetic and its readings of /proc."""

from __future__ import annotations

import os

import pytest

from broker.dev.fleetsidecars import FleetResult, _took, cpu_seconds, rss_mb


def test_the_cost_of_one_idle_sidecar_is_the_difference_divided_by_their_number() -> None:
    """Vault busy 7.4 % with 20 sidecars running, 0.5 % all paused: 0.345 % per sidecar, the
    node agent's share (0.9 - 0.5 = 0.4 % for the node) given apart from the sidecars' own."""
    result = FleetResult(20, 10.0, 7.4, 0.9, 0.5, 0.25, [74.0, 73.0], [58.0, 57.0], [0.2, 0.9], 0.3)
    assert result.per_sidecar_pct == pytest.approx(0.345)
    lines = list(result.lines())
    assert "OpenBao CPU per idle sidecar: 0.345% of a core" in lines
    assert any(
        "the node agent's poll: 0.400% for the node (0.0200% per sidecar)" in line for line in lines
    ), lines
    assert any("each sidecar's own reads and heartbeats: 0.325%" in line for line in lines), lines
    assert any(line.endswith("p99 0.900 s, max 0.900 s") for line in lines), lines


def test_several_revocations_are_pooled_and_each_ones_p99_given() -> None:
    """Three revocations over two sidecars: percentiles over all six, and each one's p99."""
    result = FleetResult(
        2, 10.0, 7.4, 0.9, 0.5, 0.25, [74.0], [58.0], [0.2, 0.9, 0.3, 0.4, 0.1, 0.6], 0.3,
        burst_p99=[0.9, 0.4, 0.6],
    )  # fmt: skip
    lines = list(result.lines())
    assert any(
        line.startswith("revocation time-to-effect over 2 sidecars x 3 revocations: p50 0.400 s")
        for line in lines
    ), lines
    assert "  p99 of each revocation: 0.900, 0.400, 0.600 s (median 0.600 s)" in lines


def test_the_revocations_cpu_is_reported_per_sidecar() -> None:
    """The burst's CPU, net of idle, in the sidecar and in OpenBao, per sidecar."""
    result = FleetResult(
        20, 10.0, 7.4, 0.9, 0.5, 0.25, [74.0], [58.0], [0.2], 0.3, burst_ms=(6.25, 3.5)
    )
    assert (
        "CPU to take the revocation in, per sidecar: 6.2 ms in the sidecar, 3.5 ms in OpenBao"
        in list(result.lines())
    )


def test_without_a_node_agent_no_share_of_it_is_reported() -> None:
    """--no-node-agent: the same per-sidecar arithmetic, and no node-agent lines."""
    result = FleetResult(
        20, 10.0, 7.4, 0.5, 0.5, 0.25, [74.0], [58.0], [0.2], 0.3, node_agent=False
    )
    lines = list(result.lines())
    assert "OpenBao CPU per idle sidecar: 0.345% of a core" in lines
    assert not [line for line in lines if "node agent" in line and "polling" not in line]


def test_time_to_effect_is_read_from_each_sidecars_own_report() -> None:
    """From the write to the sidecar's control_changed_at (else when the bench saw it, for
    older code); never seen is infinite."""
    docs = [
        {"control_changed_at": 100.25, "observed_at": 100.5},
        {},
        {"control_changed_at": None, "observed_at": 100.5},
    ]
    assert _took(docs, 100.0) == [0.25, float("inf"), 0.5]


def test_proc_readings_of_this_process_are_plausible() -> None:
    """Our own process: some CPU used, a proportional share no larger than the resident size."""
    pid = os.getpid()
    assert cpu_seconds(pid) > 0
    rss, pss = rss_mb(pid), rss_mb(pid, "Pss")
    assert 5 < pss <= rss < 2000

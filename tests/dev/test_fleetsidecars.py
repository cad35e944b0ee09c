"""``broker bench fleet --sidecars``: its arithmetic and its readings of /proc."""

from __future__ import annotations

import os

import pytest

from broker.dev.fleetsidecars import FleetResult, cpu_seconds, rss_mb


def test_the_cost_of_one_idle_sidecar_is_the_difference_divided_by_their_number() -> None:
    """Vault busy 7.4 % with 20 sidecars running, 0.5 % paused: 0.345 % per sidecar."""
    result = FleetResult(20, 10.0, 7.4, 0.5, 0.25, [74.0, 73.0], [58.0, 57.0], [0.2, 0.9], 0.3)
    assert result.per_sidecar_pct == pytest.approx(0.345)
    lines = list(result.lines())
    assert "OpenBao CPU per idle sidecar: 0.345% of a core" in lines
    assert any(line.endswith("p99 0.900 s, max 0.900 s") for line in lines), lines


def test_proc_readings_of_this_process_are_plausible() -> None:
    """Our own process: some CPU used, a proportional share no larger than the resident size."""
    pid = os.getpid()
    assert cpu_seconds(pid) > 0
    rss, pss = rss_mb(pid), rss_mb(pid, "Pss")
    assert 5 < pss <= rss < 2000

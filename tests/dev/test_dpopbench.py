"""``broker bench dpop`` on the session's OpenBao, tiny: every round mints and verifies both
ways, and the summary quotes medians with the plain baseline beside them."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from broker.dev.devstack import DevServer
from broker.dev.dpopbench import _run

pytestmark = pytest.mark.integration


async def test_tiny_run_reports_both_settings_and_their_ratio(
    openbao: DevServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two rounds of 8 mints and 20 verifies each way: one line per round, then medians of
    wall and CPU time per operation with the ratio to the plain baseline."""
    args = argparse.Namespace(rounds=2, mints=8, verifies=20, chunks=2, concurrency=3, alg="EdDSA")
    await _run(args, openbao, tmp_path)
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out[:2]] == ["round 1", "round 2"]
    summary = [x for x in out if x.startswith("median ")]
    assert [x.split(" over ")[0] for x in summary] == [
        "median wall per mint",
        "median CPU per mint",
        "median wall per verify",
        "median CPU per verify",
    ]
    for line in summary:
        assert re.search(r"plain \d+ us, with DPoP \d+ us \(\+-?\d+ us, ratio \d+\.\d\d\)", line)
    assert out[-1].startswith("making one EdDSA proof")

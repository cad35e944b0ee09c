"""`broker verify` as a gateway runs it: a token bound to its call's inputs is not accepted
without them, unless the gateway says it does not check the binding (--no-binding)."""

from __future__ import annotations

import json

import pytest

from tests.harness import Harness
from tests.ops.test_control_live import broker, live, mint, operator  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


async def test_verify_without_inputs_says_the_binding_was_not_checked_and_fails(
    live: Harness,  # noqa: F811 - fixture
    operator: str,  # noqa: F811 - fixture
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No --inputs: exit 1 naming the unchecked binding; --no-binding: 0 with a warning;
    the real inputs: 0; other inputs: refused."""
    token = (await mint(live, "tickets.read"))["token"]
    assert await broker("verify", token, "--no-manifest-check", "--audience", "tickets") == 1
    assert "binding_unchecked" in capsys.readouterr().err
    assert (
        await broker(
            "verify", token, "--no-manifest-check", "--audience", "tickets", "--no-binding"
        )
        == 0
    )
    assert "input binding not checked" in capsys.readouterr().err
    assert (
        await broker(
            "verify", token, "--no-manifest-check", "--audience", "tickets", "--inputs", "{}"
        )
        == 0
    )
    other = json.dumps({"id": "T-2"})
    assert (
        await broker(
            "verify", token, "--no-manifest-check", "--audience", "tickets", "--inputs", other
        )
        == 1
    )
    assert "inputs_mismatch" in capsys.readouterr().err

"""`broker verify` and DPoP-bound tokens: without a proof the token is refused; with the
holder's proof for the request (--dpop-file, --method, --url) it verifies; with a proof for
another URL it is refused. Real OpenBao and sidecar."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.client import AsyncBrokerClient
from broker.dpop import DPoPKey
from tests.harness import Harness
from tests.ops.test_control_live import broker, live, operator  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

URL = "https://tickets.example/v1/tickets/T-1"


async def test_verify_checks_the_proof_of_a_bound_token(
    live: Harness,  # noqa: F811 - fixture
    operator: str,  # noqa: F811 - fixture
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No proof: dpop_required; the holder's proof: 0 and the claims name the key; a proof
    for another URL: dpop_wrong_url; --dpop-file without --url: a usage error."""
    key = DPoPKey.generate("ES256")
    async with AsyncBrokerClient(live.url, dpop=key) as client:
        token = (await client.credential("tickets.read", {})).token
    assert token is not None
    base = ["verify", token, "--no-manifest-check", "--audience", "tickets", "--inputs", "{}"]
    proof, other = tmp_path / "proof", tmp_path / "other"
    proof.write_text(key.proof("GET", URL, token))
    other.write_text(key.proof("GET", URL + "/x", token))
    assert await broker(*base) == 1
    assert "dpop_required" in capsys.readouterr().err
    assert await broker(*base, "--dpop-file", str(proof), "--method", "GET", "--url", URL) == 0
    assert key.thumbprint in capsys.readouterr().out
    assert await broker(*base, "--dpop-file", str(other), "--method", "GET", "--url", URL) == 1
    assert "dpop_wrong_url" in capsys.readouterr().err
    assert await broker(*base, "--dpop-file", str(proof), "--method", "GET") != 0
    assert "go together" in capsys.readouterr().err

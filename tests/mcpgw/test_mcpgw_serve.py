"""Serving the gateway: loopback only."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.mcpgw.serve import serving_http
from tests.mcp_fixtures import gateway_config


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::"])  # noqa: S104 - refused here
async def test_gateway_refuses_to_listen_beyond_loopback(tmp_path: Path, host: str) -> None:
    """Any non-loopback address is refused before anything listens."""
    config = gateway_config("http://127.0.0.1:9/mcp", tmp_path / "ca.pem")
    with pytest.raises(ValueError, match="loopback only"):
        async with serving_http(config, str(tmp_path / "s.sock"), host=host):
            pytest.fail("the gateway started")

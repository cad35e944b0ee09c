"""The separate metrics/probe listener: /metrics, /healthz and /readyz on a network address,
never the credential API; alive while the sidecar waits for Vault."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest

from broker.core.errors import ConfigError
from broker.dev.devstack import DevServer
from broker.sidecar.probes import parse_metrics_listen
from tests.harness import SCOPES, free_port, running_sidecar

REFUND = SCOPES / "support-refund-agent.yaml"


@pytest.mark.integration
async def test_metrics_listener_serves_probes_and_metrics_but_no_credential_route(
    openbao: DevServer, tmp_path: Path
) -> None:
    """A mint through the API shows on the metrics port; every API route there is 404."""
    async with running_sidecar(
        openbao, REFUND, tmp_path, metrics_listen=f"0.0.0.0:{free_port()}"
    ) as h:
        status, body, _ = await h.ask("stripe.refund", {"ticket_id": "CS-4", "amount_usd": 5})
        assert status == 200, body
        port = h.sidecar.metrics_url.rsplit(":", 1)[1]
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/metrics") as resp:
                text = await resp.text()
                assert resp.status == 200
            wanted = re.compile(
                r'^broker_decisions_total\{(?=[^}]*action="stripe\.refund")'
                r'(?=[^}]*outcome="allow")[^}]*\} 1\.0$',
                re.M,
            )
            assert wanted.search(text), text[:500]
            for path in ("/healthz", "/readyz"):
                async with http.get(f"{base}{path}") as resp:
                    assert resp.status == 200, path
            body = {"action": "stripe.refund", "inputs": {"ticket_id": "CS-5", "amount_usd": 5}}
            async with http.post(f"{base}/v1/credentials", json=body) as resp:
                assert resp.status in (404, 405)
            for path in ("/v1/scope", "/openapi.json", "/access/v1/evaluation"):
                async with http.get(f"{base}{path}") as resp:
                    assert resp.status == 404, path


@pytest.mark.integration
async def test_metrics_listener_is_alive_while_vault_is_unreachable(
    openbao: DevServer, tmp_path: Path
) -> None:
    """Vault unreachable: the probe port says alive on /healthz and 503 on /readyz, with why."""
    async with running_sidecar(
        openbao,
        REFUND,
        tmp_path,
        metrics_listen=f"127.0.0.1:{free_port()}",
        vault_addr=f"http://127.0.0.1:{free_port()}",
    ) as h:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{h.sidecar.metrics_url}/healthz") as resp:
                assert resp.status == 200
            async with http.get(f"{h.sidecar.metrics_url}/readyz") as resp:
                body = await resp.json()
                assert resp.status == 503
        assert "unreachable" in body["problems"]["vault"]


@pytest.mark.parametrize("text", ["9102", ":9102", "0.0.0.0:", "0.0.0.0:port", "h:70000"])
def test_metrics_listen_refusals(text: str) -> None:
    """--metrics-listen needs HOST:PORT."""
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_metrics_listen(text)


def test_metrics_listen_accepts_any_host() -> None:
    """Unlike --listen, any host is accepted: the listener has no credential route."""
    assert parse_metrics_listen("0.0.0.0:9102") == ("0.0.0.0", 9102)  # noqa: S104 - the point
    assert parse_metrics_listen("[::]:9102") == ("::", 9102)

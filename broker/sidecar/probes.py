"""The optional metrics and probe listener (``--metrics-listen 0.0.0.0:9102``).

Prometheus and the kubelet reach a pod over its network address, while the credential API
stays on the unix socket (or loopback). This listener serves exactly ``/metrics``,
``/healthz`` and ``/readyz``, read-only and without a request body; anything else is 404, so
binding it beyond loopback exposes no credential route. It starts before the sidecar has its
service (a manifest from Vault may still be loading): alive on /healthz, 503 on /readyz and
/metrics until then, so a liveness probe does not restart a pod that is waiting for Vault."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from broker.core.errors import ConfigError
from broker.sidecar.service import CredentialService

Current = Callable[[], CredentialService | None]


def parse_metrics_listen(text: str) -> tuple[str, int]:
    """HOST:PORT; any host (this listener carries no credential route)."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"--metrics-listen {text!r}: expected HOST:PORT, e.g. 0.0.0.0:9102")
    return host.strip("[]"), int(port)


def probe_app(current: Current, why: Callable[[], str]) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "up"})

    async def readyz(request: web.Request) -> web.Response:
        service = current()
        if service is None:
            body = {"ready": False, "problems": {"vault": why(), "manifest": "not loaded yet"}}
            return web.json_response(body, status=503)
        ready, detail = service.readiness()
        return web.json_response(detail, status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        service = current()
        if service is None or service.metrics is None:
            return web.json_response({"error": "not_ready", "detail": why()}, status=503)
        body, content_type = service.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application(client_max_size=1)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


class ProbeListener:
    """The listener's lifetime: ``start`` returns its URL, ``stop`` closes it."""

    def __init__(self, address: str, current: Current, why: Callable[[], str]) -> None:
        self.host, self.port = parse_metrics_listen(address)
        self._runner = web.AppRunner(probe_app(current, why), access_log=None)
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self._runner.server, self.host, self.port)  # type: ignore[arg-type]
        self._server = server
        port = server.sockets[0].getsockname()[1]
        return f"http://{self.host}:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._runner.cleanup()

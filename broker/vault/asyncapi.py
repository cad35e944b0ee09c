"""A small asyncio client for the Vault calls on the mint path and the control poll.

hvac is synchronous: every call costs a thread hand-off and the GIL ping-pong that comes
with it, which at hundreds of mints a second is most of the sidecar's overhead, and about
0.8 ms of Python per call held in a thread (against 0.15 ms here). The hot calls (child
token creation, the control poll's reads and the heartbeat) go through a pooled aiohttp
session, and so does every other call of a running sidecar: ``run`` takes an operation of
``broker.vault.calls``, which the command line runs over hvac. Errors are translated here, as in ``_errors``: nothing of aiohttp
leaks past this module, and no token appears in a message."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp

from broker.core.errors import BackendUnavailable, BrokerError, NotFound
from broker.settings import VaultTLS, tls_from_env
from broker.vault import calls
from broker.vault.calls import Answer, Call, Run, Steps, error_for, expect, tls_problem, unreachable
from broker.vault.endpoints import VaultEndpoints, node_state
from broker.vault.layout import KV_MOUNT

T = TypeVar("T")


def ssl_context(tls: VaultTLS) -> ssl.SSLContext | bool:
    """aiohttp's ``ssl``: the same trust as ``make_client`` gives hvac (``False``: unverified).
    With the system's CAs and no client certificate: ``True``, aiohttp's own verifying context
    (``ssl.create_default_context()``, made once at import): a context per client loaded the
    whole CA bundle again, about 1 MB resident each, four times in every sidecar."""
    if tls.skip_verify:
        return False
    if tls.cacert is None and tls.capath is None and tls.client_cert is None:
        return True
    cafile = str(tls.cacert) if tls.cacert else None
    capath = str(tls.capath) if tls.capath else None
    ctx = ssl.create_default_context(cafile=cafile, capath=capath)
    if tls.client_cert and tls.client_key:
        ctx.load_cert_chain(str(tls.client_cert), str(tls.client_key))
    return ctx


def _unreachable(exc: Exception, addr: str, operation: str) -> BackendUnavailable:
    # Under TLS 1.3 a refused client certificate arrives after the handshake, on the first
    # read: an OSError caused by an SSLError, not a ClientSSLError.
    if isinstance(exc, aiohttp.ClientSSLError) or isinstance(exc.__cause__, ssl.SSLError):
        return BackendUnavailable(tls_problem(str(exc), addr, operation))
    return unreachable(addr, operation, exc)


class AsyncVault:
    def __init__(
        self,
        addr: str,
        token: Callable[[], str],
        *,
        timeout: float = 5.0,
        pool: int = 64,
        tls: VaultTLS | None = None,
        endpoints: VaultEndpoints | None = None,
    ) -> None:
        self._addr = addr.rstrip("/")
        # With ``endpoints``: the active node of a cluster, switched with every other client.
        self._endpoints = endpoints
        self._tls = tls or tls_from_env(addr=addr)
        self._headers = {"X-Vault-Request": "true"}
        if self._tls.namespace:
            self._headers["X-Vault-Namespace"] = self._tls.namespace
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._pool = pool
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"AsyncVault(addr={self.addr!r})"

    @property
    def addr(self) -> str:
        return self._endpoints.current if self._endpoints else self._addr

    def _all_headers(self) -> dict[str, str]:
        return {**self._headers, **self._endpoints.headers()} if self._endpoints else self._headers

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            # A late call after shutdown (a rotation thread, a late revocation) fails like
            # any unreachable Vault instead of opening a session nobody closes.
            raise BackendUnavailable(f"the client for Vault at {self.addr} is closed")
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._pool, limit_per_host=self._pool, ssl=ssl_context(self._tls)
            )
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, path: str, body: dict[str, Any], operation: str) -> dict[str, Any]:
        return await self._call("POST", path, body, operation)

    async def get(self, path: str, operation: str) -> dict[str, Any]:
        return await self._call("GET", path, None, operation)

    async def get_text(self, path: str, operation: str) -> str:
        """A non-JSON answer (the CA's PEM), as text."""
        try:
            async with self._http().get(
                f"{self.addr}/v1/{path}", headers=self._all_headers(), allow_redirects=False
            ) as resp:
                text, status = await resp.text(), resp.status
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise _unreachable(exc, self.addr, operation) from exc
        if status < 300:
            return text
        raise error_for(Answer(status, None, self.addr), operation)

    async def kv_read(self, path: str) -> dict[str, Any] | None:
        """A document on the broker's KV v2 mount; ``None`` when there is none (or deleted)."""
        return (await self.kv_read_versioned(path))[0]

    async def kv_read_versioned(self, path: str) -> tuple[dict[str, Any] | None, int]:
        """The document and its KV version (0 when never written)."""
        return await self.run(calls.kv_read_versioned(path))

    async def kv_version(self, path: str) -> tuple[int, str]:
        """The KV version of ``path`` and Vault's ``created_time`` of it (0 and "" when never
        written). The pair names one write to one Vault; the number alone recurs (another
        cluster at the same count, the document's metadata deleted and written again)."""
        try:
            found = await self.get(f"{KV_MOUNT}/data/{path}", f"read of {KV_MOUNT}/{path}")
        except NotFound:
            return 0, ""
        meta = (found.get("data") or {}).get("metadata") or {}
        return int(meta.get("version") or 0), str(meta.get("created_time") or "")

    async def kv_write(self, path: str, doc: dict[str, Any]) -> None:
        await self.post(f"{KV_MOUNT}/data/{path}", {"data": doc}, f"write of {KV_MOUNT}/{path}")

    async def run(self, steps: Steps[T]) -> T:
        """Run an operation of ``broker.vault.calls`` on this client."""
        run = Run(steps)
        outcome: Answer | BrokerError | None = None
        while (call := run.next(outcome)) is not None:
            try:
                outcome = await self.send(call)
            except BrokerError as exc:
                outcome = exc
        return run.result  # type: ignore[return-value]  # set when the generator returned

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None, operation: str
    ) -> dict[str, Any]:
        return await self.run(expect(Call(method, path, operation, body)))

    async def send(self, call: Call) -> Answer:
        """One request; its status and JSON, or BackendUnavailable when nothing answered."""
        token = self._token() if call.token is None else call.token
        headers = {"X-Vault-Token": token, **self._all_headers()} if token else self._all_headers()
        addr = self.addr
        try:
            # No redirects: a standby that cannot forward redirects to the active node it
            # last knew, which during an election is the dead one; better to fail and look.
            async with self._http().request(
                call.method, f"{addr}/v1/{call.path}", json=call.body, headers=headers,
                allow_redirects=False,
            ) as resp:  # fmt: skip
                doc = await resp.json(content_type=None) if resp.content_length != 0 else {}
                return Answer(resp.status, doc, addr)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise _unreachable(exc, addr, call.operation) from exc


async def find_active(endpoints: VaultEndpoints) -> bool:
    """``VaultEndpoints.find_active`` on the event loop: every node asked at once."""
    timeout = aiohttp.ClientTimeout(total=endpoints.probe_timeout)
    connector = aiohttp.TCPConnector(ssl=ssl_context(endpoints.tls))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        states = await asyncio.gather(*(_health(http, addr) for addr in endpoints.addrs))
    return endpoints.choose(states)


async def _health(http: aiohttp.ClientSession, addr: str) -> tuple[str, str]:
    try:
        async with http.get(f"{addr}/v1/sys/health", allow_redirects=False) as resp:
            doc = await resp.json(content_type=None) if resp.content_length != 0 else {}
            return node_state(resp.status, doc)
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return "down", ""


class LoopBridge:
    """For synchronous code in a worker thread (the approval, delegation and ledger stores,
    the signer's rotation): each Vault operation it drives runs on the event loop's
    ``AsyncVault``, and the thread waits for it. A ``StepRunner`` of ``broker.vault.calls``."""

    def __init__(self, vault: AsyncVault, loop: asyncio.AbstractEventLoop) -> None:
        self.vault, self._loop = vault, loop

    def __repr__(self) -> str:
        return f"LoopBridge({self.vault!r})"

    @property
    def url(self) -> str:
        return self.vault.addr

    def run_steps(self, steps: Steps[T]) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:  # it would wait for itself
            raise RuntimeError("LoopBridge.run_steps called on its own event loop")
        future = asyncio.run_coroutine_threadsafe(self.vault.run(steps), self._loop)
        try:
            return future.result(timeout=BRIDGE_WAIT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise BackendUnavailable(
                f"Vault at {self.vault.addr}: no answer within {BRIDGE_WAIT:g} s"
            ) from None


# A worker thread waits at most this for an operation it handed to the loop (each request
# in it has its own, shorter timeout: this only bounds a loop that stopped serving).
BRIDGE_WAIT = 60.0
# Threads that hand Vault calls to the loop and wait (``LoopBridge``) have their own pool:
# in the loop's default executor they could take every thread the loop itself needs to
# resolve Vault's host name (aiohttp looks names up there), and each would wait for a
# lookup that waits for it, until every call timed out with Vault up.
# Threads start only as calls need them (before, the stores shared the 64 of the default pool).
_BRIDGED = concurrent.futures.ThreadPoolExecutor(32, thread_name_prefix="vault-bridged")


async def off_loop(func: Callable[..., T], *args: Any) -> T:
    """``asyncio.to_thread`` for code that may drive Vault through a ``LoopBridge``."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_BRIDGED, functools.partial(func, *args))

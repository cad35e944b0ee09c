"""Several addresses of one Vault/OpenBao HA cluster, and the one that is active now.

A sidecar may be given every node of a cluster (``VAULT_ADDR=http://a:8200,http://b:8200``,
or ``BROKER_VAULT_ADDRS``). Every client it builds (the hvac session, the aiohttp clients of
the mint path and the control poll) takes its address from one ``VaultEndpoints``, so they
switch together. ``find_active`` asks each node's ``sys/health`` (200: active, 429/473:
standby, 503: sealed, no answer: down) and moves every client to the active one; the runtime
calls it when a poll fails, so a sidecar follows the active node through an election.

Why every request must reach the active node: OpenBao's standbys answer reads from their own
copy of the Raft log (measured on the three-node fixture: a standby that was paused for a
moment served a control document five versions old, and a new mount's documents as 404). A
revocation read from a lagging standby would be missed. So on a cluster every request
carries a consistency index no node has reached together with ``X-Vault-Inconsistent:
forward-active-node``: a standby then forwards the request to the active node, the active
node serves it (it does not check the index), and a standby that cannot forward fails the
request instead of answering from its own copy."""

from __future__ import annotations

import base64
import json
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from broker.settings import VaultTLS

HEALTH = {200: "active", 429: "standby", 472: "standby", 473: "standby", 501: "uninitialised"}
# Far past any Raft index a cluster reaches: standbys never satisfy it, so they forward.
UNREACHED_INDEX = "18446744073709551000"


def requests_verify(tls: VaultTLS) -> bool | str:
    """requests' ``verify``: explicit, so REQUESTS_CA_BUNDLE can neither help nor hurt."""
    if tls.skip_verify:
        return False
    trust = tls.cacert or tls.capath
    return str(trust) if trust else True


class VaultEndpoints:
    """The addresses in order of preference and the index of the one in use. Thread-safe:
    hvac calls run in threads, the runtime switches from its event loop."""

    def __init__(self, addrs: Sequence[str], tls: VaultTLS, probe_timeout: float = 1.0) -> None:
        if not addrs:
            raise ValueError("no Vault address")
        self.addrs = tuple(a.rstrip("/") for a in addrs)
        self.tls = tls
        self.probe_timeout = probe_timeout
        self.cluster_id = ""
        self.switches = 0  # how often the active node moved, for /readyz and the tests
        self._index = 0
        self._lock = threading.Lock()
        self._clients: weakref.WeakSet[Any] = weakref.WeakSet()

    def __repr__(self) -> str:
        return f"VaultEndpoints(current={self.current!r}, addrs={len(self.addrs)})"

    @property
    def current(self) -> str:
        return self.addrs[self._index]

    @property
    def clustered(self) -> bool:
        return len(self.addrs) > 1

    def headers(self) -> dict[str, str]:
        """Headers that make any node serve a request from the active node (module doc);
        none for a single address or before the cluster's id is known."""
        if not (self.clustered and self.cluster_id):
            return {}
        index = json.dumps({"cluster": self.cluster_id, "value": UNREACHED_INDEX})
        return {
            "X-Vault-Index": base64.b64encode(index.encode()).decode(),
            "X-Vault-Inconsistent": "forward-active-node",
        }

    def attach(self, client: Any) -> None:
        """A long-lived hvac client follows the active node from now on."""
        with self._lock:
            self._clients.add(client)
            self._apply(client)

    def _apply(self, client: Any) -> None:
        client.url = self.current
        client.session.headers.update(self.headers())

    def health(self, addr: str) -> tuple[str, str]:
        """(state, cluster id) of one node; state ``down`` when it does not answer. Over
        requests, for the command line (a sidecar asks with ``broker.vault.asyncapi``)."""
        import requests  # here: a sidecar never loads requests

        try:
            resp = requests.get(
                f"{addr}/v1/sys/health",
                timeout=self.probe_timeout,
                verify=requests_verify(self.tls),
                allow_redirects=False,
            )
            doc = resp.json() if resp.content else {}
        except (requests.RequestException, ValueError):
            return "down", ""
        return node_state(resp.status_code, doc)

    def find_active(self) -> bool:
        """Ask every node at once; move every client to the active one. False when none is
        active (an election, or every node down): the clients stay where they were."""
        with ThreadPoolExecutor(len(self.addrs)) as pool:
            return self.choose(list(pool.map(self.health, self.addrs)))

    def choose(self, states: Sequence[tuple[str, str]]) -> bool:
        """Switch to the active node among every node's (state, cluster id), if any."""
        for index, (state, cluster_id) in enumerate(states):
            if state == "active":
                self._switch(index, cluster_id)
                return True
        return False

    def _switch(self, index: int, cluster_id: str) -> None:
        with self._lock:
            if index != self._index:
                self.switches += 1
            self._index, self.cluster_id = index, cluster_id or self.cluster_id
            for client in list(self._clients):
                self._apply(client)


def node_state(status: int, doc: Any) -> tuple[str, str]:
    """A node's state from the status of its ``sys/health`` and its cluster id."""
    state = HEALTH.get(status, "sealed" if status == 503 else "other")
    return state, str(doc.get("cluster_id") or "") if isinstance(doc, dict) else ""

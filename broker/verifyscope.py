"""Where a verifier finds what each agent's manifest lets its tokens say (``ManifestView``).

An agent's certificate proves which agent signed a token; only its manifest says which
actions and audiences that agent may sign for. ``ManifestScopes`` answers from manifests in
hand (files, in development); ``PublishedScopes`` from the manifests platform editors
published to Vault, re-read every ``refresh`` seconds. A name is looked up exactly as the
token spells it: ``Research-Agent`` finds no manifest, whatever case Vault's PKI let through.

Fail closed: a manifest that cannot be read is a ``VerificationError`` (``manifest_unavailable``),
never an acceptance; a newly published version that does not validate leaves the last good
one in force, as in the sidecar."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from broker.core.errors import BrokerError, ManifestError, VerificationError
from broker.core.manifest import JwtCredential, Manifest
from broker.verify import ActionScope

log = logging.getLogger(__name__)

REFRESH_SECONDS = 30.0


def scope_in(manifest: Manifest | None, action: str, missing: str) -> ActionScope | None:
    """The audience and TTL a manifest gives a jwt action; None for any other action.
    No manifest at all is refused here, saying ``missing`` (where it was looked for)."""
    if manifest is None:
        raise VerificationError(missing, code="outside_manifest")
    spec = manifest.actions.get(action)
    if spec is None or not isinstance(spec.credential, JwtCredential):
        return None
    credential = spec.credential
    return ActionScope(credential.audience, int(credential.ttl), credential.dpop == "required")


class ManifestScopes:
    """A ``ManifestView`` over manifests in hand, keyed by their exact agent name."""

    def __init__(self, manifests: Iterable[Manifest]) -> None:
        self._by_agent: Mapping[str, Manifest] = {m.agent: m for m in manifests}

    def scope_of(self, agent: str, action: str) -> ActionScope | None:
        missing = f"no manifest for agent {agent!r} among the manifest files"
        return scope_in(self._by_agent.get(agent), action, missing)


Fetch = Callable[[str], Manifest | None]


class PublishedScopes:
    """A ``ManifestView`` over published manifests; ``fetch(agent)`` returns the validated
    current manifest, None when none is published, and raises ``ManifestError`` for a
    version that does not validate or ``BrokerError`` when Vault cannot be read."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        refresh: float = REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch, self._refresh, self._clock = fetch, refresh, clock
        self._cache: dict[str, tuple[float, Manifest | None]] = {}

    def scope_of(self, agent: str, action: str) -> ActionScope | None:
        missing = f"no manifest is published for agent {agent!r} (broker scopes publish)"
        return scope_in(self._manifest(agent), action, missing)

    def _manifest(self, agent: str) -> Manifest | None:
        now = self._clock()
        hit = self._cache.get(agent)
        if hit is not None and now - hit[0] < self._refresh:
            return hit[1]
        try:
            manifest = self._fetch(agent)
        except ManifestError as exc:
            if hit is None:
                raise VerificationError(
                    f"no valid manifest for {agent!r}: {exc.detail}", code="manifest_unavailable"
                ) from exc
            log.warning("keeping the last good manifest of %s: %s", agent, exc.detail)
            manifest = hit[1]
        except BrokerError as exc:
            raise VerificationError(
                f"the manifest of {agent!r} cannot be read: {exc.detail}",
                code="manifest_unavailable",
            ) from exc
        self._cache[agent] = (now, manifest)
        return manifest


def vault_fetch(client: Any, addr: str = "") -> Fetch:
    """A ``Fetch`` reading ``broker-kv/manifests/<agent>`` with a verifier's Vault client."""
    from broker.sidecar.watcher import validate_published
    from broker.vault.manifests import read_manifest

    def fetch(agent: str) -> Manifest | None:
        published = read_manifest(client, agent, addr=addr)
        return None if published is None else validate_published(published, agent)

    return fetch

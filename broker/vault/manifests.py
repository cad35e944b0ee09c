"""Published scope manifests in Vault: KV v2 at ``broker-kv/manifests/<agent>``, versioned.

Each version is one document: the YAML text exactly as reviewed, its content hash, policy
version, and who published it when. Vault's policies decide who may write (the platform
editor) and who may read (the platform editor, and each agent's own sidecar for its own
manifest only); this module only shapes the documents and translates errors.

A document is a claim, not a proof: readers re-validate the YAML and compare the content
hash before trusting it (``broker.sidecar.watcher``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker.vault._errors import translate_errors
from broker.vault.layout import KV_MOUNT

if TYPE_CHECKING:
    import hvac

MANIFEST_PREFIX = "manifests"
DOC_FORMAT = 1


def manifest_path(agent: str) -> str:
    """The KV v2 path (without the mount) of an agent's published manifest."""
    return f"{MANIFEST_PREFIX}/{agent}"


@dataclass(frozen=True)
class PublishedManifest:
    """One stored version, as found in Vault (not yet validated)."""

    agent: str
    version: int
    yaml: str
    content_hash: str
    policy_version: str
    published_by: str
    published_at: float

    def to_doc(self) -> dict[str, Any]:
        return {
            "format": DOC_FORMAT,
            "agent": self.agent,
            "yaml": self.yaml,
            "content_hash": self.content_hash,
            "policy_version": self.policy_version,
            "published_by": self.published_by,
            "published_at": self.published_at,
        }

    @classmethod
    def from_doc(cls, agent: str, version: int, doc: dict[str, Any]) -> PublishedManifest:
        """Missing or mistyped fields become empty values: validation refuses them later."""
        return cls(
            agent=str(doc.get("agent", "")),
            version=version,
            yaml=doc["yaml"] if isinstance(doc.get("yaml"), str) else "",
            content_hash=str(doc.get("content_hash", "")),
            policy_version=str(doc.get("policy_version", "")),
            published_by=str(doc.get("published_by", "")),
            published_at=_number(doc.get("published_at")),
        )


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def write_manifest(
    client: hvac.Client, published: PublishedManifest, addr: str = "", *, cas: int | None = None
) -> int:
    """Store a new version and return its number. ``cas`` is the version expected current
    (0: none yet), so two editors publishing at once cannot silently overwrite each other."""
    with translate_errors(f"publish of {KV_MOUNT}/{manifest_path(published.agent)}", addr):
        result = client.secrets.kv.v2.create_or_update_secret(
            path=manifest_path(published.agent),
            secret=published.to_doc(),
            cas=cas,
            mount_point=KV_MOUNT,
        )
    return int(result["data"]["version"])


def read_manifest(
    client: hvac.Client, agent: str, version: int | None = None, addr: str = ""
) -> PublishedManifest | None:
    """The current (or a given) version; ``None`` when nothing is published (or deleted)."""
    import hvac  # only here: a sidecar without this feature never loads it

    with translate_errors(f"read of {KV_MOUNT}/{manifest_path(agent)}", addr):
        try:
            result = client.secrets.kv.v2.read_secret_version(
                path=manifest_path(agent),
                version=version,
                mount_point=KV_MOUNT,
                raise_on_deleted_version=False,
            )
        except hvac.exceptions.InvalidPath:
            return None
    data = (result or {}).get("data") or {}
    doc, meta = data.get("data"), data.get("metadata") or {}
    if not isinstance(doc, dict):
        return None
    return PublishedManifest.from_doc(agent, int(meta.get("version") or 0), doc)


def manifest_versions(client: hvac.Client, agent: str, addr: str = "") -> dict[int, str]:
    """Every version number with its creation time (RFC 3339), oldest first."""
    import hvac  # only here: a sidecar without this feature never loads it

    with translate_errors(f"metadata read of {KV_MOUNT}/{manifest_path(agent)}", addr):
        try:
            result = client.secrets.kv.v2.read_secret_metadata(
                path=manifest_path(agent), mount_point=KV_MOUNT
            )
        except hvac.exceptions.InvalidPath:
            return {}
    versions = (result.get("data") or {}).get("versions") or {}
    return {int(v): str(m.get("created_time", "")) for v, m in sorted(versions.items(), key=_key)}


def _key(item: tuple[str, Any]) -> int:
    return int(item[0])


def raw_write(client: hvac.Client, agent: str, doc: dict[str, Any], addr: str = "") -> int:
    """Write any document at an agent's manifest path, bypassing every check (tests, drills)."""
    with translate_errors(f"write of {KV_MOUNT}/{manifest_path(agent)}", addr):
        result = client.secrets.kv.v2.create_or_update_secret(
            path=manifest_path(agent), secret=doc, mount_point=KV_MOUNT
        )
    return int(result["data"]["version"])

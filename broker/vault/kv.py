"""Small KV v2 helpers on the broker's mount: read a document, write one, list keys, and
change one with check-and-set (``kv_update``), which every control-state write goes through.

A missing document reads as ``None``; every other failure is translated."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from broker.core.errors import BackendUnavailable
from broker.vault import calls
from broker.vault._errors import translate_errors
from broker.vault.calls import drive
from broker.vault.layout import KV_MOUNT

if TYPE_CHECKING:
    import hvac


def kv_read(client: hvac.Client, path: str, addr: str = "") -> dict[str, Any] | None:
    return kv_read_versioned(client, path, addr)[0]


def kv_write(client: hvac.Client, path: str, doc: dict[str, Any], addr: str = "") -> None:
    with translate_errors(f"write of {KV_MOUNT}/{path}", addr):
        client.secrets.kv.v2.create_or_update_secret(path=path, secret=doc, mount_point=KV_MOUNT)


def kv_list(client: hvac.Client, path: str, addr: str = "") -> list[str]:
    return drive(client, calls.kv_list(path))


def kv_read_versioned(
    client: hvac.Client, path: str, addr: str = ""
) -> tuple[dict[str, Any] | None, int]:
    """The document and its current version (0 when the path was never written): the
    version is what a check-and-set write must name."""
    return drive(client, calls.kv_read_versioned(path))


def kv_write_cas(
    client: hvac.Client, path: str, doc: dict[str, Any], cas: int, addr: str = ""
) -> int | None:
    """Write ``doc`` only if the current version is ``cas`` (0: only if absent). Returns the
    new version, or None when another writer got there first."""
    return drive(client, calls.kv_write_cas(path, doc, cas))


Mutation = Callable[[dict[str, Any]], dict[str, Any]]


def kv_update(
    client: hvac.Client,
    path: str,
    mutate: Mutation,
    addr: str = "",
    *,
    attempts: int = 50,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[dict[str, Any], int]:
    """Read, change, write back with check-and-set, and start over when another writer
    changed the document in between: no concurrent writer's change is ever lost.
    ``mutate`` gets a copy of the current document and returns the new one."""
    for attempt in range(attempts):
        current, version = kv_read_versioned(client, path, addr)
        new = mutate(dict(current or {}))
        written = kv_write_cas(client, path, new, version, addr)
        if written is not None:
            return new, written
        # Back off a little, at random, so that writers racing each other spread out.
        sleep(0.002 * (1 + attempt % 8) * (1 + secrets.randbelow(1000) / 1000))
    raise BackendUnavailable(
        f"{KV_MOUNT}/{path}: {attempts} check-and-set writes in a row lost to other writers"
    )


def kv_delete(client: hvac.Client, path: str, addr: str = "") -> None:
    """Delete every version and the metadata of ``path``."""
    with translate_errors(f"delete of {KV_MOUNT}/{path}", addr):
        client.secrets.kv.v2.delete_metadata_and_all_versions(path=path, mount_point=KV_MOUNT)

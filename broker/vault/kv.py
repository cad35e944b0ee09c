"""Small KV v2 helpers on the broker's mount: read a document, write one, list keys.

A missing document reads as ``None``; every other failure is translated."""

from __future__ import annotations

from typing import Any

import hvac

from broker.vault._errors import translate_errors
from broker.vault.layout import KV_MOUNT


def kv_read(client: hvac.Client, path: str, addr: str = "") -> dict[str, Any] | None:
    with translate_errors(f"read of {KV_MOUNT}/{path}", addr):
        try:
            result = client.secrets.kv.v2.read_secret_version(
                path=path, mount_point=KV_MOUNT, raise_on_deleted_version=False
            )
        except hvac.exceptions.InvalidPath:
            return None
    data = (result or {}).get("data") or {}
    doc = data.get("data")
    return dict(doc) if isinstance(doc, dict) else None


def kv_write(client: hvac.Client, path: str, doc: dict[str, Any], addr: str = "") -> None:
    with translate_errors(f"write of {KV_MOUNT}/{path}", addr):
        client.secrets.kv.v2.create_or_update_secret(path=path, secret=doc, mount_point=KV_MOUNT)


def kv_list(client: hvac.Client, path: str, addr: str = "") -> list[str]:
    with translate_errors(f"list of {KV_MOUNT}/{path}", addr):
        try:
            result = client.secrets.kv.v2.list_secrets(path=path, mount_point=KV_MOUNT)
        except hvac.exceptions.InvalidPath:
            return []
    return [str(k) for k in result["data"]["keys"]]

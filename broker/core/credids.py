"""Credential and request ids: unique, not secret, and traceable to the sidecar process.

An id is a random per-process prefix and a counter (a fraction of an ``os.urandom`` call per
id, which showed in the mint profile). Each sidecar records its prefix in Vault when it logs
in (``broker.vault.registry``), so a runbook command can tell from an id alone which agent's
sidecar issued it, and refuse an id that no sidecar ever issued."""

from __future__ import annotations

import itertools
import re
import secrets

ID_PREFIX = secrets.token_hex(8)
_COUNTER = itertools.count(1)

PREFIX_LENGTH = 16
ID_PATTERN = re.compile(r"[0-9a-f]{32}")


def unique_id() -> str:
    return f"{ID_PREFIX}{next(_COUNTER):016x}"


def prefix_of(credential_id: str) -> str | None:
    """The issuing process's prefix, or None when ``credential_id`` is not a broker id."""
    if ID_PATTERN.fullmatch(credential_id) is None:
        return None
    return credential_id[:PREFIX_LENGTH]

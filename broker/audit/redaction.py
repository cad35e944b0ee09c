"""Redacted inputs wherever they are stored: the audit trail and approval documents (pure).

A redacted input is stored as a keyed hash (``audit.redact``), and so is everything derived
from it: the inputs hash written beside stored inputs is computed over their redacted form,
so neither a record nor an approval document confirms a guessed value without the key. (The
token's own input binding stays a plain hash: a gateway must recompute it from the call.)

An approval document must also let the sidecar mint for exactly the approved inputs after a
restart, so it keeps each redacted value sealed: AES-GCM under a key derived from the
redaction key, with the approval id as associated data, so a sealed value cannot be read
without the key nor moved to another approval."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.audit.records import canonical, redact
from broker.core.canonical import UnbindableInputs
from broker.core.decision import UNBINDABLE, inputs_hash

_SEAL_PURPOSE = b"broker-approval-seal/1"
_SEALED = "aesgcm:"


def stored_inputs(
    agent: str, action: str, inputs: Mapping[str, Any], fields: Iterable[str], key: bytes
) -> tuple[dict[str, Any], str]:
    """The inputs as stored (redacted fields keyed-hashed) and the hash over exactly that."""
    shown = redact(inputs, fields, key)
    try:
        return shown, inputs_hash(agent, action, shown)
    except UnbindableInputs:  # only a refused request's inputs can have no canonical form
        return shown, UNBINDABLE


def _aead(key: bytes) -> AESGCM:
    return AESGCM(hmac.new(key, _SEAL_PURPOSE, hashlib.sha256).digest())


def seal(
    inputs: Mapping[str, Any], fields: Iterable[str], key: bytes, context: str
) -> dict[str, str]:
    """Each listed input present in ``inputs``, encrypted and bound to ``context``."""
    aead, out = _aead(key), {}
    for name in fields:
        if name in inputs:
            nonce = os.urandom(12)
            sealed = aead.encrypt(nonce, canonical(inputs[name]), context.encode())
            out[name] = _SEALED + base64.b64encode(nonce + sealed).decode("ascii")
    return out


def unseal(sealed: Mapping[str, Any], key: bytes, context: str) -> dict[str, Any]:
    """The clear values; ``ValueError`` when one was altered, moved or sealed under another key."""
    aead, out = _aead(key), {}
    for name, text in sealed.items():
        if not isinstance(text, str) or not text.startswith(_SEALED):
            raise ValueError(f"sealed input {name!r} is not in {_SEALED}<base64> form")
        try:
            raw = base64.b64decode(text[len(_SEALED) :], validate=True)
            clear = aead.decrypt(raw[:12], raw[12:], context.encode())
        except (ValueError, InvalidTag) as exc:
            raise ValueError(
                f"sealed input {name!r} does not open with this sidecar's key"
            ) from exc
        out[name] = json.loads(clear)
    return out


# --- refused requests ----------------------------------------------------------------------

# A refused request's inputs are the agent's word, unchecked: up to the 64 KiB body limit of
# junk per request. Recorded as is while small; past MAX_REFUSED_INPUTS bytes, at most
# MAX_REFUSED_FIELDS fields are kept, each name or value longer than MAX_REFUSED_VALUE cut to a
# prefix with its size and SHA-256, and the whole is summarised by its size and SHA-256.
MAX_REFUSED_INPUTS = 1024
MAX_REFUSED_FIELDS = 16
MAX_REFUSED_VALUE = 128
MAX_REFUSED_DETAIL = 512


def bound_inputs(inputs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The inputs to record for a refused request, and a summary when they were cut."""
    whole = canonical(dict(inputs))
    if len(whole) <= MAX_REFUSED_INPUTS:
        return dict(inputs), None
    kept = sorted(inputs)[:MAX_REFUSED_FIELDS]
    out = {clip(name, MAX_REFUSED_VALUE): _clip_value(inputs[name]) for name in kept}
    summary = {
        "bytes": len(whole),
        "fields": len(inputs),
        "fields_kept": len(kept),
        "sha256": hashlib.sha256(whole).hexdigest(),
    }
    return out, summary


def _clip_value(value: Any) -> Any:
    if isinstance(value, str):
        return clip(value, MAX_REFUSED_VALUE)
    encoded = canonical(value)
    return value if len(encoded) <= MAX_REFUSED_VALUE else clip(encoded.decode(), 0)


def clip(text: str, limit: int) -> str:
    """``text`` if at most ``limit`` characters, else a 32-character prefix, its length and
    the start of its SHA-256 (enough to tell two long values apart, not to store them)."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{text[:32]}...[{len(text)} chars, sha256 {digest}]"

"""The audit trail's pure core: canonical lines, the hash chain, redaction and verification.

One record is one line of canonical JSON (sorted keys, no whitespace, ASCII only), so a value
containing a newline is written as ``\\n`` and can never start a second record. Each record
carries ``seq`` (1, 2, 3, ... with no gaps), ``prev`` (the previous record's hash; the first
record points at ``GENESIS``) and ``hash`` (sha256 over the canonical record without ``hash``).
Deleting, inserting, reordering or editing any line therefore breaks the chain at that line;
only a cut at the very end goes unseen here, which is what signed checkpoints, published
outside the file, are for.

Checkpoint records (``type == "checkpoint"``) are chained like any other record and carry a
signature over ``checkpoint_message(head_seq, head_hash, agent)``: the agent is in the signed
message (and each agent signs with its own key), so a checkpoint or a published head cannot be
moved from one agent's trail to another's. Nothing here reads a clock, a file or Vault:
``auditlog`` is the I/O shell.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

GENESIS = "sha256:" + "0" * 64
RESERVED = frozenset({"seq", "prev", "hash"})
CHECKPOINT = "checkpoint"
# A checkpoint may sign a head at most this many records behind itself: the verifier keeps
# only this many recent hashes, and the writer drops a checkpoint that has fallen further back.
CHECKPOINT_WINDOW = 100_000
_CHECKPOINT_PURPOSE = "broker-audit-checkpoint/2"


# Built once: ``json.dumps`` with options builds a new encoder on every call.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
)


def canonical(value: Any) -> bytes:
    """Canonical JSON bytes; ``allow_nan=False`` because NaN is not JSON any reader accepts."""
    return _CANONICAL.encode(value).encode("ascii")


def _digest(value: Any) -> str:
    return "sha256:" + hashlib.sha256(canonical(value)).hexdigest()


def iso_utc(epoch: float) -> str:
    return _iso_second(int(epoch))


@functools.lru_cache(maxsize=8)
def _iso_second(second: int) -> str:
    # One strftime per second of records rather than one per record.
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Record:
    """A sealed record: ``fields`` is exactly what is written, ``line`` its bytes."""

    seq: int
    prev: str
    hash: str
    fields: Mapping[str, Any] = field(repr=False)
    encoded: bytes = field(default=b"", repr=False, compare=False)

    @property
    def line(self) -> bytes:
        return self.encoded or canonical(self.fields) + b"\n"


def seal(body: Mapping[str, Any], prev_hash: str, seq: int) -> Record:
    """Chain ``body`` after the record whose hash is ``prev_hash``."""
    clash = RESERVED.intersection(body)
    if clash:
        raise ValueError(f"record body may not set {sorted(clash)}: the chain owns them")
    if seq < 1:
        raise ValueError("seq starts at 1")
    unsealed = {**body, "seq": seq, "prev": prev_hash}
    # One serialisation serves both the digest and the line: canonical JSON of a dict is
    # "{" + its sorted "key":value pairs + "}", so the keys before and after "hash" are
    # encoded apart and the line is the two halves with the hash pair between them.
    before = canonical({k: v for k, v in unsealed.items() if k < "hash"})[1:-1]
    after = canonical({k: v for k, v in unsealed.items() if k > "hash"})[1:-1]
    digest = "sha256:" + hashlib.sha256(b"{" + _join(before, after) + b"}").hexdigest()
    pair = b'"hash":"' + digest.encode("ascii") + b'"'
    line = b"{" + _join(_join(before, pair), after) + b"}\n"
    fields = {**unsealed, "hash": digest}
    return Record(seq=seq, prev=prev_hash, hash=digest, fields=fields, encoded=line)


def _join(left: bytes, right: bytes) -> bytes:
    return left + b"," + right if left and right else left or right


def redact(inputs: Mapping[str, Any], fields: Iterable[str], key: bytes) -> dict[str, Any]:
    """Replace each listed input by a keyed hash: equal values still correlate across
    records, but without ``key`` a guessable value (an amount, an id) cannot be confirmed."""
    out = dict(inputs)
    for name in fields:
        if name in out:
            mac = hmac.new(key, canonical(out[name]), hashlib.sha256).hexdigest()
            out[name] = "hmac-sha256:" + mac
    return out


# --- checkpoints -------------------------------------------------------------------------


def checkpoint_message(head_seq: int, head_hash: str, agent: str) -> bytes:
    """The bytes a checkpoint signs; the purpose string keeps the signature single-use and
    the agent ties it to one agent's trail."""
    return canonical(
        {
            "purpose": _CHECKPOINT_PURPOSE,
            "agent": agent,
            "head_seq": head_seq,
            "head_hash": head_hash,
        }
    )


def checkpoint_body(
    head_seq: int, head_hash: str, signature: str, key_version: int, timestamp: str, *, agent: str
) -> dict[str, Any]:
    return {
        "type": CHECKPOINT,
        "agent": agent,
        "head_seq": head_seq,
        "head_hash": head_hash,
        "signature": signature,
        "key_version": key_version,
        "timestamp": timestamp,
    }


def format_signature(version: int, raw: bytes) -> str:
    """Vault transit's signature format, which the in-memory signer imitates."""
    return f"vault:v{version}:{base64.b64encode(raw).decode('ascii')}"


def parse_signature(signature: str) -> tuple[int, bytes]:
    parts = signature.split(":")
    if len(parts) != 3 or parts[0] != "vault" or not parts[1].startswith("v"):
        raise ValueError("signature is not in vault:vN:<base64> form")
    try:
        return int(parts[1][1:]), base64.b64decode(parts[2], validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ValueError("signature is not in vault:vN:<base64> form") from exc


def signature_problem(message: bytes, signature: str, public_keys: Mapping[int, bytes]) -> str:
    """Empty when ``signature`` is a valid ed25519 signature by one of ``public_keys``."""
    try:
        version, raw = parse_signature(signature)
    except ValueError as exc:
        return str(exc)
    key = public_keys.get(version)
    if key is None:
        return f"signed with key version {version}, which the signing key does not have"
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(raw, message)
    except (InvalidSignature, ValueError):
        return f"signature does not verify with key version {version}"
    return ""


class CheckpointSigner(Protocol):
    """Signs chain heads and keeps the latest signed head outside the audit file."""

    def sign(self, message: bytes) -> tuple[str, int]: ...

    def publish_head(self, agent: str, seq: int, hash: str, signature: str) -> None: ...


class InMemorySigner:
    """A fake ``CheckpointSigner`` for unit tests: a real ed25519 key held in memory.
    Set ``down = True`` to behave like an unreachable Vault."""

    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate()
        self.version = 1
        self.down = False
        self.heads: dict[str, tuple[int, str, str]] = {}
        self.signed = 0

    def sign(self, message: bytes) -> tuple[str, int]:
        self._check_up()
        self.signed += 1
        return format_signature(self.version, self._key.sign(message)), self.version

    def publish_head(self, agent: str, seq: int, hash: str, signature: str) -> None:
        self._check_up()
        self.heads[agent] = (seq, hash, signature)

    def public_keys(self) -> dict[int, bytes]:
        raw = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {self.version: raw}

    def _check_up(self) -> None:
        if self.down:
            from broker.core.errors import BackendUnavailable

            raise BackendUnavailable("in-memory signer is down")


# --- verification ------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    count: int
    first_bad_seq: int | None = None
    problem: str = ""
    last_checkpoint: Mapping[str, Any] | None = None
    head_hash: str = GENESIS


class ChainVerifier:
    """Checks lines one at a time; ``feed`` returns a problem, or "" while the chain holds.

    ``public_keys`` also checks every checkpoint signature; ``published_head`` (seq, hash) is
    a head signed and stored outside the file, which the file must reach and agree with;
    ``agent`` is whose trail this must be: each checkpoint must name it."""

    def __init__(
        self,
        public_keys: Mapping[int, bytes] | None = None,
        published_head: tuple[int, str] | None = None,
        agent: str | None = None,
    ) -> None:
        self.agent = agent
        self.public_keys = public_keys
        self.published_head = published_head
        self.count = 0
        self.head_hash = GENESIS
        self.last_checkpoint: dict[str, Any] | None = None
        self._recent: list[str] = [""] * CHECKPOINT_WINDOW

    @property
    def expected_seq(self) -> int:
        return self.count + 1

    def feed(self, line: bytes | str) -> str:
        raw = line.encode("utf-8", "surrogatepass") if isinstance(line, str) else line
        if not raw.endswith(b"\n"):
            return "the line has no trailing newline: a torn write"
        fields, problem = parse_line(raw[:-1])
        if fields is None:
            return problem
        problem = next(self._problems(fields, raw[:-1]), "")
        if problem:
            return problem
        if fields.get("type") == CHECKPOINT:
            self.last_checkpoint = fields
        self.count += 1
        self.head_hash = fields["hash"]
        self._recent[self.count % CHECKPOINT_WINDOW] = self.head_hash
        return ""

    def finish(self) -> str:
        if self.published_head and self.count < self.published_head[0]:
            return (
                f"the file ends at seq {self.count} but Vault holds a signed head at seq "
                f"{self.published_head[0]}: records after seq {self.count} were removed"
            )
        return ""

    def _problems(self, fields: dict[str, Any], body: bytes) -> Iterator[str]:
        """Every check, cheapest and most specific first; the caller takes the first."""
        seq, prev, digest = fields.get("seq"), fields.get("prev"), fields.get("hash")
        if type(seq) is not int or not isinstance(prev, str) or not isinstance(digest, str):
            yield "not a chained record: seq, prev or hash missing or mistyped"
            return
        encoded = _canonical_or_none(fields)
        if encoded is None:
            yield "the line holds a value that is not strict JSON (NaN or Infinity)"
        elif _digest({k: v for k, v in fields.items() if k != "hash"}) != digest:
            yield f"the record's contents do not match its hash (line claims seq {seq}): altered"
        elif encoded != body:
            yield "the line is not in canonical form: it was edited"
        if seq < self.expected_seq:
            yield f"found seq {seq} after seq {self.count}: a line was inserted or lines reordered"
        if seq > self.expected_seq:
            yield f"found seq {seq}, expected {self.expected_seq}: lines deleted or reordered"
        if prev != self.head_hash:
            yield f"prev does not match the hash of seq {self.count}: a record was replaced"
        head = self.published_head
        if head and head[0] == seq and head[1] != digest:
            yield "differs from the head signed and published in Vault: the record was rewritten"
        if fields.get("type") == CHECKPOINT:
            yield from self._checkpoint_problems(fields)

    def _checkpoint_problems(self, fields: dict[str, Any]) -> Iterator[str]:
        head_seq, head_hash = fields.get("head_seq"), fields.get("head_hash")
        if type(head_seq) is not int or not isinstance(head_hash, str):
            yield "checkpoint without an integer head_seq and a head_hash"
            return
        if not max(1, self.count - CHECKPOINT_WINDOW + 1) <= head_seq <= self.count:
            yield f"checkpoint signs seq {head_seq}, outside the records before it"
            return
        if self._recent[head_seq % CHECKPOINT_WINDOW] != head_hash:
            yield f"checkpoint's head_hash is not the hash of seq {head_seq}"
        if self.last_checkpoint and head_seq < self.last_checkpoint["head_seq"]:
            yield "checkpoint signs an older head than the checkpoint before it"
        agent = fields.get("agent")
        if not isinstance(agent, str) or (self.agent is not None and agent != self.agent):
            yield f"checkpoint names agent {agent!r}, not this trail's {self.agent!r}"
            return
        if self.public_keys is not None:
            signature = fields.get("signature")
            message = checkpoint_message(head_seq, head_hash, agent)
            if not isinstance(signature, str):
                yield "checkpoint has no signature"
            elif problem := signature_problem(message, signature, self.public_keys):
                yield f"checkpoint {problem}"


def parse_line(body: bytes) -> tuple[dict[str, Any] | None, str]:
    """The object on one line (without its newline), or None and why not."""
    try:
        value = json.loads(body.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None, "the line is not valid JSON (a flipped byte or a torn write)"
    if not isinstance(value, dict):
        return None, "the line is JSON but not an object"
    return value, ""


def _canonical_or_none(value: Any) -> bytes | None:
    try:
        return canonical(value)
    except ValueError:
        return None


def verify_lines(
    lines: Iterable[bytes | str],
    *,
    public_keys: Mapping[int, bytes] | None = None,
    published_head: tuple[int, str] | None = None,
    agent: str | None = None,
) -> VerifyResult:
    """Verify a whole trail; on damage, ``first_bad_seq`` is the first seq not proven intact."""
    verifier = ChainVerifier(public_keys, published_head, agent)
    for line in lines:
        problem = verifier.feed(line)
        if problem:
            return _result(verifier, verifier.expected_seq, problem)
    problem = verifier.finish()
    if problem:
        return _result(verifier, verifier.expected_seq, problem)
    return _result(verifier, None, "")


def _result(verifier: ChainVerifier, bad: int | None, problem: str) -> VerifyResult:
    return VerifyResult(
        ok=bad is None,
        count=verifier.count,
        first_bad_seq=bad,
        problem=problem,
        last_checkpoint=verifier.last_checkpoint,
        head_hash=verifier.head_hash,
    )

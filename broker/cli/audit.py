"""``broker audit verify`` / ``broker audit trace`` and ``broker bench audit``.

Verify is strict about Vault: when an address is configured (flag or environment) and Vault
cannot be reached, it fails (exit 3, backend unavailable) rather than pass a file it could
only half check.
Without Vault (``--offline``, or no address) it checks the chain alone and says so with its
own exit code (3), never a plain "intact": a tail cut behind the last checkpoint, or records
edited after it, cannot be told apart from an intact trail without the anchors in Vault.
It walks every segment of the trail (``<file>.seg-*``, then the file) as one chain, and
says how many records lie after the last anchored head (those are not yet protected)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from broker.audit.file import chain_files
from broker.audit.records import (
    VerifyResult,
    checkpoint_message,
    parse_line,
    signature_problem,
    verify_lines,
)
from broker.cli.exit import EXIT_FAILED as EXIT_DAMAGED
from broker.cli.exit import EXIT_OK
from broker.cli.exit import EXIT_UNAVAILABLE as EXIT_UNANCHORED  # anchors not consulted
from broker.core.errors import ConfigError


def register(
    commands: argparse._SubParsersAction[Any], bench: argparse._SubParsersAction[Any]
) -> None:
    audit = commands.add_parser("audit", help="verify and search the audit trail")
    sub = audit.add_subparsers(dest="audit_command", required=True, metavar="WHAT")

    verify = sub.add_parser("verify", help="check the hash chain, checkpoints and Vault's head")
    verify.add_argument("file", type=Path)
    verify.add_argument(
        "--vault-addr", help="Vault/OpenBao address (default VAULT_ADDR or BAO_ADDR)"
    )
    verify.add_argument("--agent", help="whose published head to compare (default: from the file)")
    verify.add_argument("--offline", action="store_true", help="check the chain only; no Vault")
    verify.add_argument("--json", action="store_true", help="print the verdict as JSON")
    verify.set_defaults(func=run_verify)

    trace = sub.add_parser("trace", help="print every record of one request")
    trace.add_argument("request_id")
    trace.add_argument(
        "--file", action="append", type=Path, help="trail file(s); default BROKER_AUDIT_LOG"
    )
    trace.add_argument("--format", choices=("json", "text"), default="json")
    trace.add_argument(
        "--json", dest="format", action="store_const", const="json", help="same as --format json"
    )
    trace.set_defaults(func=run_trace)

    bench_audit = bench.add_parser("audit", help="durable appends per second, latency, fsyncs")
    bench_audit.add_argument("--records", type=int, default=20_000)
    bench_audit.add_argument("--concurrency", type=int, default=32)
    bench_audit.add_argument("--path", type=Path, help="trail file to create (default: a temp dir)")
    bench_audit.set_defaults(func=run_bench)


# --- verify ------------------------------------------------------------------------------


def run_verify(args: argparse.Namespace) -> int:
    code, verdict, lines = _verify(args)
    if args.json:
        print(json.dumps({**verdict, "exit_code": code, "lines": lines}, indent=2))
    else:
        print("\n".join(lines))
    return code


def _verify(args: argparse.Namespace) -> tuple[int, dict[str, Any], list[str]]:
    path: Path = args.file
    keys: dict[int, bytes] | None = None
    head: tuple[int, str] | None = None
    note = "checkpoint signatures and Vault's published head NOT checked (offline)"
    env_addr = os.environ.get("VAULT_ADDR") or os.environ.get("BAO_ADDR")
    base: dict[str, Any] = {"file": str(path)}
    if not args.offline and (args.vault_addr or env_addr):
        agent = args.agent or _agent_in(path)
        keys, head, problem = _from_vault(args.vault_addr, agent)
        if problem:
            line = f"DAMAGED: {path}: the head published in Vault for {agent}: {problem}"
            return EXIT_DAMAGED, {**base, "verdict": "damaged", "problem": problem}, [line]
        note = "checkpoint signatures verified with Vault's transit key; " + (
            f"the file reaches Vault's published head for {agent} (seq {head[0]})"
            if head
            else f"Vault has no published head for {agent}"
        )
    files = chain_files(path) if path.exists() else [path]
    result = _verify_file(files, keys, head, args.agent or (_agent_in(path) if keys else None))
    base |= {"records": result.count, "segments": len(files)}
    if not result.ok:
        return (
            EXIT_DAMAGED,
            {**base, "verdict": "damaged", "first_bad_seq": result.first_bad_seq,
             "problem": result.problem},
            [f"DAMAGED: {path}: first bad seq {result.first_bad_seq}: {result.problem}",
             f"  records 1..{result.count} are intact"],
        )  # fmt: skip
    segments = f" in {len(files)} segments" if len(files) > 1 else ""
    described = _describe(result.last_checkpoint)
    anchored = head[0] if head else 0
    if keys is None:
        return (
            EXIT_UNANCHORED,
            {**base, "verdict": "chain_intact_anchors_not_checked"},
            [f"chain intact, anchors NOT checked: {path}: {result.count} records{segments}",
             f"  {described}",
             f"  {note}: a tail cut behind a checkpoint, or a trail rewritten with a consistent "
             "chain, would pass this check"],
        )  # fmt: skip
    return (
        EXIT_OK,
        {**base, "verdict": "intact", "after_anchored_head": result.count - anchored},
        [f"intact: {path}: {result.count} records{segments}; {described}",
         f"  {note}",
         f"  {result.count - anchored} record(s) after the head anchored in Vault"],
    )  # fmt: skip


def _from_vault(
    addr: str | None, agent: str
) -> tuple[dict[int, bytes], tuple[int, str] | None, str]:
    """Transit's public keys and the published head, once its own signature checks out."""
    from broker.settings import vault_from_env
    from broker.vault.transit import TransitCheckpointSigner

    signer = TransitCheckpointSigner.from_settings(vault_from_env(addr=addr), agent=agent)
    keys = signer.public_keys()
    published = signer.read_head()
    if published is None:
        return keys, None, ""
    message = checkpoint_message(published.seq, published.hash, agent)
    problem = signature_problem(message, published.signature, keys)
    return keys, (published.seq, published.hash), problem


def _verify_file(
    files: list[Path],
    keys: Mapping[int, bytes] | None,
    head: tuple[int, str] | None,
    agent: str | None = None,
) -> VerifyResult:
    return verify_lines(_lines(files), public_keys=keys, published_head=head, agent=agent)


def _lines(files: list[Path]) -> Iterator[bytes]:
    for path in files:
        try:
            with path.open("rb") as lines:
                yield from lines
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc


def _describe(checkpoint: Mapping[str, Any] | None) -> str:
    if checkpoint is None:
        return "no checkpoint yet"
    return (
        f"last checkpoint at seq {checkpoint['seq']} signs seq {checkpoint['head_seq']} "
        f"(key v{checkpoint.get('key_version')}, {checkpoint.get('timestamp')})"
    )


def _agent_in(path: Path) -> str:
    for record in _records([path]):
        agent = record.get("agent_id")
        if isinstance(agent, str):
            return agent
    raise ConfigError(f"no record in {path} names its agent_id; pass --agent")


# --- trace -------------------------------------------------------------------------------


def run_trace(args: argparse.Namespace) -> int:
    named: list[Path] = args.file or _default_files()
    files = [f for path in named for f in (chain_files(path) if path.exists() else [path])]
    every = list(_records(files))
    found = _with_grants(every, list(_traced(iter(every), args.request_id)))
    for record in found:
        print(_text(record) if args.format == "text" else json.dumps(record, sort_keys=True))
    if not found:
        print(
            f"no record of request {args.request_id} in {', '.join(map(str, files))}",
            file=sys.stderr,
        )
        return EXIT_DAMAGED
    return EXIT_OK


def _traced(records: Iterator[dict[str, Any]], request_id: str) -> Iterator[dict[str, Any]]:
    """The request's own records, then those that name its credential or its approval: the
    outcome the agent reported and a revocation carry only the credential id."""
    credentials: set[str] = set()
    approvals: set[str] = set()
    for record in records:
        cid, aid = record.get("credential_id"), record.get("approval_id")
        if record.get("request_id") == request_id:
            credentials |= {cid} if isinstance(cid, str) and cid else set()
            approvals |= {aid} if isinstance(aid, str) and aid else set()
            yield record
        elif cid in credentials or aid in approvals:
            yield record


def _chain(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The delegation chain a record names (a grant's own, or the grant a credential came from)."""
    delegation = record.get("delegation")
    chain = record.get("chain") or (
        delegation.get("chain") if isinstance(delegation, dict) else None
    )
    return [a for a in chain or [] if isinstance(a, dict)]


def _with_grants(every: list[dict[str, Any]], found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The traced records and, before them, how every grant in their chains came to be (and
    ended): a delegated credential is read with the grants that allowed it."""
    grants = {a.get("grant") for record in found for a in _chain(record)}
    seen = {id(r) for r in found}
    extra = [
        r
        for r in every
        if r.get("type") == "delegation" and r.get("grant_id") in grants and id(r) not in seen
    ]
    return sorted([*extra, *found], key=lambda r: int(r.get("seq") or 0))


def _default_files() -> list[Path]:
    configured = os.environ.get("BROKER_AUDIT_LOG")
    if not configured:
        raise ConfigError("no audit trail named: pass --file or set BROKER_AUDIT_LOG")
    return [Path(configured)]


def _records(files: list[Path]) -> Iterator[dict[str, Any]]:
    """Every parsable record; tracing is for reading, verify is for judging damage."""
    for path in files:
        try:
            with path.open("rb") as lines:
                for line in lines:
                    record, _ = parse_line(line.rstrip(b"\n"))
                    if record is not None:
                        yield record
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc


_TEXT_FIELDS = (
    "event",
    "outcome",
    "status",
    "reason",
    "by",
    "approval_id",
    "credential_id",
    "ttl",
    "grant_id",
    "rule",
    "policy_version",
    "human_override",
)


def _text(record: Mapping[str, Any]) -> str:
    tools = ", ".join(
        f"{c.get('tool')}={c.get('status')}"
        for c in record.get("tool_calls") or []
        if isinstance(c, dict)
    )
    parts = [
        f"#{record.get('seq')}",
        str(record.get("timestamp", "-")),
        str(record.get("type", "-")),
        str(record.get("agent_id", "-")),
    ]
    if tools:
        parts.append(f"tools[{tools}]")
    if chain := _chain(record):
        subs = [str(record.get("agent_id", "-")), *(str(a.get("sub")) for a in chain)]
        parts.append("chain=" + " > ".join(subs))
    parts += [f"{name}={record[name]}" for name in _TEXT_FIELDS if record.get(name) is not None]
    return "  ".join(parts)


# --- bench -------------------------------------------------------------------------------


def run_bench(args: argparse.Namespace) -> int:
    from broker.dev.auditbench import bench_append

    with tempfile.TemporaryDirectory(prefix="broker-bench-audit-") as scratch:
        path = args.path or Path(scratch) / "audit.jsonl"
        result = bench_append(path, args.records, args.concurrency)
    print(json.dumps(result, indent=2))
    return EXIT_OK

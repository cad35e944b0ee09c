"""Security's runbook commands: ``revoke``, ``kill``, ``revive``, ``rotate``, ``status``.

Each acts with the operator's own Vault token (``VAULT_TOKEN``/``BAO_TOKEN``) and is
appended, with the operator's identity, to the operator audit trail (``--audit-log`` or
``BROKER_OPERATOR_AUDIT``)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from broker.core.errors import ConfigError
from broker.ops.operator import add_operator_options, agent_id, operator_audit, operator_client


def register(
    commands: argparse._SubParsersAction[Any], bench: argparse._SubParsersAction[Any]
) -> None:
    del bench
    p = commands.add_parser("revoke", help="revoke one credential, an agent's, or everything")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--jti", help="a credential id, JWT id, token accessor or lease id")
    who.add_argument("--agent", type=agent_id)
    who.add_argument("--all", action="store_true", help="every credential of every agent")
    who.add_argument("--grant", help="a delegated grant (dg_...) and every grant below it")
    p.add_argument("--action", help="with --agent: only this action's credentials")
    p.add_argument("--reason", default="revoked by runbook")
    _common(p, cmd_revoke)

    p = commands.add_parser(
        "kill", help="the kill switch: refuse everything, stop logins, revoke everything held"
    )
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--agent", type=agent_id)
    who.add_argument("--all", action="store_true", help="every agent")
    p.add_argument("--reason", default="kill switch")
    p.add_argument(
        "--wait", type=float, default=2.0, help="seconds to wait for sidecars to confirm"
    )
    _common(p, cmd_kill)

    p = commands.add_parser(
        "revive", help="undo the kill switch, with a fresh AppRole secret id for the sidecar"
    )
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--agent", type=agent_id)
    who.add_argument("--all", action="store_true", help="lift `broker kill --all`")
    p.add_argument("--reason", required=True)
    p.add_argument(
        "--secret-id-file", type=Path, help="with --agent: where its sidecar reads the secret id"
    )
    p.add_argument(
        "--secret-id-dir", type=Path, help="with --all: writes <agent>.secret-id for each agent"
    )
    _common(p, cmd_revive)

    p = commands.add_parser(
        "rotate", help="rotate the signing key, an agent's secret, or a backend root"
    )
    what = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    q = what.add_parser("signing-key", help="new signing key generation for every sidecar")
    q.add_argument(
        "--revoke-old", action="store_true", help="refuse tokens of older generations now"
    )
    _common(q, cmd_rotate_signing_key)
    q = what.add_parser("agent-secret", help="a new AppRole secret id; the old ones stop working")
    q.add_argument("--agent", type=agent_id, required=True)
    q.add_argument(
        "--secret-id-file", type=Path, required=True, help="where the sidecar reads it (0600)"
    )
    q.add_argument("--role-id-file", type=Path, help="also write the role id here (onboarding)")
    _common(q, cmd_rotate_agent_secret)
    q = what.add_parser("backend-root", help="Vault rotates a database root credential")
    q.add_argument("--mount", default="database")
    q.add_argument("--connection", required=True)
    _common(q, cmd_rotate_backend_root)

    p = commands.add_parser(
        "status", help="agents, sidecar heartbeats, kill flags, outstanding credentials"
    )
    _common(p, cmd_status)


def _common(p: argparse.ArgumentParser, func: Any) -> None:
    add_operator_options(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=func)


def _control(args: argparse.Namespace) -> Any:
    from broker.ops.control import Control

    client, addr = operator_client(args)
    return Control(client, addr)


def _finish(args: argparse.Namespace, report: Any) -> int:
    """Print what was proven; exit 1 when anything was not (the deadline passed, or Vault
    refused), so that a runbook under ``set -e`` stops there."""
    operator_audit(args, report.to_audit())
    if getattr(args, "json", False):
        print(json.dumps({**report.to_audit(), "lines": report.lines}, indent=2))
        return 1 if report.failures else 0
    for line in report.lines:
        print(line)
    for failure in report.failures:
        print(f"FAILED: {failure}")
    verdict = "with failures" if report.failures else "everything verified in Vault"
    print(f"done by {report.operator} in {report.took:.2f}s: {report.revoked} revoked, {verdict}")
    return 1 if report.failures else 0


def cmd_revoke(args: argparse.Namespace) -> int:
    if args.action is not None and args.agent is None:
        raise ConfigError("--action goes with --agent", code="usage")
    control = _control(args)
    if args.jti is not None:
        return _finish(args, control.revoke_id(args.jti, args.reason))
    if args.grant is not None:
        from broker.ops.grants import revoke_grant

        return _finish(args, revoke_grant(control, args.grant, args.reason))
    if args.agent is not None:
        return _finish(args, control.revoke_agent(args.agent, args.action, args.reason))
    return _finish(args, control.revoke_all(args.reason))


def cmd_kill(args: argparse.Namespace) -> int:
    control = _control(args)
    if args.all:
        report = control.kill_all(args.reason, args.wait)
    else:
        report = control.kill(args.agent, args.reason, args.wait)
    code = _finish(args, report)
    if args.json:
        return code
    if report.confirmed:
        print(
            f"kill switch in effect: confirmed by the sidecar(s) {report.took:.2f}s after the command"
        )
    elif report.confirmed is None:
        print("kill switch in effect in Vault; no running sidecar to confirm it")
    return code


def cmd_revive(args: argparse.Namespace) -> int:
    wanted, other = (
        ("secret_id_dir", "secret_id_file") if args.all else ("secret_id_file", "secret_id_dir")
    )
    if getattr(args, other) is not None:
        raise ConfigError(
            "--secret-id-file goes with --agent, --secret-id-dir with --all", code="usage"
        )
    if getattr(args, wanted) is None:
        raise ConfigError(
            "revive issues a fresh AppRole secret id (the kill destroyed the old ones): "
            "say where the sidecar reads it with --secret-id-file (or --secret-id-dir with --all)",
            code="usage",
        )
    control = _control(args)
    if args.all:
        report, secrets = control.revive_all(args.reason)
        for agent, secret in secrets.items():
            _write_private(args.secret_id_dir / f"{agent}.secret-id", secret)
        report.say(f"fresh secret ids written to {args.secret_id_dir}/<agent>.secret-id (0600)")
        return _finish(args, report)
    report, secret = control.revive(args.agent, args.reason)
    _write_private(args.secret_id_file, secret)
    report.say(
        f"fresh secret id written to {args.secret_id_file} (0600); the sidecar logs in with it"
    )
    return _finish(args, report)


def cmd_rotate_signing_key(args: argparse.Namespace) -> int:
    return _finish(args, _control(args).rotate_signing_key(args.revoke_old))


def cmd_rotate_agent_secret(args: argparse.Namespace) -> int:
    control = _control(args)
    report, secret_id = control.rotate_agent_secret(args.agent)
    _write_private(args.secret_id_file, secret_id)
    if args.role_id_file:
        _write_private(args.role_id_file, control.role_id(args.agent))
        report.say(f"role id written to {args.role_id_file}")
    report.say(
        f"new secret id written to {args.secret_id_file} (0600); restart or let the sidecar re-login"
    )
    return _finish(args, report)


def _write_private(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)


def cmd_rotate_backend_root(args: argparse.Namespace) -> int:
    return _finish(args, _control(args).rotate_backend_root(args.mount, args.connection))


def heartbeat_age(seconds: float | None) -> str:
    """How long ago the last heartbeat was; a clock a little ahead of ours reads "now", never
    "-0.0s ago"."""
    if seconds is None:
        return "none"
    return "now" if seconds < 0.05 else f"{seconds:.1f}s ago"


def cmd_status(args: argparse.Namespace) -> int:
    rows = list(_control(args).status())
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'agent':<28} {'killed':<7} {'heartbeat':>10} {'in flight':>9} {'vault creds':>11} "
        f"{'tokens':>6} {'key gen':>7}  node agent"
    )
    for r in rows:
        age = heartbeat_age(r["heartbeat_age"])
        print(
            f"{r['agent']:<28} {'YES' if r['killed'] else 'no':<7} {age:>10} "
            f"{r['in_flight'] if r['in_flight'] is not None else '-':>9} {r['vault_credentials']:>11} "
            f"{r['sidecar_tokens']:>6} "
            f"{r['signing_generation'] if r['signing_generation'] is not None else '-':>7}  "
            f"{r.get('node_agent') or '-'}"
        )
        _print_ledger(r.get("ledger"))
        _print_delegations(r["agent"], r.get("delegations") or [])
    return 0


def _print_delegations(agent: str, grants: list[dict[str, Any]]) -> None:
    """Each live grant under its agent, with the chain from the agent down to its holder."""
    for g in grants:
        chain = " > ".join([agent, *(str(a.get("sub")) for a in g.get("chain") or [])])
        budgets = ", ".join(f"{n} {a:g}" for n, a in sorted((g.get("budgets") or {}).items()))
        state = "REVOKED" if g.get("revoked") else "live"
        print(
            f"  grant {g.get('grant_id')} ({state}, depth {g.get('depth')}): {chain}; "
            f"actions {', '.join(g.get('actions') or [])}; budgets {budgets or 'none'}; "
            f"expires {int(g['expires_at'])}"
        )


def _print_ledger(ledger: dict[str, Any] | None) -> None:
    """The fleet ledger under its agent: per budget used, leased out per replica, free."""
    if not ledger:
        return
    if "error" in ledger:
        print(f"  ledger: {ledger['error']}: {ledger['detail']}")
        return
    for name, b in sorted(ledger.items()):
        leased = ", ".join(f"{r} {a}" for r, a in sorted(b["leased"].items())) or "none"
        if "window_end" not in b:  # the concurrency cap: slots, no window
            print(
                f"  concurrency: cap {b['limit']}, free {b['free']}, leased {leased}, "
                f"held by expired leases {b['held']}"
            )
            continue
        kind = "rate" if name.startswith("rate:") else "budget"
        print(
            f"  {kind} {name}: used {b['used']} of {b['limit']}, free {b['free']}, "
            f"leased {leased}, window ends {b['window_end']}"
        )

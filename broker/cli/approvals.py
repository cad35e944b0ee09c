"""``broker approvals list | show | approve | deny``: humans deciding approval requests.

Each command acts with the operator's own Vault token (``VAULT_TOKEN``/``BAO_TOKEN``); the
operator's identity is the token's (``whoami``), never a flag. Only a human the manifest
lists as approver for the action may approve or deny, and the decision is first written where
only that approver's Vault identity may write it (``broker-approver`` policy): the sidecar
honours an approval only with that record. A refused attempt is still recorded.
Approve, deny and refused attempts are appended to the operator audit trail (``--audit-log``
or ``BROKER_OPERATOR_AUDIT``); the agent's sidecar records them in its own trail when it
sees the change."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from broker.audit.records import iso_utc
from broker.core.approvals import Approval, ApprovalError, Decided, Event, decide_as, raci_json
from broker.core.errors import ConfigError
from broker.ops.operator import add_operator_options, agent_id, operator_audit, operator_client

EXIT_OK = 0


def register(
    commands: argparse._SubParsersAction[Any], bench: argparse._SubParsersAction[Any]
) -> None:
    del bench
    parser = commands.add_parser("approvals", help="list, show, approve or deny approvals")
    sub = parser.add_subparsers(dest="approvals_command", required=True, metavar="WHAT")

    p = sub.add_parser("list", help="approval requests, newest last")
    p.add_argument("--agent", type=agent_id, help="only this agent's")
    p.add_argument("--state", choices=("pending", "approved", "denied", "expired", "redeemed"))
    p.add_argument("--json", action="store_true")
    _common(p, cmd_list)

    p = sub.add_parser("show", help="who asked, for what, why, the RACI and the policy version")
    p.add_argument("approval_id")
    p.add_argument("--agent", type=agent_id, help="skip the search across agents")
    p.add_argument("--json", action="store_true")
    _common(p, cmd_show)

    p = sub.add_parser("approve", help="approve (only an approver the manifest lists)")
    p.add_argument("approval_id")
    p.add_argument("--reason", default="")
    p.add_argument("--agent", type=agent_id, help="skip the search across agents")
    p.add_argument("--json", action="store_true", help="print the decision recorded as JSON")
    _common(p, cmd_approve)

    p = sub.add_parser("deny", help="deny, saying why")
    p.add_argument("approval_id")
    p.add_argument("--reason", required=True)
    p.add_argument("--agent", type=agent_id, help="skip the search across agents")
    p.add_argument("--json", action="store_true", help="print the decision recorded as JSON")
    _common(p, cmd_deny)


def _common(p: argparse.ArgumentParser, func: Any) -> None:
    add_operator_options(p)
    p.set_defaults(func=func)


def _store(args: argparse.Namespace) -> Any:
    from broker.vault.approvals import ApprovalStore

    client, addr = operator_client(args)
    return ApprovalStore(client, addr)


def _row(a: Approval, now: float) -> dict[str, Any]:
    return {
        "id": a.id,
        "agent": a.agent,
        "action": a.action,
        "state": a.state_at(now).value,
        "reason": a.reason,
        "requested": iso_utc(a.created_at),
        "deadline": iso_utc(a.deadline) if a.deadline else None,
    }


def cmd_list(args: argparse.Namespace) -> int:
    now = time.time()
    rows = [_row(a, now) for a in _store(args).list(args.agent)]
    rows = [r for r in rows if args.state in (None, r["state"])]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    for r in rows:
        print(f"{r['id']}  {r['state']:<9} {r['agent']}  {r['action']}  {r['reason']}")
        print(f"    requested {r['requested']}, deadline {r['deadline'] or '-'}")
    if not rows:
        print("no approvals", file=sys.stderr)
    return EXIT_OK


def describe(a: Approval, now: float) -> dict[str, Any]:
    """Everything an approver needs to decide: who asked, what, why, who owns it."""
    return {
        **_row(a, now),
        "workflow": a.workflow,
        "request_id": a.request_id,
        "inputs": dict(a.inputs),
        "inputs_hash": a.inputs_hash,
        "message": a.message,
        "raci": raci_json(a.raci),
        "policy_version": a.policy_version,
        "manifest_hash": a.manifest_hash,
        "history": [
            {**s.to_json(), "at": iso_utc(s.at), "event": s.event.value} for s in a.history
        ],
    }


def shown(value: object) -> str:
    """A value for people: an absent one is "-", never Python's ``None``."""
    return "-" if value is None or value == "" else str(value)


def cmd_show(args: argparse.Namespace) -> int:
    approval, _ = _store(args).find(args.approval_id, args.agent)
    doc = describe(approval, time.time())
    if args.json:
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    for key in ("id", "state", "agent", "action", "workflow", "request_id", "reason", "message"):
        print(f"{key:>15}: {shown(doc[key])}")
    print(f"{'inputs':>15}: {json.dumps(doc['inputs'], sort_keys=True)}")
    raci = doc["raci"]
    print(f"{'approvers':>15}: {', '.join(raci['approvers'])}")
    print(f"{'accountable':>15}: {raci['accountable']}")
    print(f"{'consulted':>15}: {', '.join(raci['consulted']) or '-'}")
    print(f"{'informed':>15}: {', '.join(raci['informed']) or '-'}")
    print(f"{'policy_version':>15}: {doc['policy_version']} ({doc['manifest_hash']})")
    print(f"{'requested':>15}: {doc['requested']}, deadline {doc['deadline'] or '-'}")
    for step in doc["history"]:
        print(
            f"{'':>15}  {step['at']} {step['event']} by {shown(step['by'])} {shown(step['reason'])}"
        )
    return EXIT_OK


def cmd_approve(args: argparse.Namespace) -> int:
    return _decide(args, Event.approve)


def cmd_deny(args: argparse.Namespace) -> int:
    if not args.reason.strip():
        raise ConfigError("deny needs --reason: the agent and its owners are told why")
    return _decide(args, Event.deny)


def _decide(args: argparse.Namespace, event: Event) -> int:
    from broker.ops.control import whoami
    from broker.vault.approvals import write_decision

    store = _store(args)
    operator = whoami(store.client, store.addr).identity
    approval, _ = store.find(args.approval_id, args.agent)
    now = time.time()
    body = {
        "type": "approval",
        "timestamp": iso_utc(now),
        "at": round(now, 6),
        "operator": operator,
        "agent_id": approval.agent,
        "approval_id": approval.id,
        "action": approval.action,
        "request_id": approval.request_id,
        "inputs_hash": approval.inputs_hash,
        "policy_version": approval.policy_version,
        "reason": args.reason,
    }
    try:
        decide_as(approval, event, identity=operator, at=now, reason=args.reason)
        decided = Decided.of(approval, operator, event, now, args.reason)
        write_decision(store.client, decided, store.addr)
        store.update(
            approval.agent,
            approval.id,
            lambda a: decide_as(a, event, identity=operator, at=now, reason=args.reason),
        )
    except ApprovalError as exc:
        operator_audit(
            args, {**body, "event": "refused", "attempted": event.value, "error": exc.detail}
        )
        raise
    name = "approved" if event is Event.approve else "denied"
    operator_audit(args, {**body, "event": name, "human_override": event is Event.approve})
    if args.json:
        keys = ("approval_id", "agent_id", "action", "request_id", "inputs_hash", "reason")
        print(json.dumps({"decision": name, "by": operator, "at": body["timestamp"]}
                         | {k: body[k] for k in keys}, indent=2))  # fmt: skip
        return EXIT_OK
    print(f"{approval.id}: {name} by {operator} ({approval.agent} {approval.action})")
    return EXIT_OK

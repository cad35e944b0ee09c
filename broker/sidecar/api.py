"""The agent API's request models and its OpenAPI document (generated, never hand-kept)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from broker.core.manifest import Manifest
from broker.core.reasons import REASON_DESCRIPTION, REASON_HTTP_STATUS
from broker.sidecar.delegationdoc import delegation_paths, delegation_schemas

JsonScalar = str | int | float | bool | None
Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")
]


class CredentialRequest(BaseModel):
    """``POST /v1/credentials``. There is no agent field: a sidecar serves one agent only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    action: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    inputs: dict[Annotated[str, StringConstraints(max_length=128)], JsonScalar] = Field(
        default_factory=dict, max_length=64
    )
    workflow: Identifier | None = None
    request_id: Identifier | None = None


def _a_number(value: Any) -> Any:
    """Requests are validated in lax mode, which would read a JSON true as 1.0 and "12" as
    12.0; the document says a cost is a number, so only a JSON number is one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("a cost must be a JSON number")
    return value


Cost = Annotated[float, BeforeValidator(_a_number)]


class OutcomeReport(BaseModel):
    """``POST /v1/credentials/{id}/outcome``: what happened with a credential."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: Annotated[str, StringConstraints(pattern=r"^(ok|error|rolled_back)$")]
    cost: dict[str, Cost] = Field(default_factory=dict)


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
    }


def _refusal_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["outcome", "reason", "detail"],
        "properties": {
            "outcome": {"const": "deny"},
            "reason": {"enum": sorted(r.value for r in REASON_HTTP_STATUS)},
            "detail": {"type": "string"},
        },
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _links(operation: str, parameter: str, pointer: str) -> dict[str, Any]:
    """An OpenAPI link: the id in this answer is the path parameter of the next call (what a
    client does next, and what a stateful API fuzzer follows)."""
    return {
        operation: {
            "operationId": operation,
            "parameters": {parameter: f"$response.body#{pointer}"},
        }
    }


_DPOP_HEADER = {
    "name": "DPoP",
    "in": "header",
    "required": False,
    "description": (
        "An RFC 9449 proof (dpop+jwt, ES256 or EdDSA) for this POST and URL: a jwt credential "
        "is then bound to the proof's key (cnf.jkt, token_type DPoP). A proof that does not "
        "hold is a 400 with its dpop_* code; an action whose manifest says dpop: required "
        "is refused without one (dpop_required)."
    ),
    "schema": {"type": "string"},
}


def openapi_document() -> dict[str, Any]:
    reasons = "\n".join(
        f"- `{r.value}` ({REASON_HTTP_STATUS[r]}): {REASON_DESCRIPTION[r]}"
        for r in REASON_HTTP_STATUS
    )
    credential = {"type": "object", "required": ["outcome", "credential"]}
    pending = {"type": "object", "required": ["outcome", "approval_id", "reason"]}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Agent credential broker: sidecar API",
            "version": "1",
            "description": "Refusal reason codes:\n" + reasons,
        },
        "paths": {
            "/v1/credentials": {
                "post": {
                    "summary": "Ask for a credential for one action",
                    "parameters": [_DPOP_HEADER],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/CredentialRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": _json(credential, "a credential, minted through Vault")
                        | {
                            "links": _links(
                                "ReportOutcome", "credential_id", "/credential/credential_id"
                            )
                        },
                        "202": _json(pending, "pending human approval")
                        | {"links": _links("RedeemApproval", "approval_id", "/approval_id")},
                        "400": _json(_error_schema(), "malformed request"),
                        "403": _json(_refusal_schema(), "refused, with a stable reason code"),
                        "413": _json(_error_schema(), "body too large"),
                        "429": _json(
                            _refusal_schema(), "rate or concurrency limit; see Retry-After"
                        ),
                        "503": _json(
                            _refusal_schema(),
                            "Vault or the audit trail unavailable; see Retry-After",
                        ),
                    },
                }
            },
            "/v1/credentials/{credential_id}/outcome": {
                "post": {
                    "operationId": "ReportOutcome",
                    "summary": "Report what happened with a credential; frees its concurrency slot",
                    "parameters": [
                        {
                            "name": "credential_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/OutcomeReport"}
                            }
                        },
                    },
                    "responses": {
                        "200": _json({"type": "object"}, "recorded"),
                        "400": _json(_error_schema(), "malformed request"),
                        "404": _json(_error_schema(), "no such credential"),
                        "413": _json(_error_schema(), "body too large"),
                    },
                }
            },
            "/v1/approvals/{approval_id}/redeem": {
                "post": {
                    "operationId": "RedeemApproval",
                    "summary": "Redeem an approved request for its credential, once",
                    "description": (
                        'Body {} or {"inputs": {...}} (refused unless exactly the approved '
                        "inputs). ?wait=SECONDS (at most 30) holds the request while pending."
                    ),
                    "parameters": [
                        {
                            "name": "approval_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^apr_[0-9a-f]{20}$"},
                        },
                        _DPOP_HEADER,
                        {
                            "name": "wait",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "number", "minimum": 0, "maximum": 30},
                        },
                    ],
                    "responses": {
                        "200": _json(credential, "approved: the credential, single use"),
                        "202": _json(pending, "still pending human approval"),
                        "400": _json(_error_schema(), "malformed body or wait parameter"),
                        "403": _json(
                            _refusal_schema(),
                            "approval_denied, approval_expired (also once redeemed), "
                            "invalid_inputs (not the approved inputs), or a current limit",
                        ),
                        "404": _json(_error_schema(), "no such approval for this agent"),
                        "409": _json(_error_schema(), "the approval changed meanwhile; retry"),
                        "413": _json(_error_schema(), "body too large"),
                    },
                }
            },
            "/v1/scope": {
                "get": {
                    "summary": "What this agent may do",
                    "responses": {"200": _json({"type": "object"}, "the scope")},
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Process is up",
                    "responses": {"200": _json({"type": "object"}, "up")},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Vault reachable and manifest loaded",
                    "responses": {
                        "200": _json({"type": "object"}, "ready"),
                        "503": _json({"type": "object"}, "not ready"),
                    },
                }
            },
            **delegation_paths(),
        },
        "components": {
            "schemas": {
                "CredentialRequest": CredentialRequest.model_json_schema(),
                "OutcomeReport": OutcomeReport.model_json_schema(),
                **delegation_schemas(),
            }
        },
    }


def scope_document(m: Manifest, *, disabled: bool) -> dict[str, Any]:
    """``GET /v1/scope``: what the agent may do, for its planner (actions, inputs, limits)."""
    return {
        "agent": m.agent,
        "policy_version": m.policy_version,
        "manifest_hash": m.content_hash,
        "disabled": disabled,
        "budgets": {n: b.model_dump(mode="json") for n, b in m.budgets.items()},
        "concurrency": m.concurrency,
        "actions": {
            name: {
                "credential": a.credential.kind,
                "inputs": {
                    k: v.model_dump(mode="json", exclude_none=True) for k, v in a.inputs.items()
                },
                "needs_approval": a.approval is not None,
                "accountable": a.accountable,
            }
            for name, a in m.actions.items()
        },
    }
